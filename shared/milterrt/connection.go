package milterrt

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	milter "github.com/emersion/go-milter"

	"github.com/geomilter/geomilter/shared/message"
)

// panicDecision answers every event of a transaction whose Session panicked.
var panicDecision = TempFail("451", "4.3.0", "Temporary failure").WithReason("panic in milter session").normalised()

// connection is one milter connection: it reads the MTA's commands, calls the
// milter's Session and writes the replies, on one goroutine.
type connection struct {
	srv  *Server
	raw  net.Conn
	br   *bufio.Reader
	id   string
	st   State
	impl Session // created at the first event, on the session goroutine

	// Shared with Shutdown.
	mu      sync.Mutex
	busy    bool // an event is being handled and its reply not yet written
	inTxn   bool
	closing bool

	// Session goroutine only.
	hdr        [4]byte
	in, out    []byte             // packet buffers, reused
	proto      milter.OptProtocol // negotiated protocol flags
	actions    Modifications      // negotiated modifications
	txnSeq     int
	txnOpen    bool
	txnPoison  bool      // a Session method panicked: the rest of the transaction tempfails
	connPoison bool      // likewise for the whole connection (panic at connect/helo)
	sticky     Decision  // discard or quarantine decided at connect/helo, applied to every transaction
	pendingQ   *Decision // quarantine decided before end of message
	// A decision made at a stage without reply waits for the next reply
	// (see Decider): held for the transaction, connHeld for the connection.
	held, connHeld           *Decision
	heldStage, connHeldStage Stages
	fromHeld                 Stages   // the decision run returned last was held at this stage (0: a fresh one)
	macroCmd                 byte     // command of the macros received last
	macros                   []string // name, value, …: merged at that command's event
	connMacros               map[string]string
	replyPending             bool  // the reply to the current event is not written yet
	endAfter                 bool  // end the transaction once that reply is written
	abortAfter               bool  // … calling Session.Abort first
	msgErr                   error // the transaction's message could not be stored whole (MessageUser)
	closeOnce                sync.Once
}

func newConnection(srv *Server, raw net.Conn) *connection {
	c := &connection{srv: srv, raw: raw, id: srv.newID(), connMacros: make(map[string]string)}
	c.st = State{
		Milter:    srv.m.Name(),
		SessionID: c.id,
		ConnStart: srv.now(),
		Macros:    make(map[string]string),
	}
	c.br = bufio.NewReaderSize(rawReader{c}, 8<<10)
	return c
}

// enter marks the start of an event and creates the Session on first use.
func (c *connection) enter() {
	c.mu.Lock()
	c.busy = true
	c.mu.Unlock()
	if c.impl == nil {
		c.newImpl()
	}
}

func (c *connection) newImpl() {
	defer func() {
		if r := recover(); r != nil {
			c.recovered("new_session", r)
			c.impl = BaseSession{}
			c.connPoison = true
		}
	}()
	c.impl = c.srv.m.NewSession(&c.st)
	if c.impl == nil {
		c.srv.log.Error().Str("session", c.id).Msg("NewSession returned nil; failing the connection")
		c.impl = BaseSession{}
		c.connPoison = true
	}
}

// applyMacros merges the macros received for the current event into State.
// Those sent with connect and helo persist across transactions; the others
// end with the transaction.
func (c *connection) applyMacros() {
	if len(c.macros) == 0 {
		return
	}
	connLevel := c.macroCmd == byte(milter.CodeConn) || c.macroCmd == byte(milter.CodeHelo)
	for i := 0; i+1 < len(c.macros); i += 2 {
		k, v := c.macros[i], c.macros[i+1]
		c.st.Macros[k] = v
		if connLevel {
			c.connMacros[k] = v
		}
	}
	c.macros = c.macros[:0]
}

// heldDecision returns the decision that answers this stage without calling
// the milter: one held at a stage without reply (Decider).
func (c *connection) heldDecision(txnStage bool) (Decision, Stages, bool) {
	if c.connHeld != nil {
		return *c.connHeld, c.connHeldStage, true
	}
	if txnStage && c.held != nil {
		return *c.held, c.heldStage, true
	}
	return Decision{}, 0, false
}

// run calls the milter for one stage with panic recovery and timing, and
// returns its normalised decision.
func (c *connection) run(stage Stages, fn func() Decision) (d Decision) {
	txnStage := stage != StageConnect && stage != StageHelo
	switch {
	case c.connPoison || (txnStage && c.txnPoison):
		d = panicDecision
		c.srv.met.decision(stage, d.Action)
		return d
	case txnStage && c.sticky.Action == ActionDiscard:
		d = c.sticky
		c.srv.met.decision(stage, d.Action)
		return d
	}
	c.fromHeld = 0
	if held, at, ok := c.heldDecision(txnStage); ok {
		c.fromHeld = at
		return held // counted in metrics where it was decided
	}
	start := time.Now()
	defer func() {
		if r := recover(); r != nil {
			c.recovered(stage.String(), r)
			if txnStage {
				c.txnPoison = true
			} else {
				c.connPoison = true
			}
			d = panicDecision
		}
		c.srv.met.observe(stage, time.Since(start))
		d = d.normalised()
		c.srv.met.decision(stage, d.Action)
	}()
	return fn()
}

// safe runs a callback that has no reply (Abort, Close, OnTransaction).
func (c *connection) safe(what string, fn func()) {
	defer func() {
		if r := recover(); r != nil {
			c.recovered(what, r)
		}
	}()
	fn()
}

func (c *connection) recovered(where string, r any) {
	c.srv.met.panics.Inc()
	c.srv.log.Error().Str("session", c.id).Str("txn", c.st.TxnID).Str("stage", where).
		Str("panic", fmt.Sprint(r)).Str("stack", string(debug.Stack())).
		Msg("panic in milter session recovered; answering tempfail")
}

// reply marks r as the reply to the current event: what must follow it
// (ending the transaction, closing) runs once it is written.
func (c *connection) reply(r *response) *response {
	c.replyPending = true
	return r
}

func (c *connection) openTxn() {
	c.txnOpen = true
	c.txnSeq++
	c.st.TxnID = c.id + "." + strconv.Itoa(c.txnSeq)
	c.st.TxnStart = c.srv.now()
	if c.sticky.Action == ActionQuarantine {
		q := c.sticky
		c.pendingQ = &q
	}
	c.mu.Lock()
	c.inTxn = true
	c.mu.Unlock()
}

// beginTxnEvent prepares a transaction-level event.
func (c *connection) beginTxnEvent() {
	c.enter()
	if !c.txnOpen {
		c.openTxn()
	}
	c.applyMacros()
}

// endTxn reports the transaction (State.Final set by the caller) and resets it.
func (c *connection) endTxn(callAbort bool) {
	if !c.txnOpen {
		return
	}
	if callAbort || c.txnPoison {
		c.safe("abort", func() { c.impl.Abort(&c.st) })
	}
	c.srv.met.txns[txnLabel(&c.st)].Inc()
	if te, ok := c.impl.(TransactionEnder); ok {
		c.safe("end_transaction", func() { te.EndTransaction(&c.st) })
	}
	if cb := c.srv.opts.OnTransaction; cb != nil {
		c.safe("on_transaction", func() { cb(&c.st) })
	}
	if m := c.st.Message; m != nil {
		if err := m.Close(); err != nil {
			c.srv.log.Warn().Str("session", c.id).Str("txn", c.st.TxnID).Err(err).Msg("message file not removed")
		}
	}
	c.msgErr = nil
	c.st.resetTxn(c.connMacros)
	c.txnOpen = false
	c.txnPoison = false
	c.pendingQ = nil
	c.held, c.heldStage = nil, 0
	c.mu.Lock()
	c.inTxn = false
	c.mu.Unlock()
}

// abortTxn ends a transaction that got no decision of its own: ABORT, a new
// MAIL or HELO, or a lost connection.
func (c *connection) abortTxn() {
	if !c.txnOpen {
		return
	}
	c.st.Aborted = true
	c.st.Final, c.st.FinalStage = Decision{Action: ActionContinue, Reason: "aborted"}, 0
	switch {
	case c.txnPoison:
		c.st.Final = panicDecision
	case len(c.st.Rcpts) > 0 && len(c.st.AcceptedRcpts()) == 0:
		// Every recipient was refused: that is what ended the transaction.
		c.st.Final, c.st.FinalStage = c.st.Rcpts[len(c.st.Rcpts)-1].Decision, StageRcpt
	default:
		// A decision held at a stage without reply is what the milter decided.
		if d, stage, ok := c.heldDecision(true); ok {
			c.st.Final, c.st.FinalStage = d, stage
		}
	}
	c.endTxn(true)
}

// idle marks the end of an event; a session asked to close while busy or in
// a transaction is closed here once it is neither.
func (c *connection) idle() {
	c.mu.Lock()
	c.busy = false
	shut := c.closing && !c.inTxn
	c.mu.Unlock()
	if shut {
		c.raw.Close()
	}
}

// afterReply runs once the reply to an event was written (or could not be).
func (c *connection) afterReply(werr error) {
	c.replyPending = false
	if werr != nil {
		c.srv.log.Warn().Str("session", c.id).Str("txn", c.st.TxnID).Err(werr).Msg("milter reply not delivered")
	}
	if c.endAfter {
		c.endAfter = false
		c.endTxn(c.abortAfter)
	}
	c.idle()
}

// decideAfter records the final decision; the transaction ends once the reply
// is written, so OnTransaction never runs before Postfix has the answer.
func (c *connection) decideAfter(stage Stages, d Decision, callAbort bool) {
	if c.fromHeld != 0 {
		stage = c.fromHeld // a held decision is reported where it was made
	}
	c.st.Final, c.st.FinalStage = d, stage
	c.endAfter, c.abortAfter = true, callAbort
}

// hold keeps a decision made at a stage without reply; the first one counts.
func (c *connection) hold(stage Stages, d Decision) {
	if stage == StageConnect || stage == StageHelo {
		if c.connHeld == nil {
			c.connHeld, c.connHeldStage = &d, stage
		}
		return
	}
	if c.held == nil {
		c.held, c.heldStage = &d, stage
	}
}

// connLevel applies a decision made at connect or helo; nil means no reply.
func (c *connection) connLevel(stage Stages, d Decision) *response {
	switch d.Action {
	case ActionContinue:
		return c.replyIf(stage, respContinue)
	case ActionDiscard, ActionQuarantine:
		// Postfix refuses a discard at connect/helo and accepts a quarantine
		// only at end of message: apply them to each transaction instead.
		c.sticky = d
		return c.replyIf(stage, respContinue)
	}
	if !c.replies(stage) {
		c.hold(stage, d)
		return nil
	}
	// Accept, reject or tempfail of the whole connection: reported as a
	// transaction without sender.
	c.openTxn()
	c.decideAfter(stage, d, false)
	return c.reply(toResponse(stage, d))
}

// txnLevel applies a decision made at MAIL, RCPT, header, EOH or body; nil
// means no reply.
func (c *connection) txnLevel(stage Stages, d Decision) *response {
	switch d.Action {
	case ActionContinue:
		return c.replyIf(stage, respContinue)
	case ActionQuarantine:
		c.pendingQ = &d
		return c.replyIf(stage, respContinue)
	}
	if !c.replies(stage) {
		c.hold(stage, d)
		return nil
	}
	if stage == StageRcpt && d.IsFailure() {
		return c.reply(toResponse(stage, d)) // this recipient only
	}
	c.decideAfter(stage, d, true)
	return c.reply(toResponse(stage, d))
}

func (c *connection) replyIf(stage Stages, r *response) *response {
	if !c.replies(stage) {
		return nil
	}
	return c.reply(r)
}

// --- events ------------------------------------------------------------------

// serve runs the connection until the MTA quits, the connection fails or a
// protocol error; then it closes the session.
func (c *connection) serve() {
	defer c.close()
	defer func() {
		// A bug in the runtime itself must not take the process down.
		if r := recover(); r != nil {
			c.recovered("runtime", r)
		}
	}()
	for {
		code, data, err := c.readPacket()
		if err != nil {
			var pe *protocolError
			if errors.As(err, &pe) {
				c.protocolFailure(err)
			}
			return
		}
		arrived := time.Now()
		r, event, err := c.dispatch(code, data)
		if err != nil {
			c.protocolFailure(err)
			return
		}
		switch {
		case r != nil:
			werr := c.send(r)
			c.st.Busy += time.Since(arrived) // before afterReply: it may end the transaction
			c.afterReply(werr)
			if werr != nil {
				return
			}
		case event:
			c.st.Busy += time.Since(arrived)
			c.idle() // no reply: modifications are queued only at end of message, which has one
		}
		if code == byte(milter.CodeQuit) || code == byte(milter.CodeQuitNewConn) {
			return
		}
	}
}

func (c *connection) protocolFailure(err error) {
	c.srv.met.protoErrors.Inc()
	c.srv.log.Warn().Str("session", c.id).Str("txn", c.st.TxnID).Err(err).
		Msg("milter protocol error from the MTA; closing the connection (the MTA applies its default action)")
}

// dispatch handles one command. event is true for commands that start an
// event of the session (enter was called): they end with a reply or idle.
func (c *connection) dispatch(code byte, data []byte) (r *response, event bool, err error) {
	switch milter.Code(code) {
	case milter.CodeOptNeg:
		return nil, false, c.negotiate(data)
	case milter.CodeMacro:
		cmd, kv, err := macroPairs(c.macros[:0], data)
		if err != nil {
			return nil, false, err
		}
		c.macroCmd, c.macros = cmd, kv
		return nil, false, nil
	case milter.CodeConn:
		ci, err := parseConnect(data)
		if err != nil {
			return nil, false, err
		}
		return c.onConnect(ci), true, nil
	case milter.CodeHelo:
		name, _ := cstring(data)
		return c.onHelo(name), true, nil
	case milter.CodeMail:
		from, params := addrArg(data)
		return c.onMail(from, params), true, nil
	case milter.CodeRcpt:
		to, params := addrArg(data)
		return c.onRcpt(to, params), true, nil
	case milter.CodeHeader:
		h, err := headerPacket(data, c.proto&milter.OptHeaderLeadingSpace != 0)
		if err != nil {
			return nil, false, err
		}
		return c.onHeader(h), true, nil
	case milter.CodeEOH:
		return c.onEOH(), true, nil
	case milter.CodeBody:
		return c.onBody(data), true, nil
	case milter.CodeEOB:
		if len(data) > 0 { // Sendmail may send the last chunk with end of body
			if r := c.onBody(data); r != nil && r != respContinue {
				return r, true, nil
			}
		}
		return c.onEOM(), true, nil
	case milter.CodeAbort:
		c.enter()
		c.macros = c.macros[:0]
		c.abortTxn()
		return nil, true, nil // ABORT has no reply
	case milter.CodeData, 'U': // negotiated away; answered if the MTA sends them anyway
		c.macros = c.macros[:0]
		return respContinue, false, nil
	case milter.CodeQuit, milter.CodeQuitNewConn:
		// QUIT_NC (reuse the connection for a new SMTP session) is treated as
		// QUIT: the MTA opens a new connection. Postfix never sends it.
		return nil, false, nil
	}
	return nil, false, protoErrorf("unknown command %q", code)
}

func (c *connection) onConnect(ci connectInfo) *response {
	c.enter()
	c.applyMacros()
	c.st.ClientHost, c.st.Family, c.st.ClientPort = ci.host, ci.family, ci.port
	c.st.ClientAddr = nil
	if addr := ci.addr; addr != nil {
		if v4 := addr.To4(); v4 != nil {
			addr = v4
		}
		c.st.ClientAddr = addr
		// Postfix's cleanup announces a local submission (sendmail,
		// pickup) through non_smtpd_milters as 127.0.0.1 port 0, never as
		// family unix (checked against Postfix 3.7: cleanup_milter.c). No
		// real TCP peer has port 0, so this is the local-submission mark.
		if ci.port == 0 && addr.IsLoopback() {
			c.st.ClientAddr = nil
			c.st.Family = "local"
		}
	}
	d := c.run(StageConnect, func() Decision { return c.impl.Connect(&c.st) })
	return c.connLevel(StageConnect, d)
}

func (c *connection) onHelo(name string) *response {
	c.enter()
	// HELO inside a transaction resets it (Postfix sends ABORT next).
	c.abortTxn()
	c.applyMacros()
	c.st.Helo = name
	d := c.run(StageHelo, func() Decision { return c.impl.Helo(&c.st) })
	return c.connLevel(StageHelo, d)
}

func (c *connection) onMail(from string, params Params) *response {
	c.enter()
	c.abortTxn() // a MAIL without ABORT after the previous transaction
	c.openTxn()
	c.applyMacros()
	c.st.Sender, c.st.MailParams = from, params
	d := c.run(StageMail, func() Decision { return c.impl.MailFrom(&c.st) })
	return c.txnLevel(StageMail, d)
}

func (c *connection) onRcpt(to string, params Params) *response {
	c.beginTxnEvent()
	r := &Recipient{Addr: to, Params: params}
	c.st.Rcpts = append(c.st.Rcpts, r)
	d := c.run(StageRcpt, func() Decision { return c.impl.RcptTo(&c.st, r) })
	r.Decision = d
	return c.txnLevel(StageRcpt, d)
}

// storeMessage applies fn to the transaction's message, created at its first
// content event, for a MessageUser milter. The first error is logged and
// counted, and makes end of message tempfail: a milter must never accept a
// message it could not read whole.
func (c *connection) storeMessage(what string, fn func(*message.Message) error) {
	if !c.srv.usesMessage || c.msgErr != nil {
		return
	}
	if c.st.Message == nil {
		c.st.Message = message.New(message.Options{Dir: c.srv.opts.MessageDir, MemoryLimit: c.srv.opts.MessageMemory})
	}
	if err := fn(c.st.Message); err != nil {
		c.msgErr = fmt.Errorf("%s: %w", what, err)
		c.srv.met.msgErrors.Inc()
		c.srv.log.Error().Str("session", c.id).Str("txn", c.st.TxnID).Err(c.msgErr).Str("dir", c.srv.opts.MessageDir).
			Msg("message could not be stored whole for the milter; the transaction will be tempfailed at end of message")
	}
}

// listed reports whether the milter asked for stage: a MessageUser gets
// content stages negotiated that its Session does not handle.
func (c *connection) listed(stage Stages) bool { return c.srv.listed&stage != 0 }

func (c *connection) onHeader(h HeaderField) *response {
	c.beginTxnEvent()
	c.st.Headers = append(c.st.Headers, h)
	c.storeMessage("header", func(m *message.Message) error { return m.AddHeader(h.Name, h.Raw) })
	if !c.listed(StageHeaders) {
		return c.replyIf(StageHeaders, respContinue)
	}
	d := c.run(StageHeaders, func() Decision { return c.impl.Header(&c.st, h) })
	return c.txnLevel(StageHeaders, d)
}

func (c *connection) onEOH() *response {
	c.beginTxnEvent()
	c.storeMessage("end of headers", (*message.Message).EndHeaders)
	if !c.listed(StageEOH) {
		return c.replyIf(StageEOH, respContinue)
	}
	d := c.run(StageEOH, func() Decision { return c.impl.EndOfHeaders(&c.st) })
	return c.txnLevel(StageEOH, d)
}

func (c *connection) onBody(chunk []byte) *response {
	c.beginTxnEvent()
	c.st.BodyBytes += int64(len(chunk))
	c.storeMessage("body", func(m *message.Message) error { _, err := m.Write(chunk); return err })
	if !c.listed(StageBody) {
		return c.replyIf(StageBody, respContinue)
	}
	d := c.run(StageBody, func() Decision { return c.impl.BodyChunk(&c.st, chunk) })
	return c.txnLevel(StageBody, d)
}

func (c *connection) onEOM() *response {
	c.beginTxnEvent()
	c.storeMessage("end of message", func(*message.Message) error { return nil }) // a message without header or body
	if _, _, held := c.heldDecision(true); c.msgErr != nil && !held {
		// The milter would read an incomplete message: it is not asked.
		d := TempFail("451", "4.3.0", "Temporary failure").WithReason("message not stored whole: " + c.msgErr.Error()).normalised()
		c.srv.met.decision(StageEOM, d.Action)
		c.decideAfter(StageEOM, d, true)
		return c.reply(toResponse(StageEOM, d))
	}
	md := &modifier{c: c, allowed: c.srv.actions & c.actions}
	d := c.run(StageEOM, func() Decision { return c.impl.EndOfMessage(&c.st, md) })
	d = c.finalEOM(d, md)
	c.decideAfter(StageEOM, d, false)
	return c.reply(toResponse(StageEOM, d))
}

// finalEOM settles accept versus quarantine at end of message: a quarantine
// asked for at any stage is sent now (Postfix holds the message when the
// quarantine request precedes the accept).
func (c *connection) finalEOM(d Decision, md *modifier) Decision {
	if d.Action != ActionContinue && d.Action != ActionAccept && d.Action != ActionQuarantine {
		return d
	}
	reason := ""
	switch {
	case md.quarantined != "":
		reason = md.quarantined
	case d.Action == ActionQuarantine:
		reason = d.QuarantineReason
	case c.pendingQ != nil:
		reason = c.pendingQ.QuarantineReason
		if d.Reason == "" && d.RuleID == "" {
			d.Reason, d.RuleID = c.pendingQ.Reason, c.pendingQ.RuleID
		}
	}
	if reason == "" {
		d.Action = ActionAccept
		return d
	}
	if md.quarantined == "" {
		if err := md.Quarantine(reason); err != nil {
			// A programming error in the milter: keep the message rather than
			// deliver what was meant to be held.
			c.srv.log.Error().Str("session", c.id).Str("txn", c.st.TxnID).Err(err).
				Msg("quarantine decided but MayQuarantine not in Modifications() or not offered by the MTA; answering tempfail")
			return TempFail("451", "4.3.0", "Temporary failure").WithReason("quarantine not negotiated").normalised()
		}
	}
	d.Action, d.QuarantineReason = ActionQuarantine, reason
	return d
}

// close ends the session when its loop ends, whatever the reason.
func (c *connection) close() {
	c.closeOnce.Do(func() {
		c.raw.Close()
		if c.replyPending {
			c.afterReply(errors.New("connection closed before the reply was written"))
		}
		if c.txnOpen {
			c.abortTxn()
		}
		if c.impl != nil {
			c.safe("close", func() { c.impl.Close(&c.st) })
		}
		c.srv.release(c)
	})
}

// beginClosing is Shutdown's request: close now if idle, else once the
// current transaction ends.
func (c *connection) beginClosing() {
	c.mu.Lock()
	c.closing = true
	shut := !c.busy && !c.inTxn
	c.mu.Unlock()
	if shut {
		c.raw.Close()
	}
}

func (c *connection) forceClose() {
	c.mu.Lock()
	c.closing = true
	c.mu.Unlock()
	c.raw.Close()
}

// rawReader reads the socket with the idle timeout as deadline. Every read
// error becomes io.EOF after it is logged, which ends the session quietly.
type rawReader struct{ c *connection }

func (r rawReader) Read(p []byte) (int, error) {
	c := r.c
	c.raw.SetReadDeadline(time.Now().Add(c.srv.opts.IdleTimeout))
	n, err := c.raw.Read(p)
	if err != nil && err != io.EOF {
		c.mu.Lock()
		closing := c.closing
		c.mu.Unlock()
		ev := c.srv.log.Debug()
		msg := "milter connection closed"
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			ev, msg = c.srv.log.Info(), "milter connection idle timeout"
		case closing, errors.Is(err, net.ErrClosed):
		default:
			ev, msg = c.srv.log.Warn(), "milter connection read failed"
		}
		ev.Str("session", c.id).Str("txn", c.st.TxnID).Err(err).Msg(msg)
		err = io.EOF
	}
	return n, err
}
