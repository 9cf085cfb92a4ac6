package access

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	milter "github.com/emersion/go-milter"

	"github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/rules"
	"github.com/geomilter/geomilter/shared/rulesync"
)

// A protocol 2 offer (no "no reply" flags): every envelope event gets a reply,
// which is what these tests read.
const (
	clientActionMask   = milter.OptAddHeader | milter.OptChangeBody | milter.OptAddRcpt | milter.OptRemoveRcpt | milter.OptChangeHeader | milter.OptQuarantine
	clientProtocolMask = milter.OptNoConnect | milter.OptNoHelo | milter.OptNoMailFrom | milter.OptNoRcptTo | milter.OptNoBody | milter.OptNoHeaders | milter.OptNoEOH
)

// txnRecord is a copy of what the runtime reports at the end of a
// transaction (what the trail event is built from).
type txnRecord struct {
	Final      milterrt.Decision
	FinalStage milterrt.Stages
	Aborted    bool
	Sender     string
	Rcpts      []milterrt.Recipient
	RuleIDs    []string
	Degraded   []string
}

type miltServer struct {
	network, addr string
	mu            sync.Mutex
	txns          []txnRecord
}

// serve runs the access milter with snap on a unix socket under a real
// milterrt.Server until the test ends.
func serve(t testing.TB, m milterrt.Milter) *miltServer {
	t.Helper()
	dir, err := os.MkdirTemp("", "acc") // short: unix socket paths are limited to 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ln, err := milterrt.Listen("unix:" + filepath.Join(dir, "a.sock"))
	if err != nil {
		t.Fatal(err)
	}
	ms := &miltServer{network: ln.Addr().Network(), addr: ln.Addr().String()}
	srv := milterrt.New(m, milterrt.Options{OnTransaction: ms.record})
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
	})
	return ms
}

func (ms *miltServer) record(st *milterrt.State) {
	rec := txnRecord{Final: st.Final, FinalStage: st.FinalStage, Aborted: st.Aborted, Sender: st.Sender,
		RuleIDs: append([]string(nil), st.RuleIDs...), Degraded: append([]string(nil), st.Degraded...)}
	for _, r := range st.Rcpts {
		rec.Rcpts = append(rec.Rcpts, *r)
	}
	ms.mu.Lock()
	ms.txns = append(ms.txns, rec)
	ms.mu.Unlock()
}

// wait returns the n-th transaction reported (1-based), polling for it.
func (ms *miltServer) wait(t testing.TB, n int) txnRecord {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ms.mu.Lock()
		if len(ms.txns) >= n {
			rec := ms.txns[n-1]
			ms.mu.Unlock()
			return rec
		}
		ms.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("transaction %d never reported", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (ms *miltServer) dial(t testing.TB) *milter.ClientSession {
	t.Helper()
	return ms.dialOffer(t, clientActionMask, clientProtocolMask)
}

// dialOffer opens a session offering these actions and protocol flags;
// 0x1ff and 0x1fffff are what Postfix 3.7 offers.
func (ms *miltServer) dialOffer(t testing.TB, actions milter.OptAction, proto milter.OptProtocol) *milter.ClientSession {
	t.Helper()
	cl := milter.NewClientWithOptions(ms.network, ms.addr, milter.ClientOptions{
		Dialer: &net.Dialer{Timeout: 5 * time.Second}, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second,
		ActionMask: actions, ProtocolMask: proto,
	})
	s, err := cl.Session()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func want(t testing.TB, what string, code milter.ActionCode, smtp int, text string) func(*milter.Action, error) {
	return func(act *milter.Action, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if act.Code != code || act.SMTPCode != smtp || act.SMTPText != text {
			t.Fatalf("%s: got %c %d %q, want %c %d %q", what, act.Code, act.SMTPCode, act.SMTPText, code, smtp, text)
		}
	}
}

func cont(t testing.TB, what string) func(*milter.Action, error) {
	return want(t, what, milter.ActContinue, 0, "")
}

func clientMilter(t testing.TB, snap *rules.Snapshot) *miltServer {
	return serve(t, newTestMilter(t, snap, Options{}))
}

// TestClientNegotiation: the milter asks Postfix for the envelope only.
func TestClientNegotiation(t *testing.T) {
	s := clientMilter(t, compile(t, "rules: []")).dial(t)
	for _, o := range []milter.OptProtocol{milter.OptNoHeaders, milter.OptNoEOH, milter.OptNoBody} {
		if !s.ProtocolOption(o) {
			t.Errorf("protocol option %#x not negotiated", o)
		}
	}
	for _, o := range []milter.OptProtocol{milter.OptNoConnect, milter.OptNoHelo, milter.OptNoMailFrom, milter.OptNoRcptTo} {
		if s.ProtocolOption(o) {
			t.Errorf("stage skipped (%#x), but access needs it", o)
		}
	}
}

// TestClientBlockedSender: the client sees our 5xx text at MAIL FROM; the
// trail names the rule.
func TestClientBlockedSender(t *testing.T) {
	ms := clientMilter(t, compile(t, `rules: [{id: spammer, milter: access, scope: global, match: {sender: [spam@bad.example]}, action: reject, reply: "550 5.7.1 Sender blocked by policy"}]`))
	s := ms.dial(t)
	cont(t, "conn")(s.Conn("mx.outside.example", milter.FamilyInet, 40000, "203.0.113.9"))
	cont(t, "helo")(s.Helo("mx.outside.example"))
	want(t, "mail", milter.ActReplyCode, 550, "5.7.1 Sender blocked by policy")(s.Mail("spam@bad.example", nil))
	rec := ms.wait(t, 1)
	if rec.Final.RuleID != "spammer" || rec.FinalStage != milterrt.StageMail || rec.Final.Action != milterrt.ActionReject {
		t.Errorf("trail: %+v", rec)
	}
	// The same connection goes on: the next sender is accepted.
	cont(t, "mail 2")(s.Mail("ok@outside.example", nil))
	cont(t, "rcpt 2")(s.Rcpt("bob@acme.example", nil))
	if _, act, err := s.End(); err != nil || act.Code != milter.ActAccept {
		t.Fatalf("eom 2: %v %v", act, err)
	}
}

// TestClientOneRecipientBlocked: of three recipients one is refused and the
// two others are accepted; the message is accepted for them.
func TestClientOneRecipientBlocked(t *testing.T) {
	ms := clientMilter(t, compile(t, `rules: [{id: no-eve, milter: access, scope: "tenant:acme", match: {rcpt: [eve@acme.example]}, action: reject, reply: "550 5.1.1 No such user here"}]`))
	s := ms.dial(t)
	cont(t, "conn")(s.Conn("mx.outside.example", milter.FamilyInet, 40000, "203.0.113.9"))
	cont(t, "helo")(s.Helo("mx.outside.example"))
	cont(t, "mail")(s.Mail("a@outside.example", nil))
	cont(t, "rcpt bob")(s.Rcpt("bob@acme.example", nil))
	want(t, "rcpt eve", milter.ActReplyCode, 550, "5.1.1 No such user here")(s.Rcpt("eve@acme.example", nil))
	cont(t, "rcpt carol")(s.Rcpt("carol@acme-mail.example", nil))
	if _, act, err := s.End(); err != nil || act.Code != milter.ActAccept {
		t.Fatalf("eom: %v %v", act, err)
	}
	rec := ms.wait(t, 1)
	var actions []string
	for _, r := range rec.Rcpts {
		actions = append(actions, r.Addr+"="+r.Decision.Action.String()+"/"+r.Decision.RuleID)
	}
	if got := strings.Join(actions, " "); got != "bob@acme.example=continue/ eve@acme.example=reject/no-eve carol@acme-mail.example=continue/" {
		t.Errorf("recipients: %s", got)
	}
	if rec.FinalStage != milterrt.StageEOM || rec.Final.Action != milterrt.ActionAccept || strings.Join(rec.RuleIDs, " ") != "no-eve" {
		t.Errorf("trail: %+v", rec)
	}
}

// TestClientRelay: an unauthorised client cannot relay, even with no rules;
// a tenant's relay login can.
func TestClientRelay(t *testing.T) {
	ms := clientMilter(t, compile(t, "rules: []"))
	s := ms.dial(t)
	cont(t, "conn")(s.Conn("mx.outside.example", milter.FamilyInet6, 40000, "2001:db8:bad::9"))
	cont(t, "helo")(s.Helo("mx.outside.example"))
	cont(t, "mail")(s.Mail("a@outside.example", nil))
	want(t, "rcpt external", milter.ActReplyCode, 554, "5.7.1 Relay access denied")(s.Rcpt("x@gmail.example", nil))
	cont(t, "rcpt tenant")(s.Rcpt("bob@beta.example", nil))
	if _, act, err := s.End(); err != nil || act.Code != milter.ActAccept {
		t.Fatalf("eom: %v %v", act, err)
	}
	if rec := ms.wait(t, 1); rec.Rcpts[0].Decision.RuleID != RelayRuleID {
		t.Errorf("trail: %+v", rec)
	}

	// Authenticated as acme's relay login ({auth_authen} arrives with MAIL).
	s = ms.dial(t)
	cont(t, "conn")(s.Conn("mx.outside.example", milter.FamilyInet, 40000, "203.0.113.9"))
	cont(t, "helo")(s.Helo("mx.outside.example"))
	if err := s.Macros(milter.CodeMail, "{auth_authen}", "acme-relay", "{auth_type}", "PLAIN"); err != nil {
		t.Fatal(err)
	}
	cont(t, "mail")(s.Mail("a@acme.example", nil))
	cont(t, "rcpt external")(s.Rcpt("x@gmail.example", nil))
	if _, act, err := s.End(); err != nil || act.Code != milter.ActAccept {
		t.Fatalf("eom: %v %v", act, err)
	}
}

// TestClientBlockedNetwork: a blocked network is refused at connect with
// our text.
func TestClientBlockedNetwork(t *testing.T) {
	ms := clientMilter(t, compile(t, `rules: [{id: bad-net, milter: access, scope: global, match: {client_ip: [203.0.113.0/24]}, action: reject, reply: "554 5.7.1 Network blocked"}]`))
	s := ms.dial(t)
	want(t, "conn", milter.ActReplyCode, 554, "5.7.1 Network blocked")(s.Conn("mx.outside.example", milter.FamilyInet, 40000, "203.0.113.9"))
	if rec := ms.wait(t, 1); rec.Final.RuleID != "bad-net" || rec.FinalStage != milterrt.StageConnect {
		t.Errorf("trail: %+v", rec)
	}
}

// TestClientPostfixOffer: offered what Postfix offers, access asks Postfix not
// to wait at connect and helo when no rule decides there; a network rule that
// arrives during the connection is answered at MAIL, the next stage with a
// reply.
func TestClientPostfixOffer(t *testing.T) {
	empty := compile(t, "rules: []")
	m := newTestMilter(t, empty, Options{})
	ms := serve(t, m)
	m.analysisFor(empty)
	waitAnalysis(t, m, empty)
	s := ms.dialOffer(t, 0x1ff, 0x1fffff)
	if !s.ProtocolOption(milter.OptNoConnReply) || !s.ProtocolOption(milter.OptNoHeloReply) ||
		s.ProtocolOption(milter.OptNoMailReply) || s.ProtocolOption(milter.OptNoRcptReply) {
		t.Fatalf("negotiated protocol %#x: want no reply at connect and helo only", s.ProtocolOpts)
	}
	block := compile(t, `rules: [{id: bad-net, milter: access, scope: global, match: {client_ip: [203.0.113.0/24]}, action: reject, reply: "554 5.7.1 Network blocked"}]`)
	m.rules.(*rulesync.Holder).Swap(block)
	waitAnalysis(t, m, block)
	cont(t, "conn")(s.Conn("mx.outside.example", milter.FamilyInet, 40000, "203.0.113.9")) // no reply read
	cont(t, "helo")(s.Helo("mx.outside.example"))
	want(t, "mail", milter.ActReplyCode, 554, "5.7.1 Network blocked")(s.Mail("a@outside.example", nil))
	if rec := ms.wait(t, 1); rec.Final.RuleID != "bad-net" || rec.FinalStage != milterrt.StageConnect {
		t.Errorf("trail: %+v", rec)
	}
	// New connections now wait at connect.
	s2 := ms.dialOffer(t, 0x1ff, 0x1fffff)
	if s2.ProtocolOption(milter.OptNoConnReply) {
		t.Error("a network rule exists, yet Postfix is told not to wait at connect")
	}
	want(t, "conn", milter.ActReplyCode, 554, "5.7.1 Network blocked")(s2.Conn("mx.outside.example", milter.FamilyInet, 40000, "203.0.113.9"))
}

func waitAnalysis(t testing.TB, m *Milter, snap *rules.Snapshot) {
	t.Helper()
	m.analysisFor(snap)
	deadline := time.Now().Add(10 * time.Second)
	for a := m.an.Load(); a == nil || a.snap != snap; a = m.an.Load() {
		if time.Now().After(deadline) {
			t.Fatal("analysis never built")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
