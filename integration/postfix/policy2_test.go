package postfix

import (
	"encoding/base64"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/milters/policy"
	"github.com/geomilter/geomilter/shared/config"
	"github.com/geomilter/geomilter/shared/dnstest"
	"github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/resolver"
	"github.com/geomilter/geomilter/shared/rules"
	"github.com/geomilter/geomilter/shared/service"
	"github.com/geomilter/geomilter/shared/trail"
)

// The policy milter's part 2 (issue 15, docs/policy.md) with real Postfix:
// greylisting shared by two sites over real Redis replication, DNSBL lists
// on an in-process DNS server (IPv4 and IPv6 clients, a list that never
// answers), content rules on hostile MIME (GTUBE, a renamed executable in
// a zip, MIME bombs), and rspamd from Debian as a scanner, stopped.

// --- greylisting at two sites ----------------------------------------------------

// greyClient is the inbound client of the greylisting test: an address on
// lo in both namespaces (the same one at both, so a retry at the other
// site has the same triplet), outside the tenant's relay networks
// (127.0.0.0/8) and outside Postfix's mynetworks.
const (
	greyClient = "10.79.0.1"
	greyDelay  = 5 * time.Second
)

// TestPolicy2GreylistTwoSites: a sender deferred at lax and retrying at
// dal after the delay is accepted there (lax's sighting reached dal by
// Redis replication); with the link cut each site greylists and accepts
// on its own; once it returns, a triplet passed at one site is passed at
// the other.
func TestPolicy2GreylistTwoSites(t *testing.T) {
	dal, lax := twoSitesWith(t, siteOpts{
		mainCf: map[string]string{"relay_domains": "acme.example"},
		policyYAML: fmt.Sprintf("greylist:\n  enabled: true\n  delay: %s\n  retry_window: 10m\n  auto_allowlist: 0\n",
			greyDelay),
	})
	for _, s := range []*site{dal, lax} {
		s.h.mustRun("ip", "-n", s.ns, "addr", "add", greyClient+"/32", "dev", "lo")
	}
	// send makes one attempt from greyClient at s and returns the transcript.
	send := func(s *site, sender, rcpt string) string {
		return swaksAt(s.ns, s.addr+":25", "client.grey.test", "--local-interface", greyClient,
			"--from", sender, "--to", rcpt, "--header", "Subject: greylist "+sender)
	}
	// deferred asserts that the attempt was greylisted at RCPT and returns
	// the trail's greylisting outcome of it at s.
	deferred := func(t *testing.T, s *site, sender, rcpt string) trail.GreylistResult {
		t.Helper()
		out := send(s, sender, rcpt)
		if r := replyToRcpt(out, rcpt); !strings.HasPrefix(r, "451 4.7.1") || queuedAs(out) != "" {
			t.Fatalf("first attempt %s -> %s at %s: RCPT reply %q, want 451 4.7.1 and nothing queued; swaks:\n%s", sender, rcpt, s.name, r, out)
		}
		ev := policyEvent(t, s, "the deferred "+sender, func(ev trail.Event) bool {
			_, ok := greyOf(ev.Policy, rcpt)
			return ev.Sender == sender && ok
		})
		g, _ := greyOf(ev.Policy, rcpt)
		if g.Status != "new" || g.FirstSeenMS == 0 {
			t.Errorf("trail at %s for the first attempt of %s: greylist %+v, want status new with first_seen_ms", s.name, sender, g)
		}
		return g
	}
	// accepted asserts that the attempt was accepted and delivered and
	// returns the trail's greylisting outcome of it at s.
	accepted := func(t *testing.T, s *site, sender, rcpt string) trail.GreylistResult {
		t.Helper()
		out := send(s, sender, rcpt)
		qid := queuedAs(out)
		if qid == "" || len(refusals(out)) != 0 {
			t.Fatalf("retry %s -> %s at %s not accepted; swaks:\n%s", sender, rcpt, s.name, out)
		}
		if got := waitSent(t, s, qid, 1); len(got) != 1 || got[0] != rcpt {
			t.Fatalf("%s delivered to %v, want [%s]", qid, got, rcpt)
		}
		ev := policyEvent(t, s, qid, func(ev trail.Event) bool { return ev.QueueID == qid })
		g, ok := greyOf(ev.Policy, rcpt)
		if !ok || g.Status != "passed" {
			t.Errorf("trail at %s for %s: greylist %+v, want status passed", s.name, qid, ev.Policy.Greylist)
		}
		return g
	}
	// afterDelay sleeps until the delay since a first sighting has passed.
	afterDelay := func(first time.Time) {
		if d := time.Until(first.Add(greyDelay + 500*time.Millisecond)); d > 0 {
			time.Sleep(d)
		}
	}

	t.Run("DeferredAtLaxAcceptedAtDal", func(t *testing.T) {
		const sender, rcpt = "g1@sender.example", "g1@acme.example"
		start := time.Now()
		first := deferred(t, lax, sender, rcpt)
		if fs := time.UnixMilli(first.FirstSeenMS); fs.Before(start.Add(-time.Second)) || fs.After(time.Now().Add(time.Second)) {
			t.Errorf("lax first_seen %s, want the time of the attempt (%s)", fs, start)
		}
		// The sighting reaches dal by Redis replication of lax's primary.
		dal.waitReplicaCaughtUp(30 * time.Second)
		// A retry at dal before the delay is over waits, counted from
		// lax's sighting (checked only while well before the delay's end,
		// so a slow machine skips it rather than fails it).
		if since := time.Since(time.UnixMilli(first.FirstSeenMS)); since < greyDelay-2*time.Second {
			early := send(dal, sender, rcpt)
			if r := replyToRcpt(early, rcpt); !strings.HasPrefix(r, "451 4.7.1") || queuedAs(early) != "" {
				t.Fatalf("early retry at dal %s after lax's sighting: RCPT reply %q, want 451 4.7.1; swaks:\n%s", since, r, early)
			}
			ev := policyEvent(t, dal, "the early retry", func(ev trail.Event) bool {
				_, ok := greyOf(ev.Policy, rcpt)
				return ev.Sender == sender && ok
			})
			if g, _ := greyOf(ev.Policy, rcpt); g.Status != "waiting" || g.FirstSeenMS != first.FirstSeenMS {
				t.Errorf("dal's trail for the early retry: greylist %+v, want waiting with lax's first_seen_ms %d", g, first.FirstSeenMS)
			}
		} else {
			t.Logf("early retry not tried: %s since the first sighting already", since)
		}
		afterDelay(time.UnixMilli(first.FirstSeenMS))
		g := accepted(t, dal, sender, rcpt)
		if g.FirstSeenMS != first.FirstSeenMS {
			t.Errorf("dal's trail: first_seen_ms %d, want lax's first sighting %d", g.FirstSeenMS, first.FirstSeenMS)
		}
	})

	t.Run("CutOffEachSiteOnItsOwn", func(t *testing.T) {
		lax.cutLink()
		restored := false
		restore := func() {
			if !restored {
				restored = true
				lax.restoreLink()
			}
		}
		defer restore()

		// g2: each site greylists on its own, and each accepts its own
		// retry after the delay. g3 passes at lax only, g4 at dal only.
		start := time.Now()
		firstLax := deferred(t, lax, "g2@sender.example", "g2@acme.example")
		firstDal := deferred(t, dal, "g2@sender.example", "g2@acme.example")
		if firstDal.FirstSeenMS < firstLax.FirstSeenMS {
			t.Errorf("dal's first sighting %d before lax's %d: dal cannot have seen lax's", firstDal.FirstSeenMS, firstLax.FirstSeenMS)
		}
		deferred(t, lax, "g3@sender.example", "g3@acme.example")
		deferred(t, dal, "g4@sender.example", "g4@acme.example")
		afterDelay(time.Now()) // after the last first sighting
		t.Logf("cut off: four first attempts deferred, retrying after %s", time.Since(start).Round(time.Millisecond))
		if g := accepted(t, lax, "g2@sender.example", "g2@acme.example"); g.FirstSeenMS != firstLax.FirstSeenMS {
			t.Errorf("lax's retry of g2: first_seen_ms %d, want lax's own %d", g.FirstSeenMS, firstLax.FirstSeenMS)
		}
		if g := accepted(t, dal, "g2@sender.example", "g2@acme.example"); g.FirstSeenMS != firstDal.FirstSeenMS {
			t.Errorf("dal's retry of g2: first_seen_ms %d, want dal's own %d", g.FirstSeenMS, firstDal.FirstSeenMS)
		}
		accepted(t, lax, "g3@sender.example", "g3@acme.example")
		accepted(t, dal, "g4@sender.example", "g4@acme.example")

		// The link returns: each site's replica of the other catches up,
		// and a triplet passed at one site is passed at the other.
		restore()
		for _, s := range []*site{dal, lax} {
			s.waitReplicaCaughtUp(120 * time.Second)
		}
		for _, c := range []struct {
			s        *site
			sender   string
			rcpt     string
			passedAt string
		}{
			{dal, "g3@sender.example", "g3@acme.example", "lax"},
			{lax, "g4@sender.example", "g4@acme.example", "dal"},
		} {
			var out string
			ok := eventually(60*time.Second, func() bool {
				out = send(c.s, c.sender, c.rcpt)
				if queuedAs(out) != "" {
					return true
				}
				time.Sleep(time.Second)
				return false
			})
			if !ok {
				t.Fatalf("%s (passed at %s) still not accepted at %s after the link returned; last swaks:\n%s", c.sender, c.passedAt, c.s.name, out)
			}
			qid := queuedAs(out)
			waitSent(t, c.s, qid, 1)
			ev := policyEvent(t, c.s, qid, func(ev trail.Event) bool { return ev.QueueID == qid })
			if g, _ := greyOf(ev.Policy, c.rcpt); g.Status != "passed" {
				t.Errorf("%s at %s: greylist %+v, want passed", c.sender, c.s.name, g)
			}
		}
	})
}

// --- DNSBL ------------------------------------------------------------------------

const (
	p2Client4  = "10.78.0.1"
	p2Client6  = "2001:db8:78::1"
	p2Authserv = "mx1.pol2.test"
)

// p2Site starts a site whose Postfix uses the in-process policy milter at
// sock only, keeps every message in its queue (defer_transports) and
// takes inbound mail from p2Client4 and p2Client6 (both on its lo) for the
// tenants' domains.
func p2Site(t *testing.T, name string) (*site, string) {
	h := newHarness(t)
	s := h.newSite(name, p2Client4)
	h.mustRun("ip", "-n", s.ns, "addr", "add", p2Client4+"/32", "dev", "lo")
	h.mustRun("ip", "-n", s.ns, "addr", "add", p2Client6+"/128", "dev", "lo", "nodad")
	return s, filepath.Join(s.sockDir, "policy.sock")
}

func p2StartPostfix(s *site, sock string) {
	s.startPostfix(siteOpts{mainCf: map[string]string{
		"smtpd_milters":                "{ unix:" + sock + ", default_action=tempfail }",
		"non_smtpd_milters":            "",
		"inet_protocols":               "all",
		"inet_interfaces":              "all",
		"relay_domains":                "acme.example, beta.example",
		"defer_transports":             "smtp relay",
		"local_header_rewrite_clients": "",
	}})
}

// p2Milter builds the policy milter from config text (the milters.policy
// keys beyond listen) and rules text, as the process does.
func p2Milter(t *testing.T, sock, dnsYAML, policyYAML, rulesYAML string, res resolver.Resolver) milterrt.Milter {
	t.Helper()
	set, err := rules.Parse("rules.yaml", []byte(rulesYAML))
	if err != nil {
		t.Fatal(err)
	}
	snap, err := rules.Compile(set)
	if err != nil {
		t.Fatal(err)
	}
	var pol strings.Builder
	fmt.Fprintf(&pol, "    listen: \"unix:%s\"\n    authserv_id: %s\n", sock, p2Authserv)
	for _, l := range strings.Split(strings.TrimRight(policyYAML, "\n"), "\n") {
		pol.WriteString("    " + l + "\n")
	}
	text := "site: pol2\nhost: mx1\nrules_file: /r.yaml\nstate_dir: /s\nspool_dir: /q\n" + dnsYAML + "milters:\n  policy:\n" + pol.String()
	cfg, err := config.Parse("geomilter.yaml", []byte(text))
	if err != nil {
		t.Fatalf("config:\n%s\n%v", text, err)
	}
	env := service.NewEnv(policy.Name, cfg, zerolog.Nop(), policyRulesView{snap})
	env.Resolver = res
	m, err := policy.New(env)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// p2Send sends data from client (an address on the site's lo) to the
// site's smtpd and returns the transcript.
func p2Send(s *site, client, sender, rcpt, data string) string {
	file := filepath.Join(s.dir, fmt.Sprintf("msg-%d.eml", time.Now().UnixNano()))
	if err := os.WriteFile(file, []byte(data), 0o644); err != nil {
		s.h.t.Fatal(err)
	}
	if strings.Contains(client, ":") {
		// swaks needs IO::Socket::INET6 for IPv6, which Debian does not
		// install with it: Python's smtplib speaks for it.
		out, err := inNS(s.ns, 60*time.Second, "python3", "-c", smtpPy, client, sender, rcpt, file)
		if err != nil {
			out += "\n(python3 smtplib: " + err.Error() + ")"
		}
		return out
	}
	return swaksAt(s.ns, client+":25", "client.pol2.test", "--local-interface", client, "--from", sender, "--to", rcpt, "--data", "@"+file)
}

// smtpPy sends one message (argv: client address, sender, recipient,
// message file) from the client address to its own port 25 and prints a
// transcript in swaks's notation (" -> command", "<- reply", "<** refusal"),
// which replyToRcpt, refusals and queuedAs read.
const smtpPy = `import smtplib, sys
client, sender, rcpt, path = sys.argv[1:5]
data = open(path, "rb").read()
s = smtplib.SMTP(timeout=60, local_hostname="client.pol2.test", source_address=(client, 0))
print("<- %d %s" % s.connect(client, 25))
def show(cmd, code, msg):
    print(" -> " + cmd)
    print(("<** " if code >= 400 else "<-  ") + str(code) + " " + msg.decode(errors="replace"))
    return code < 400
s.ehlo()
if show("MAIL FROM:<%s>" % sender, *s.mail(sender)) and show("RCPT TO:<%s>" % rcpt, *s.rcpt(rcpt)):
    try:
        code, msg = s.data(data)
    except smtplib.SMTPDataError as e:
        code, msg = e.smtp_code, e.smtp_error
    show("DATA", code, msg)
s.quit()
`

const p2Tenants = `tenants:
  - {id: acme, domains: [acme.example], relay: {networks: [10.78.0.2/32]}}
  - {id: beta, domains: [beta.example], relay: {networks: [10.78.0.3/32]}}
`

// TestPolicy2DNSBL: an IPv4 and an IPv6 client listed in a score-only
// list (for acme's recipients) are scored, in a reject list (for beta's)
// refused at RCPT with 554 5.7.1; a third list whose server never answers
// is named in lists.failed and the message is accepted all the same.
func TestPolicy2DNSBL(t *testing.T) {
	s, sock := p2Site(t, "pbl")
	v4, v6 := net.ParseIP(p2Client4), net.ParseIP(p2Client6)
	var zone strings.Builder
	for _, z := range []string{"score.bl.test.", "reject.bl.test.", "example.org."} {
		fmt.Fprintf(&zone, "%s 300 IN SOA ns.%s h.%s 1 3600 600 86400 300\n", z, z, z)
	}
	for _, z := range []string{"score.bl.test.", "reject.bl.test."} {
		for _, ip := range []net.IP{v4, v6} {
			fmt.Fprintf(&zone, "%s 300 IN A 127.0.0.2\n", dnsblName(ip, z))
		}
	}
	dns := dnstest.Start(t, zone.String())
	live, err := resolver.New(resolver.Options{Servers: []string{dns.Addr()}, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	// dark.bl.test's servers never answer: its queries go to a blackhole.
	hole := dnstest.StartBlackhole(t)
	dark, err := resolver.New(resolver.Options{Servers: []string{hole.Addr()}, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	res := zoneRouter{zone: "dark.bl.test", dark: dark, main: live}
	const budget = 1500 * time.Millisecond
	m := p2Milter(t, sock,
		fmt.Sprintf("dns: {servers: [%q], timeout: 1s, message_budget: %s}\n", dns.Addr(), budget),
		`dnsbl:
  - {zone: score.bl.test, weight: 3, tenants: [acme]}
  - {zone: reject.bl.test, action: reject, tenants: [beta]}
  - {zone: dark.bl.test, weight: 2}
`, p2Tenants+"rules: []\n", res)
	log := serveRecorded(t, m, sock)
	p2StartPostfix(s, sock)

	for _, c := range []struct {
		name   string
		client string
		rcpt   string
		reject bool
	}{
		{"IPv4Scored", p2Client4, "u4@acme.example", false},
		{"IPv6Scored", p2Client6, "u6@acme.example", false},
		{"IPv4Rejected", p2Client4, "r4@beta.example", true},
		{"IPv6Rejected", p2Client6, "r6@beta.example", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			sender := "s-" + strings.ToLower(c.name) + "@example.org"
			msg := "From: <" + sender + ">\r\nTo: <" + c.rcpt + ">\r\nSubject: dnsbl " + c.name + "\r\n\r\nHello.\r\n"
			start := time.Now()
			out := p2Send(s, c.client, sender, c.rcpt, msg)
			took := time.Since(start)
			if c.reject {
				if r := replyToRcpt(out, c.rcpt); !strings.HasPrefix(r, "554 5.7.1") || queuedAs(out) != "" {
					t.Fatalf("RCPT reply %q, want 554 5.7.1 and nothing queued; swaks:\n%s", r, out)
				}
				tx := log.wait(t, sender, func(tx txn) bool { return tx.sender == sender })
				if tx.section == nil || !hasHit(tx.section, "reject.bl.test", c.client) {
					t.Errorf("trail: no dnsbl hit of reject.bl.test for %s: %+v", c.client, tx.section)
				}
				return
			}
			qid := queuedAs(out)
			if qid == "" {
				t.Fatalf("not accepted; swaks:\n%s", out)
			}
			tx := log.wait(t, qid, func(tx txn) bool { return tx.queueID == qid })
			p := tx.section
			if p == nil {
				t.Fatal("no policy section in the trail")
			}
			if !hasHit(p, "score.bl.test", c.client) {
				t.Errorf("trail dnsbl %+v: no hit of score.bl.test for %s", p.DNSBL, c.client)
			}
			if tx.scores["dnsbl:score.bl.test"] != 3 {
				t.Errorf("scores %v: want dnsbl:score.bl.test 3", tx.scores)
			}
			if p.Lists == nil || !failedNames(p.Lists.Failed, "dark.bl.test") {
				t.Errorf("trail lists %+v: want dark.bl.test among the failed", p.Lists)
			}
			hdr, _ := queuedMessage(t, s, qid)
			v, ok := headerValue(hdr, "X-Spam-Score")
			if f, err := strconv.ParseFloat(v, 64); !ok || err != nil || math.Abs(f-p.Score) > 0.05 || f < 3 {
				t.Errorf("X-Spam-Score %q (present %v), want the trail's score %v (>= 3)", v, ok, p.Score)
			}
			t.Logf("%s: accepted in %s; list look-ups %.0f ms (budget %s), failed %v", c.name,
				took.Round(time.Millisecond), p.Lists.DurationMS, budget, p.Lists.Failed)
		})
	}
	if hole.Received() == 0 {
		t.Errorf("the dark list's server got no query")
	}
}

// hasHit reports whether the section lists a hit of zone for target.
func hasHit(p *trail.PolicySection, zone, target string) bool {
	for _, h := range p.DNSBL {
		if h.Zone == zone && (h.Target == "" || net.ParseIP(h.Target).Equal(net.ParseIP(target))) {
			return true
		}
	}
	return false
}

// failedNames reports whether a lists.failed entry ("zone: why") names zone.
func failedNames(failed []string, zone string) bool {
	for _, f := range failed {
		if f == zone || strings.HasPrefix(f, zone+":") || strings.HasPrefix(f, zone+" ") {
			return true
		}
	}
	return false
}

// --- content ----------------------------------------------------------------------

const gtube = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

// TestPolicy2Content: with the default rules GTUBE is rejected; an
// attachment rule catches an executable renamed invoice.pdf inside a zip
// (and not a real PDF there); MIME bombs of depth 1,000 and of 100,000
// parts are accepted, scored mime:depth / mime:parts; forged X-Spam-*
// fields are replaced by ours.
func TestPolicy2Content(t *testing.T) {
	s, sock := p2Site(t, "pct")
	dns := dnstest.Start(t, "example.org. 300 IN SOA ns.example.org. h.example.org. 1 3600 600 86400 300\n")
	res, err := resolver.New(resolver.Options{Servers: []string{dns.Addr()}, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	m := p2Milter(t, sock, fmt.Sprintf("dns: {servers: [%q]}\n", dns.Addr()),
		"scoring: {default_rules: true}\n", p2Tenants+`rules:
  - id: exe-attachments
    milter: policy
    scope: global
    match: {attachment: [exe]}
    action: reject
    reply: "550 5.7.1 Executable attachments are not accepted"
`, res)
	log := serveRecorded(t, m, sock)
	p2StartPostfix(s, sock)

	// zipMsg carries a zip archive holding content under the name
	// invoice.pdf.
	zipMsg := func(content []byte) string {
		b64 := base64.StdEncoding.EncodeToString(zipHolding(t, "invoice.pdf", content))
		var lines strings.Builder
		for len(b64) > 76 {
			lines.WriteString(b64[:76] + "\r\n")
			b64 = b64[76:]
		}
		lines.WriteString(b64 + "\r\n")
		return "From: <z@example.org>\r\nTo: <u@acme.example>\r\nSubject: your invoice\r\nMIME-Version: 1.0\r\n" +
			"Content-Type: multipart/mixed; boundary=\"z\"\r\n\r\n--z\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n" +
			"--z\r\nContent-Type: application/zip; name=\"invoice.zip\"\r\nContent-Disposition: attachment; filename=\"invoice.zip\"\r\n" +
			"Content-Transfer-Encoding: base64\r\n\r\n" + lines.String() + "--z--\r\n"
	}
	// Forged spam headers from outside: removed, ours added.
	forged := "X-Spam-Flag: YES\r\nX-Spam-Score: 99\r\nX-Spam-Status: Yes, score=99 forged\r\n"

	for _, c := range []struct {
		name    string
		data    string
		reject  string   // the 5xx reply wanted; "" accepted
		score   string   // a part of the score wanted in scores
		problem string   // a content problem wanted in the trail
		ruleIDs []string // rules wanted among the trail's rule ids
	}{
		{name: "GTUBE", data: "From: <g@example.org>\r\nTo: <u@acme.example>\r\nSubject: gtube\r\n\r\n" + gtube + "\r\n",
			reject: "550 5.7.1", score: "rule:builtin-gtube"},
		{name: "RenamedExeInZip", data: zipMsg(windowsExe()), reject: "550 5.7.1", ruleIDs: []string{"exe-attachments"}},
		// The control: the same archive with a real PDF inside passes.
		{name: "PDFInZip", data: zipMsg([]byte("%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n%%EOF\n"))},
		{name: "NestedDepth1000", data: forged + nestedBomb(1000), score: "mime:depth", problem: "depth"},
		{name: "Parts100000", data: forged + widePartsBomb(100_000), score: "mime:parts", problem: "parts"},
	} {
		t.Run(c.name, func(t *testing.T) {
			sender := "c-" + strings.ToLower(c.name) + "@example.org"
			rcpt := "u-" + strings.ToLower(c.name) + "@acme.example"
			start := time.Now()
			out := p2Send(s, p2Client4, sender, rcpt, c.data)
			took := time.Since(start)
			tx := log.wait(t, sender, func(tx txn) bool { return tx.sender == sender })
			p := tx.section
			if p == nil {
				t.Fatalf("no policy section in the trail; swaks:\n%s", out)
			}
			if c.score != "" && tx.scores[c.score] <= 0 {
				t.Errorf("scores %v: want %s", tx.scores, c.score)
			}
			for _, id := range c.ruleIDs {
				found := false
				for _, r := range p.Rules {
					found = found || r.ID == id
				}
				if !found {
					t.Errorf("trail rules %+v: want %s", p.Rules, id)
				}
			}
			if c.reject != "" {
				if rs := refusals(out); queuedAs(out) != "" || len(rs) != 1 || !strings.HasPrefix(rs[0], c.reject) {
					t.Fatalf("want %s at end of data and nothing queued; refusals %q; swaks:\n%s", c.reject, rs, out)
				}
				if p.Action != "reject" {
					t.Errorf("trail action %q, want reject", p.Action)
				}
				return
			}
			qid := queuedAs(out)
			if qid == "" {
				t.Fatalf("not accepted; swaks:\n%s", out)
			}
			if p.Content == nil || (c.problem != "" && !hasString(p.Content.Problems, c.problem)) {
				t.Errorf("trail content %+v: want problem %q", p.Content, c.problem)
			}
			if p.Action == "reject" || p.Score >= policy.DefaultRejectScore {
				t.Errorf("score %v action %q: want below reject", p.Score, p.Action)
			}
			hdr, _ := queuedMessage(t, s, qid)
			if n := headerCount(hdr, "X-Spam-Score"); n != 1 {
				t.Errorf("%d X-Spam-Score fields, want ours only", n)
			}
			if v, _ := headerValue(hdr, "X-Spam-Score"); v == "99" {
				t.Errorf("X-Spam-Score is the forged one")
			}
			if v, _ := headerValue(hdr, "X-Spam-Status"); headerCount(hdr, "X-Spam-Status") != 1 || !strings.HasPrefix(v, "No") {
				t.Errorf("X-Spam-Status %q (%d fields), want one, ours: No, score=…", v, headerCount(hdr, "X-Spam-Status"))
			}
			if headerCount(hdr, "X-Spam-Flag") != 0 {
				t.Errorf("the forged X-Spam-Flag is still there")
			}
			walk := 0.0
			if p.Content != nil {
				walk = p.Content.DurationMS
			}
			t.Logf("%s: %d bytes accepted in %s; walk %.1f ms, score %v, scores %v", c.name, len(c.data),
				took.Round(time.Millisecond), walk, p.Score, tx.scores)
		})
	}
}

// --- rspamd -----------------------------------------------------------------------

const (
	rspamdPort   = 11333
	rspamdBudget = time.Second
)

// startRspamd runs Debian's rspamd inside s's namespace, its normal worker
// on 127.0.0.1:rspamdPort, and waits until it answers /ping.
func startRspamd(t *testing.T, s *site) *proc {
	t.Helper()
	r := filepath.Join(s.dir, "rspamd")
	for _, d := range []string{"local/local.d", "local/override.d", "db", "run", "log"} {
		if err := os.MkdirAll(filepath.Join(r, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	uid, err := lookupID("passwd", "_rspamd")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"db", "run", "log"} {
		if err := os.Chown(filepath.Join(r, d), uid, -1); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		"local/override.d/worker-normal.inc":     fmt.Sprintf("bind_socket = \"127.0.0.1:%d\";\ncount = 1;\n", rspamdPort),
		"local/override.d/worker-proxy.inc":      "bind_socket = \"127.0.0.1:11332\";\ncount = 1;\n",
		"local/override.d/worker-controller.inc": "bind_socket = \"127.0.0.1:11334\";\ncount = 1;\n",
		"local/override.d/logging.inc":           fmt.Sprintf("type = \"file\";\nfilename = \"%s/log/rspamd.log\";\nlevel = \"error\";\n", r),
		"local/local.d/options.inc":              "dns { nameserver = [\"127.0.0.1:53\"]; }\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(r, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p := s.h.start(s.name+" rspamd", s.ns, procOpts{}, "rspamd", "-f", "-u", "_rspamd", "-g", "_rspamd",
		"-c", "/etc/rspamd/rspamd.conf", "-p", filepath.Join(r, "run", "rspamd.pid"),
		"--var", "LOCAL_CONFDIR="+filepath.Join(r, "local"), "--var", "DBDIR="+filepath.Join(r, "db"),
		"--var", "RUNDIR="+filepath.Join(r, "run"), "--var", "LOGDIR="+filepath.Join(r, "log"))
	s.h.dumpOnFailure(func() {
		b, _ := os.ReadFile(filepath.Join(r, "log", "rspamd.log"))
		t.Logf("--- rspamd log (last 20 lines):\n%s", tail(string(b), 20))
	})
	// Loading its configuration and compiling its regexps takes a while on
	// a busy machine.
	waitFor(t, 4*time.Minute, "rspamd to answer /ping", func() bool {
		if p.exited() {
			t.Fatalf("rspamd exited: %v\n%s", p.err, tail(p.out.String(), 20))
		}
		out, err := inNS(s.ns, 5*time.Second, "curl", "-s", "--max-time", "2", fmt.Sprintf("http://127.0.0.1:%d/ping", rspamdPort))
		return err == nil && strings.Contains(out, "pong")
	})
	return p
}

// TestPolicy2Rspamd: the geomilter binary asks Debian's rspamd (normal
// worker, /checkv2); its score is in the trail and in X-Spam-Status.
// With rspamd stopped (SIGSTOP) messages are still accepted, each within
// the scanner's budget plus slack, and once the breaker is open without
// asking it at all.
func TestPolicy2Rspamd(t *testing.T) {
	h := newHarness(t)
	if _, err := exec.LookPath("rspamd"); err != nil {
		t.Skip("rspamd is not installed (Debian package rspamd)")
	}
	s := h.newSite("rsp", p2Client4)
	h.mustRun("ip", "-n", s.ns, "addr", "add", p2Client4+"/32", "dev", "lo")
	rsp := startRspamd(t, s)
	stopped := false
	// Registered after the harness: runs before it stops everything.
	t.Cleanup(func() {
		if stopped {
			_ = signalGroup(rsp, syscall.SIGCONT)
		}
	})
	s.startMilters(siteOpts{
		rulesFile: p2Tenants + "rules: []\n",
		policyYAML: fmt.Sprintf(`scanners:
  - type: rspamd
    address: http://127.0.0.1:%d
    budget: %s
    weight: 1
    breaker: {failures: 2, open_for: 5m}
`, rspamdPort, rspamdBudget),
	})
	s.startSinks()
	s.startPostfix(siteOpts{mainCf: map[string]string{
		"relay_domains":                "acme.example",
		"defer_transports":             "smtp relay",
		"local_header_rewrite_clients": "",
	}})
	s.waitRules("2 tenants")
	trailFile := filepath.Join(s.dir, "trail.ndjson")

	// send sends a message without Date and Message-ID (rspamd scores
	// their absence) and returns the queue id, the trail's scanner result
	// and the time the SMTP session took.
	send := func(t *testing.T, n int) (string, trail.ScannerResult, trail.Event, time.Duration) {
		t.Helper()
		sender := fmt.Sprintf("r%d@example.org", n)
		msg := "From: <" + sender + ">\r\nTo: <u@acme.example>\r\nSubject: rspamd " + strconv.Itoa(n) + "\r\n\r\nHello, rspamd.\r\n"
		start := time.Now()
		out := p2Send(s, p2Client4, sender, "u@acme.example", msg)
		took := time.Since(start)
		qid := queuedAs(out)
		if qid == "" {
			t.Fatalf("message %d not accepted; swaks:\n%s", n, out)
		}
		ev := fileEvent(t, trailFile, "policy", qid, func(ev trail.Event) bool { return ev.QueueID == qid })
		if ev.Policy == nil || len(ev.Policy.Scanners) != 1 {
			t.Fatalf("message %d: trail scanners %+v, want one", n, ev.Policy)
		}
		return qid, ev.Policy.Scanners[0], ev, took
	}

	t.Run("Scored", func(t *testing.T) {
		qid, sc, ev, took := send(t, 1)
		if sc.Error != "" || sc.Skipped != "" || sc.Name != "rspamd" {
			t.Fatalf("scanner %+v: want rspamd's answer", sc)
		}
		if sc.Score == 0 {
			t.Fatalf("rspamd scored 0 (symbols %+v): want its score for a message without Date and Message-ID", sc.Symbols)
		}
		const part = "scanner:rspamd" // weight 1: its score as it is
		if math.Abs(ev.Scores[part]-sc.Score) > 0.001 {
			t.Errorf("event scores %v: want %s = %v", ev.Scores, part, sc.Score)
		}
		hdr, _ := queuedMessage(t, s, qid)
		if v, _ := headerValue(hdr, "X-Spam-Status"); !strings.Contains(v, part) {
			t.Errorf("X-Spam-Status %q lacks %s", v, part)
		}
		t.Logf("rspamd: score %v in %.0f ms (session %s), symbols %d", sc.Score, sc.DurationMS, took.Round(time.Millisecond), len(sc.Symbols))
	})

	t.Run("StoppedCostsAtMostTheBudget", func(t *testing.T) {
		if err := signalGroup(rsp, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		stopped = true
		defer func() {
			if signalGroup(rsp, syscall.SIGCONT) == nil {
				stopped = false
			}
		}()
		// breaker.failures is 2: two messages wait out the budget, the
		// breaker opens, and later messages do not ask rspamd at all.
		slack := 5 * time.Second
		var skipped int
		for n := 2; n <= 7; n++ {
			_, sc, ev, took := send(t, n)
			t.Logf("message %d (rspamd stopped): session %s, scanner %.0f ms, error %q, skipped %q", n,
				took.Round(time.Millisecond), sc.DurationMS, sc.Error, sc.Skipped)
			if took > rspamdBudget+slack {
				t.Errorf("message %d took %s with rspamd stopped, want within its budget %s (+%s slack)", n, took, rspamdBudget, slack)
			}
			if sc.Error == "" && sc.Skipped == "" {
				t.Errorf("message %d: scanner %+v answered while stopped", n, sc)
			}
			if sc.Error != "" && !hasString(ev.Degraded, "scanner") {
				t.Errorf("message %d: degraded %v, want scanner", n, ev.Degraded)
			}
			if strings.Contains(sc.Skipped, "breaker open") {
				skipped++
			}
		}
		if skipped < 3 {
			t.Errorf("%d of 6 messages skipped rspamd with its breaker open, want at least the last 3", skipped)
		}
	})
}
