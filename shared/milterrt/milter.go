package milterrt

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"

	milter "github.com/emersion/go-milter"
)

// Milter is one geomilter milter (access, policy, …).
type Milter interface {
	Name() string   // "access", "policy", …; the metrics label
	Stages() Stages // stages it needs; the others are negotiated away
	Modifications() Modifications
	// NewSession is called once per milter connection (one Postfix SMTP
	// session), before any event, with the connection's State.
	NewSession(st *State) Session
}

// Decider is implemented by a milter that observes more envelope stages than
// it decides at, e.g. an archive that needs the sender and recipients but
// decides only at end of message. At a stage of Stages() outside DecidesAt()
// the runtime asks the MTA not to wait for a reply (milter protocol 6,
// SMFIP_NR_*), which saves a round trip per event. Headers, end of headers
// and body never wait for a reply, for any milter: Postfix reports a decision
// made there only after the whole message anyway.
//
// A decision other than continue at a stage without reply is held: the
// Session sees no further events of the transaction (of the connection, for
// connect and helo), and the held decision is the answer at the next stage
// that has a reply, at the latest at end of message. A milter that rejects
// recipients one by one must therefore list StageRcpt. A milter that does not
// implement Decider decides at every envelope stage it lists. DecidesAt is
// called at each new milter connection (it may follow the milter's rules),
// on that connection's goroutine: it must be quick and safe for concurrent use.
type Decider interface {
	DecidesAt() Stages
}

// MessageUser is implemented by a milter that reads the whole message (to
// sign, verify, scan or journal it). When UsesMessage returns true (it is
// asked once, by New) the runtime negotiates headers, end of headers and body
// whatever Stages() says, keeps each transaction's message as it arrives
// (shared/message: in memory up to Options.MessageMemory, then in a file in
// Options.MessageDir) and hands it over as State.Message. Session methods of
// stages not in Stages() are still not called.
type MessageUser interface {
	UsesMessage() bool
}

// TransactionEnder is implemented by a Session that must know when the
// runtime ends a transaction (a suite reports each member's transaction to
// the member's own hook). EndTransaction is called exactly once per
// transaction, on the session goroutine, with State.Final set, after Abort
// (when it is called) and before Options.OnTransaction.
type TransactionEnder interface {
	EndTransaction(st *State)
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
// Modifications bit; without it the call returns ErrNotNegotiated (Postfix would
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
	// ReplaceBody replaces the whole body with what r gives (CRLF or LF line
	// ends), read and sent in packets of 64 KiB as it goes, so a body of any
	// size takes bounded memory. An error reading r comes back wrapped after
	// part of the new body may have left: answer tempfail then.
	ReplaceBody(r io.Reader) error
}

// ErrNotNegotiated is returned by a Modifier call whose action the milter did
// not declare in Modifications().
var ErrNotNegotiated = errors.New("milterrt: modification not declared in Milter.Modifications()")

// modifier queues modification packets on the session's output; they leave
// with the final reply, in one write, ahead of it as the protocol requires.
type modifier struct {
	c       *connection
	allowed Modifications
	// quarantined records a quarantine sent by the milter itself, so the
	// runtime reports the right final action and sends it only once.
	quarantined string
}

func (md *modifier) need(a Modifications, what string) error {
	if md.allowed&a == 0 {
		return fmt.Errorf("%s: %w", what, ErrNotNegotiated)
	}
	return nil
}

func (md *modifier) AddHeader(name, value string) error {
	if err := md.need(MayAddHeader, "add header"); err != nil {
		return err
	}
	md.header(milter.ActAddHeader, nil, name, value)
	return md.flushLarge("add header")
}

func (md *modifier) ChangeHeader(index int, name, value string) error {
	if err := md.need(MayChangeHeader, "change header"); err != nil {
		return err
	}
	if index < 1 {
		return fmt.Errorf("change header %s: index %d: must be 1 or more", name, index)
	}
	md.header(milter.ActChangeHeader, binary.BigEndian.AppendUint32(nil, uint32(index)), name, value)
	return md.flushLarge("change header")
}

func (md *modifier) InsertHeader(index int, name, value string) error {
	if err := md.need(MayAddHeader, "insert header"); err != nil {
		return err
	}
	if index < 0 {
		return fmt.Errorf("insert header %s: index %d: must be 0 or more", name, index)
	}
	md.header(milter.ActInsertHeader, binary.BigEndian.AppendUint32(nil, uint32(index)), name, value)
	return md.flushLarge("insert header")
}

func (md *modifier) Quarantine(reason string) error {
	if err := md.need(MayQuarantine, "quarantine"); err != nil {
		return err
	}
	reason = Quarantine(reason).normalised().QuarantineReason
	md.c.queue(byte(milter.ActQuarantine), []byte(reason), nul)
	md.quarantined = reason
	return nil
}

func (md *modifier) AddRcpt(rcpt string) error {
	if err := md.need(MayAddRcpt, "add rcpt"); err != nil {
		return err
	}
	md.c.queue(byte(milter.ActAddRcpt), []byte("<"+rcpt+">"), nul)
	return md.flushLarge("add rcpt")
}

func (md *modifier) DelRcpt(rcpt string) error {
	if err := md.need(MayDelRcpt, "delete rcpt"); err != nil {
		return err
	}
	md.c.queue(byte(milter.ActDelRcpt), []byte("<"+rcpt+">"), nul)
	return md.flushLarge("delete rcpt")
}

// replaceBodyChunk keeps each SMFIR_REPLBODY packet at the size Postfix itself
// uses for body chunks.
const replaceBodyChunk = milter.MaxBodyChunk

func (md *modifier) ReplaceBody(r io.Reader) error {
	if err := md.need(MayChangeBody, "replace body"); err != nil {
		return err
	}
	buf := make([]byte, replaceBodyChunk)
	sent, carry := false, false // carry: a CR held back from the end of the previous read
	for {
		start := 0
		if carry {
			buf[0], start = '\r', 1
		}
		n, err := io.ReadFull(r, buf[start:])
		eof := err == io.EOF || err == io.ErrUnexpectedEOF
		if err != nil && !eof {
			return fmt.Errorf("milterrt: replace body: reading the new body: %w", err)
		}
		chunk := buf[:start+n]
		// A CR at the end may be the first half of a CRLF split across two
		// reads: keep it for the next one.
		carry = !eof && len(chunk) > 0 && chunk[len(chunk)-1] == '\r'
		if carry {
			chunk = chunk[:len(chunk)-1]
		}
		// Postfix wants LF line ends.
		if chunk = crlfToLF(chunk); len(chunk) > 0 {
			md.c.queue(byte(milter.ActReplBody), chunk)
			sent = true
			if err := md.flushLarge("replace body"); err != nil {
				return err
			}
		}
		if eof {
			break
		}
	}
	if !sent {
		md.c.queue(byte(milter.ActReplBody)) // an empty body
	}
	return nil
}

// crlfToLF replaces every CRLF of b with LF, in place.
func crlfToLF(b []byte) []byte {
	if bytes.IndexByte(b, '\r') < 0 {
		return b
	}
	j := 0
	for i := 0; i < len(b); i++ {
		if b[i] == '\r' && i+1 < len(b) && b[i+1] == '\n' {
			continue
		}
		b[j] = b[i]
		j++
	}
	return b[:j]
}

var nul = []byte{0}

// header queues a header modification: [index] name NUL value NUL, with the
// value's line ends as Postfix wants them (LF).
func (md *modifier) header(code milter.ModifyActCode, index []byte, name, value string) {
	v := strings.ReplaceAll(value, "\r\n", "\n")
	md.c.queue(byte(code), index, []byte(name), nul, []byte(v), nul)
}

// flushLarge writes the queued modifications once they are large, so that a
// big body replacement is not held in memory whole.
func (md *modifier) flushLarge(what string) error {
	if len(md.c.out) < flushAt {
		return nil
	}
	if err := md.c.flush(); err != nil {
		return fmt.Errorf("milterrt: %s: %w", what, err)
	}
	return nil
}

// NoopMilter accepts everything. With Want zero only end of message is
// negotiated, which makes it the baseline for benchmarks of the runtime and of
// the milter protocol; set Want to exercise more stages.
type NoopMilter struct {
	Want Stages
}

func (NoopMilter) Name() string                 { return "noop" }
func (n NoopMilter) Stages() Stages             { return n.Want }
func (NoopMilter) Modifications() Modifications { return 0 }
func (NoopMilter) NewSession(*State) Session    { return BaseSession{} }

var _ Milter = NoopMilter{}
