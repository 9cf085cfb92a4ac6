package postfix

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/milters/policy"
	"github.com/geomilter/geomilter/milters/policy/dkimcheck"
	"github.com/geomilter/geomilter/shared/config"
	"github.com/geomilter/geomilter/shared/dnstest"
	"github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/resolver"
	"github.com/geomilter/geomilter/shared/rules"
	"github.com/geomilter/geomilter/shared/service"
)

// The policy milter with real Postfix (docs/policy.md): inbound mail gets
// exactly one Authentication-Results field with the right results and a
// forged one is gone; outbound mail of a tenant is signed, and the
// signature verifies (dkimcheck's verifier, and dkimpy when installed).
//
// The milter runs in the test process, as the milter of exact_test.go,
// built by policy.New from a config and an Env whose resolver asks an
// in-process DNS server (shared/dnstest) — the namespace's Postfix reaches
// the milter's unix socket; the milter reaches the DNS server on the
// host's loopback. The site's loopback also carries 10.78.0.1 (the inbound
// client: SPF does not judge loopback addresses) and 10.78.0.2 (the
// tenant's relay). Delivery is deferred (defer_transports), so the queue
// file, read with postcat, shows the message as Postfix stored it.

const (
	polInbound  = "10.78.0.1"
	polRelay    = "10.78.0.2"
	polAuthserv = "mx1.pol.test"
)

// policyRulesView serves one snapshot.
type policyRulesView struct{ s *rules.Snapshot }

func (v policyRulesView) Current() *rules.Snapshot { return v.s }

func TestPolicyMilter(t *testing.T) {
	h := newHarness(t)
	s := h.newSite("pol", polInbound)
	for _, a := range []string{polInbound, polRelay} {
		h.mustRun("ip", "-n", s.ns, "addr", "add", a+"/32", "dev", "lo")
	}

	// DNS: SPF and DMARC of the inbound sender's domain, the DKIM keys.
	priv, rec := newDKIMKey(t)
	dns := dnstest.Start(t, `
example.org. 300 IN SOA ns.example.org. h.example.org. 1 3600 600 86400 300
example.org. 300 IN TXT "v=spf1 ip4:`+polInbound+` -all"
_dmarc.example.org. 300 IN TXT "v=DMARC1; p=reject"
sel._domainkey.example.org. 300 IN TXT `+dkimcheck.ZoneTXT(rec)+`
acme.example. 300 IN SOA ns.acme.example. h.acme.example. 1 3600 600 86400 300
sel._domainkey.acme.example. 300 IN TXT `+dkimcheck.ZoneTXT(rec)+`
`)
	res, err := resolver.New(resolver.Options{Servers: []string{dns.Addr()}, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}

	// Rules: tenant acme relays from polRelay and signs acme.example.
	keyPEM, err := dkimcheck.MarshalKeyPEM(priv)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(s.dir, "acme.key")
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	set, err := rules.Parse("rules.yaml", []byte(`
tenants:
  - {id: acme, domains: [acme.example], relay: {networks: [`+polRelay+`/32]}}
signing:
  - {domain: acme.example, selector: sel, key_file: "`+keyFile+`"}
`))
	if err != nil {
		t.Fatal(err)
	}
	snap, err := rules.Compile(set)
	if err != nil {
		t.Fatal(err)
	}

	// The milter, from a config as the process builds it.
	sock := filepath.Join(s.sockDir, "policy.sock")
	cfg, err := config.Parse("geomilter.yaml", []byte("site: pol\nhost: mx1\nrules_file: /r.yaml\nstate_dir: /s\nspool_dir: /q\n"+
		"dns: {servers: [\""+dns.Addr()+"\"], message_budget: 2s}\n"+
		"milters: {policy: {listen: \"unix:"+sock+"\", authserv_id: "+polAuthserv+"}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	env := service.NewEnv(policy.Name, cfg, zerolog.Nop(), policyRulesView{snap})
	env.Resolver = res
	m, err := policy.New(env)
	if err != nil {
		t.Fatal(err)
	}
	servePolicy(t, m, sock)

	s.startPostfix(siteOpts{mainCf: map[string]string{
		"smtpd_milters":     "{ unix:" + sock + ", default_action=tempfail }",
		"non_smtpd_milters": "",
		"mynetworks":        "127.0.0.0/8, 10.78.0.0/24",
		// Keep every message in the queue, as Postfix stored it.
		"defer_transports":             "smtp relay",
		"local_header_rewrite_clients": "",
	}})

	t.Run("Inbound", func(t *testing.T) {
		body := "Hello from example.org.\r\n"
		msg := "From: Alice <a@example.org>\r\nTo: <b@acme.example>\r\nSubject: inbound\r\n" +
			"Date: Mon, 7 Dec 2026 03:00:00 +0000\r\nMessage-ID: <pol-in-1@example.org>\r\n\r\n" + body
		sig, err := dkimcheck.Sign(strings.NewReader(msg), dkimcheck.SignOptions{Domain: "example.org", Selector: "sel", Key: priv})
		if err != nil {
			t.Fatal(err)
		}
		// Two forged A-R fields with our id (in another case, with a
		// comment and a final dot), a foreign one between them: removed by
		// their per-name index, the last first.
		data := "Authentication-Results: MX1.pol.test; dkim=pass header.d=example.org\r\n" +
			"Authentication-Results: relay.example.net; spf=pass smtp.mailfrom=example.org\r\n" +
			"Authentication-Results: (forged) mx1.pol.test.; dmarc=pass header.from=example.org\r\n" +
			dkimcheck.HeaderName + ":" + sig + "\r\n" + msg
		qid := sendPolicy(t, s, polInbound, "a@example.org", "b@acme.example", data)
		hdr, _ := queuedMessage(t, s, qid)
		var ours, foreign int
		var ar string
		for _, f := range hdr {
			if !strings.EqualFold(f[0], "Authentication-Results") {
				continue
			}
			v := strings.Join(strings.Fields(f[1]), " ")
			switch {
			case strings.HasPrefix(strings.ToLower(v), polAuthserv+";"):
				ours++
				ar = v
			case strings.HasPrefix(v, "relay.example.net;"):
				foreign++
			default:
				t.Errorf("unexpected Authentication-Results: %q", v)
			}
		}
		if ours != 1 || foreign != 1 {
			t.Fatalf("our A-R fields %d (want 1), foreign %d (want 1); header:\n%q", ours, foreign, hdr)
		}
		for _, w := range []string{"spf=pass smtp.mailfrom=example.org", "dkim=pass header.d=example.org header.s=sel", "dmarc=pass (p=reject dis=none) header.from=example.org"} {
			if !strings.Contains(ar, w) {
				t.Errorf("A-R %q lacks %q", ar, w)
			}
		}
		if !strings.EqualFold(hdr[0][0], "Authentication-Results") {
			t.Errorf("first field is %s, want our Authentication-Results on top", hdr[0][0])
		}
		t.Logf("stored: Authentication-Results: %s", ar)
	})

	t.Run("OutboundSigned", func(t *testing.T) {
		msg := "From: Bob <bob@acme.example>\r\nTo: <x@elsewhere.example>\r\nSubject: outbound\r\n" +
			"Date: Mon, 7 Dec 2026 03:00:00 +0000\r\nMessage-ID: <pol-out-1@acme.example>\r\n\r\nSigned by the milter.\r\n"
		qid := sendPolicy(t, s, polRelay, "bob@acme.example", "x@elsewhere.example", msg)
		hdr, raw := queuedMessage(t, s, qid)
		n := 0
		for _, f := range hdr {
			if strings.EqualFold(f[0], dkimcheck.HeaderName) {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("%d DKIM-Signature fields, want 1; header:\n%q", n, hdr)
		}
		results := verifyRaw(t, res, raw)
		if len(results) != 1 || results[0].Result != dkimcheck.ResultPass || results[0].Domain != "acme.example" || results[0].Selector != "sel" {
			t.Fatalf("dkimcheck verification of the stored message: %+v", results)
		}
		// An independent implementation, when installed (python3-dkim).
		if err := exec.Command("python3", "-c", "import dkim").Run(); err != nil {
			t.Logf("python3-dkim not installed: signature checked with dkimcheck only")
			return
		}
		py := `import dkim, os, sys
rec = os.environ["GM_DKIM_RECORD"].encode()
ok = dkim.verify(sys.stdin.buffer.read(), dnsfunc=lambda name, timeout=5: rec)
print("pass" if ok else "fail")`
		cmd := exec.Command("python3", "-c", py)
		cmd.Env = append(os.Environ(), "GM_DKIM_RECORD="+rec)
		cmd.Stdin = strings.NewReader(raw)
		out, err := cmd.CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "pass" {
			t.Fatalf("dkimpy: %v: %s", err, out)
		}
		t.Logf("dkimpy verifies the signature")
	})
}

// servePolicy serves m on a unix socket Postfix (user postfix) can reach,
// until the test ends.
func servePolicy(t *testing.T, m milterrt.Milter, path string) {
	t.Helper()
	serveForPostfix(t, m, path, milterrt.Options{})
}

// sendPolicy sends data with swaks from the client address and returns
// the queue id.
func sendPolicy(t *testing.T, s *site, from, sender, rcpt, data string) string {
	t.Helper()
	file := filepath.Join(s.dir, "msg-"+strings.ReplaceAll(from, ".", "-")+".eml")
	if err := os.WriteFile(file, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	out := swaksAt(s.ns, polInbound+":25", "client.pol.test", "--local-interface", from, "--from", sender, "--to", rcpt, "--data", "@"+file)
	qid := queuedAs(out)
	if qid == "" {
		t.Fatalf("not queued; swaks:\n%s", out)
	}
	return qid
}

// queuedMessage reads a queued message with postcat: its header fields
// (name, unfolded value) and the whole message with CRLF line ends.
func queuedMessage(t *testing.T, s *site, qid string) ([][2]string, string) {
	t.Helper()
	var out string
	waitFor(t, 20*time.Second, "postcat of "+qid, func() bool {
		var err error
		out, err = inNS(s.ns, 20*time.Second, "postcat", "-c", s.pfEtc, "-h", "-b", "-q", qid)
		return err == nil && strings.Contains(out, "\n\n")
	})
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "*** ") {
			continue // postcat's section markers
		}
		lines = append(lines, l)
	}
	raw := strings.Join(lines, "\r\n")
	head, _, _ := strings.Cut(raw, "\r\n\r\n")
	var fields [][2]string
	for _, l := range strings.Split(head, "\r\n") {
		if (strings.HasPrefix(l, " ") || strings.HasPrefix(l, "\t")) && len(fields) > 0 {
			fields[len(fields)-1][1] += l
			continue
		}
		name, value, _ := strings.Cut(l, ":")
		fields = append(fields, [2]string{name, value})
	}
	return fields, raw
}

// verifyRaw runs dkimcheck's verifier over a raw message.
func verifyRaw(t *testing.T, r resolver.Resolver, raw string) []dkimcheck.Result {
	t.Helper()
	res, err := dkimcheck.VerifyMessage(context.Background(), strings.NewReader(raw), dkimcheck.VerifyOptions{LookupTXT: r.LookupTXT})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// newDKIMKey is an ed25519 signing key and its DKIM key record (RFC 8463),
// for the test zones.
func newDKIMKey(t testing.TB) (ed25519.PrivateKey, string) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := dkimcheck.DNSRecord(pub)
	if err != nil {
		t.Fatal(err)
	}
	return priv, rec
}
