package milterrt

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"os"
	"reflect"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	milter "github.com/emersion/go-milter"
)

// panicDecision answers every event of a transaction whose Session panicked.
var panicDecision = TempFail("451", "4.3.0", "Temporary failure").WithReason("panic in milter session").normalised()

// session is one milter connection. It implements go-milter's Milter (the
// backend go-milter calls, on the connection's goroutine) and owns the wire.
type session struct {
	srv  *Server
	raw  net.Conn
	wire *wireConn
	id   string
	st   State
	impl Session // created at the first event, on the session goroutine

	// Shared with Shutdown.
	mu      sync.Mutex
	busy    bool // an event is being handled and its reply not yet written
	inTxn   bool
	closing bool

	// Session goroutine only.
	txnSeq       int
	txnOpen      bool
	txnPoison    bool      // a Session method panicked: the rest of the transaction tempfails
	connPoison   bool      // likewise for the whole connection (panic at connect/helo)
	sticky       Decision  // discard or quarantine decided at connect/helo, applied to every transaction
	pendingQ     *Decision // quarantine decided before end of message
	lastMacros   map[string]string
	connMacros   map[string]string
	replyPending bool // the next write is the reply to the current event
	endAfter     bool // end the transaction once that reply is written
	abortAfter   bool // … calling Session.Abort first
	closeOnce    sync.Once
}

var _ milter.Milter = (*session)(nil)

func newSession(srv *Server, raw net.Conn) *session {
	c := &session{srv: srv, raw: raw, id: srv.newID(), connMacros: make(map[string]string)}
	c.st = State{
		Milter:    srv.m.Name(),
		SessionID: c.id,
		ConnStart: srv.now(),
		Macros:    make(map[string]string),
	}
	c.wire = &wireConn{Conn: raw, s: c}
	c.wire.br = bufio.NewReader(rawReader{c})
	return c
}

// enter marks the start of an event and creates the Session on first use.
func (c *session) enter() {
	c.mu.Lock()
	c.busy = true
	c.mu.Unlock()
	if c.impl == nil {
		c.newImpl()
	}
}

func (c *session) newImpl() {
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

// mergeMacros copies the macros go-milter holds into State. go-milter builds
// a new map for every macro packet and passes the same map again to later
// events until the next packet; a map already merged is skipped, so the
// macros of an ended transaction never leak into the next one.
func (c *session) mergeMacros(m map[string]string, connLevel bool) {
	if m == nil {
		return
	}
	if c.lastMacros != nil && reflect.ValueOf(m).UnsafePointer() == reflect.ValueOf(c.lastMacros).UnsafePointer() {
		return
	}
	c.lastMacros = m
	for k, v := range m {
		c.st.Macros[k] = v
		if connLevel {
			c.connMacros[k] = v
		}
	}
}

// run calls the milter for one stage with panic recovery and timing, and
// returns its normalised decision.
func (c *session) run(stage Stages, fn func() Decision) (d Decision) {
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
func (c *session) safe(what string, fn func()) {
	defer func() {
		if r := recover(); r != nil {
			c.recovered(what, r)
		}
	}()
	fn()
}

func (c *session) recovered(where string, r any) {
	c.srv.met.panics.Inc()
	c.srv.log.Error().Str("session", c.id).Str("txn", c.st.TxnID).Str("stage", where).
		Str("panic", fmt.Sprint(r)).Str("stack", string(debug.Stack())).
		Msg("panic in milter session recovered; answering tempfail")
}

// reply marks r as the reply to the current event: what must follow it
// (ending the transaction, closing) runs once it is written.
func (c *session) reply(r *response) *response {
	c.replyPending = true
	return r
}

func (c *session) openTxn() {
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
func (c *session) beginTxnEvent(m *milter.Modifier) {
	c.enter()
	if !c.txnOpen {
		c.openTxn()
	}
	c.mergeMacros(m.Macros, false)
}

// endTxn reports the transaction (State.Final set by the caller) and resets it.
func (c *session) endTxn(callAbort bool) {
	if !c.txnOpen {
		return
	}
	if callAbort || c.txnPoison {
		c.safe("abort", func() { c.impl.Abort(&c.st) })
	}
	c.srv.met.txns[txnLabel(&c.st)].Inc()
	if cb := c.srv.opts.OnTransaction; cb != nil {
		c.safe("on_transaction", func() { cb(&c.st) })
	}
	c.st.resetTxn(c.connMacros)
	c.txnOpen = false
	c.txnPoison = false
	c.pendingQ = nil
	c.mu.Lock()
	c.inTxn = false
	c.mu.Unlock()
}

// abortTxn ends a transaction that got no decision of its own: ABORT, a new
// MAIL or HELO, or a lost connection.
func (c *session) abortTxn() {
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
	}
	c.endTxn(true)
}

// idle marks the end of an event; a session asked to close while busy or in
// a transaction is closed here once it is neither.
func (c *session) idle() {
	c.mu.Lock()
	c.busy = false
	shut := c.closing && !c.inTxn
	c.mu.Unlock()
	if shut {
		c.raw.Close()
	}
}

// afterReply runs once the reply to an event was written (or could not be).
func (c *session) afterReply(werr error) {
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
func (c *session) decideAfter(stage Stages, d Decision, callAbort bool) {
	c.st.Final, c.st.FinalStage = d, stage
	c.endAfter, c.abortAfter = true, callAbort
}

// connLevel applies a decision made at connect or helo.
func (c *session) connLevel(stage Stages, d Decision) milter.Response {
	switch d.Action {
	case ActionContinue:
		return c.reply(respContinue)
	case ActionDiscard, ActionQuarantine:
		// Postfix refuses a discard at connect/helo and accepts a quarantine
		// only at end of message: apply them to each transaction instead.
		c.sticky = d
		return c.reply(respContinue)
	}
	// Accept, reject or tempfail of the whole connection: reported as a
	// transaction without sender.
	c.openTxn()
	c.decideAfter(stage, d, false)
	return c.reply(toResponse(stage, d))
}

// txnLevel applies a decision made at MAIL, RCPT, header, EOH or body.
func (c *session) txnLevel(stage Stages, d Decision) milter.Response {
	switch d.Action {
	case ActionContinue:
		return c.reply(respContinue)
	case ActionQuarantine:
		c.pendingQ = &d
		return c.reply(respContinue)
	case ActionReject, ActionTempFail:
		if stage == StageRcpt {
			return c.reply(toResponse(stage, d)) // this recipient only
		}
	}
	c.decideAfter(stage, d, true)
	return c.reply(toResponse(stage, d))
}

// --- go-milter backend -------------------------------------------------------

func (c *session) Connect(host, family string, port uint16, addr net.IP, m *milter.Modifier) (milter.Response, error) {
	c.enter()
	c.mergeMacros(m.Macros, true)
	c.st.ClientHost, c.st.Family, c.st.ClientPort = host, family, port
	c.st.ClientAddr = nil
	// For family unix go-milter leaves Postfix's 2-byte port in front of the
	// address, so addr is nil (or garbage): only TCP peers have an address.
	if (family == "tcp4" || family == "tcp6") && addr != nil {
		if v4 := addr.To4(); v4 != nil {
			addr = v4
		}
		c.st.ClientAddr = addr
		// Postfix's cleanup announces a local submission (sendmail,
		// pickup) through non_smtpd_milters as 127.0.0.1 port 0, never as
		// family unix (checked against Postfix 3.7: cleanup_milter.c). No
		// real TCP peer has port 0, so this is the local-submission mark.
		if port == 0 && addr.IsLoopback() {
			c.st.ClientAddr = nil
			c.st.Family = "local"
		}
	}
	d := c.run(StageConnect, func() Decision { return c.impl.Connect(&c.st) })
	return c.connLevel(StageConnect, d), nil
}

func (c *session) Helo(name string, m *milter.Modifier) (milter.Response, error) {
	c.enter()
	// HELO inside a transaction resets it (Postfix sends ABORT next).
	c.abortTxn()
	c.mergeMacros(m.Macros, true)
	c.st.Helo = name
	d := c.run(StageHelo, func() Decision { return c.impl.Helo(&c.st) })
	return c.connLevel(StageHelo, d), nil
}

func (c *session) MailFrom(from string, m *milter.Modifier) (milter.Response, error) {
	c.enter()
	c.abortTxn() // a MAIL without ABORT after the previous transaction
	c.openTxn()
	c.mergeMacros(m.Macros, false)
	c.st.Sender = from
	d := c.run(StageMail, func() Decision { return c.impl.MailFrom(&c.st) })
	return c.txnLevel(StageMail, d), nil
}

func (c *session) RcptTo(to string, m *milter.Modifier) (milter.Response, error) {
	c.beginTxnEvent(m)
	r := &Recipient{Addr: to}
	c.st.Rcpts = append(c.st.Rcpts, r)
	d := c.run(StageRcpt, func() Decision { return c.impl.RcptTo(&c.st, r) })
	r.Decision = d
	return c.txnLevel(StageRcpt, d), nil
}

func (c *session) Header(name, value string, m *milter.Modifier) (milter.Response, error) {
	c.beginTxnEvent(m)
	h := HeaderField{Name: name, Value: value}
	c.st.Headers = append(c.st.Headers, h)
	d := c.run(StageHeaders, func() Decision { return c.impl.Header(&c.st, h) })
	return c.txnLevel(StageHeaders, d), nil
}

func (c *session) Headers(_ textproto.MIMEHeader, m *milter.Modifier) (milter.Response, error) {
	c.beginTxnEvent(m)
	d := c.run(StageEOH, func() Decision { return c.impl.EndOfHeaders(&c.st) })
	return c.txnLevel(StageEOH, d), nil
}

func (c *session) BodyChunk(chunk []byte, m *milter.Modifier) (milter.Response, error) {
	c.beginTxnEvent(m)
	c.st.BodyBytes += int64(len(chunk))
	d := c.run(StageBody, func() Decision { return c.impl.BodyChunk(&c.st, chunk) })
	return c.txnLevel(StageBody, d), nil
}

func (c *session) Body(m *milter.Modifier) (milter.Response, error) {
	c.beginTxnEvent(m)
	md := &modifier{m: m, allowed: c.srv.actions}
	d := c.run(StageEOM, func() Decision { return c.impl.EndOfMessage(&c.st, md) })
	d = c.finalEOM(d, md)
	c.decideAfter(StageEOM, d, false)
	return c.reply(toResponse(StageEOM, d)), nil
}

// finalEOM settles accept versus quarantine at end of message: a quarantine
// asked for at any stage is sent now (Postfix holds the message when the
// quarantine request precedes the accept).
func (c *session) finalEOM(d Decision, md *modifier) Decision {
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
		if c.srv.actions&MayQuarantine == 0 {
			// A programming error in the milter: keep the message rather than
			// deliver what was meant to be held.
			c.srv.log.Error().Str("session", c.id).Str("txn", c.st.TxnID).
				Msg("quarantine decided but MayQuarantine not in Actions(); answering tempfail")
			return TempFail("451", "4.3.0", "Temporary failure").WithReason("quarantine not negotiated").normalised()
		}
		if err := md.m.Quarantine(reason); err != nil {
			return TempFail("451", "4.3.0", "Temporary failure").WithReason("quarantine request failed: " + err.Error()).normalised()
		}
	}
	d.Action, d.QuarantineReason = ActionQuarantine, reason
	return d
}

func (c *session) Abort(_ *milter.Modifier) error {
	c.enter()
	c.abortTxn()
	c.idle() // ABORT has no reply
	return nil
}

// close ends the session: go-milter calls it (through wireConn.Close) when
// its loop for this connection ends, whatever the reason.
func (c *session) close() {
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
func (c *session) beginClosing() {
	c.mu.Lock()
	c.closing = true
	shut := !c.busy && !c.inTxn
	c.mu.Unlock()
	if shut {
		c.raw.Close()
	}
}

func (c *session) forceClose() {
	c.mu.Lock()
	c.closing = true
	c.mu.Unlock()
	c.raw.Close()
}

// --- wire ----------------------------------------------------------------------

// wireConn is the net.Conn go-milter sees.
type wireConn struct {
	net.Conn
	s  *session
	br *bufio.Reader
}

// Read serves go-milter's small reads (the 4-byte length, then the payload)
// from one buffered read of the socket.
func (w *wireConn) Read(p []byte) (int, error) { return w.br.Read(p) }

func (w *wireConn) Write(p []byte) (int, error) {
	c := w.s
	w.Conn.SetWriteDeadline(time.Now().Add(c.srv.opts.IdleTimeout))
	n, err := w.Conn.Write(p)
	if c.replyPending {
		c.afterReply(err)
		if err != nil {
			// Swallow the error: go-milter would log it to the global logger;
			// the closed socket ends its loop at the next read instead.
			c.raw.Close()
			return len(p), nil
		}
	}
	return n, err
}

func (w *wireConn) Close() error {
	w.s.close()
	return nil
}

// rawReader reads the socket with the idle timeout as deadline. Every read
// error becomes io.EOF after we log it, so go-milter ends the session quietly
// instead of writing to the global logger.
type rawReader struct{ c *session }

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
