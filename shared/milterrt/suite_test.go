package milterrt_test

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"strings"
	"sync"
	"testing"

	milter "github.com/emersion/go-milter"
	"github.com/prometheus/client_golang/prometheus"

	. "github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/milterrt/miltertest"
)

// member is a test milter with a name, for suites.
type member struct {
	name    string
	stages  Stages
	actions Modifications
	decides Stages // 0: not a Decider
	message bool   // a MessageUser
	mk      func() *funcSession
}

func (m *member) Name() string                 { return m.name }
func (m *member) Stages() Stages               { return m.stages }
func (m *member) Modifications() Modifications { return m.actions }
func (m *member) NewSession(*State) Session    { return m.mk() }

type deciderMember struct{ *member }

func (m deciderMember) DecidesAt() Stages { return m.decides }

type messageMember struct{ deciderMember }

func (m messageMember) UsesMessage() bool { return true }

func (m *member) milter() Milter {
	switch {
	case m.message:
		return messageMember{deciderMember{m}}
	case m.decides != 0:
		return deciderMember{m}
	}
	return m
}

// suiteRun serves members as a suite and records each member's transactions.
type suiteRun struct {
	*miltertest.Server
	mu   sync.Mutex
	txns map[string][]State
	log  []string // "member:stage" in call order
}

func (r *suiteRun) saw(name, what string) {
	r.mu.Lock()
	r.log = append(r.log, name+":"+what)
	r.mu.Unlock()
}

func (r *suiteRun) memberTxns(t *testing.T, name string, n int) []State {
	t.Helper()
	miltertest.WaitFor(t, name+"'s transactions", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.txns[name]) >= n
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	if got := len(r.txns[name]); got != n {
		t.Fatalf("%s reported %d transactions, want %d", name, got, n)
	}
	return append([]State(nil), r.txns[name]...)
}

func (r *suiteRun) calls() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.log...)
}

func serveSuite(t *testing.T, ms ...*member) *suiteRun {
	r := &suiteRun{txns: map[string][]State{}}
	var members []SuiteMember
	for _, m := range ms {
		name := m.name
		members = append(members, SuiteMember{Milter: m.milter(), OnTransaction: func(st *State) {
			c := miltertest.CopyState(st)
			r.mu.Lock()
			r.txns[name] = append(r.txns[name], c)
			r.mu.Unlock()
		}})
	}
	reg := prometheus.NewRegistry()
	s := NewSuite("suite", members, SuiteOptions{Registerer: reg})
	r.Server = miltertest.Serve(t, s, Options{Registerer: reg})
	r.Server.Registry = reg
	return r
}

// recording returns a session that logs every call into r and answers with
// the given functions.
func recording(r **suiteRun, name string, f *funcSession) func() *funcSession {
	return func() *funcSession {
		w := *f
		log := func(what string) { (*r).saw(name, what) }
		w.connect = func(st *State) Decision { log("connect"); return call(f.connect, st) }
		w.helo = func(st *State) Decision { log("helo"); return call(f.helo, st) }
		w.mail = func(st *State) Decision { log("mail"); return call(f.mail, st) }
		w.rcpt = func(st *State, rc *Recipient) Decision {
			log("rcpt " + rc.Addr)
			if f.rcpt == nil {
				return Continue()
			}
			return f.rcpt(st, rc)
		}
		w.eom = func(st *State, m Modifier) Decision {
			log("eom")
			if f.eom == nil {
				return Continue()
			}
			return f.eom(st, m)
		}
		w.abort = func(st *State) { log("abort") }
		return &w
	}
}

func rcpts(st State) []string {
	var out []string
	for _, r := range st.Rcpts {
		out = append(out, r.Addr+"="+r.Decision.Action.String())
	}
	return out
}

// TestSuiteChainOrderAndRefusals: events go to the members in order, each at
// its own stages; a refused recipient never reaches later members; every
// member reports its own transaction with its own recipients.
func TestSuiteChainOrderAndRefusals(t *testing.T) {
	var r *suiteRun
	envelope := StageConnect | StageHelo | StageMail | StageRcpt
	access := &member{name: "access", stages: envelope, mk: recording(&r, "access", &funcSession{
		rcpt: func(_ *State, rc *Recipient) Decision {
			if rc.Addr == "bad@example.net" {
				return Reject("550", "5.1.1", "No such user")
			}
			return Continue()
		}})}
	policy := &member{name: "policy", stages: StageMail | StageRcpt | StageEOM, actions: MayAddHeader, mk: recording(&r, "policy", &funcSession{
		rcpt: func(_ *State, rc *Recipient) Decision {
			if rc.Addr == "grey@example.net" {
				return TempFail("451", "4.7.1", "Greylisted")
			}
			return Continue()
		}})}
	archive := &member{name: "archive", stages: StageMail | StageRcpt | StageEOM, decides: StageEOM, message: true,
		mk: recording(&r, "archive", &funcSession{})}
	r = serveSuite(t, access, policy, archive)

	c := r.DialOffer(t, miltertest.PostfixActions, miltertest.PostfixProtocol)
	// One negotiation: the union of the stages; no reply asked at a stage
	// where nobody decides (here: none), and the union of the actions.
	if c.ProtocolOption(milter.OptNoConnect) || c.ProtocolOption(milter.OptNoRcptTo) || c.ProtocolOption(milter.OptNoHeaders) {
		t.Errorf("stages negotiated away that a member needs: %#x", c.ProtocolOpts)
	}
	if c.ActionOpts != milter.OptAddHeader {
		t.Errorf("actions %#x, want add header only", c.ActionOpts)
	}
	res := c.Send(t, miltertest.Transaction{
		Peer:    &miltertest.Peer{Host: "client.example", Family: milter.FamilyInet, Port: 40000, Addr: "192.0.2.10", Helo: "helo.example"},
		Sender:  "a@example.org",
		Rcpts:   []miltertest.Rcpt{{Addr: "good@example.net"}, {Addr: "bad@example.net"}, {Addr: "grey@example.net"}},
		Headers: []miltertest.Header{{Name: "Subject", Value: " hi"}},
		Body:    strings.NewReader("body\r\n"),
	})
	if res.Reply.Code != milter.ActAccept {
		t.Fatalf("final reply %c, want accept", res.Reply.Code)
	}
	if got := []int{res.RcptReplies[1].SMTPCode, res.RcptReplies[2].SMTPCode}; !reflect.DeepEqual(got, []int{550, 451}) {
		t.Errorf("recipient replies %v, want 550 then 451", got)
	}
	want := []string{
		"access:connect", "access:helo",
		"access:mail", "policy:mail", "archive:mail",
		"access:rcpt good@example.net", "policy:rcpt good@example.net", "archive:rcpt good@example.net",
		"access:rcpt bad@example.net",
		"access:rcpt grey@example.net", "policy:rcpt grey@example.net",
		"access:eom", "policy:eom", "archive:eom", // every milter gets end of message
	}
	if got := r.calls(); !reflect.DeepEqual(got, want) {
		t.Errorf("calls\n got %q\nwant %q", got, want)
	}
	for name, wantR := range map[string][]string{
		"access":  {"good@example.net=continue", "bad@example.net=reject", "grey@example.net=continue"},
		"policy":  {"good@example.net=continue", "grey@example.net=tempfail"},
		"archive": {"good@example.net=continue"},
	} {
		st := r.memberTxns(t, name, 1)[0]
		if !reflect.DeepEqual(rcpts(st), wantR) {
			t.Errorf("%s's recipients %v, want %v", name, rcpts(st), wantR)
		}
		if st.Milter != name || st.Sender != "a@example.org" || st.Helo != "helo.example" || st.ClientAddr.String() != "192.0.2.10" {
			t.Errorf("%s's state: milter %q sender %q helo %q addr %v", name, st.Milter, st.Sender, st.Helo, st.ClientAddr)
		}
		if st.Final.Action != ActionAccept || st.FinalStage != StageEOM || st.Aborted {
			t.Errorf("%s final %v at %v aborted %v, want accept at eom", name, st.Final.Action, st.FinalStage, st.Aborted)
		}
	}
	// One transaction for the suite itself.
	r.WaitTxns(t, 1)
}

// TestSuiteFirstRefusalEndsTransaction: a refusal at MAIL or end of message
// answers the client; later members do not see the event and report the
// transaction as aborted (or not at all, if they saw nothing of it).
func TestSuiteFirstRefusalEndsTransaction(t *testing.T) {
	var r *suiteRun
	a := &member{name: "a", stages: StageMail | StageRcpt, mk: recording(&r, "a", &funcSession{
		mail: func(st *State) Decision {
			if st.Sender == "spam@example.org" {
				return Reject("550", "5.7.1", "Sender refused").WithRule("r1")
			}
			return Continue()
		}})}
	b := &member{name: "b", stages: StageMail | StageRcpt | StageEOM, mk: recording(&r, "b", &funcSession{
		eom: func(st *State, _ Modifier) Decision { return TempFail("451", "4.3.0", "Scanner down") }})}
	cm := &member{name: "c", stages: StageMail | StageRcpt | StageEOM, decides: StageEOM, message: true, mk: recording(&r, "c", &funcSession{})}
	r = serveSuite(t, a, b, cm)
	c := r.DialOffer(t, miltertest.PostfixActions, miltertest.PostfixProtocol)
	miltertest.Cont(t, "connect")(c.Conn("client.example", milter.FamilyInet, 40000, "192.0.2.10"))
	miltertest.Cont(t, "helo")(c.Helo("helo.example"))
	miltertest.Expect(t, "mail", milter.ActReplyCode, 550, "5.7.1 Sender refused")(c.Mail("spam@example.org", nil))
	if err := c.Abort(); err != nil {
		t.Fatal(err)
	}
	res := c.Send(t, miltertest.Transaction{Sender: "ok@example.org", Rcpts: []miltertest.Rcpt{{Addr: "x@example.net"}},
		Headers: []miltertest.Header{{Name: "Subject", Value: " hi"}}, Body: strings.NewReader("b\r\n")})
	if res.Reply.Code != milter.ActReplyCode || res.Reply.SMTPCode != 451 {
		t.Fatalf("eom reply %+v, want 451", res.Reply)
	}
	at := r.memberTxns(t, "a", 2)
	if at[0].Final.Action != ActionReject || at[0].FinalStage != StageMail || at[0].Final.RuleID != "r1" {
		t.Errorf("a's first transaction: %v at %v", at[0].Final, at[0].FinalStage)
	}
	if !at[1].Aborted && at[1].Final.Action != ActionAccept {
		t.Errorf("a's second transaction: %+v", at[1].Final)
	}
	bt := r.memberTxns(t, "b", 1) // b never saw the refused MAIL: no transaction
	if bt[0].Final.Action != ActionTempFail || bt[0].FinalStage != StageEOM {
		t.Errorf("b's transaction: %v at %v", bt[0].Final.Action, bt[0].FinalStage)
	}
	ct := r.memberTxns(t, "c", 1)
	if !ct[0].Aborted {
		t.Errorf("c's transaction not aborted: %+v", ct[0].Final)
	}
	for _, call := range r.calls() {
		if call == "c:eom" || call == "b:mail spam" {
			t.Errorf("a later member saw a refused event: %s", call)
		}
	}
}

// TestSuiteModificationsInOrder: the modifications of all members leave in
// chain order, a later member reads the message with the earlier members'
// changes, and each member may use only what it declared.
func TestSuiteModificationsInOrder(t *testing.T) {
	var seen string
	var undeclared error
	first := &member{name: "policy", stages: StageEOM, actions: MayAddHeader | MayChangeHeader | MayChangeBody, mk: func() *funcSession {
		return &funcSession{eom: func(st *State, m Modifier) Decision {
			if err := m.AddHeader("X-Policy", "checked"); err != nil {
				t.Error(err)
			}
			if err := m.ChangeHeader(1, "Subject", "[tagged] hi"); err != nil {
				t.Error(err)
			}
			if err := m.ReplaceBody(strings.NewReader("new body\r\n")); err != nil {
				t.Error(err)
			}
			return Continue()
		}}
	}}
	second := &member{name: "archive", stages: StageEOM, actions: MayAddHeader, message: true, decides: StageEOM, mk: func() *funcSession {
		return &funcSession{eom: func(st *State, m Modifier) Decision {
			b, err := io.ReadAll(st.Message.Reader())
			if err != nil {
				t.Error(err)
			}
			seen = string(b)
			undeclared = m.ReplaceBody(strings.NewReader("not mine to change\r\n"))
			if err := m.AddHeader("X-Archived", "yes"); err != nil {
				t.Error(err)
			}
			return Continue()
		}}
	}}
	r := serveSuite(t, first, second)
	c := r.DialOffer(t, miltertest.PostfixActions, miltertest.PostfixProtocol)
	res := c.Send(t, miltertest.Transaction{
		Peer:   &miltertest.Peer{Host: "client.example", Family: milter.FamilyInet, Port: 40000, Addr: "192.0.2.10", Helo: "helo.example"},
		Sender: "a@example.org", Rcpts: []miltertest.Rcpt{{Addr: "b@example.net"}},
		Headers: []miltertest.Header{{Name: "Subject", Value: " hi"}, {Name: "From", Value: " a@example.org"}},
		Body:    strings.NewReader("old body\r\n"),
	})
	if res.Reply.Code != milter.ActAccept {
		t.Fatalf("reply %c", res.Reply.Code)
	}
	wantMsg := "Subject: [tagged] hi\r\nFrom: a@example.org\r\nX-Policy: checked\r\n\r\nnew body\r\n"
	if seen != wantMsg {
		t.Errorf("the later member read\n%q\nwant\n%q", seen, wantMsg)
	}
	if !errors.Is(undeclared, ErrNotNegotiated) {
		t.Errorf("undeclared body change by a member: %v, want ErrNotNegotiated", undeclared)
	}
	var order []string
	for _, m := range res.Mods {
		switch m.Code {
		case milter.ActAddHeader, milter.ActChangeHeader:
			order = append(order, m.HeaderName)
		case milter.ActReplBody:
			if len(order) == 0 || order[len(order)-1] != "body" {
				order = append(order, "body")
			}
			if !bytes.Contains(m.Body, []byte("new body")) {
				t.Errorf("replaced body %q", m.Body)
			}
		}
	}
	if want := []string{"X-Policy", "Subject", "body", "X-Archived"}; !reflect.DeepEqual(order, want) {
		t.Errorf("modifications %v, want %v", order, want)
	}
}

// TestSuitePanicInOneMember: a panic in one member tempfails the transaction,
// is counted with its name, and the next transaction is served normally.
func TestSuitePanicInOneMember(t *testing.T) {
	a := &member{name: "a", stages: StageRcpt, mk: func() *funcSession { return &funcSession{} }}
	b := &member{name: "b", stages: StageRcpt, mk: func() *funcSession {
		return &funcSession{rcpt: func(_ *State, rc *Recipient) Decision {
			if rc.Addr == "boom@example.net" {
				panic("member bug")
			}
			return Continue()
		}}
	}}
	r := serveSuite(t, a, b)
	c := r.DialOffer(t, miltertest.PostfixActions, miltertest.PostfixProtocol)
	miltertest.Cont(t, "mail")(c.Mail("a@example.org", nil))
	miltertest.Expect(t, "rcpt boom", milter.ActReplyCode, 451, "4.3.0 Temporary failure")(c.Rcpt("boom@example.net", nil))
	// The rest of the transaction tempfails too: the member is poisoned.
	miltertest.Expect(t, "rcpt after", milter.ActReplyCode, 451, "4.3.0 Temporary failure")(c.Rcpt("ok@example.net", nil))
	if err := c.Abort(); err != nil {
		t.Fatal(err)
	}
	c.Txn(t, "a@example.org", "ok@example.net")
	c.EndExpect(t, milter.ActAccept, 0, "")
	bt := r.memberTxns(t, "b", 2)
	if bt[0].Final.Action != ActionTempFail || !strings.Contains(bt[0].Final.Reason, "panic") {
		t.Errorf("b's first transaction: %+v", bt[0].Final)
	}
	if bt[1].Final.Action != ActionAccept {
		t.Errorf("b's second transaction: %+v", bt[1].Final)
	}
	if got := r.Counter(t, "geomilter_suite_member_panics_total", "member", "b"); got != 1 {
		t.Errorf("panics{member=b} = %v, want 1", got)
	}
}

// TestSuiteAcceptAndQuarantine: a member that accepts sees nothing more while
// the others go on; the suite accepts only when all have; a quarantine asked
// for early holds the message at end of message and is each member's own.
func TestSuiteAcceptAndQuarantine(t *testing.T) {
	var r *suiteRun
	a := &member{name: "a", stages: StageMail | StageRcpt, mk: recording(&r, "a", &funcSession{
		mail: func(*State) Decision { return Accept().WithReason("trusted") }})}
	b := &member{name: "b", stages: StageRcpt, actions: MayQuarantine, mk: recording(&r, "b", &funcSession{
		rcpt: func(*State, *Recipient) Decision { return Quarantine("suspicious") }})}
	r = serveSuite(t, a, b)
	c := r.DialOffer(t, miltertest.PostfixActions, miltertest.PostfixProtocol)
	miltertest.Cont(t, "mail")(c.Mail("a@example.org", nil))
	miltertest.Cont(t, "rcpt")(c.Rcpt("x@example.net", nil))
	mods := c.EndExpect(t, milter.ActAccept, 0, "")
	q := false
	for _, m := range mods {
		q = q || m.Code == milter.ActQuarantine
	}
	if !q {
		t.Errorf("no quarantine sent: %+v", mods)
	}
	for _, call := range r.calls() {
		if strings.HasPrefix(call, "a:rcpt") {
			t.Errorf("a saw %s after accepting", call)
		}
	}
	at := r.memberTxns(t, "a", 1)
	if at[0].Final.Action != ActionAccept || at[0].FinalStage != StageMail {
		t.Errorf("a: %v at %v", at[0].Final.Action, at[0].FinalStage)
	}
	bt := r.memberTxns(t, "b", 1)
	if bt[0].Final.Action != ActionQuarantine || bt[0].Final.QuarantineReason != "suspicious" {
		t.Errorf("b: %+v", bt[0].Final)
	}
	if st := r.WaitTxns(t, 1)[0]; st.Final.Action != ActionQuarantine {
		t.Errorf("suite: %v", st.Final.Action)
	}
}

// TestSuiteConnectRefusal: a refusal at connect answers the connection and is
// reported by the member that made it only.
func TestSuiteConnectRefusal(t *testing.T) {
	var r *suiteRun
	a := &member{name: "a", stages: StageConnect, mk: recording(&r, "a", &funcSession{})}
	b := &member{name: "b", stages: StageConnect | StageMail, mk: recording(&r, "b", &funcSession{
		connect: func(*State) Decision { return Reject("554", "5.7.1", "Go away") }})}
	cm := &member{name: "c", stages: StageConnect, mk: recording(&r, "c", &funcSession{})}
	r = serveSuite(t, a, b, cm)
	c := r.DialOffer(t, miltertest.PostfixActions, miltertest.PostfixProtocol)
	miltertest.Expect(t, "connect", milter.ActReplyCode, 554, "5.7.1 Go away")(c.Conn("client.example", milter.FamilyInet, 40000, "192.0.2.10"))
	bt := r.memberTxns(t, "b", 1)
	if bt[0].Final.Action != ActionReject || bt[0].FinalStage != StageConnect {
		t.Errorf("b: %v at %v", bt[0].Final.Action, bt[0].FinalStage)
	}
	r.WaitTxns(t, 1)
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.txns["a"])+len(r.txns["c"]) != 0 {
		t.Errorf("members that did not decide reported transactions: a %d, c %d", len(r.txns["a"]), len(r.txns["c"]))
	}
	if got := r.log; !reflect.DeepEqual(got, []string{"a:connect", "b:connect"}) {
		t.Errorf("calls %q", got)
	}
}
