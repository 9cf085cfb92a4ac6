package milterrt_test

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"reflect"
	"sync"
	"testing"
	"time"

	milter "github.com/emersion/go-milter"

	. "github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/milterrt/miltertest"
)

// deciding is a test milter that decides only at the stages it says.
type deciding struct {
	*testMilter
	decides Stages
}

func (d deciding) DecidesAt() Stages { return d.decides }

type callLog struct {
	mu    sync.Mutex
	calls []string
}

func (l *callLog) add(s string) { l.mu.Lock(); l.calls = append(l.calls, s); l.mu.Unlock() }
func (l *callLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.calls
	l.calls = nil
	return out
}

// With protocol 6, Postfix does not wait for a reply to headers, end of
// headers or body chunks; a reject decided at a header is answered at end of
// message, the milter sees nothing more of that message, and the next message
// of the connection is handled as usual.
func TestNoReplyAtContentStages(t *testing.T) {
	log := &callLog{}
	tm := &testMilter{stages: AllStages, mk: func() *funcSession {
		return &funcSession{
			header: func(_ *State, h HeaderField) Decision {
				log.add("header:" + h.Name)
				if h.Name == "X-Spam" {
					return Reject("554", "5.7.1", "spam")
				}
				return Continue()
			},
			eoh:  func(*State) Decision { log.add("eoh"); return Continue() },
			body: func(*State, []byte) Decision { log.add("body"); return Continue() },
			eom:  func(*State, Modifier) Decision { log.add("eom"); return Continue() },
		}
	}}
	ts := start(t, tm, Options{}, false)
	c := ts.DialOffer(t, miltertest.PostfixActions, miltertest.PostfixProtocol)
	want := milter.OptNoData | milter.OptNoUnknown | milter.OptNoHeaderReply | milter.OptNoEOHReply | milter.OptNoBodyReply | milter.OptHeaderLeadingSpace
	if c.ProtocolOpts != want {
		t.Fatalf("negotiated protocol %#x, want %#x", c.ProtocolOpts, want)
	}
	c.Envelope(t, "a@example.org", "b@example.net")
	for _, h := range []string{"Subject", "X-Spam", "X-After"} {
		miltertest.Cont(t, h)(c.HeaderField(h, "v")) // the client reads no reply
	}
	miltertest.Cont(t, "eoh")(c.HeaderEnd())
	miltertest.Cont(t, "body")(c.BodyChunk([]byte("hello\r\n")))
	c.EndExpect(t, milter.ActReplyCode, 554, "5.7.1 spam")

	c.Txn(t, "a@example.org", "c@example.net")
	miltertest.Cont(t, "header")(c.HeaderField("Subject", "second"))
	miltertest.Cont(t, "eoh")(c.HeaderEnd())
	c.EndExpect(t, milter.ActAccept, 0, "")

	recs := ts.WaitTxns(t, 2)
	if got, w := log.take(), []string{"header:Subject", "header:X-Spam", "header:Subject", "eoh", "eom"}; !reflect.DeepEqual(got, w) {
		t.Errorf("calls %q, want %q", got, w)
	}
	if recs[0].Final.Action != ActionReject || recs[0].FinalStage != StageHeaders || recs[0].Aborted {
		t.Errorf("first message: %+v at %v, want reject at header", recs[0].Final, recs[0].FinalStage)
	}
	if recs[1].Final.Action != ActionAccept || len(recs[1].Headers) != 1 {
		t.Errorf("second message: %+v, headers %v", recs[1].Final, recs[1].Headers)
	}
}

// A milter that decides only at end of message lets Postfix go on without
// waiting at the envelope stages; what it decides there is held.
func TestDeciderHoldsEnvelopeDecisions(t *testing.T) {
	log := &callLog{}
	m := deciding{decides: StageEOM, testMilter: &testMilter{stages: AllStages, mk: func() *funcSession {
		return &funcSession{
			connect: func(st *State) Decision {
				log.add("connect")
				if st.ClientHost == "bad.example" {
					return TempFail("451", "4.7.1", "later")
				}
				return Continue()
			},
			mail: func(st *State) Decision {
				log.add("mail")
				if st.Sender == "spam@example.org" {
					return Reject("", "", "")
				}
				return Continue()
			},
			rcpt: func(*State, *Recipient) Decision { log.add("rcpt"); return Continue() },
			eom:  func(*State, Modifier) Decision { log.add("eom"); return Continue() },
		}
	}}}
	ts := start(t, m, Options{}, false)

	c := ts.DialOffer(t, miltertest.PostfixActions, miltertest.PostfixProtocol)
	noRepl := milter.OptNoConnReply | milter.OptNoHeloReply | milter.OptNoMailReply | milter.OptNoRcptReply
	if c.ProtocolOpts&noRepl != noRepl {
		t.Fatalf("negotiated protocol %#x lacks the envelope no-reply flags", c.ProtocolOpts)
	}
	c.Envelope(t, "spam@example.org", "b@example.net")
	c.EndExpect(t, milter.ActReplyCode, 550, "5.7.1 Message rejected")
	miltertest.Cont(t, "helo")(c.Helo("helo.example"))
	c.Txn(t, "ok@example.org", "b@example.net")
	c.EndExpect(t, milter.ActAccept, 0, "")
	miltertest.Cont(t, "mail")(c.Mail("spam@example.org", nil))
	if err := c.Abort(); err != nil { // ends with a held decision, never answered
		t.Fatal(err)
	}
	recs := ts.WaitTxns(t, 3)
	if got, w := log.take(), []string{"connect", "mail", "mail", "rcpt", "eom", "mail"}; !reflect.DeepEqual(got, w) {
		t.Errorf("calls %q, want %q", got, w)
	}
	if recs[0].Final.Action != ActionReject || recs[0].FinalStage != StageMail {
		t.Errorf("held reject reported as %v at %v", recs[0].Final.Action, recs[0].FinalStage)
	}
	if !recs[2].Aborted || recs[2].Final.Action != ActionReject || recs[2].FinalStage != StageMail {
		t.Errorf("aborted transaction with a held reject reported as %+v", recs[2])
	}

	// A connection-level decision holds for every message of the connection.
	c2 := ts.DialOffer(t, miltertest.PostfixActions, miltertest.PostfixProtocol)
	miltertest.Cont(t, "conn")(c2.Conn("bad.example", milter.FamilyInet, 4000, "192.0.2.66"))
	for i := 0; i < 2; i++ {
		c2.Txn(t, "a@example.org", "b@example.net")
		c2.EndExpect(t, milter.ActReplyCode, 451, "4.7.1 later")
	}
	recs = ts.WaitTxns(t, 5)
	for _, r := range recs[3:] {
		if r.Final.Action != ActionTempFail || r.FinalStage != StageConnect {
			t.Errorf("connection-level held tempfail reported as %v at %v", r.Final.Action, r.FinalStage)
		}
	}
	if got := log.take(); !reflect.DeepEqual(got, []string{"connect"}) {
		t.Errorf("calls after a held connect decision: %q", got)
	}
}

// The milter asks only for what the MTA offers; a modification the MTA does
// not offer fails in the milter instead of dropping the milter in Postfix.
func TestNegotiationWithinOffer(t *testing.T) {
	var addErr error
	tm := &testMilter{actions: MayAddHeader | MayQuarantine, mk: func() *funcSession {
		return &funcSession{eom: func(_ *State, m Modifier) Decision {
			addErr = m.AddHeader("X-A", "1")
			return Continue()
		}}
	}}
	ts := start(t, tm, Options{}, false)
	// A version 2 MTA offering no no-reply flags and no header additions.
	c := ts.DialOffer(t, milter.OptQuarantine, miltertest.Proto2Protocol)
	if c.ActionOpts != milter.OptQuarantine {
		t.Errorf("negotiated actions %#x, want quarantine only", c.ActionOpts)
	}
	if c.ProtocolOpts&^miltertest.Proto2Protocol != 0 {
		t.Errorf("negotiated protocol %#x outside the offer %#x", c.ProtocolOpts, miltertest.Proto2Protocol)
	}
	c.Envelope(t, "a@example.org", "b@example.net")
	miltertest.Cont(t, "header")(c.HeaderField("Subject", "x")) // replied: no NR offered
	c.EndExpect(t, milter.ActAccept, 0, "")
	if !errors.Is(addErr, ErrNotNegotiated) {
		t.Errorf("AddHeader without the MTA's offer: %v, want ErrNotNegotiated", addErr)
	}
}

// Bytes that break the protocol close the connection (Postfix then applies
// milter_default_action), are counted, and end an open transaction as
// aborted; the server goes on serving.
func TestProtocolErrors(t *testing.T) {
	ts := start(t, &testMilter{}, Options{}, false)
	optneg := func(version uint32) []byte {
		b := make([]byte, 12)
		binary.BigEndian.PutUint32(b[0:], version)
		binary.BigEndian.PutUint32(b[4:], 0x1ff)
		binary.BigEndian.PutUint32(b[8:], 0x1fffff)
		return packet('O', b)
	}
	cases := []struct {
		name string
		in   []byte
		txn  bool
	}{
		{"version 1", optneg(1), false},
		{"unknown command", append(optneg(6), packet('Z', nil)...), false},
		{"connect without family", append(optneg(6), packet('C', []byte("host\x00"))...), false},
		{"IPv4 connect without port", append(optneg(6), packet('C', []byte("host\x004"))...), false},
		{"header without name", append(optneg(6), packet('L', []byte("\x00v\x00"))...), false},
		{"zero length", append(optneg(6), 0, 0, 0, 0), false},
		{"over 1 MiB", append(optneg(6), 0x00, 0x20, 0x00, 0x00, 'B'), false},
		{"garbage inside a transaction", append(append(optneg(6), packet('M', []byte("<a@b>\x00"))...), packet('?', nil)...), true},
		{"cut inside a packet", append(append(optneg(6), packet('M', []byte("<a@b>\x00"))...), 0, 0, 0, 9, 'R', '<'), true},
	}
	txns := 0
	for i, tc := range cases {
		conn, err := net.DialTimeout(ts.Network, ts.Addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := conn.Write(tc.in); err != nil {
			t.Fatal(err)
		}
		if tc.name == "cut inside a packet" {
			conn.(interface{ CloseWrite() error }).CloseWrite()
		}
		// The server answers what it understood, then closes.
		if _, err := io.ReadAll(conn); err != nil {
			t.Fatalf("%s: %v (want the server to close the connection)", tc.name, err)
		}
		conn.Close()
		if tc.txn {
			txns++
			r := ts.WaitTxns(t, txns)[txns-1]
			if !r.Aborted {
				t.Errorf("%s: transaction %+v not reported as aborted", tc.name, r)
			}
		}
		miltertest.WaitFor(t, "protocol error counted", func() bool {
			return ts.Counter(t, "geomilter_milter_protocol_errors_total") == float64(i+1)
		})
	}
	c := ts.Dial(t)
	c.Envelope(t, "a@example.org", "b@example.net")
	c.EndExpect(t, milter.ActAccept, 0, "")
}
