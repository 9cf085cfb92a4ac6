package access

import (
	"strings"
	"testing"
	"time"

	milter "github.com/emersion/go-milter"

	"github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/milterrt/miltertest"
	"github.com/geomilter/geomilter/shared/rules"
	"github.com/geomilter/geomilter/shared/rulesync"
)

func clientMilter(t testing.TB, snap *rules.Snapshot) *miltertest.Server {
	return miltertest.Serve(t, newTestMilter(t, snap, Options{}), milterrt.Options{})
}

// TestClientNegotiation: the milter asks Postfix for the envelope only.
func TestClientNegotiation(t *testing.T) {
	s := clientMilter(t, compile(t, "rules: []")).Dial(t)
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
	s := ms.Dial(t)
	miltertest.Cont(t, "conn")(s.Conn("mx.outside.example", milter.FamilyInet, 40000, "203.0.113.9"))
	miltertest.Cont(t, "helo")(s.Helo("mx.outside.example"))
	miltertest.Expect(t, "mail", milter.ActReplyCode, 550, "5.7.1 Sender blocked by policy")(s.Mail("spam@bad.example", nil))
	rec := ms.WaitTxns(t, 1)[1-1]
	if rec.Final.RuleID != "spammer" || rec.FinalStage != milterrt.StageMail || rec.Final.Action != milterrt.ActionReject {
		t.Errorf("trail: %+v", rec)
	}
	// The same connection goes on: the next sender is accepted.
	miltertest.Cont(t, "mail 2")(s.Mail("ok@outside.example", nil))
	miltertest.Cont(t, "rcpt 2")(s.Rcpt("bob@acme.example", nil))
	if _, act, err := s.End(); err != nil || act.Code != milter.ActAccept {
		t.Fatalf("eom 2: %v %v", act, err)
	}
}

// TestClientOneRecipientBlocked: of three recipients one is refused and the
// two others are accepted; the message is accepted for them.
func TestClientOneRecipientBlocked(t *testing.T) {
	ms := clientMilter(t, compile(t, `rules: [{id: no-eve, milter: access, scope: "tenant:acme", match: {rcpt: [eve@acme.example]}, action: reject, reply: "550 5.1.1 No such user here"}]`))
	s := ms.Dial(t)
	miltertest.Cont(t, "conn")(s.Conn("mx.outside.example", milter.FamilyInet, 40000, "203.0.113.9"))
	miltertest.Cont(t, "helo")(s.Helo("mx.outside.example"))
	miltertest.Cont(t, "mail")(s.Mail("a@outside.example", nil))
	miltertest.Cont(t, "rcpt bob")(s.Rcpt("bob@acme.example", nil))
	miltertest.Expect(t, "rcpt eve", milter.ActReplyCode, 550, "5.1.1 No such user here")(s.Rcpt("eve@acme.example", nil))
	miltertest.Cont(t, "rcpt carol")(s.Rcpt("carol@acme-mail.example", nil))
	if _, act, err := s.End(); err != nil || act.Code != milter.ActAccept {
		t.Fatalf("eom: %v %v", act, err)
	}
	rec := ms.WaitTxns(t, 1)[1-1]
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
	s := ms.Dial(t)
	miltertest.Cont(t, "conn")(s.Conn("mx.outside.example", milter.FamilyInet6, 40000, "2001:db8:bad::9"))
	miltertest.Cont(t, "helo")(s.Helo("mx.outside.example"))
	miltertest.Cont(t, "mail")(s.Mail("a@outside.example", nil))
	miltertest.Expect(t, "rcpt external", milter.ActReplyCode, 554, "5.7.1 Relay access denied")(s.Rcpt("x@gmail.example", nil))
	miltertest.Cont(t, "rcpt tenant")(s.Rcpt("bob@beta.example", nil))
	if _, act, err := s.End(); err != nil || act.Code != milter.ActAccept {
		t.Fatalf("eom: %v %v", act, err)
	}
	if rec := ms.WaitTxns(t, 1)[1-1]; rec.Rcpts[0].Decision.RuleID != RelayRuleID {
		t.Errorf("trail: %+v", rec)
	}

	// Authenticated as acme's relay login ({auth_authen} arrives with MAIL).
	s = ms.Dial(t)
	miltertest.Cont(t, "conn")(s.Conn("mx.outside.example", milter.FamilyInet, 40000, "203.0.113.9"))
	miltertest.Cont(t, "helo")(s.Helo("mx.outside.example"))
	if err := s.Macros(milter.CodeMail, "{auth_authen}", "acme-relay", "{auth_type}", "PLAIN"); err != nil {
		t.Fatal(err)
	}
	miltertest.Cont(t, "mail")(s.Mail("a@acme.example", nil))
	miltertest.Cont(t, "rcpt external")(s.Rcpt("x@gmail.example", nil))
	if _, act, err := s.End(); err != nil || act.Code != milter.ActAccept {
		t.Fatalf("eom: %v %v", act, err)
	}
}

// TestClientBlockedNetwork: a blocked network is refused at connect with
// our text.
func TestClientBlockedNetwork(t *testing.T) {
	ms := clientMilter(t, compile(t, `rules: [{id: bad-net, milter: access, scope: global, match: {client_ip: [203.0.113.0/24]}, action: reject, reply: "554 5.7.1 Network blocked"}]`))
	s := ms.Dial(t)
	miltertest.Expect(t, "conn", milter.ActReplyCode, 554, "5.7.1 Network blocked")(s.Conn("mx.outside.example", milter.FamilyInet, 40000, "203.0.113.9"))
	if rec := ms.WaitTxns(t, 1)[1-1]; rec.Final.RuleID != "bad-net" || rec.FinalStage != milterrt.StageConnect {
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
	ms := miltertest.Serve(t, m, milterrt.Options{})
	m.analysisFor(empty)
	waitAnalysis(t, m, empty)
	s := ms.DialOffer(t, 0x1ff, 0x1fffff)
	if !s.ProtocolOption(milter.OptNoConnReply) || !s.ProtocolOption(milter.OptNoHeloReply) ||
		s.ProtocolOption(milter.OptNoMailReply) || s.ProtocolOption(milter.OptNoRcptReply) {
		t.Fatalf("negotiated protocol %#x: want no reply at connect and helo only", s.ProtocolOpts)
	}
	block := compile(t, `rules: [{id: bad-net, milter: access, scope: global, match: {client_ip: [203.0.113.0/24]}, action: reject, reply: "554 5.7.1 Network blocked"}]`)
	m.rules.(*rulesync.Holder).Swap(block)
	waitAnalysis(t, m, block)
	miltertest.Cont(t, "conn")(s.Conn("mx.outside.example", milter.FamilyInet, 40000, "203.0.113.9")) // no reply read
	miltertest.Cont(t, "helo")(s.Helo("mx.outside.example"))
	miltertest.Expect(t, "mail", milter.ActReplyCode, 554, "5.7.1 Network blocked")(s.Mail("a@outside.example", nil))
	if rec := ms.WaitTxns(t, 1)[1-1]; rec.Final.RuleID != "bad-net" || rec.FinalStage != milterrt.StageConnect {
		t.Errorf("trail: %+v", rec)
	}
	// New connections now wait at connect.
	s2 := ms.DialOffer(t, 0x1ff, 0x1fffff)
	if s2.ProtocolOption(milter.OptNoConnReply) {
		t.Error("a network rule exists, yet Postfix is told not to wait at connect")
	}
	miltertest.Expect(t, "conn", milter.ActReplyCode, 554, "5.7.1 Network blocked")(s2.Conn("mx.outside.example", milter.FamilyInet, 40000, "203.0.113.9"))
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
