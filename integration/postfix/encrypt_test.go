package postfix

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/geomilter/geomilter/milters/encrypt/inline/inlinetest"
	"github.com/geomilter/geomilter/shared/trail"
)

// The encrypt milter (issue 17, docs/encrypt.md) with real Postfix: the
// real `geomilter encrypt` binary, Postfix with the repository's snippets
// (main.cf, master.cf with the encrypt and smtp-tls transports,
// milter_header_checks, strip_markers), real smtp-sink instances as the
// final destination (the relayhost) and as the encryption gateway, a second
// Postfix with STARTTLS as a TLS-required partner, and openssl and gpg
// opening what the milter encrypted inline.
//
// One site "enc" (10.79.0.1) runs three encrypt milters: the route-only one
// for every client, and through smtpd_milter_maps one with inline S/MIME for
// client 127.0.0.2 and one with inline PGP for 127.0.0.3. Every client is in
// the tenant's relay network, so all test mail is outbound. The partner
// "encrx" (10.79.0.2) is reached over a veth pair: first an smtp-sink without
// STARTTLS, then a Postfix smtpd with it, on the same address and port.

// encRules: tenant acme relays from loopback; card numbers are encrypted;
// bank.example gets mail over TLS only.
const encRules = `tenants:
  - id: acme
    domains: [acme.example]
    relay: {networks: [127.0.0.0/8]}
rules:
  - {id: acme-pci, milter: encrypt, scope: tenant:acme, match: {detect: [card]}, action: encrypt}
  - {id: acme-bank-tls, milter: encrypt, scope: tenant:acme, match: {rcpt_domain: [bank.example]}, action: require_tls}
`

// encMessage builds a message with LF line ends.
func encMessage(id, to, subject, body string) string {
	return "From: Alice <alice@acme.example>\n" +
		"To: " + to + "\n" +
		"Subject: " + subject + "\n" +
		"Date: Mon, 7 Dec 2026 06:00:00 +0000\n" +
		"Message-ID: " + id + "\n" +
		"MIME-Version: 1.0\n" +
		"Content-Type: text/plain; charset=us-ascii\n" +
		"\n" + body
}

const (
	encCardBody = "Hello,\n\nplease book the conference fee on our company card.\n" +
		"Card: 4111 1111 1111 1111 exp 12/29\n\nThanks, Alice\n"
	// encInvoiceBody has numbers of every kind that is not a card: invoice,
	// order and tracking numbers, phone numbers, dates, amounts.
	encInvoiceBody = "Invoice INV-2026-754771\nInvoice number: 3137341489\n" +
		"Order number: 557486074283\nCustomer number: 41051035\n" +
		"Date: 2026-11-30   Due: 2026-12-30\n\n" +
		"Item                         Qty   Unit      Total\n" +
		"Consulting services           12   157.62    1891.44\n" +
		"Licence (annual)               1   7534.52   7534.52\n" +
		"Total                                       9425.96\n\n" +
		"Tracking: 1Z 999 AA1 01 2345 6784\n" +
		"Questions? Call +1 415 555 0132 or +44 20 7946 0958.\n" +
		"Please pay within 30 days quoting reference 2192496024252557.\n"
	encSecretBody = "The salary review figures for Q3 are below.\nLine two of the secret.\n"
)

func TestEncrypt(t *testing.T) {
	h := newHarness(t)
	s := h.newSite("enc", encSiteAddr)
	rx := h.newSite("encrx", encRxAddr)
	h.link(s, rx)

	// Recipient keys: an S/MIME certificate made by openssl, an OpenPGP key
	// made by gpg. keys/acme/ is the tenant's key store.
	keys := filepath.Join(s.dir, "keys", "acme")
	if err := os.MkdirAll(keys, 0o755); err != nil {
		t.Fatal(err)
	}
	const smimeRcpt, pgpRcpt = "smime-bob@partner.example", "pgp-carol@partner.example"
	smimeKey, smimeCert := inlinetest.NewCert(t, s.dir, smimeRcpt, 2)
	gnupg, pgpPub := inlinetest.GPGHome(t, "Carol <"+pgpRcpt+">", "2d")
	cert, err := os.ReadFile(smimeCert)
	if err != nil {
		t.Fatal(err)
	}
	for file, data := range map[string][]byte{smimeRcpt + ".pem": cert, pgpRcpt + ".asc": pgpPub} {
		if err := os.WriteFile(filepath.Join(keys, file), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// The milters.
	rulesFile := filepath.Join(s.dir, "encrypt-rules.yaml")
	if err := os.WriteFile(rulesFile, []byte(encRules), 0o644); err != nil {
		t.Fatal(err)
	}
	keysDir := filepath.Dir(keys)
	route := startEncMilter(s, "route", rulesFile, "", 9503)
	smime := startEncMilter(s, "smime", rulesFile, "inline: {method: smime, keys_dir: "+keysDir+"}", 9513)
	pgp := startEncMilter(s, "pgp", rulesFile, "inline: {method: pgp, keys_dir: "+keysDir+"}", 9523)
	milters := []*encMilter{route, smime, pgp}

	// Sinks: the final destination (relayhost), the encryption gateway
	// (the encrypt transport's next hop) and the partner without STARTTLS.
	final := startEncSink(h, s.ns, s.dir, "final", fmt.Sprintf("127.0.0.1:%d", sinkPort))
	gateway := startEncSink(h, s.ns, s.dir, "gateway", fmt.Sprintf("127.0.0.1:%d", encPort))
	// smtp-sink runs as user postfix: let it bind port 25 in the partner's
	// namespace (a per-namespace sysctl).
	h.mustRun("ip", "netns", "exec", rx.ns, "sysctl", "-q", "-w", "net.ipv4.ip_unprivileged_port_start=25")
	clearSink := startEncSink(h, rx.ns, rx.dir, "partner-clear", encRxAddr+":25")

	// milter_header_checks as shipped, with the smtp-tls next hop named:
	// the test domains have no MX.
	hc := repoFile(t, "postfix/milter_header_checks")
	tlsLine := regexp.MustCompile(`(?m)^(/\^X-Geomilter-TLS:/\s+FILTER smtp-tls:)$`)
	if !tlsLine.MatchString(hc) {
		t.Fatalf("postfix/milter_header_checks has no line /^X-Geomilter-TLS:/ FILTER smtp-tls:\n%s", hc)
	}
	hc = tlsLine.ReplaceAllString(hc, "${1}["+encRxAddr+"]:25")
	hcFile := filepath.Join(s.pfEtc, "encrypt_header_checks")
	mapsFile := filepath.Join(s.pfEtc, "encrypt_milter_maps")
	files := map[string]string{
		hcFile: hc,
		mapsFile: encSMIMEClient + "/32 { unix:" + smime.sock + ", default_action=tempfail }\n" +
			encPGPClient + "/32 { unix:" + pgp.sock + ", default_action=tempfail }\n",
	}
	for f, c := range files {
		if err := os.WriteFile(f, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s.startPostfix(siteOpts{mainCf: map[string]string{
		"smtpd_milters":        "{ unix:" + route.sock + ", default_action=tempfail }",
		"non_smtpd_milters":    "",
		"smtpd_milter_maps":    "cidr:" + mapsFile,
		"milter_header_checks": "regexp:" + hcFile,
		"smtp_tls_loglevel":    "1", // logs "TLS connection established"
	}})
	h.dumpOnFailure(func() {
		for _, k := range []*encSink{final, gateway, clearSink} {
			var ids []string
			for _, d := range k.dumps() {
				ids = append(ids, encField(d.msg, "Message-ID"))
			}
			t.Logf("smtp-sink %s holds %d message(s): %v", k.name, len(ids), ids)
		}
		for _, m := range milters {
			t.Logf("--- trail of the %s milter:\n%s", m.name, tail(strings.Join(readLines(m.trail), "\n"), 10))
		}
	})

	// want: which sink got which message (checked once more at the end:
	// each exactly once, nowhere else).
	want := map[string]*encSink{}

	t.Run("SubjectTagToGateway", func(t *testing.T) {
		const id = "<enc-tag@acme.example>"
		body := "The Q3 figures are attached.\n"
		qid := encSend(t, s, "127.0.0.1", "alice@acme.example", []string{"dave@partner.example"},
			encMessage(id, "<dave@partner.example>", "[secure] Q3 figures", body))
		want[id] = gateway
		d := encArrival(t, id, gateway, final, gateway)
		if got := encField(d.msg, "Subject"); got != "Q3 figures" {
			t.Errorf("Subject at the gateway = %q, want %q (the tag removed)", got, "Q3 figures")
		}
		if v := encFields(d.msg, "X-Geomilter-Encrypt"); len(v) != 0 {
			t.Errorf("the gateway got the routing marker: %q", v)
		}
		if got := encBody(d.msg); got != body {
			t.Errorf("body at the gateway = %q, want %q", got, body)
		}
		if l := encLogLines(s, qid, "milter-header-filter: header X-Geomilter-Encrypt: subject_tag"); len(l) != 1 {
			t.Errorf("maillog: %d milter-header-filter lines with X-Geomilter-Encrypt: subject_tag for %s, want 1", len(l), qid)
		}
		checkEncDeliveries(t, s, qid, "encrypt", fmt.Sprintf("127.0.0.1[127.0.0.1]:%d", encPort), 1)
		if n := len(final.withMessageID(id)); n != 0 {
			t.Errorf("the final destination got the tagged message %d time(s)", n)
		}
	})

	t.Run("CardNumberToGateway", func(t *testing.T) {
		const id = "<enc-card@acme.example>"
		qid := encSend(t, s, "127.0.0.1", "alice@acme.example", []string{"events@venue.example"},
			encMessage(id, "<events@venue.example>", "conference booking", encCardBody))
		want[id] = gateway
		d := encArrival(t, id, gateway, final, gateway)
		if v := encFields(d.msg, "X-Geomilter-Encrypt"); len(v) != 0 {
			t.Errorf("the gateway got the routing marker: %q", v)
		}
		if got := encField(d.msg, "Subject"); got != "conference booking" {
			t.Errorf("Subject at the gateway = %q, want it unchanged", got)
		}
		if got := encBody(d.msg); got != encCardBody {
			t.Errorf("body at the gateway = %q, want %q (the gateway encrypts, the milter only routes)", got, encCardBody)
		}
		if l := encLogLines(s, qid, "milter-header-filter: header X-Geomilter-Encrypt: "); len(l) != 1 || !strings.Contains(l[0], "detector=card") {
			t.Errorf("maillog: want one milter-header-filter line with detector=card for %s, got %q", qid, l)
		}
		checkEncDeliveries(t, s, qid, "encrypt", fmt.Sprintf("127.0.0.1[127.0.0.1]:%d", encPort), 1)
		// The trail says which detector fired and how often, never the number.
		e := encEvent(t, route, qid).Encrypt
		sec := fmt.Sprintf("%+v", *e)
		if len(e.Triggers) != 1 || e.Triggers[0] != (trail.EncryptTrigger{Kind: "detector", RuleID: "acme-pci", Detector: "card", Count: 1}) || e.Action != "route" {
			t.Errorf("trail: %s; want one trigger detector=card count 1 of rule acme-pci, action route", sec)
		}
		t.Logf("trail: %s", sec)
		if n := len(final.withMessageID(id)); n != 0 {
			t.Errorf("the final destination got the card message %d time(s)", n)
		}
	})

	t.Run("NoTriggerUnmodified", func(t *testing.T) {
		const id = "<enc-invoice@acme.example>"
		sent := encMessage(id, "<accounts@customer.example>", "Invoice INV-2026-754771", encInvoiceBody)
		qid := encSend(t, s, "127.0.0.1", "alice@acme.example", []string{"accounts@customer.example"}, sent)
		want[id] = final
		d := encArrival(t, id, final, final, gateway)
		// Postfix's own Received: field, then the message exactly as sent.
		if got := encBody(d.msg); got != encInvoiceBody {
			t.Errorf("body at the final destination differs from the body sent:\n got %q\nwant %q", got, encInvoiceBody)
		}
		rest, ok := strings.CutPrefix(string(d.msg), "Received: ")
		if i := strings.Index(rest, "\nFrom: "); !ok || i < 0 || rest[i+1:] != sent {
			t.Errorf("delivered message is not Postfix's Received: field + the message as sent:\n%s", d.msg)
		}
		checkEncDeliveries(t, s, qid, "smtp", fmt.Sprintf("127.0.0.1[127.0.0.1]:%d", sinkPort), 1)
		if n := len(gateway.withMessageID(id)); n != 0 {
			t.Errorf("the gateway got the invoice %d time(s)", n)
		}
	})

	t.Run("RequireTLS", func(t *testing.T) {
		const id = "<enc-tls@acme.example>"
		body := "Statement for November.\n"
		qid := encSend(t, s, "127.0.0.1", "alice@acme.example", []string{"frank@bank.example"},
			encMessage(id, "<frank@bank.example>", "statement", body))
		want[id] = nil // checked at the partner's Postfix below
		// The partner offers no STARTTLS: deferred, never sent in clear.
		var ds []encDelivery
		waitFor(t, 45*time.Second, "a deferred smtp-tls delivery of "+qid, func() bool {
			ds = encDeliveries(s, qid)
			return len(ds) > 0
		})
		rxRelay := encRxAddr + "[" + encRxAddr + "]:25"
		if d := ds[0]; d.transport != "smtp-tls" || d.relay != rxRelay || d.status != "deferred" || !strings.Contains(d.text, "TLS is required") {
			t.Fatalf("first delivery attempt: %+v; want smtp-tls to %s deferred with \"TLS is required\"", d, rxRelay)
		}
		t.Logf("deferred: %s", ds[0].text)
		if l := encLogLines(s, qid, "milter-header-filter: header X-Geomilter-TLS: required"); len(l) != 1 {
			t.Errorf("maillog: %d milter-header-filter lines with X-Geomilter-TLS for %s, want 1", len(l), qid)
		}
		time.Sleep(time.Second) // a clear delivery would have shown by now
		if n := clearSink.count.Load(); n != 0 || len(clearSink.dumps()) != 0 {
			t.Fatalf("the partner without STARTTLS received %d message(s) in clear", n)
		}
		for _, k := range []*encSink{final, gateway} {
			if n := len(k.withMessageID(id)); n != 0 {
				t.Fatalf("smtp-sink %s got the TLS-only message", k.name)
			}
		}

		// The same address now answered by Postfix with STARTTLS, which
		// keeps what it receives in its queue (read with postcat).
		clearSink.proc.stop(5 * time.Second)
		rx.startPostfix(siteOpts{tls: true, mainCf: map[string]string{
			"smtpd_milters":             "",
			"non_smtpd_milters":         "",
			"mynetworks":                "127.0.0.0/8, 10.79.0.0/24",
			"defer_transports":          "smtp relay",
			"smtpd_tls_received_header": "yes",
		}})
		if out, err := inNS(s.ns, 20*time.Second, "postqueue", "-c", s.pfEtc, "-f"); err != nil {
			t.Fatalf("postqueue -f: %v\n%s", err, out)
		}
		var sent encDelivery
		waitFor(t, 60*time.Second, "the smtp-tls delivery of "+qid+" to the STARTTLS partner", func() bool {
			for _, d := range encDeliveries(s, qid) {
				if d.status == "sent" {
					sent = d
					return true
				}
			}
			return false
		})
		if sent.transport != "smtp-tls" || sent.relay != rxRelay {
			t.Fatalf("delivered by %s to %s, want smtp-tls to %s", sent.transport, sent.relay, rxRelay)
		}
		tlsUp := false
		for _, l := range readLines(s.maillog) {
			tlsUp = tlsUp || strings.Contains(l, "postfix/smtp-tls/smtp[") && strings.Contains(l, "TLS connection established to "+rxRelay)
		}
		if !tlsUp {
			t.Errorf("sending maillog: no smtp-tls \"TLS connection established to %s\"", rxRelay)
		}
		m := regexp.MustCompile(`queued as ([0-9A-F]+)`).FindStringSubmatch(sent.text)
		if m == nil {
			t.Fatalf("no partner queue id in %q", sent.text)
		}
		hdr, raw := queuedMessage(t, rx, m[1])
		for _, f := range hdr {
			if strings.HasPrefix(strings.ToLower(f[0]), "x-geomilter") {
				t.Errorf("the partner got %s:%s", f[0], f[1])
			}
		}
		if !strings.EqualFold(hdr[0][0], "Received") || !strings.Contains(hdr[0][1], "with ESMTPS") || !strings.Contains(hdr[0][1], "using TLS") {
			t.Errorf("partner's Received: field does not show TLS: %q", hdr[0][1])
		}
		if !strings.Contains(raw, "\r\n\r\n"+strings.ReplaceAll(body, "\n", "\r\n")) {
			t.Errorf("partner's copy lacks the body: %q", raw)
		}
		for _, k := range []*encSink{final, gateway} {
			if n := len(k.withMessageID(id)); n != 0 {
				t.Errorf("smtp-sink %s got the TLS-only message", k.name)
			}
		}
	})

	t.Run("InlineSMIME", func(t *testing.T) {
		const id = "<enc-smime@acme.example>"
		qid := encSend(t, s, encSMIMEClient, "alice@acme.example", []string{smimeRcpt},
			encMessage(id, "<"+smimeRcpt+">", "[secure] salary review", encSecretBody))
		want[id] = final
		if e := encEvent(t, smime, qid).Encrypt; e.Action != "inline" || e.Route != "smime" {
			t.Fatalf("the smime milter did not encrypt inline: action %q route %q fallback %q", e.Action, e.Route, e.Fallback)
		}
		d := encArrival(t, id, final, final, gateway)
		if got := encField(d.msg, "Subject"); got != "salary review" {
			t.Errorf("Subject = %q, want %q", got, "salary review")
		}
		if ct := encField(d.msg, "Content-Type"); !strings.HasPrefix(ct, "application/pkcs7-mime") || !strings.Contains(ct, "enveloped-data") {
			t.Errorf("Content-Type = %q, want application/pkcs7-mime; smime-type=enveloped-data", ct)
		}
		if strings.Contains(string(d.msg), "salary review figures") || len(encFields(d.msg, "X-Geomilter-Encrypt")) != 0 {
			t.Fatalf("delivered message holds the text in clear or the marker:\n%s", d.msg)
		}
		in := filepath.Join(s.dir, "smime.eml")
		if err := os.WriteFile(in, d.msg, 0o600); err != nil {
			t.Fatal(err)
		}
		plain := inlinetest.SMIMEDecrypt(t, in, smimeKey, smimeCert)
		if got := encBody([]byte(strings.ReplaceAll(string(plain), "\r\n", "\n"))); got != encSecretBody {
			t.Errorf("openssl smime -decrypt gave\n%q\nwant the body\n%q", plain, encSecretBody)
		}
		t.Logf("openssl smime -decrypt: %q", plain)
		checkEncDeliveries(t, s, qid, "smtp", fmt.Sprintf("127.0.0.1[127.0.0.1]:%d", sinkPort), 1)
	})

	t.Run("InlinePGP", func(t *testing.T) {
		const id = "<enc-pgp@acme.example>"
		qid := encSend(t, s, encPGPClient, "alice@acme.example", []string{pgpRcpt},
			encMessage(id, "<"+pgpRcpt+">", "[secure] salary review", encSecretBody))
		want[id] = final
		if e := encEvent(t, pgp, qid).Encrypt; e.Action != "inline" || e.Route != "pgp" {
			t.Fatalf("the pgp milter did not encrypt inline: action %q route %q fallback %q", e.Action, e.Route, e.Fallback)
		}
		d := encArrival(t, id, final, final, gateway)
		if ct := encField(d.msg, "Content-Type"); !strings.HasPrefix(ct, "multipart/encrypted") || !strings.Contains(ct, "application/pgp-encrypted") {
			t.Errorf("Content-Type = %q, want multipart/encrypted; protocol=\"application/pgp-encrypted\"", ct)
		}
		if strings.Contains(string(d.msg), "salary review figures") || len(encFields(d.msg, "X-Geomilter-Encrypt")) != 0 {
			t.Fatalf("delivered message holds the text in clear or the marker:\n%s", d.msg)
		}
		armor := regexp.MustCompile(`(?s)-----BEGIN PGP MESSAGE-----.*?-----END PGP MESSAGE-----\n`).Find(d.msg)
		if armor == nil {
			t.Fatalf("no armored PGP message in\n%s", d.msg)
		}
		plain := inlinetest.PGPDecrypt(t, gnupg, armor)
		if got := encBody([]byte(strings.ReplaceAll(string(plain), "\r\n", "\n"))); got != encSecretBody {
			t.Errorf("gpg --decrypt gave\n%q\nwant the body\n%q", plain, encSecretBody)
		}
		t.Logf("gpg --decrypt: %q", plain)
		checkEncDeliveries(t, s, qid, "smtp", fmt.Sprintf("127.0.0.1[127.0.0.1]:%d", sinkPort), 1)
	})

	t.Run("InlineMissingKeyRoutes", func(t *testing.T) {
		for _, c := range []struct {
			m          *encMilter
			client, id string
			rcpts      []string
		}{
			{smime, encSMIMEClient, "<enc-smime-nokey@acme.example>", []string{smimeRcpt, "nokey@partner.example"}},
			{pgp, encPGPClient, "<enc-pgp-nokey@acme.example>", []string{"nokey@partner.example"}},
		} {
			qid := encSend(t, s, c.client, "alice@acme.example", c.rcpts,
				encMessage(c.id, "<"+strings.Join(c.rcpts, ">, <")+">", "[secure] salary review", encSecretBody))
			want[c.id] = gateway
			if e := encEvent(t, c.m, qid).Encrypt; e.Action != "route" || e.Fallback != "no_key" {
				t.Errorf("%s: trail action %q fallback %q, want route and no_key", c.m.name, e.Action, e.Fallback)
			}
			d := encArrival(t, c.id, gateway, final, gateway)
			if got := encBody(d.msg); got != encSecretBody {
				t.Errorf("%s: the gateway got body %q, want the original (the gateway encrypts)", c.m.name, got)
			}
			if got := encField(d.msg, "Subject"); got != "salary review" {
				t.Errorf("%s: Subject at the gateway = %q", c.m.name, got)
			}
			if len(encFields(d.msg, "X-Geomilter-Encrypt")) != 0 {
				t.Errorf("%s: the gateway got the routing marker", c.m.name)
			}
			checkEncDeliveries(t, s, qid, "encrypt", fmt.Sprintf("127.0.0.1[127.0.0.1]:%d", encPort), len(c.rcpts))
		}
	})

	// Every message at exactly the sink it was meant for, once.
	time.Sleep(500 * time.Millisecond)
	for id, k := range want {
		for _, other := range []*encSink{final, gateway, clearSink} {
			n := len(other.withMessageID(id))
			if other == k && n != 1 {
				t.Errorf("smtp-sink %s got %s %d times, want once", other.name, id, n)
			}
			if other != k && n != 0 {
				t.Errorf("smtp-sink %s got %s %d time(s), want never", other.name, id, n)
			}
		}
	}
	// Content is never logged: no card number in a trail or a milter's log.
	// The whole number, in any spacing: "4111" alone turns up in queue ids.
	pan := regexp.MustCompile(`4111[ -]?1111[ -]?1111[ -]?1111`)
	for _, m := range milters {
		b, _ := os.ReadFile(m.trail)
		for _, where := range []struct{ name, text string }{{"trail", string(b)}, {"log", m.proc.out.String()}} {
			if pan.MatchString(where.text) || strings.Contains(where.text, "salary review figures") {
				t.Errorf("the %s milter's %s holds message content", m.name, where.name)
			}
		}
	}
}

// checkEncDeliveries checks that qid was delivered to n recipients, each by
// transport to relay, and never attempted elsewhere.
func checkEncDeliveries(t *testing.T, s *site, qid, transport, relay string, n int) {
	t.Helper()
	var ds []encDelivery
	waitFor(t, 20*time.Second, fmt.Sprintf("%d delivery line(s) of %s", n, qid), func() bool {
		ds = encDeliveries(s, qid)
		return len(ds) >= n
	})
	if len(ds) != n {
		t.Errorf("%s: %d delivery attempts, want %d: %+v", qid, len(ds), n, ds)
	}
	for _, d := range ds {
		if d.transport != transport || d.relay != relay || d.status != "sent" {
			t.Errorf("%s: delivery %+v, want %s to %s sent", qid, d, transport, relay)
		}
	}
}
