package policy_test

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	milter "github.com/emersion/go-milter"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/milters/policy"
	"github.com/geomilter/geomilter/milters/policy/dkimcheck"
	"github.com/geomilter/geomilter/shared/dnstest"
	"github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/milterrt/miltertest"
	"github.com/geomilter/geomilter/shared/resolver"
	"github.com/geomilter/geomilter/shared/rules"
	"github.com/geomilter/geomilter/shared/trail"
)

const authservID = "mx.test.example"

// fixedRules serves one snapshot.
type fixedRules struct{ s *rules.Snapshot }

func (f fixedRules) Current() *rules.Snapshot { return f.s }

// fixture is a DNS zone with SPF, DMARC and DKIM key records, a key to sign
// with, and the rules of a few tenants.
type fixture struct {
	dns     *dnstest.Server
	res     *resolver.Client
	key     crypto.Signer
	keyFile string
}

func newFixture(t *testing.T) *fixture { return newFixtureTB(t) }

func newFixtureTB(t testing.TB) *fixture {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := dkimcheck.DNSRecord(pub)
	if err != nil {
		t.Fatal(err)
	}
	txt := dkimcheck.ZoneTXT(rec)
	zones := `
example.org. 300 IN SOA ns.example.org. h.example.org. 1 3600 600 86400 300
example.org. 300 IN TXT "v=spf1 ip4:192.0.2.1 -all"
_dmarc.example.org. 300 IN TXT "v=DMARC1; p=reject"
sel._domainkey.example.org. 300 IN TXT ` + txt + `
quar.example. 300 IN SOA ns.quar.example. h.quar.example. 1 3600 600 86400 300
quar.example. 300 IN TXT "v=spf1 ip4:192.0.2.1 -all"
_dmarc.quar.example. 300 IN TXT "v=DMARC1; p=quarantine"
acme.example. 300 IN SOA ns.acme.example. h.acme.example. 1 3600 600 86400 300
sel._domainkey.acme.example. 300 IN TXT ` + txt + `
`
	srv := dnstest.Start(t, zones)
	res, err := resolver.New(resolver.Options{Servers: []string{srv.Addr()}, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	pemKey, err := dkimcheck.MarshalKeyPEM(priv)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "acme.key")
	if err := os.WriteFile(keyFile, pemKey, 0o600); err != nil {
		t.Fatal(err)
	}
	return &fixture{dns: srv, res: res, key: priv, keyFile: keyFile}
}

func (f *fixture) rules(t *testing.T) *rules.Snapshot { return f.rulesTB(t) }

func (f *fixture) rulesTB(t testing.TB) *rules.Snapshot {
	t.Helper()
	set, err := rules.Parse("rules.yaml", []byte(`
tenants:
  - {id: acme, domains: [acme.example], relay: {sasl_users: [alice]}}
  - {id: mon, domains: [mon.example]}
  - {id: tagco, domains: [tagco.example]}
  - {id: strict, domains: [strict.example]}
  - {id: spfq, domains: [spfq.example]}
  - {id: rep, domains: [rep.example]}
rules:
  - {id: mon-monitor, milter: policy, scope: "tenant:mon", match: {dmarc: [fail]}, action: allow}
  - {id: tagco-tag, milter: policy, scope: "tenant:tagco", match: {dmarc: [fail]}, action: tag}
  - {id: strict-spf, milter: policy, scope: "tenant:strict", match: {spf: [fail]}, action: reject}
  - {id: spfq-quar, milter: policy, scope: "tenant:spfq", match: {spf: [fail]}, action: quarantine}
  - {id: rep-reply, milter: policy, scope: "tenant:rep", match: {dmarc: [fail]}, action: reject, reply: "550 5.7.26 DMARC says no"}
signing:
  - {domain: acme.example, selector: sel, key_file: "`+f.keyFile+`"}
`))
	if err != nil {
		t.Fatal(err)
	}
	snap, err := rules.Compile(set)
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

func serve(t testing.TB, r resolver.Resolver, snap *rules.Snapshot, budget time.Duration) *miltertest.Server {
	t.Helper()
	reg := prometheus.NewRegistry()
	m, err := policy.NewMilter(policy.Options{
		Rules: fixedRules{snap}, DNS: r, MessageBudget: budget, Log: zerolog.Nop(), Registerer: reg,
		Settings: &policy.Settings{AuthservID: authservID, DKIM: policy.DKIMSettings{MaxSignatures: 8}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ts := miltertest.Serve(t, m, milterrt.Options{MessageDir: t.TempDir(), Registerer: reg})
	ts.Registry = reg
	return ts
}

func message(from, extra, body string) string {
	return "From: Someone <" + from + ">\r\nTo: b@acme.example\r\nSubject: hello\r\n" +
		"Date: Mon, 07 Dec 2026 03:00:00 +0000\r\nMessage-ID: <1@x>\r\n" + extra + "\r\n" + body
}

func (f *fixture) signed(t *testing.T, msg string) string { return f.signedTB(t, msg) }

func (f *fixture) signedTB(t testing.TB, msg string) string {
	t.Helper()
	v, err := dkimcheck.Sign(strings.NewReader(msg), dkimcheck.SignOptions{Domain: "example.org", Selector: "sel", Key: f.key})
	if err != nil {
		t.Fatal(err)
	}
	return dkimcheck.HeaderName + ":" + v + "\r\n" + msg
}

func peer(ip string) *miltertest.Peer {
	return &miltertest.Peer{Host: "mx.sender.example", Family: milter.FamilyInet, Port: 41000, Addr: ip, Helo: "mx.sender.example"}
}

// authRes returns the values of the Authentication-Results fields the
// milter inserted, and the indexes of those it removed.
func authRes(mods []milter.ModifyAction) (added []string, removed []uint32) {
	for _, m := range mods {
		if !strings.EqualFold(m.HeaderName, "Authentication-Results") {
			continue
		}
		switch {
		case m.Code == milter.ActInsertHeader:
			added = append(added, m.HeaderValue)
		case m.Code == milter.ActChangeHeader && m.HeaderValue == "":
			removed = append(removed, m.HeaderIndex)
		}
	}
	return added, removed
}

func TestInbound(t *testing.T) {
	f := newFixture(t)
	ts := serve(t, f.res, f.rules(t), 2*time.Second)
	body := "Hello.\r\n"
	plain := message("a@example.org", "", body)
	good := f.signed(t, plain)
	altered := strings.Replace(good, "Hello.", "Hello!", 1)
	forged := message("a@example.org", "Authentication-Results: "+authservID+"; dmarc=pass header.from=example.org\r\n"+
		"Authentication-Results: other.example; spf=pass\r\n"+
		"Authentication-Results: (comment) MX.TEST.EXAMPLE.; dkim=pass\r\n", body)

	for _, tt := range []struct {
		name   string
		ip     string
		rcpt   string
		msg    string
		reply  string   // "" accept; "quarantine"; else "CODE TEXT" prefix of the reply
		want   []string // in our A-R
		rcptRe int      // SMTP code of the recipient's reply, 0 for continue
		tagged string
	}{
		{name: "spf pass dkim pass", ip: "192.0.2.1", rcpt: "b@acme.example", msg: good,
			want: []string{"spf=pass smtp.mailfrom=example.org", "dkim=pass header.d=example.org header.s=sel", "dmarc=pass (p=reject dis=none) header.from=example.org"}},
		{name: "dkim pass spf fail", ip: "198.51.100.7", rcpt: "b@acme.example", msg: good,
			want: []string{"spf=fail", "dkim=pass", "dmarc=pass"}},
		{name: "altered", ip: "192.0.2.1", rcpt: "b@acme.example", msg: altered,
			want: []string{"spf=pass", "dkim=fail", "dmarc=pass"}},
		{name: "dmarc reject", ip: "198.51.100.7", rcpt: "b@acme.example", msg: altered, reply: "550 5.7.1 "},
		{name: "dmarc quarantine", ip: "198.51.100.7", rcpt: "b@acme.example", msg: message("a@quar.example", "", body),
			reply: "quarantine", want: []string{"spf=fail", "dkim=none", "dmarc=fail (p=quarantine dis=quarantine) header.from=quar.example"}},
		{name: "monitor only", ip: "198.51.100.7", rcpt: "b@mon.example", msg: plain,
			want: []string{"spf=fail", "dmarc=fail (p=reject dis=none)"}},
		{name: "tag", ip: "198.51.100.7", rcpt: "b@tagco.example", msg: plain,
			want: []string{"dmarc=fail (p=reject dis=none)"}, tagged: " dmarc=fail"},
		{name: "spf quarantine rule", ip: "198.51.100.7", rcpt: "b@spfq.example", msg: good,
			reply: "quarantine", want: []string{"spf=fail", "dkim=pass", "dmarc=pass"}},
		{name: "rule reply", ip: "198.51.100.7", rcpt: "b@rep.example", msg: plain, reply: "550 5.7.26 DMARC says no"},
		{name: "forged removed", ip: "192.0.2.1", rcpt: "b@acme.example", msg: forged,
			want: []string{"spf=pass", "dmarc=pass"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := ts.DialOffer(t, miltertest.PostfixActions, miltertest.PostfixProtocol)
			res := c.Send(t, miltertest.Transaction{
				Peer: peer(tt.ip), Sender: "a@" + strings.Split(strings.SplitN(tt.msg, "@", 2)[1], ">")[0],
				Rcpts: []miltertest.Rcpt{{Addr: tt.rcpt}}, Message: strings.NewReader(tt.msg),
			})
			if res.Reply == nil {
				t.Fatalf("no reply at %s", res.Stage)
			}
			quarantined := false
			var tag string
			for _, m := range res.Mods {
				if m.Code == milter.ActQuarantine {
					quarantined = true
				}
				if m.Code == milter.ActAddHeader && m.HeaderName == policy.TagHeader {
					tag = m.HeaderValue
				}
			}
			switch tt.reply {
			case "":
				if res.Reply.Code != milter.ActAccept || quarantined {
					t.Fatalf("reply %+v quarantined %v, want accept", res.Reply, quarantined)
				}
			case "quarantine":
				if !quarantined {
					t.Fatalf("not quarantined: %+v", res.Mods)
				}
			default:
				got := ""
				if res.Reply.Code == milter.ActReplyCode {
					got = itoa(res.Reply.SMTPCode) + " " + res.Reply.SMTPText
				}
				if !strings.HasPrefix(got, tt.reply) {
					t.Fatalf("reply %q, want %q…", got, tt.reply)
				}
				return
			}
			added, removed := authRes(res.Mods)
			if len(added) != 1 {
				t.Fatalf("%d Authentication-Results added, want 1: %+v", len(added), res.Mods)
			}
			ar := strings.Join(strings.Fields(added[0]), " ")
			if !strings.HasPrefix(added[0], " "+authservID+";") {
				t.Errorf("A-R %q does not start with our authserv-id", added[0])
			}
			for _, w := range tt.want {
				if !strings.Contains(ar, w) {
					t.Errorf("A-R %q lacks %q", ar, w)
				}
			}
			if tt.name == "forged removed" {
				// Ours at 1 and 3 (case and final dot ignored), last first.
				if len(removed) != 2 || removed[0] != 3 || removed[1] != 1 {
					t.Errorf("removed A-R indexes %v, want [3 1]", removed)
				}
			} else if len(removed) != 0 {
				t.Errorf("removed %v", removed)
			}
			if tag != tt.tagged {
				t.Errorf("tag header %q, want %q", tag, tt.tagged)
			}
		})
	}
	txns := ts.WaitTxns(t, 10)
	var sec *trail.PolicySection
	for i := range txns {
		if s, ok := txns[i].Section.(*trail.PolicySection); ok && s.AuthResRemoved > 0 {
			sec = s
		}
	}
	if sec == nil || sec.AuthResRemoved != 2 || len(sec.SPF) != 1 || sec.DMARC == nil || sec.DNS == nil {
		t.Errorf("trail section of the forged message: %+v", sec)
	}
	if n := ts.Counter(t, "geomilter_policy_authres_removed_total"); n != 2 {
		t.Errorf("authres_removed_total %v, want 2", n)
	}
}

// TestSPFRejectPerRecipient: a tenant that rejects SPF fail refuses its
// recipients at RCPT; the other tenant's recipient goes on.
func TestSPFRejectPerRecipient(t *testing.T) {
	f := newFixture(t)
	ts := serve(t, f.res, f.rules(t), 2*time.Second)
	c := ts.DialOffer(t, miltertest.PostfixActions, miltertest.PostfixProtocol)
	res := c.Send(t, miltertest.Transaction{
		Peer: peer("198.51.100.7"), Sender: "a@example.org",
		Rcpts:   []miltertest.Rcpt{{Addr: "b@strict.example"}, {Addr: "b@mon.example"}},
		Message: strings.NewReader(message("a@example.org", "", "x\r\n")),
	})
	if len(res.RcptReplies) != 2 || res.RcptReplies[0].Code != milter.ActReplyCode || res.RcptReplies[0].SMTPCode != 550 ||
		!strings.HasPrefix(res.RcptReplies[0].SMTPText, "5.7.23") || res.RcptReplies[1].Code != milter.ActContinue {
		t.Fatalf("rcpt replies %+v", res.RcptReplies)
	}
	if res.Reply.Code != milter.ActAccept { // mon: monitor only
		t.Fatalf("reply %+v", res.Reply)
	}
}

// TestOutboundSigned: a tenant's authenticated client gets its message
// signed, and the signature verifies.
func TestOutboundSigned(t *testing.T) {
	f := newFixture(t)
	ts := serve(t, f.res, f.rules(t), 2*time.Second)
	c := ts.DialOffer(t, miltertest.PostfixActions, miltertest.PostfixProtocol)
	msg := message("a@acme.example", "", "Signed body.\r\n")
	res := c.Send(t, miltertest.Transaction{
		Peer: peer("203.0.113.5"), Sender: "a@acme.example",
		Macros: map[milter.Code][]string{milter.CodeMail: {"{auth_authen}", "alice"}},
		Rcpts:  []miltertest.Rcpt{{Addr: "x@elsewhere.example"}}, Message: strings.NewReader(msg),
	})
	if res.Reply.Code != milter.ActAccept {
		t.Fatalf("reply %+v", res.Reply)
	}
	var sig string
	for _, m := range res.Mods {
		if m.Code == milter.ActInsertHeader && m.HeaderName == dkimcheck.HeaderName {
			sig = m.HeaderValue
		}
		if strings.EqualFold(m.HeaderName, "Authentication-Results") {
			t.Errorf("outbound mail got an A-R change: %+v", m)
		}
	}
	if sig == "" {
		t.Fatalf("no DKIM-Signature: %+v", res.Mods)
	}
	results := verify(t, f.res, dkimcheck.HeaderName+":"+strings.ReplaceAll(sig, "\n", "\r\n")+"\r\n"+msg)
	if len(results) != 1 || results[0].Result != dkimcheck.ResultPass || results[0].Domain != "acme.example" {
		t.Fatalf("verification %+v", results)
	}
	txns := ts.WaitTxns(t, 1)
	sec, _ := txns[0].Section.(*trail.PolicySection)
	if sec == nil || sec.Signed == nil || sec.Signed.Selector != "sel" || sec.Direction != "outbound" || len(sec.SPF) != 0 {
		t.Errorf("trail section %+v", sec)
	}
}

// verify runs dkimcheck's verifier over a raw message.
func verify(t *testing.T, r resolver.Resolver, raw string) []dkimcheck.Result {
	t.Helper()
	res, err := dkimcheck.VerifyMessage(context.Background(), strings.NewReader(raw), dkimcheck.VerifyOptions{LookupTXT: r.LookupTXT})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// TestDNSBlackhole: with the only DNS server dark, the message completes
// within its budget (a generous bound here; figures in the benchmark), SPF
// and DMARC are temperror and the trail says dns.
func TestDNSBlackhole(t *testing.T) {
	bh := dnstest.StartBlackhole(t)
	res, err := resolver.New(resolver.Options{Servers: []string{bh.Addr()}, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t)
	const budget = 300 * time.Millisecond
	ts := serve(t, res, f.rules(t), budget)
	c := ts.DialOffer(t, miltertest.PostfixActions, miltertest.PostfixProtocol)
	start := time.Now()
	out := c.Send(t, miltertest.Transaction{
		Peer: peer("198.51.100.7"), Sender: "a@example.org", Rcpts: []miltertest.Rcpt{{Addr: "b@acme.example"}},
		Message: strings.NewReader(f.signed(t, message("a@example.org", "", "x\r\n"))),
	})
	took := time.Since(start)
	if out.Reply.Code != milter.ActAccept {
		t.Fatalf("reply %+v", out.Reply)
	}
	if took > budget+2*time.Second {
		t.Errorf("took %v with a budget of %v", took, budget)
	}
	added, _ := authRes(out.Mods)
	if len(added) != 1 || !strings.Contains(added[0], "spf=temperror") || !strings.Contains(added[0], "dmarc=temperror") {
		t.Errorf("A-R %q", added)
	}
	txn := ts.WaitTxns(t, 1)[0]
	if len(txn.Degraded) != 1 || txn.Degraded[0] != "dns" {
		t.Errorf("degraded %v", txn.Degraded)
	}
	if n := ts.Counter(t, "geomilter_policy_dns_degraded_total"); n != 1 {
		t.Errorf("degraded_total %v", n)
	}

	// 8 sessions at once, 3 messages each, every one from a new sender
	// domain (nothing cached): none waits much past its budget.
	const sessions, each = 8, 3
	lat := make(chan time.Duration, sessions*each)
	var wg sync.WaitGroup
	for i := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := ts.DialOffer(t, miltertest.PostfixActions, miltertest.PostfixProtocol)
			for j := range each {
				dom := fmt.Sprintf("d%d-%d.example", i, j)
				start := time.Now()
				out := c.Send(t, miltertest.Transaction{
					Peer: peer("198.51.100.7"), Sender: "a@" + dom, Rcpts: []miltertest.Rcpt{{Addr: "b@acme.example"}},
					Message: strings.NewReader(message("a@"+dom, "", "x\r\n")),
				})
				lat <- time.Since(start)
				if out.Reply == nil || out.Reply.Code != milter.ActAccept {
					t.Errorf("session %d message %d: reply %+v", i, j, out.Reply)
				}
			}
		}()
	}
	wg.Wait()
	close(lat)
	var all []time.Duration
	for d := range lat {
		all = append(all, d)
	}
	slices.Sort(all)
	p99 := all[(len(all)*99+99)/100-1]
	t.Logf("dark DNS, budget %v, %d sessions: p50 %v p99 %v max %v", budget, sessions,
		all[len(all)/2].Round(time.Millisecond), p99.Round(time.Millisecond), all[len(all)-1].Round(time.Millisecond))
	if max := all[len(all)-1]; max > budget+2*time.Second {
		t.Errorf("a message took %v with a DNS budget of %v", max, budget)
	}
	if n := ts.Counter(t, "geomilter_policy_dns_degraded_total"); n != 1+sessions*each {
		t.Errorf("degraded_total %v, want %d", n, 1+sessions*each)
	}
}

func itoa(n int) string {
	return strings.TrimSpace(strings.Join([]string{string(rune('0' + n/100)), string(rune('0' + n/10%10)), string(rune('0' + n%10))}, ""))
}
