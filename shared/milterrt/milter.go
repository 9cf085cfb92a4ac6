package milterrt

import (
	"bytes"
	"errors"
	"fmt"

	milter "github.com/emersion/go-milter"
)

// Milter is one geomilter milter (access, policy, …).
type Milter interface {
	Name() string   // "access", "policy", …; the metrics label
	Stages() Stages // stages it needs; the others are negotiated away
	Actions() Actions
	// NewSession is called once per milter connection (one Postfix SMTP
	// session), before any event, with the connection's State.
	NewSession(st *State) Session
}

// Session handles the events of one milter connection, one at a time, on the
// connection's goroutine. Only the stages the Milter listed are called. Embed
// BaseSession to get no-op methods.
type Session interface {
	Connect(st *State) Decision
	Helo(st *State) Decision
	MailFrom(st *State) Decision
	// RcptTo decides on one recipient (already appended to st.Rcpts); a reject
	// or tempfail fails only that recipient and the transaction goes on.
	RcptTo(st *State, rcpt *Recipient) Decision
	Header(st *State, h HeaderField) Decision
	EndOfHeaders(st *State) Decision
	// BodyChunk receives the body in chunks of at most 64 KiB; chunk is only
	// valid during the call.
	BodyChunk(st *State, chunk []byte) Decision
	// EndOfMessage is the last event of a completed message; mod edits it.
	EndOfMessage(st *State, mod Modifier) Decision
	// Abort: the transaction ended without EndOfMessage (RSET, rejected,
	// accepted early, connection lost, or a panic). st still holds it.
	Abort(st *State)
	// Close: the connection is gone. Called exactly once, last.
	Close(st *State)
}

// BaseSession implements Session with methods that continue and do nothing.
type BaseSession struct{}

func (BaseSession) Connect(*State) Decision                { return Continue() }
func (BaseSession) Helo(*State) Decision                   { return Continue() }
func (BaseSession) MailFrom(*State) Decision               { return Continue() }
func (BaseSession) RcptTo(*State, *Recipient) Decision     { return Continue() }
func (BaseSession) Header(*State, HeaderField) Decision    { return Continue() }
func (BaseSession) EndOfHeaders(*State) Decision           { return Continue() }
func (BaseSession) BodyChunk(*State, []byte) Decision      { return Continue() }
func (BaseSession) EndOfMessage(*State, Modifier) Decision { return Continue() }
func (BaseSession) Abort(*State)                           {}
func (BaseSession) Close(*State)                           {}

var _ Session = BaseSession{}

// Modifier edits the message at end of message. Each call needs the matching
// Actions bit; without it the call returns ErrNotNegotiated (Postfix would
// otherwise treat the request as a protocol error).
type Modifier interface {
	AddHeader(name, value string) error
	// ChangeHeader replaces the index-th (1-based, counted per name) header
	// called name; an empty value deletes it.
	ChangeHeader(index int, name, value string) error
	// InsertHeader inserts a header at position index (0 = first) of the
	// message as Postfix will store it.
	InsertHeader(index int, name, value string) error
	// Quarantine holds the message; the final decision becomes a quarantine
	// unless the milter rejects, tempfails or discards.
	Quarantine(reason string) error
	AddRcpt(rcpt string) error
	DelRcpt(rcpt string) error
	// ReplaceBody replaces the whole body (CRLF or LF line ends).
	ReplaceBody(body []byte) error
}

// ErrNotNegotiated is returned by a Modifier call whose action the milter did
// not declare in Actions().
var ErrNotNegotiated = errors.New("milterrt: modification not declared in Milter.Actions()")

// modifier wraps go-milter's Modifier; its writes go straight to the wire
// before the final reply, as the protocol requires.
type modifier struct {
	m       *milter.Modifier
	allowed Actions
	// quarantined records a quarantine sent by the milter itself, so the
	// runtime reports the right final action and sends it only once.
	quarantined string
}

func (md *modifier) need(a Actions, what string) error {
	if md.allowed&a == 0 {
		return fmt.Errorf("%s: %w", what, ErrNotNegotiated)
	}
	return nil
}

func (md *modifier) AddHeader(name, value string) error {
	if err := md.need(MayAddHeader, "add header"); err != nil {
		return err
	}
	return wrapErr("add header", md.m.AddHeader(name, value))
}

func (md *modifier) ChangeHeader(index int, name, value string) error {
	if err := md.need(MayChangeHeader, "change header"); err != nil {
		return err
	}
	if index < 1 {
		return fmt.Errorf("change header %s: index %d: must be 1 or more", name, index)
	}
	return wrapErr("change header", md.m.ChangeHeader(index, name, value))
}

func (md *modifier) InsertHeader(index int, name, value string) error {
	if err := md.need(MayAddHeader, "insert header"); err != nil {
		return err
	}
	if index < 0 {
		return fmt.Errorf("insert header %s: index %d: must be 0 or more", name, index)
	}
	return wrapErr("insert header", md.m.InsertHeader(index, name, value))
}

func (md *modifier) Quarantine(reason string) error {
	if err := md.need(MayQuarantine, "quarantine"); err != nil {
		return err
	}
	reason = Quarantine(reason).normalised().QuarantineReason
	if err := md.m.Quarantine(reason); err != nil {
		return wrapErr("quarantine", err)
	}
	md.quarantined = reason
	return nil
}

func (md *modifier) AddRcpt(rcpt string) error {
	if err := md.need(MayAddRcpt, "add rcpt"); err != nil {
		return err
	}
	return wrapErr("add rcpt", md.m.AddRecipient(rcpt))
}

func (md *modifier) DelRcpt(rcpt string) error {
	if err := md.need(MayDelRcpt, "delete rcpt"); err != nil {
		return err
	}
	return wrapErr("delete rcpt", md.m.DeleteRecipient(rcpt))
}

// replaceBodyChunk keeps each SMFIR_REPLBODY packet at the size Postfix itself
// uses for body chunks.
const replaceBodyChunk = milter.MaxBodyChunk

func (md *modifier) ReplaceBody(body []byte) error {
	if err := md.need(MayChangeBody, "replace body"); err != nil {
		return err
	}
	// Convert line ends here, on the whole body: go-milter converts per packet,
	// which would miss a CRLF split across two packets.
	body = bytes.ReplaceAll(body, []byte("\r\n"), []byte("\n"))
	if len(body) == 0 {
		return wrapErr("replace body", md.m.ReplaceBody(nil))
	}
	for len(body) > 0 {
		n := min(len(body), replaceBodyChunk)
		if err := md.m.ReplaceBody(body[:n]); err != nil {
			return wrapErr("replace body", err)
		}
		body = body[n:]
	}
	return nil
}

func wrapErr(what string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("milterrt: %s: %w", what, err)
}

// NoopMilter accepts everything. With Want zero only end of message is
// negotiated, which makes it the baseline for benchmarks of the runtime and of
// the milter protocol; set Want to exercise more stages.
type NoopMilter struct {
	Want Stages
}

func (NoopMilter) Name() string              { return "noop" }
func (n NoopMilter) Stages() Stages          { return n.Want }
func (NoopMilter) Actions() Actions          { return 0 }
func (NoopMilter) NewSession(*State) Session { return BaseSession{} }

var _ Milter = NoopMilter{}
