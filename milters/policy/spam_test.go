package policy_test

import (
	"archive/zip"
	"bytes"
	"encoding/base64"
	"strings"
	"sync"
	"testing"
	"time"

	milter "github.com/emersion/go-milter"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/milters/policy"
	"github.com/geomilter/geomilter/shared/config"
	"github.com/geomilter/geomilter/shared/dnstest"
	"github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/milterrt/miltertest"
	"github.com/geomilter/geomilter/shared/resolver"
	"github.com/geomilter/geomilter/shared/rules"
	"github.com/geomilter/geomilter/shared/state"
	"github.com/geomilter/geomilter/shared/trail"
)

// Part 2 through the milter protocol: lists, greylisting, content rules,
// the score per tenant and the spam headers. The DNS is a real in-process
// server; the greylist state a MemStore with a clock the test moves (the
// cross-site behaviour over real Redis is tested in the greylist package and
// through Postfix in integration/postfix).

// spamZones: 192.0.2.66 is on bl.test (weight 6) and on the rejecting
// list rbl.test; 192.0.2.77 on the allow list wl.test; the IPv6 client
// 2001:db8::66 on bl.test; evil.example is on uribl.test.
const spamZones = `
test. 300 IN SOA ns.test. h.test. 1 3600 600 86400 300
66.2.0.192.bl.test. 300 IN A 127.0.0.2
6.6.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test. 300 IN A 127.0.0.2
66.2.0.192.rbl.test. 300 IN A 127.0.0.2
77.2.0.192.wl.test. 300 IN A 127.0.0.2
evil.example.uribl.test. 300 IN A 127.0.0.2
sender.example. 300 IN SOA ns.sender.example. h.sender.example. 1 3600 600 86400 300
`

const spamConfig = `site: lax
host: mx.test.example
rules_file: /r.yaml
state_dir: /s
spool_dir: /q
milters:
  policy:
    listen: "unix:/run/p.sock"
    authserv_id: mx.test.example
    dnsbl:
      - {zone: bl.test, weight: 6}
      - {zone: rbl.test, action: reject, tenants: [strict]}
    dnswl:
      - {zone: wl.test, weight: -5}
    uribl:
      - {zone: uribl.test, weight: 3}
    greylist: {delay: 5m}
    scoring:
      tag: 5
      reject: 15
      subject_prefix: "[SPAM]"
      tenants:
        strict: {reject: 5}
        quar: {quarantine: 8}
`

const spamRules = `
tenants:
  - {id: acme, domains: [acme.example]}
  - {id: strict, domains: [strict.example]}
  - {id: quar, domains: [quar.example]}
  - {id: grey, domains: [grey.example]}
rules:
  - {id: no-exe, milter: policy, scope: global, match: {attachment: [exe]}, action: reject, reply: "550 5.7.1 No executables"}
  - {id: lottery, milter: policy, scope: global, match: {body: ["you have won"]}, score: 3}
  - {id: grey-all, milter: policy, scope: "tenant:grey", action: greylist}
`

type spamFixture struct {
	ts    *miltertest.Server
	mu    sync.Mutex
	now   time.Time
	store *state.MemStore
}

func (f *spamFixture) clock() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *spamFixture) advance(d time.Duration) {
	f.mu.Lock()
	f.now = f.now.Add(d)
	f.mu.Unlock()
}

func newSpamFixture(t testing.TB) *spamFixture { return newSpamFixtureWith(t, spamRules) }

func newSpamFixtureWith(t testing.TB, rulesYAML string) *spamFixture {
	t.Helper()
	srv := dnstest.Start(t, spamZones)
	res, err := resolver.New(resolver.Options{Servers: []string{srv.Addr()}, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse("geomilter.yaml", []byte(spamConfig))
	if err != nil {
		t.Fatal(err)
	}
	set, err := rules.Parse("rules.yaml", []byte(rulesYAML))
	if err != nil {
		t.Fatal(err)
	}
	snap, err := rules.Compile(set)
	if err != nil {
		t.Fatal(err)
	}
	f := &spamFixture{now: time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)}
	f.store = state.NewMemStore(f.clock)
	reg := prometheus.NewRegistry()
	m, err := policy.NewMilter(policy.Options{
		Rules: fixedRules{snap}, DNS: res, MessageBudget: 2 * time.Second, Log: zerolog.Nop(), Registerer: reg,
		Settings: policy.ConfigFrom(cfg), Clock: f.clock, Store: f.store,
	})
	if err != nil {
		t.Fatal(err)
	}
	f.ts = miltertest.Serve(t, m, milterrt.Options{MessageDir: t.TempDir(), Registerer: reg})
	f.ts.Registry = reg
	return f
}

func (f *spamFixture) send(t testing.TB, ip string, rcpts []string, msg string) miltertest.Result {
	t.Helper()
	c := f.ts.DialOffer(t, miltertest.PostfixActions, miltertest.PostfixProtocol)
	tx := miltertest.Transaction{Peer: peer(ip), Sender: "a@sender.example", Message: strings.NewReader(msg)}
	for _, r := range rcpts {
		tx.Rcpts = append(tx.Rcpts, miltertest.Rcpt{Addr: r})
	}
	return c.Send(t, tx)
}

func spamMessage(extra, body string) string {
	return "From: <a@sender.example>\r\nTo: b@acme.example\r\nSubject: hello\r\n" +
		"Date: Mon, 07 Dec 2026 03:00:00 +0000\r\nMessage-ID: <2@x>\r\n" + extra + "\r\n" + body
}

// zipWith is a zip archive holding one stored file.
func zipWith(t *testing.T, name string, content []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	zw := zip.NewWriter(&b)
	w, err := zw.CreateHeader(&zip.FileHeader{Name: name, Method: zip.Store})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(content); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func withAttachment(name string, content []byte) string {
	return spamMessage("MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n",
		"--b\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n--b\r\n"+
			"Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\""+name+"\"\r\n"+
			"Content-Transfer-Encoding: base64\r\n\r\n"+base64.StdEncoding.EncodeToString(content)+"\r\n--b--\r\n")
}

// headerMods collects the header fields the milter added (by name) and the
// names of the fields it removed.
func headerMods(mods []milter.ModifyAction) (added map[string]string, removed []string) {
	added = map[string]string{}
	for _, m := range mods {
		switch {
		case (m.Code == milter.ActAddHeader || m.Code == milter.ActInsertHeader) && m.HeaderValue != "":
			added[m.HeaderName] = m.HeaderValue
		case m.Code == milter.ActChangeHeader && m.HeaderValue == "":
			removed = append(removed, m.HeaderName)
		case m.Code == milter.ActChangeHeader:
			added[m.HeaderName] = m.HeaderValue
		}
	}
	return added, removed
}

func replyOf(r miltertest.Result) string {
	if r.Reply == nil {
		return "none"
	}
	switch r.Reply.Code {
	case milter.ActReplyCode:
		return itoa(r.Reply.SMTPCode) + " " + r.Reply.SMTPText
	case milter.ActAccept, milter.ActContinue:
		return "accept"
	}
	return string(rune(r.Reply.Code))
}

func policySection(t *testing.T, st milterrt.State) *trail.PolicySection {
	t.Helper()
	sec, ok := st.Section.(*trail.PolicySection)
	if !ok {
		t.Fatalf("no policy section in %+v", st)
	}
	return sec
}

func TestSpamVerdicts(t *testing.T) {
	f := newSpamFixture(t)
	mz := append([]byte("MZ\x90\x00"), bytes.Repeat([]byte{0}, 100)...)
	for _, tt := range []struct {
		name     string
		ip       string
		rcpt     string
		msg      string
		reply    string            // prefix of the final reply ("accept", "550 …")
		headers  map[string]string // added fields: name → substring of the value
		removed  []string
		quar     bool
		score    float64
		scoreKey string // a part of the event's scores
	}{
		{name: "clean", ip: "192.0.2.1", rcpt: "b@acme.example", msg: spamMessage("", "Hello.\r\n"), reply: "accept",
			headers: map[string]string{"X-Spam-Status": "No, score=0.0 required=5.0", "X-Spam-Score": "0.0"}},
		{name: "gtube rejected", ip: "192.0.2.1", rcpt: "b@acme.example", msg: spamMessage("", "Test\r\n"+policy.GTUBE+"\r\n"),
			reply: "550 5.7.1", score: 1000, scoreKey: "rule:builtin-gtube"},
		{name: "listed client tagged", ip: "192.0.2.66", rcpt: "b@acme.example", msg: spamMessage("", "Hello.\r\n"), reply: "accept",
			headers: map[string]string{"X-Spam-Flag": "YES", "X-Spam-Status": "Yes, score=6.0", "Subject": "[SPAM] hello"},
			score:   6, scoreKey: "dnsbl:bl.test"},
		{name: "listed IPv6 client", ip: "2001:db8::66", rcpt: "b@acme.example", msg: spamMessage("", "Hello.\r\n"), reply: "accept",
			headers: map[string]string{"X-Spam-Flag": "YES"}, score: 6, scoreKey: "dnsbl:bl.test"},
		{name: "allow list lowers", ip: "192.0.2.77", rcpt: "b@acme.example", msg: spamMessage("", "you have won\r\n"), reply: "accept",
			headers: map[string]string{"X-Spam-Status": "No, score=-2.0"}, score: -2, scoreKey: "dnswl:wl.test"},
		{name: "tenant rejects lower", ip: "192.0.2.1", rcpt: "b@strict.example",
			msg: spamMessage("", "you have won\r\nhttp://www.evil.example/x\r\n"), reply: "550 5.7.1 Message rejected as spam", score: 6, scoreKey: "uribl:uribl.test"},
		{name: "tenant quarantines", ip: "192.0.2.66", rcpt: "b@quar.example", msg: spamMessage("", "you have won\r\n"),
			reply: "accept", quar: true, score: 9, scoreKey: "rule:lottery"},
		{name: "renamed exe", ip: "192.0.2.1", rcpt: "b@acme.example", msg: withAttachment("invoice.pdf", mz), reply: "550 5.7.1 No executables"},
		{name: "exe in zip", ip: "192.0.2.1", rcpt: "b@acme.example", msg: withAttachment("docs.zip", zipWith(t, "invoice.pdf", mz)),
			reply: "550 5.7.1 No executables"},
		{name: "incoming spam fields removed", ip: "192.0.2.1", rcpt: "b@acme.example",
			msg: spamMessage("X-Spam-Flag: NO\r\nX-Spam-Status: No, score=-100\r\n", "Hello.\r\n"), reply: "accept",
			removed: []string{"X-Spam-Flag", "X-Spam-Status"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := len(f.ts.Txns())
			res := f.send(t, tt.ip, []string{tt.rcpt}, tt.msg)
			if got := replyOf(res); !strings.HasPrefix(got, tt.reply) {
				t.Fatalf("reply %q, want %q…", got, tt.reply)
			}
			added, removed := headerMods(res.Mods)
			for name, want := range tt.headers {
				if !strings.Contains(added[name], want) {
					t.Errorf("%s %q, want it to contain %q (added %v)", name, added[name], want, added)
				}
			}
			for _, name := range tt.removed {
				if !strings.Contains(strings.Join(removed, ","), name) {
					t.Errorf("%s not removed (removed %v)", name, removed)
				}
			}
			quar := false
			for _, m := range res.Mods {
				quar = quar || m.Code == milter.ActQuarantine
			}
			if quar != tt.quar {
				t.Errorf("quarantined %v, want %v", quar, tt.quar)
			}
			st := f.ts.WaitTxns(t, before+1)[before]
			sec := policySection(t, st)
			if tt.reply == "accept" || tt.score != 0 {
				if sec.Score != tt.score {
					t.Errorf("score %v, want %v (scores %v)", sec.Score, tt.score, st.Scores)
				}
			}
			if tt.scoreKey != "" {
				if _, ok := st.Scores[tt.scoreKey]; !ok {
					t.Errorf("scores %v lack %s", st.Scores, tt.scoreKey)
				}
			}
		})
	}
}

func TestListRejectsAtRcpt(t *testing.T) {
	f := newSpamFixture(t)
	// rbl.test rejects for tenant strict only: the acme recipient stays.
	res := f.send(t, "192.0.2.66", []string{"b@strict.example", "c@acme.example"}, spamMessage("", "Hello.\r\n"))
	if len(res.RcptReplies) != 2 {
		t.Fatalf("rcpt replies %v", res.RcptReplies)
	}
	if r := res.RcptReplies[0]; r.Code != milter.ActReplyCode || r.SMTPCode != 554 || !strings.Contains(r.SMTPText, "blocked using rbl.test") {
		t.Errorf("strict recipient: %+v, want 554 … blocked using rbl.test", r)
	}
	if r := res.RcptReplies[1]; r.Code != milter.ActContinue {
		t.Errorf("acme recipient: %+v, want continue", r)
	}
}

func TestGreylistDelay(t *testing.T) {
	f := newSpamFixture(t)
	msg := spamMessage("", "Hello.\r\n")
	greylisted := func(r miltertest.Result) bool {
		return len(r.RcptReplies) == 1 && r.RcptReplies[0].Code == milter.ActReplyCode && r.RcptReplies[0].SMTPCode == 451 &&
			strings.HasPrefix(r.RcptReplies[0].SMTPText, "4.7.1")
	}
	if r := f.send(t, "192.0.2.1", []string{"b@grey.example"}, msg); !greylisted(r) {
		t.Fatalf("first attempt: %v, want 451 4.7.1", r.RcptReplies)
	}
	f.advance(time.Minute)
	if r := f.send(t, "192.0.2.1", []string{"b@grey.example"}, msg); !greylisted(r) {
		t.Fatalf("retry after 1m: %v, want 451 4.7.1", r.RcptReplies)
	}
	f.advance(5 * time.Minute)
	if r := f.send(t, "192.0.2.1", []string{"b@grey.example"}, msg); replyOf(r) != "accept" {
		t.Fatalf("retry after 6m: %s, want accept", replyOf(r))
	}
	// The same network, another host: the triplet is per /24.
	if r := f.send(t, "192.0.2.200", []string{"b@grey.example"}, msg); replyOf(r) != "accept" {
		t.Fatalf("same /24: %s, want accept", replyOf(r))
	}
	// Not greylisted: a tenant without a greylist rule, and a DNSWL-listed client.
	for _, tt := range []struct{ ip, rcpt string }{{"192.0.2.9", "b@acme.example"}, {"192.0.2.77", "b@grey.example"}} {
		if r := f.send(t, tt.ip, []string{tt.rcpt}, msg); replyOf(r) != "accept" {
			t.Errorf("%s → %s: %s, want accept", tt.ip, tt.rcpt, replyOf(r))
		}
	}
}
