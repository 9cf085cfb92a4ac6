package encrypt_test

import (
	"bytes"
	"encoding/base64"
	"io"
	"mime"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	milter "github.com/emersion/go-milter"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/milters/encrypt"
	"github.com/geomilter/geomilter/milters/encrypt/inline/inlinetest"
	"github.com/geomilter/geomilter/shared/config"
	"github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/milterrt/miltertest"
	"github.com/geomilter/geomilter/shared/rules"
	"github.com/geomilter/geomilter/shared/service"
	"github.com/geomilter/geomilter/shared/trail"
)

type fixedRules struct{ s *rules.Snapshot }

func (f fixedRules) Current() *rules.Snapshot { return f.s }

// The tenant acme relays from 198.51.100.0/24: mail from there is
// outbound; from anywhere else inbound.
const tenants = `
tenants:
  - id: acme
    domains: [acme.example]
    relay: {networks: [198.51.100.0/24]}
`

const (
	relayIP    = "198.51.100.7"
	strangerIP = "203.0.113.9"
)

type harness struct {
	srv *miltertest.Server
	dir string
}

// newHarness serves the encrypt milter with the rules (after the tenants)
// and the milters.encrypt options (YAML flow mapping entries, may be "").
func newHarness(t testing.TB, rulesYAML, options string) *harness {
	t.Helper()
	dir := t.TempDir()
	opts := ""
	if options != "" {
		opts = ", " + options
	}
	cfg, err := config.Parse("e.yaml", []byte("site: lax\nhost: mx1.lax.example\nrules_file: /r.yaml\nstate_dir: "+dir+
		"\nspool_dir: "+dir+"/spool\nmilters: {encrypt: {listen: \"unix:"+dir+"/e.sock\", message_dir: "+dir+"/messages"+opts+"}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	set, err := rules.Parse("rules.yaml", []byte(tenants+rulesYAML))
	if err != nil {
		t.Fatal(err)
	}
	snap, err := rules.Compile(set)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "messages"), 0o700); err != nil {
		t.Fatal(err)
	}
	env := service.NewEnv(encrypt.Name, cfg, zerolog.Nop(), fixedRules{snap})
	reg := prometheus.NewRegistry() // the milter's and the runtime's metrics, for Server.Counter
	env.Registry = reg
	m, err := encrypt.New(env)
	if err != nil {
		t.Fatal(err)
	}
	srv := miltertest.Serve(t, m, milterrt.Options{MessageDir: filepath.Join(dir, "messages"), MessageMemory: 4096, Registerer: reg})
	srv.Registry = reg
	return &harness{srv: srv, dir: dir}
}

// send drives one transaction from ip with the raw message.
func (h *harness) send(t testing.TB, ip, msg string, rcpts ...string) miltertest.Result {
	t.Helper()
	c := h.srv.DialOffer(t, miltertest.PostfixActions, miltertest.PostfixProtocol)
	defer c.Close()
	tx := miltertest.Transaction{
		Peer:    &miltertest.Peer{Host: "client.example", Family: milter.FamilyInet, Port: 4567, Addr: ip, Helo: "client.example"},
		Sender:  "alice@acme.example",
		Macros:  map[milter.Code][]string{milter.CodeEOB: {"i", "4XyZ1"}},
		Message: strings.NewReader(msg),
	}
	if len(rcpts) == 0 {
		rcpts = []string{"bob@partner.example"}
	}
	for _, r := range rcpts {
		tx.Rcpts = append(tx.Rcpts, miltertest.Rcpt{Addr: r})
	}
	return c.Send(t, tx)
}

// section is the trail section of the n-th transaction (1-based).
func (h *harness) section(t *testing.T, n int) *trail.EncryptSection {
	t.Helper()
	txns := h.srv.WaitTxns(t, n)
	sec, ok := txns[n-1].Section.(*trail.EncryptSection)
	if !ok {
		t.Fatalf("section %T", txns[n-1].Section)
	}
	return sec
}

func message(subject, body string, extra ...string) string {
	h := "From: Alice <alice@acme.example>\r\nTo: Bob <bob@partner.example>\r\n"
	if subject != "" {
		h += "Subject: " + subject + "\r\n"
	}
	for _, e := range extra {
		h += e + "\r\n"
	}
	return h + "Message-ID: <m1@acme.example>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + body
}

// mods renders the modifications as lines: "add NAME: VALUE",
// "change NAME[i]: VALUE", "delete NAME[i]", "body N bytes".
func mods(res miltertest.Result) []string {
	var out []string
	body := 0
	for _, m := range res.Mods {
		switch m.Code {
		case milter.ActAddHeader:
			out = append(out, "add "+m.HeaderName+":"+m.HeaderValue)
		case milter.ActInsertHeader:
			out = append(out, "insert "+m.HeaderName+":"+m.HeaderValue)
		case milter.ActChangeHeader:
			if m.HeaderValue == "" {
				out = append(out, "delete "+m.HeaderName+"["+strconv.Itoa(int(m.HeaderIndex))+"]")
			} else {
				out = append(out, "change "+m.HeaderName+"["+strconv.Itoa(int(m.HeaderIndex))+"]:"+m.HeaderValue)
			}
		case milter.ActReplBody:
			body += len(m.Body)
		default:
			out = append(out, "other "+string(rune(m.Code)))
		}
	}
	if body > 0 {
		out = append(out, "body "+strconv.Itoa(body)+" bytes")
	}
	return out
}

func accepted(t testing.TB, res miltertest.Result) {
	t.Helper()
	if res.Reply == nil || res.Reply.Code != milter.ActAccept {
		t.Fatalf("reply %s, want accept", res)
	}
}

func same(t *testing.T, what string, got, want []string) {
	t.Helper()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("%s:\n got %q\nwant %q", what, got, want)
	}
}

// TestSubjectTags: a tag anywhere in an outbound subject, any case, plain
// or RFC 2047 encoded, is removed and the message is marked for the
// gateway; several tags go together.
func TestSubjectTags(t *testing.T) {
	h := newHarness(t, "", "")
	b64 := func(s string) string { return "=?UTF-8?B?" + base64.StdEncoding.EncodeToString([]byte(s)) + "?=" }
	for i, tt := range []struct {
		subject string
		want    string // the new raw value; "" deletes
		tags    int
	}{
		{"[secure] Quarterly figures", " Quarterly figures", 1},
		{"Quarterly figures [SECURE]", " Quarterly figures", 1},
		{"Re: [Secure]  Quarterly [encrypt] figures", " Re: Quarterly figures", 2},
		{b64("[secure] Grüße aus Zürich"), " " + mime.BEncoding.Encode("UTF-8", "Grüße aus Zürich"), 1},
		{"=?utf-8?q?=5Bsecure=5D_Gr=C3=BC=C3=9Fe?=", " " + mime.QEncoding.Encode("UTF-8", "Grüße"), 1},
		{b64("[secure] plain now"), " plain now", 1}, // nothing left to encode
		{"[secure]", "", 1}, // nothing left: the field goes
	} {
		res := h.send(t, relayIP, message(tt.subject, "Hello\r\n"))
		accepted(t, res)
		change := "change Subject[1]:" + tt.want
		if tt.want == "" {
			change = "delete Subject[1]"
		}
		same(t, tt.subject, mods(res), []string{change, "add X-Geomilter-Encrypt: subject_tag"})
		sec := h.section(t, i+1)
		if sec.Trigger != "subject_tag" || sec.Action != "route" || sec.Route != "encrypt" || sec.TagsRemoved != tt.tags ||
			len(sec.Triggers) != 1 || sec.Triggers[0].Count != tt.tags || sec.Direction != "outbound" || sec.Tenant != "acme" {
			t.Errorf("%q: section %+v", tt.subject, sec)
		}
	}
}

// TestNoTrigger: ordinary mail, outbound or inbound, is not modified; an
// inbound message with a tag and a card number is left alone too.
func TestNoTrigger(t *testing.T) {
	h := newHarness(t, `
rules:
  - {id: cards, milter: encrypt, scope: global, match: {detect: [card]}, action: encrypt}
  - {id: partner, milter: encrypt, scope: global, match: {rcpt_domain: [partner.example]}, action: encrypt}
`, "")
	res := h.send(t, relayIP, message("Invoice 2026-0042", "Order 12345678, tracking 1Z999AA10123456784.\r\n"), "carol@elsewhere.example")
	accepted(t, res)
	same(t, "outbound, no trigger", mods(res), nil)
	if sec := h.section(t, 1); sec.Trigger != "none" || sec.Action != "none" || len(sec.Rcpts) != 0 {
		t.Errorf("section %+v", sec)
	}
	res = h.send(t, strangerIP, message("[secure] for you", "Card 4111 1111 1111 1111 exp 12/28\r\n"), "bob@acme.example")
	accepted(t, res)
	same(t, "inbound", mods(res), nil)
	if sec := h.section(t, 2); sec.Direction != "inbound" || sec.Action != "none" || sec.TagsRemoved != 0 {
		t.Errorf("inbound section %+v", sec)
	}
}

// TestRules: a header rule, a partner-domain rule, an inbound rule and the
// rule reply; the marker names the rule.
func TestRules(t *testing.T) {
	h := newHarness(t, `
rules:
  - {id: sensitivity, milter: encrypt, scope: tenant:acme, match: {header: ["Sensitivity: Company-Confidential"]}, action: encrypt}
  - {id: partner, milter: encrypt, scope: global, match: {rcpt_domain: [partner.example]}, action: encrypt}
  - {id: inbound-hr, milter: encrypt, scope: global, match: {direction: inbound, rcpt: [hr@acme.example]}, action: encrypt}
`, "")
	for i, tt := range []struct {
		ip, rcpt string
		extra    []string
		mods     []string
		rule     string
	}{
		{relayIP, "carol@elsewhere.example", []string{"Sensitivity: company-confidential"}, []string{"add X-Geomilter-Encrypt: rule=sensitivity"}, "sensitivity"},
		{relayIP, "bob@partner.example", nil, []string{"add X-Geomilter-Encrypt: rule=partner"}, "partner"},
		{strangerIP, "bob@partner.example", nil, nil, ""}, // the partner rule is for outbound mail
		{strangerIP, "hr@acme.example", nil, []string{"add X-Geomilter-Encrypt: rule=inbound-hr"}, "inbound-hr"},
	} {
		res := h.send(t, tt.ip, message("Hello", "Hi\r\n", tt.extra...), tt.rcpt)
		accepted(t, res)
		same(t, tt.rcpt, mods(res), tt.mods)
		sec := h.section(t, i+1)
		if tt.rule == "" {
			if sec.Action != "none" {
				t.Errorf("%s: section %+v", tt.rcpt, sec)
			}
			continue
		}
		if sec.Trigger != "rule" || sec.Triggers[0].RuleID != tt.rule || sec.Action != "route" || len(sec.Rcpts) != 1 || sec.Rcpts[0] != tt.rcpt {
			t.Errorf("%s: section %+v", tt.rcpt, sec)
		}
	}
}

// cardMessages hold a card number in several places.
func cardMessages() map[string]string {
	b64 := base64.StdEncoding.EncodeToString([]byte("Please charge card 4111-1111-1111-1111, expiry 12/28.\r\n"))
	return map[string]string{
		"text": message("Order", "Please charge card 4111 1111 1111 1111, expiry 12/28.\r\n"),
		"html": "From: a@acme.example\r\nSubject: Order\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" +
			"<html><body><p>Card:</p><td>4111&nbsp;1111&nbsp;1111&nbsp;1111</td> valid until 12/28</body></html>\r\n",
		"base64 text part": "From: a@acme.example\r\nSubject: Order\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n" +
			"--B\r\nContent-Type: text/plain\r\n\r\nSee below.\r\n" +
			"--B\r\nContent-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b64 + "\r\n--B--\r\n",
		"attachment name": "From: a@acme.example\r\nSubject: Order\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n" +
			"--B\r\nContent-Type: text/plain\r\n\r\nSee the file.\r\n" +
			"--B\r\nContent-Type: text/csv; name=\"card 4111111111111111.csv\"\r\nContent-Disposition: attachment\r\n\r\nname,amount\r\nx,1\r\n--B--\r\n",
	}
}

// TestCardDetector: a card number in a text part (plain, HTML, base64) or
// an attachment's name triggers a detect rule; a card inside a CSV
// attachment does not (attachments are named, not read); the trail has the
// count and never the number.
func TestCardDetector(t *testing.T) {
	h := newHarness(t, `
rules:
  - {id: cards, milter: encrypt, scope: global, match: {detect: [card, iban]}, action: encrypt}
`, "")
	n := 0
	for name, msg := range cardMessages() {
		n++
		res := h.send(t, relayIP, msg)
		accepted(t, res)
		same(t, name, mods(res), []string{"add X-Geomilter-Encrypt: detector=card"})
		sec := h.section(t, n)
		if sec.Trigger != "detector" || sec.Triggers[0].Detector != "card" || sec.Triggers[0].Count != 1 || sec.Triggers[0].RuleID != "cards" {
			t.Errorf("%s: section %+v", name, sec)
		}
		if strings.Contains(strings.ReplaceAll(sec.Fallback+sec.Route+sec.Trigger, " ", ""), "4111") {
			t.Errorf("%s: the number is in the trail", name)
		}
	}
	inCSV := "From: a@acme.example\r\nSubject: Order\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n" +
		"--B\r\nContent-Type: text/plain\r\n\r\nSee the file.\r\n" +
		"--B\r\nContent-Type: text/csv; name=\"cards.csv\"\r\nContent-Disposition: attachment\r\n\r\ncard,exp\r\n4111111111111111,12/28\r\n--B--\r\n"
	res := h.send(t, relayIP, inCSV)
	accepted(t, res)
	same(t, "card inside a CSV attachment", mods(res), nil)
	if got := h.srv.Counter(t, "geomilter_encrypt_scans_total"); got != float64(n+1) {
		t.Errorf("scans %v, want %d", got, n+1)
	}
}

// TestDetectorsRunOnlyWhenNeeded: without a rule that uses detect, the
// message is not scanned; with one whose other conditions fail, neither.
func TestDetectorsRunOnlyWhenNeeded(t *testing.T) {
	h := newHarness(t, `
rules:
  - {id: cards-to-bank, milter: encrypt, scope: global, match: {detect: [card], rcpt_domain: [bank.example]}, action: encrypt}
  - {id: partner, milter: encrypt, scope: global, match: {rcpt_domain: [partner.example]}, action: encrypt}
`, "")
	accepted(t, h.send(t, relayIP, cardMessages()["text"], "x@other.example"))
	accepted(t, h.send(t, relayIP, cardMessages()["text"], "x@partner.example"))
	h.srv.WaitTxns(t, 2)
	if got := h.srv.Counter(t, "geomilter_encrypt_scans_total"); got != 0 {
		t.Errorf("scans %v, want 0", got)
	}
	res := h.send(t, relayIP, cardMessages()["text"], "x@bank.example")
	same(t, "bank", mods(res), []string{"add X-Geomilter-Encrypt: detector=card"})
	if got := h.srv.Counter(t, "geomilter_encrypt_scans_total"); got != 1 {
		t.Errorf("scans %v, want 1", got)
	}
}

// TestSkipException: a skip rule with a lower priority wins over the
// detector rule and over the subject tag; the tag is still removed.
func TestSkipException(t *testing.T) {
	h := newHarness(t, `
rules:
  - {id: cards, milter: encrypt, scope: global, match: {detect: [card]}, action: encrypt}
  - {id: internal, milter: encrypt, scope: global, match: {rcpt_domain: [acme.example]}, action: skip, priority: -1}
`, "")
	res := h.send(t, relayIP, strings.Replace(cardMessages()["text"], "Subject: Order", "Subject: [secure] Order", 1), "bob@acme.example")
	accepted(t, res)
	same(t, "skip", mods(res), []string{"change Subject[1]: Order"})
	sec := h.section(t, 1)
	if sec.Action != "none" || len(sec.Triggers) != 0 || len(sec.Rules) != 1 || sec.Rules[0].ID != "internal" || sec.TagsRemoved != 1 {
		t.Errorf("section %+v", sec)
	}
	// One recipient without the exception: the whole message is routed.
	res = h.send(t, relayIP, cardMessages()["text"], "bob@acme.example", "x@other.example")
	same(t, "mixed", mods(res), []string{"add X-Geomilter-Encrypt: detector=card"})
	if sec := h.section(t, 2); len(sec.Rcpts) != 1 || sec.Rcpts[0] != "x@other.example" {
		t.Errorf("section %+v", sec)
	}
}

// TestRouteOff: with route off and no inline key, a message that must be
// encrypted is rejected, with the rule's reply when it has one.
func TestRouteOff(t *testing.T) {
	h := newHarness(t, `
rules:
  - {id: partner, milter: encrypt, scope: global, match: {rcpt_domain: [partner.example]}, action: encrypt, reply: "550 5.7.1 Partner mail must be encrypted"}
`, `route: false, reject_text: "Encrypt it first"`)
	res := h.send(t, relayIP, message("[secure] x", "y\r\n"), "bob@other.example")
	if res.Reply.Code != milter.ActReplyCode || !strings.Contains(res.String(), "y 550 5.7.1 Encrypt it first") || len(res.Mods) != 0 {
		t.Errorf("tag: %s %q", res, mods(res))
	}
	res = h.send(t, relayIP, message("x", "y\r\n"), "bob@partner.example")
	if res.Reply.Code != milter.ActReplyCode || !strings.Contains(res.String(), "y 550 5.7.1 Partner mail must be encrypted") {
		t.Errorf("rule: %s", res)
	}
	if sec := h.section(t, 2); sec.Action != "reject" || sec.Route != "" {
		t.Errorf("section %+v", sec)
	}
	accepted(t, h.send(t, relayIP, message("x", "y\r\n"), "bob@other.example"))
}

// TestRequireTLS: a require_tls rule marks the message for the TLS-only
// transport; a tag on top asks for encryption, which wins.
func TestRequireTLS(t *testing.T) {
	h := newHarness(t, `
rules:
  - {id: bank-tls, milter: encrypt, scope: global, match: {rcpt_domain: [bank.example]}, action: require_tls}
`, "")
	res := h.send(t, relayIP, message("Statement", "y\r\n"), "ops@bank.example")
	accepted(t, res)
	same(t, "tls", mods(res), []string{"add X-Geomilter-TLS: required"})
	if sec := h.section(t, 1); sec.Action != "require_tls" || sec.Route != "smtp-tls" || sec.Trigger != "rule" {
		t.Errorf("section %+v", sec)
	}
	res = h.send(t, relayIP, message("[secure] Statement", "y\r\n"), "ops@bank.example")
	same(t, "tls+tag", mods(res), []string{"change Subject[1]: Statement", "add X-Geomilter-Encrypt: subject_tag, rule=bank-tls"})
}

// TestClientMarkers: markers a client sent are removed, last first.
func TestClientMarkers(t *testing.T) {
	h := newHarness(t, "", "")
	res := h.send(t, strangerIP, message("Hi", "y\r\n", "X-Geomilter-Encrypt: forged", "X-Geomilter-TLS: required", "X-Geomilter-Encrypt: again"), "bob@acme.example")
	accepted(t, res)
	same(t, "markers", mods(res), []string{"delete X-Geomilter-Encrypt[2]", "delete X-Geomilter-Encrypt[1]", "delete X-Geomilter-TLS[1]"})
}

// storeCert makes a key and a self-signed certificate for addr with openssl
// and files the certificate in the key store under tenant.
func storeCert(t *testing.T, keys, tenant, addr string) (keyFile, certFile string) {
	t.Helper()
	keyFile, certFile = inlinetest.NewCert(t, t.TempDir(), addr, 2)
	if err := os.MkdirAll(filepath.Join(keys, tenant), 0o755); err != nil {
		t.Fatal(err)
	}
	pem, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(keys, tenant, addr+".pem"), pem, 0o644); err != nil {
		t.Fatal(err)
	}
	return keyFile, certFile
}

// applyMods builds the message Postfix would store: the original header
// fields with the changes applied, the added ones, the new body.
func applyMods(t *testing.T, msg string, res miltertest.Result) []byte {
	t.Helper()
	hs, body, err := miltertest.SplitMessage(strings.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	origBody, _ := io.ReadAll(body)
	var newBody []byte
	replaced := false
	for _, m := range res.Mods {
		switch m.Code {
		case milter.ActChangeHeader:
			n := 0
			for i := range hs {
				if strings.EqualFold(hs[i].Name, m.HeaderName) {
					n++
					if n == int(m.HeaderIndex) {
						hs[i].Value = m.HeaderValue
						break
					}
				}
			}
			if n < int(m.HeaderIndex) {
				hs = append(hs, miltertest.Header{Name: m.HeaderName, Value: m.HeaderValue})
			}
		case milter.ActAddHeader:
			hs = append(hs, miltertest.Header{Name: m.HeaderName, Value: m.HeaderValue})
		case milter.ActReplBody:
			newBody = append(newBody, m.Body...)
			replaced = true
		}
	}
	var b bytes.Buffer
	for _, h := range hs {
		if h.Value == "" {
			continue
		}
		b.WriteString(h.Name + ":" + strings.ReplaceAll(h.Value, "\n", "\r\n") + "\r\n")
	}
	b.WriteString("\r\n")
	if replaced {
		b.Write(newBody)
	} else {
		b.Write(origBody)
	}
	return b.Bytes()
}

// TestInlineSMIME: with a key for every recipient the message is encrypted
// in place, and openssl opens it with the recipient's key; a recipient
// without a key sends the message to the gateway instead; the subject tag
// goes either way.
func TestInlineSMIME(t *testing.T) {
	inlinetest.NeedTool(t, "openssl")
	keys := t.TempDir()
	bobKey, bobCert := storeCert(t, keys, "acme", "bob@partner.example")
	h := newHarness(t, "", "inline: {method: smime, keys_dir: "+keys+"}")
	body := "Grüße, the figures are attached.\r\n"
	msg := message("[secure] Figures", body, "X-Mailer: test")
	res := h.send(t, relayIP, msg, "bob@partner.example")
	accepted(t, res)
	got := mods(res)
	if len(got) < 4 || got[0] != "change Subject[1]: Figures" || !strings.HasPrefix(got[len(got)-1], "body ") {
		t.Fatalf("mods %q", got)
	}
	for _, g := range got {
		if strings.HasPrefix(g, "add X-Geomilter") {
			t.Errorf("inline message marked for the gateway: %q", got)
		}
	}
	out := applyMods(t, msg, res)
	if !bytes.Contains(out, []byte("application/pkcs7-mime")) || bytes.Contains(out, []byte("figures are attached")) {
		t.Fatalf("not encrypted:\n%s", out)
	}
	if bytes.Count(out, []byte("Content-Type:")) != 1 || bytes.Count(out, []byte("MIME-Version:")) != 1 {
		t.Errorf("MIME fields not replaced one for one:\n%s", out[:bytes.Index(out, []byte("\r\n\r\n"))])
	}
	in := filepath.Join(t.TempDir(), "msg.eml")
	if err := os.WriteFile(in, out, 0o600); err != nil {
		t.Fatal(err)
	}
	plain := inlinetest.SMIMEDecrypt(t, in, bobKey, bobCert)
	if !bytes.Contains(plain, []byte(body)) || !bytes.Contains(plain, []byte("Content-Type: text/plain; charset=utf-8")) {
		t.Errorf("decrypted %q", plain)
	}
	if sec := h.section(t, 1); sec.Action != "inline" || sec.Route != "smime" || sec.Fallback != "" {
		t.Errorf("section %+v", sec)
	}

	// carol has no key: routed, never sent in clear.
	res = h.send(t, relayIP, msg, "bob@partner.example", "carol@partner.example")
	accepted(t, res)
	same(t, "missing key", mods(res), []string{"change Subject[1]: Figures", "add X-Geomilter-Encrypt: subject_tag"})
	if sec := h.section(t, 2); sec.Action != "route" || sec.Fallback != "no_key" {
		t.Errorf("section %+v", sec)
	}
	if got := h.srv.Counter(t, "geomilter_encrypt_inline_failures_total", "reason", "no_key"); got != 1 {
		t.Errorf("inline failures %v", got)
	}
}

// TestInlineEscrow: with inline.escrow the message also opens with the
// escrow key (the archive journals the encrypted message as delivered);
// without the escrow key in the store the message is routed, not encrypted
// for the recipients alone.
func TestInlineEscrow(t *testing.T) {
	inlinetest.NeedTool(t, "openssl")
	keys := t.TempDir()
	storeCert(t, keys, "acme", "bob@partner.example")
	archKey, archCert := storeCert(t, keys, "", "archive@acme.example")
	h := newHarness(t, "", "inline: {method: smime, keys_dir: "+keys+", escrow: [archive@acme.example]}")
	body := "Quarterly figures.\r\n"
	msg := message("[secure] Figures", body, "X-Mailer: test")
	res := h.send(t, relayIP, msg, "bob@partner.example")
	accepted(t, res)
	in := filepath.Join(t.TempDir(), "msg.eml")
	if err := os.WriteFile(in, applyMods(t, msg, res), 0o600); err != nil {
		t.Fatal(err)
	}
	plain := inlinetest.SMIMEDecrypt(t, in, archKey, archCert)
	if !bytes.Contains(plain, []byte(body)) {
		t.Errorf("escrow key decrypted %q", plain)
	}

	h = newHarness(t, "", "inline: {method: smime, keys_dir: "+keys+", escrow: [nobody@acme.example]}")
	res = h.send(t, relayIP, msg, "bob@partner.example")
	accepted(t, res)
	same(t, "escrow key missing", mods(res), []string{"change Subject[1]: Figures", "add X-Geomilter-Encrypt: subject_tag"})
	if sec := h.section(t, 1); sec.Action != "route" || sec.Fallback != "no_escrow_key" {
		t.Errorf("section %+v", sec)
	}
}

// TestInlineTooLarge: over inline.max_size the message is routed; with
// route off, rejected.
func TestInlineTooLarge(t *testing.T) {
	inlinetest.NeedTool(t, "openssl")
	keys := t.TempDir()
	storeCert(t, keys, "acme", "bob@partner.example")
	big := strings.Repeat("0123456789abcdef 0123456789abcdef 0123456789abcdef 0123456789\r\n", 100)
	h := newHarness(t, "", "inline: {method: smime, keys_dir: "+keys+", max_size: 2KiB}")
	res := h.send(t, relayIP, message("[secure] big", big))
	same(t, "too large", mods(res), []string{"change Subject[1]: big", "add X-Geomilter-Encrypt: subject_tag"})
	if sec := h.section(t, 1); sec.Fallback != "too_large" {
		t.Errorf("section %+v", sec)
	}
	h = newHarness(t, "", "route: false, inline: {method: smime, keys_dir: "+keys+", max_size: 2KiB}")
	res = h.send(t, relayIP, message("[secure] big", big))
	if !strings.Contains(res.String(), "y 550 5.7.1 Message must be sent encrypted") {
		t.Errorf("route off: %s", res)
	}
}

// TestInlinePGP: PGP/MIME inline, opened by gpg with the recipient's key.
func TestInlinePGP(t *testing.T) {
	home, pub := inlinetest.GPGHome(t, "Bob <bob@partner.example>", "never")
	keys := t.TempDir()
	if err := os.MkdirAll(filepath.Join(keys, "acme"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(keys, "acme", "partner.example.asc"), pub, 0o644); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, `
rules:
  - {id: partner, milter: encrypt, scope: global, match: {rcpt_domain: [partner.example]}, action: encrypt}
`, "inline: {method: pgp, keys_dir: "+keys+"}")
	body := "The contract, signed.\r\n"
	msg := message("Contract", body)
	res := h.send(t, relayIP, msg)
	accepted(t, res)
	out := string(applyMods(t, msg, res))
	if !strings.Contains(out, "multipart/encrypted") || strings.Contains(out, "contract, signed") {
		t.Fatalf("not encrypted:\n%s", out)
	}
	start, end := strings.Index(out, "-----BEGIN PGP MESSAGE-----"), strings.Index(out, "-----END PGP MESSAGE-----")
	if start < 0 || end < start {
		t.Fatalf("no armored message:\n%s", out)
	}
	plain := inlinetest.PGPDecrypt(t, home, []byte(out[start:end+len("-----END PGP MESSAGE-----")]+"\n"))
	if !bytes.Contains(plain, []byte(body)) {
		t.Errorf("decrypted %q", plain)
	}
	if sec := h.section(t, 1); sec.Action != "inline" || sec.Route != "pgp" || sec.Trigger != "rule" {
		t.Errorf("section %+v", sec)
	}
}
