package milterrt

import (
	"fmt"
	"io"
	"runtime/debug"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/shared/message"
)

// A suite hosts several milters behind one milter connection, so Postfix
// pays its per-milter cost (a connection per SMTP session, a negotiation,
// macros and a round trip per event) once instead of once per milter
// (docs/runtime.md, "Several milters on one socket"). It is itself a Milter:
// the runtime serves it like any other, and nothing in a member knows it is
// hosted.
//
// Each member keeps what it has when it runs alone: its own State (its
// recipients, reasons, trail section, final decision), its own modifications
// and its own end-of-transaction hook. The suite reproduces what Postfix does
// with a chain of milters (POSTFIX-MILTER-NOTES.md, milter8.c):
//   - each event goes to the members in chain order, each only at the stages
//     it lists;
//   - the first decision other than continue answers the event, and later
//     members do not see it; at RCPT that is per recipient (a refused
//     recipient is not sent to later members), elsewhere it ends the
//     transaction (or the connection) for every member;
//   - a member that accepts sees nothing more of the transaction (of the
//     connection, at connect or helo); the others go on; the suite answers
//     accept only when every member has accepted;
//   - a quarantine is held for end of message and does not stop the chain;
//   - at end of message each member gets the message with the changes the
//     earlier members asked for (headers added, changed, inserted; body
//     replaced), as Postfix hands it to the next milter, and the
//     modifications of all members leave in chain order;
//   - a panic in one member tempfails the transaction (the connection, at
//     connect or helo) and is logged and counted with the member's name.
//
// Differences from separate processes, by design: a member's decision at a
// stage where that member only observes (see Decider) is answered at once
// when another member decides at that stage, instead of being held until the
// member's next reply; a member that decided at connect or helo reports that
// decision with the first transaction that ends afterwards.

// SuiteMember is one milter hosted in a suite, with its own
// end-of-transaction hook (its trail event), called with its own State.
type SuiteMember struct {
	Milter        Milter
	OnTransaction func(st *State) // may be nil
}

// SuiteOptions configures NewSuite.
type SuiteOptions struct {
	Logger     zerolog.Logger
	Registerer prometheus.Registerer // nil: metrics kept, not exported
	// MessageDir and MessageMemory place the copies of a message made for
	// a member after an earlier member changed it (as Options.MessageDir,
	// Options.MessageMemory of the server).
	MessageDir    string
	MessageMemory int64
}

// NewSuite returns a Milter named name that runs members, in chain order,
// behind one milter connection. Serve it with New; set Options.MessageDir
// and MessageMemory as in opts. The server's Options.OnTransaction sees the
// suite's own State; each member's transaction goes to its own hook.
func NewSuite(name string, members []SuiteMember, opts SuiteOptions) Milter {
	s := &suite{name: name, opts: opts, log: opts.Logger.With().Str("milter", name).Logger()}
	for _, m := range members {
		info := memberInfo{SuiteMember: m, name: m.Milter.Name(), stages: m.Milter.Stages() | StageEOM, mods: m.Milter.Modifications()}
		if mu, ok := m.Milter.(MessageUser); ok && mu.UsesMessage() {
			info.usesMessage = true
			s.usesMessage = true
		}
		s.stages |= m.Milter.Stages()
		s.mods |= info.mods
		s.members = append(s.members, info)
	}
	s.panics = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "geomilter_suite_member_panics_total", Help: "Panics recovered in a suite member's session code, by member.",
		ConstLabels: prometheus.Labels{"milter": name},
	}, []string{"member"})
	if opts.Registerer != nil {
		if err := opts.Registerer.Register(s.panics); err != nil {
			s.log.Warn().Err(err).Msg("suite metrics not registered")
		}
	}
	return s
}

type memberInfo struct {
	SuiteMember
	name        string
	stages      Stages // listed, with end of message
	mods        Modifications
	usesMessage bool
}

type suite struct {
	name        string
	opts        SuiteOptions
	log         zerolog.Logger
	members     []memberInfo
	stages      Stages
	mods        Modifications
	usesMessage bool
	panics      *prometheus.CounterVec
}

func (s *suite) Name() string                 { return s.name }
func (s *suite) Stages() Stages               { return s.stages }
func (s *suite) Modifications() Modifications { return s.mods }
func (s *suite) UsesMessage() bool            { return s.usesMessage }

// DecidesAt is the union of where the members decide: the suite answers at a
// stage when any member may decide there.
func (s *suite) DecidesAt() Stages {
	var d Stages
	for _, m := range s.members {
		if dm, ok := m.Milter.(Decider); ok {
			d |= dm.DecidesAt() & m.stages
		} else {
			d |= m.stages
		}
	}
	return d
}

func (s *suite) NewSession(st *State) Session {
	ss := &suiteSession{s: s}
	for i := range s.members {
		info := &s.members[i]
		ms := &memberSession{info: info, st: State{Milter: info.name, SessionID: st.SessionID, ConnStart: st.ConnStart,
			Macros: st.Macros}}
		ss.ms = append(ss.ms, ms)
		ss.guard(ms, "new_session", func() Decision {
			ms.impl = info.Milter.NewSession(&ms.st)
			return Continue()
		})
		if ms.impl == nil {
			if !ms.connPoison {
				s.log.Error().Str("session", st.SessionID).Str("member", info.name).Msg("NewSession returned nil; failing the connection")
			}
			ms.impl, ms.connPoison = BaseSession{}, true
		}
	}
	return ss
}

// memberSession is one member's view of the connection.
type memberSession struct {
	info *memberInfo
	st   State
	impl Session

	connPoison bool      // panicked at connect or helo: tempfails every event
	connDone   *Decision // decided at connect or helo (not yet reported)
	connStage  Stages
	connReport bool   // connDone was reported with a transaction already
	connQ      string // quarantine asked for at connect or helo: every transaction
	sticky     bool   // connDone applies to every transaction (discard)

	inTxn      bool      // has seen an event of the current transaction
	done       *Decision // its decision for the transaction (it sees no more events)
	doneStage  Stages
	aborted    bool // Abort already called for this transaction
	txnPoison  bool
	pendingQ   string // quarantine reason, applied at end of message
	eomDone    bool
	quarantine string // quarantine sent by the member through its Modifier
}

type suiteSession struct {
	s  *suite
	ms []*memberSession
	// Per transaction.
	edits editLog
	views []*message.Message // message copies made for later members; closed when it ends
	// lastView is the newest copy and the edits it holds (len(headers),
	// bodies): members with no edit between them share one copy.
	lastView          *message.Message
	lastHdrs, lastBds int
	anyQ              *Decision // the first quarantine held for end of message
	reportQ           bool      // anyQ was handed to the runtime
}

// guard runs one member call; a panic becomes panicDecision for that member.
func (ss *suiteSession) guard(ms *memberSession, where string, fn func() Decision) (d Decision) {
	start := time.Now()
	defer func() {
		// A member's Busy is its own share of the suite's time.
		ms.st.Busy += time.Since(start)
		if r := recover(); r != nil {
			ss.s.panics.WithLabelValues(ms.info.name).Inc()
			ss.s.log.Error().Str("session", ms.st.SessionID).Str("txn", ms.st.TxnID).Str("member", ms.info.name).
				Str("stage", where).Str("panic", fmt.Sprint(r)).Str("stack", string(debug.Stack())).
				Msg("panic in suite member session recovered; answering tempfail")
			if where == "connect" || where == "helo" || where == "new_session" {
				ms.connPoison = true
			} else {
				ms.txnPoison = true
			}
			d = panicDecision
		}
	}()
	return fn().normalised()
}

// sync gives a member the connection and envelope facts of the suite's State;
// its recipients and trail fields stay its own.
func (ms *memberSession) sync(st *State) {
	m := &ms.st
	m.SessionID, m.TxnID, m.TxnStart = st.SessionID, st.TxnID, st.TxnStart
	m.ClientHost, m.ClientAddr, m.ClientPort, m.Family, m.Helo, m.ConnStart = st.ClientHost, st.ClientAddr, st.ClientPort, st.Family, st.Helo, st.ConnStart
	m.Sender, m.MailParams, m.BodyBytes, m.Macros = st.Sender, st.MailParams, st.BodyBytes, st.Macros
	m.Headers = st.Headers // EndOfMessage may give it an edited view instead (view)
	if ms.info.usesMessage {
		m.Message = st.Message
	}
}

// connEvent runs connect or helo through the members.
func (ss *suiteSession) connEvent(st *State, stage Stages, call func(ms *memberSession) Decision) Decision {
	allDone := true
	for _, ms := range ss.ms {
		if ms.connDone != nil {
			continue
		}
		if ms.info.stages&stage == 0 {
			allDone = false
			continue
		}
		ms.sync(st)
		var d Decision
		if ms.connPoison {
			d = panicDecision
		} else {
			d = ss.guard(ms, stage.String(), func() Decision { return call(ms) })
		}
		switch d.Action {
		case ActionContinue:
			allDone = false
			continue
		case ActionQuarantine:
			// Applied to every transaction of the connection (as the runtime does).
			ms.connQ = d.QuarantineReason
			allDone = false
			continue
		case ActionAccept:
			ms.connDone, ms.connStage, ms.connReport = &d, stage, false
			continue
		case ActionDiscard:
			ms.connDone, ms.connStage, ms.connReport, ms.sticky = &d, stage, false, true
			return d
		}
		ms.connDone, ms.connStage, ms.connReport = &d, stage, false
		return d
	}
	if allDone {
		return Accept()
	}
	for _, ms := range ss.ms {
		if ms.connQ != "" {
			return Quarantine(ms.connQ)
		}
	}
	return Continue()
}

func (ss *suiteSession) Connect(st *State) Decision {
	return ss.connEvent(st, StageConnect, func(ms *memberSession) Decision { return ms.impl.Connect(&ms.st) })
}

func (ss *suiteSession) Helo(st *State) Decision {
	return ss.connEvent(st, StageHelo, func(ms *memberSession) Decision { return ms.impl.Helo(&ms.st) })
}

// live reports whether a member takes events of the current transaction.
func (ms *memberSession) live() bool {
	return ms.connDone == nil && ms.done == nil
}

// txnEvent runs a transaction stage other than RCPT and end of message.
func (ss *suiteSession) txnEvent(st *State, stage Stages, call func(ms *memberSession) Decision) Decision {
	for _, ms := range ss.ms {
		if !ms.live() || ms.info.stages&stage == 0 {
			continue
		}
		ms.sync(st)
		ms.inTxn = true
		d := ss.memberTxnCall(ms, stage, call)
		if d.Action == ActionContinue {
			continue
		}
		if d.Action == ActionQuarantine {
			ms.pendingQ = d.QuarantineReason
			ss.holdQ(d)
			continue
		}
		ss.memberDone(ms, stage, d)
		if d.Action == ActionAccept {
			continue
		}
		return d
	}
	return ss.settle()
}

func (ss *suiteSession) memberTxnCall(ms *memberSession, stage Stages, call func(ms *memberSession) Decision) Decision {
	if ms.connPoison || ms.txnPoison {
		return panicDecision
	}
	return ss.guard(ms, stage.String(), func() Decision { return call(ms) })
}

// memberDone ends the transaction for a member that decided (as the runtime
// ends it for a milter alone: Abort, then no more events).
func (ss *suiteSession) memberDone(ms *memberSession, stage Stages, d Decision) {
	ms.done, ms.doneStage = &d, stage
	if stage != StageEOM {
		ms.abort()
	}
}

func (ms *memberSession) abort() {
	if ms.aborted {
		return
	}
	ms.aborted = true
	defer func() { _ = recover() }() // logged by nobody: Abort has nothing to answer
	ms.impl.Abort(&ms.st)
}

// holdQ keeps the first quarantine asked for before end of message.
func (ss *suiteSession) holdQ(d Decision) {
	if ss.anyQ == nil {
		ss.anyQ = &d
	}
}

// settle is the suite's answer when no member refused: accept once every
// member has accepted, a held quarantine the first time, else continue.
func (ss *suiteSession) settle() Decision {
	all := true
	for _, ms := range ss.ms {
		if ms.live() {
			all = false
			break
		}
	}
	if all {
		return Accept()
	}
	if ss.anyQ != nil && !ss.reportQ {
		ss.reportQ = true
		return *ss.anyQ
	}
	return Continue()
}

func (ss *suiteSession) MailFrom(st *State) Decision {
	ss.startTxn()
	return ss.txnEvent(st, StageMail, func(ms *memberSession) Decision { return ms.impl.MailFrom(&ms.st) })
}

// startTxn prepares the members for a transaction: a quarantine decided at
// connect or helo applies to it.
func (ss *suiteSession) startTxn() {
	for _, ms := range ss.ms {
		if ms.connQ != "" && ms.pendingQ == "" {
			ms.pendingQ = ms.connQ
		}
	}
}

func (ss *suiteSession) RcptTo(st *State, rcpt *Recipient) Decision {
	for _, ms := range ss.ms {
		if !ms.live() || ms.info.stages&StageRcpt == 0 {
			continue
		}
		ms.sync(st)
		ms.inTxn = true
		mr := &Recipient{Addr: rcpt.Addr, Params: rcpt.Params}
		ms.st.Rcpts = append(ms.st.Rcpts, mr)
		d := ss.memberTxnCall(ms, StageRcpt, func(ms *memberSession) Decision { return ms.impl.RcptTo(&ms.st, mr) })
		mr.Decision = d
		switch d.Action {
		case ActionContinue:
			continue
		case ActionQuarantine:
			ms.pendingQ = d.QuarantineReason
			ss.holdQ(d)
			continue
		case ActionReject, ActionTempFail:
			return d // this recipient only; later members never see it
		}
		ss.memberDone(ms, StageRcpt, d)
		if d.Action == ActionAccept {
			continue
		}
		return d
	}
	return ss.settle()
}

func (ss *suiteSession) Header(st *State, h HeaderField) Decision {
	return ss.txnEvent(st, StageHeaders, func(ms *memberSession) Decision { return ms.impl.Header(&ms.st, h) })
}

func (ss *suiteSession) EndOfHeaders(st *State) Decision {
	return ss.txnEvent(st, StageEOH, func(ms *memberSession) Decision { return ms.impl.EndOfHeaders(&ms.st) })
}

func (ss *suiteSession) BodyChunk(st *State, chunk []byte) Decision {
	return ss.txnEvent(st, StageBody, func(ms *memberSession) Decision { return ms.impl.BodyChunk(&ms.st, chunk) })
}

// EndOfMessage runs the members in order, each with the message as the
// earlier members left it; their modifications go out in that order.
func (ss *suiteSession) EndOfMessage(st *State, mod Modifier) Decision {
	var quarantine *Decision
	for _, ms := range ss.ms {
		if !ms.live() {
			continue
		}
		ms.sync(st)
		ms.inTxn = true
		if err := ss.view(ms, st); err != nil {
			ss.s.log.Error().Str("session", st.SessionID).Str("txn", st.TxnID).Str("member", ms.info.name).Err(err).
				Msg("message with the earlier members' changes could not be stored; answering tempfail")
			d := TempFail("451", "4.3.0", "Temporary failure").WithReason("suite: message copy for " + ms.info.name + ": " + err.Error()).normalised()
			ss.memberDone(ms, StageEOM, d)
			return d
		}
		mm := &memberModifier{Modifier: mod, ms: ms, ss: ss}
		d := ss.memberTxnCall(ms, StageEOM, func(ms *memberSession) Decision { return ms.impl.EndOfMessage(&ms.st, mm) })
		ms.eomDone = true
		switch d.Action {
		case ActionContinue, ActionAccept:
			ss.memberDone(ms, StageEOM, d)
			continue
		case ActionQuarantine:
			ss.memberDone(ms, StageEOM, d)
			if quarantine == nil {
				quarantine = &d
			}
			continue
		}
		ss.memberDone(ms, StageEOM, d)
		return d
	}
	if quarantine != nil {
		return *quarantine
	}
	return Continue()
}

func (ss *suiteSession) Abort(st *State) {
	for _, ms := range ss.ms {
		if ms.inTxn {
			ms.sync(st)
			ms.abort()
		}
	}
}

// EndTransaction reports each member's transaction to its own hook, as the
// runtime would report it for the member alone, then resets the members.
func (ss *suiteSession) EndTransaction(st *State) {
	for _, ms := range ss.ms {
		report := ms.inTxn || ms.done != nil
		if ms.connDone != nil && (ms.sticky || !ms.connReport) {
			report = true
		}
		if report {
			ms.sync(st)
			ss.final(ms, st)
			if cb := ms.info.OnTransaction; cb != nil {
				func() {
					defer func() {
						if r := recover(); r != nil {
							ss.s.log.Error().Str("member", ms.info.name).Str("panic", fmt.Sprint(r)).Msg("panic in a suite member's transaction hook recovered")
						}
					}()
					cb(&ms.st)
				}()
			}
			if ms.connDone != nil && !ms.sticky {
				ms.connReport = true
			}
		}
		ms.st.resetTxn(nil)
		ms.st.Macros = nil
		ms.inTxn, ms.done, ms.doneStage, ms.aborted, ms.txnPoison, ms.pendingQ, ms.eomDone, ms.quarantine =
			false, nil, 0, false, false, "", false, ""
	}
	ss.closeViews()
	ss.anyQ, ss.reportQ = nil, false
}

// closeViews removes the transaction's message copies and replaced body.
func (ss *suiteSession) closeViews() {
	for _, v := range ss.views {
		_ = v.Close()
	}
	if ss.edits.body != nil {
		_ = ss.edits.body.Close()
	}
	ss.views, ss.edits, ss.lastView = nil, editLog{}, nil
}

// final sets a member's Final, FinalStage and Aborted as the runtime would
// for the member alone.
func (ss *suiteSession) final(ms *memberSession, st *State) {
	m := &ms.st
	m.Aborted = false
	switch {
	case ms.connDone != nil:
		m.Final, m.FinalStage = *ms.connDone, ms.connStage
	case ms.done != nil && ms.doneStage == StageEOM:
		d := *ms.done
		if d.Action == ActionContinue || d.Action == ActionAccept || d.Action == ActionQuarantine {
			reason := ms.quarantine
			if reason == "" && d.Action == ActionQuarantine {
				reason = d.QuarantineReason
			}
			if reason == "" {
				reason = ms.pendingQ
			}
			if reason != "" {
				d.Action, d.QuarantineReason = ActionQuarantine, reason
			} else {
				d.Action = ActionAccept
			}
		}
		m.Final, m.FinalStage = d, StageEOM
	case ms.done != nil:
		m.Final, m.FinalStage = *ms.done, ms.doneStage
	default:
		// The transaction ended without this member's decision: another
		// member decided, the client gave up, or every recipient was refused.
		m.Aborted = true
		m.Final, m.FinalStage = Decision{Action: ActionContinue, Reason: "aborted"}, 0
		switch {
		case ms.txnPoison:
			m.Final = panicDecision
		case len(m.Rcpts) > 0 && len(m.AcceptedRcpts()) == 0:
			m.Final, m.FinalStage = m.Rcpts[len(m.Rcpts)-1].Decision, StageRcpt
		}
		ms.abort()
	}
}

func (ss *suiteSession) Close(st *State) {
	for _, ms := range ss.ms {
		ms.sync(st)
		func() {
			defer func() { _ = recover() }()
			ms.impl.Close(&ms.st)
		}()
	}
	ss.closeViews()
}

var (
	_ Session          = (*suiteSession)(nil)
	_ TransactionEnder = (*suiteSession)(nil)
	_ Decider          = (*suite)(nil)
	_ MessageUser      = (*suite)(nil)
)

// --- modifications and the message the next member sees -------------------------

// editLog is what the members asked to change so far, in order.
type editLog struct {
	headers []headerEdit
	body    *message.Message // the replaced body (headers empty), nil if not replaced
	bodies  int              // body replacements so far
}

type headerEdit struct {
	op          byte // 'a' add, 'i' insert, 'c' change
	index       int
	name, value string
}

func (e *editLog) empty() bool { return len(e.headers) == 0 && e.body == nil }

// memberModifier passes a member's modifications on, checking them against
// what the member declared, and records them for the members after it.
type memberModifier struct {
	Modifier
	ms *memberSession
	ss *suiteSession
}

func (mm *memberModifier) need(a Modifications, what string) error {
	if mm.ms.info.mods&a == 0 {
		return fmt.Errorf("%s: %w", what, ErrNotNegotiated)
	}
	return nil
}

func (mm *memberModifier) AddHeader(name, value string) error {
	if err := mm.need(MayAddHeader, "add header"); err != nil {
		return err
	}
	if err := mm.Modifier.AddHeader(name, value); err != nil {
		return err
	}
	mm.ss.edits.headers = append(mm.ss.edits.headers, headerEdit{op: 'a', name: name, value: value})
	return nil
}

func (mm *memberModifier) ChangeHeader(index int, name, value string) error {
	if err := mm.need(MayChangeHeader, "change header"); err != nil {
		return err
	}
	if err := mm.Modifier.ChangeHeader(index, name, value); err != nil {
		return err
	}
	mm.ss.edits.headers = append(mm.ss.edits.headers, headerEdit{op: 'c', index: index, name: name, value: value})
	return nil
}

func (mm *memberModifier) InsertHeader(index int, name, value string) error {
	if err := mm.need(MayAddHeader, "insert header"); err != nil {
		return err
	}
	if err := mm.Modifier.InsertHeader(index, name, value); err != nil {
		return err
	}
	mm.ss.edits.headers = append(mm.ss.edits.headers, headerEdit{op: 'i', index: index, name: name, value: value})
	return nil
}

func (mm *memberModifier) Quarantine(reason string) error {
	if err := mm.need(MayQuarantine, "quarantine"); err != nil {
		return err
	}
	if err := mm.Modifier.Quarantine(reason); err != nil {
		return err
	}
	mm.ms.quarantine = Quarantine(reason).normalised().QuarantineReason
	return nil
}

func (mm *memberModifier) AddRcpt(rcpt string) error {
	if err := mm.need(MayAddRcpt, "add rcpt"); err != nil {
		return err
	}
	return mm.Modifier.AddRcpt(rcpt)
}

func (mm *memberModifier) DelRcpt(rcpt string) error {
	if err := mm.need(MayDelRcpt, "delete rcpt"); err != nil {
		return err
	}
	return mm.Modifier.DelRcpt(rcpt)
}

// ReplaceBody sends the new body on and keeps a copy of it for the members
// after this one (in memory up to the suite's message memory, then a file).
func (mm *memberModifier) ReplaceBody(r io.Reader) error {
	if err := mm.need(MayChangeBody, "replace body"); err != nil {
		return err
	}
	opts := mm.ss.s.opts
	body := message.New(message.Options{Dir: opts.MessageDir, MemoryLimit: opts.MessageMemory})
	if err := body.EndHeaders(); err != nil {
		return err
	}
	err := mm.Modifier.ReplaceBody(io.TeeReader(r, body))
	if err == nil {
		err = body.Err()
	}
	if err != nil {
		_ = body.Close()
		return err
	}
	if mm.ss.edits.body != nil {
		_ = mm.ss.edits.body.Close()
	}
	mm.ss.edits.body = body
	mm.ss.edits.bodies++
	return nil
}

// view gives a member that reads the message the message as the earlier
// members left it: unchanged (the runtime's), or a copy with their edits.
func (ss *suiteSession) view(ms *memberSession, st *State) error {
	if ss.edits.empty() {
		return nil
	}
	headers := applyHeaderEdits(st.Headers, ss.edits.headers)
	ms.st.Headers = headers
	if !ms.info.usesMessage || st.Message == nil {
		return nil
	}
	if ss.lastView != nil && ss.lastHdrs == len(ss.edits.headers) && ss.lastBds == ss.edits.bodies {
		ms.st.Message = ss.lastView
		return nil
	}
	m := message.New(message.Options{Dir: ss.s.opts.MessageDir, MemoryLimit: ss.s.opts.MessageMemory})
	ss.views = append(ss.views, m)
	for _, h := range headers {
		if err := m.AddHeader(h.Name, h.Raw); err != nil {
			return err
		}
	}
	if err := m.EndHeaders(); err != nil {
		return err
	}
	var body io.Reader = st.Message.BodyReader()
	if ss.edits.body != nil {
		body = ss.edits.body.BodyReader()
	}
	if _, err := io.Copy(m, body); err != nil {
		return fmt.Errorf("copying the body: %w", err)
	}
	if err := m.Err(); err != nil {
		return err
	}
	ms.st.Message = m
	ss.lastView, ss.lastHdrs, ss.lastBds = m, len(ss.edits.headers), ss.edits.bodies
	return nil
}

// applyHeaderEdits returns the header fields after the recorded edits, with
// Postfix's index rules (POSTFIX-MILTER-NOTES.md): change counts fields of
// that name from 1, an empty value deletes; insert counts all fields from 0;
// add appends.
func applyHeaderEdits(in []HeaderField, edits []headerEdit) []HeaderField {
	out := append([]HeaderField(nil), in...)
	for _, e := range edits {
		f := NewHeaderField(e.name, leadSpace(e.value))
		switch e.op {
		case 'a':
			out = append(out, f)
		case 'i':
			i := min(max(e.index, 0), len(out))
			out = append(out[:i], append([]HeaderField{f}, out[i:]...)...)
		case 'c':
			n := 0
			for i := range out {
				if !strings.EqualFold(out[i].Name, e.name) {
					continue
				}
				n++
				if n != e.index {
					continue
				}
				if e.value == "" {
					out = append(out[:i], out[i+1:]...)
				} else {
					out[i] = NewHeaderField(out[i].Name, leadSpace(e.value))
				}
				break
			}
		}
	}
	return out
}

// leadSpace is the raw value Postfix stores for a header a milter adds:
// "Name: value", one space after the colon unless the value brings its own.
func leadSpace(v string) string {
	if v == "" || v[0] == ' ' || v[0] == '\t' {
		return v
	}
	return " " + v
}
