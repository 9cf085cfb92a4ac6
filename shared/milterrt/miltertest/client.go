package miltertest

import (
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	milter "github.com/emersion/go-milter"
)

// Client is a go-milter client session on a connection to a Server.
type Client struct {
	*milter.ClientSession
	Raw net.Conn // the connection itself, e.g. to cut it without QUIT
}

// Dial opens a session that makes a protocol 2 offer (Proto2Actions,
// Proto2Protocol): every event gets a reply. It is closed when the test ends.
func (s *Server) Dial(t testing.TB) *Client {
	t.Helper()
	return s.DialOffer(t, Proto2Actions, Proto2Protocol)
}

// DialOffer opens a session that offers these actions and protocol flags at
// option negotiation (PostfixActions and PostfixProtocol for what Postfix
// offers). It is closed when the test ends.
func (s *Server) DialOffer(t testing.TB, actions milter.OptAction, proto milter.OptProtocol) *Client {
	t.Helper()
	c, err := s.TryDial(actions, proto)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Raw.Close() })
	return c
}

// TryDial is DialOffer returning the error (for a server expected to refuse);
// the caller closes the session.
func (s *Server) TryDial(actions milter.OptAction, proto milter.OptProtocol) (*Client, error) {
	d := &keepDialer{}
	cl := milter.NewClientWithOptions(s.Network, s.Addr, milter.ClientOptions{
		Dialer: d, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second,
		ActionMask: actions, ProtocolMask: proto,
	})
	sess, err := cl.Session()
	if err != nil {
		if d.conn != nil {
			d.conn.Close()
		}
		return nil, err
	}
	return &Client{ClientSession: sess, Raw: d.conn}, nil
}

// keepDialer keeps the connection go-milter's client dials.
type keepDialer struct{ conn net.Conn }

func (d *keepDialer) Dial(network, addr string) (net.Conn, error) {
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	d.conn = c
	return c, err
}

// Expect returns a checker for a client call's (action, error):
// Expect(t, "rcpt", milter.ActReplyCode, 550, "5.1.1 No such user")(c.Rcpt(…)).
func Expect(t testing.TB, what string, code milter.ActionCode, smtp int, text string) func(*milter.Action, error) {
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

// Cont is Expect for continue.
func Cont(t testing.TB, what string) func(*milter.Action, error) {
	return Expect(t, what, milter.ActContinue, 0, "")
}

// EndExpect sends end of message, checks the final reply and returns the
// modifications that preceded it.
func (c *Client) EndExpect(t testing.TB, code milter.ActionCode, smtp int, text string) []milter.ModifyAction {
	t.Helper()
	mods, act, err := c.End()
	Expect(t, "eom", code, smtp, text)(act, err)
	return mods
}

// Envelope sends CONNECT (tcp4 client.example [192.0.2.10]:40000), HELO
// helo.example, MAIL and one RCPT, each expected to continue.
func (c *Client) Envelope(t testing.TB, sender, rcpt string) {
	t.Helper()
	Cont(t, "conn")(c.Conn("client.example", milter.FamilyInet, 40000, "192.0.2.10"))
	Cont(t, "helo")(c.Helo("helo.example"))
	c.Txn(t, sender, rcpt)
}

// Txn sends MAIL and one RCPT, each expected to continue.
func (c *Client) Txn(t testing.TB, sender, rcpt string) {
	t.Helper()
	Cont(t, "mail")(c.Mail(sender, nil))
	Cont(t, "rcpt")(c.Rcpt(rcpt, nil))
}

// Peer is the SMTP client of a connection, sent with CONNECT and HELO.
type Peer struct {
	Host   string
	Family milter.ProtoFamily
	Port   uint16
	Addr   string
	Helo   string
}

// Rcpt is one RCPT TO: the address without <> and its ESMTP arguments
// ("NOTIFY=SUCCESS", "ORCPT=rfc822;a+2Bb@example.net").
type Rcpt struct {
	Addr string
	Args []string
}

// Header is one header field as Postfix holds it: the name without the
// colon, and the value exactly as after the colon (leading whitespace kept,
// folded lines joined by "\n", no final line end).
type Header struct {
	Name, Value string
}

// Transaction is what Send drives, in Postfix's order.
type Transaction struct {
	Peer     *Peer // nil: no CONNECT and HELO (sent earlier on the connection)
	Sender   string
	MailArgs []string // ESMTP arguments of MAIL ("SIZE=1000", "BODY=8BITMIME")
	Rcpts    []Rcpt
	// Macros are sent just before the command they belong to
	// (milter.CodeConn, CodeMail, CodeEOB, …), as name, value, ….
	Macros  map[milter.Code][]string
	Headers []Header
	Body    io.Reader // with CRLF line ends, as Postfix sends it; nil: no body
	// Message, when set, is a raw RFC 5322 message (LF or CRLF line ends)
	// whose header fields and body are sent instead of Headers and Body.
	Message io.Reader
}

// Result is what the milter answered to a transaction.
type Result struct {
	Stage       string         // the last command sent: "connect", "helo", "mail", "rcpt", "header", "eoh", "body", "eom" (or "abort")
	Reply       *milter.Action // the reply that ended the transaction (at eom, the final reply)
	RcptReplies []*milter.Action
	Mods        []milter.ModifyAction // modifications sent with the end-of-message reply
}

// Send drives one transaction the way Postfix does: it stops at the first
// reply other than continue, except that a recipient refused alone lets the
// transaction go on (and when every recipient is refused it sends ABORT, as
// Postfix does). Header values are sent as Postfix sends them: without
// SMFIP_HDR_LEADSPC negotiated, with one leading space removed. Body chunks
// are at most 64 KiB.
func (c *Client) Send(t testing.TB, tx Transaction) Result {
	t.Helper()
	var res Result
	macros := func(code milter.Code) {
		if kv := tx.Macros[code]; len(kv) > 0 {
			if err := c.Macros(code, kv...); err != nil {
				t.Fatalf("macros %c: %v", code, err)
			}
		}
	}
	step := func(stage string, act *milter.Action, err error) bool {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", stage, err)
		}
		res.Stage, res.Reply = stage, act
		return act.Code == milter.ActContinue
	}
	if p := tx.Peer; p != nil {
		macros(milter.CodeConn)
		if act, err := c.Conn(p.Host, p.Family, p.Port, p.Addr); !step("connect", act, err) {
			return res
		}
		macros(milter.CodeHelo)
		if act, err := c.Helo(p.Helo); !step("helo", act, err) {
			return res
		}
	}
	macros(milter.CodeMail)
	if act, err := c.Mail(tx.Sender, tx.MailArgs); !step("mail", act, err) {
		return res
	}
	accepted := 0
	for _, r := range tx.Rcpts {
		macros(milter.CodeRcpt)
		act, err := c.Rcpt(r.Addr, r.Args)
		if err != nil {
			t.Fatalf("rcpt %s: %v", r.Addr, err)
		}
		res.Stage, res.Reply = "rcpt", act
		res.RcptReplies = append(res.RcptReplies, act)
		switch act.Code {
		case milter.ActContinue:
			accepted++
		case milter.ActReplyCode, milter.ActReject, milter.ActTempFail:
		default:
			return res
		}
	}
	if len(tx.Rcpts) > 0 && accepted == 0 {
		if err := c.Abort(); err != nil {
			t.Fatalf("abort: %v", err)
		}
		res.Stage = "abort"
		return res
	}
	headers, body := tx.Headers, tx.Body
	if tx.Message != nil {
		var err error
		if headers, body, err = SplitMessage(tx.Message); err != nil {
			t.Fatal(err)
		}
	}
	for _, h := range headers {
		v := h.Value
		if !c.ProtocolOption(milter.OptHeaderLeadingSpace) && len(v) > 0 && v[0] == ' ' {
			v = v[1:] // what Postfix does for a milter without SMFIP_HDR_LEADSPC
		}
		if act, err := c.HeaderField(h.Name, v); !step("header", act, err) {
			return res
		}
	}
	if act, err := c.HeaderEnd(); !step("eoh", act, err) {
		return res
	}
	if body != nil {
		buf := make([]byte, milter.MaxBodyChunk)
		for {
			n, rerr := io.ReadFull(body, buf)
			if n > 0 {
				act, err := c.BodyChunk(buf[:n])
				if err != nil {
					t.Fatalf("body: %v", err)
				}
				if act.Code == milter.ActSkip {
					break
				}
				if !step("body", act, nil) {
					return res
				}
			}
			if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
				break
			}
			if rerr != nil {
				t.Fatalf("reading the body: %v", rerr)
			}
		}
	}
	macros(milter.CodeEOB)
	mods, act, err := c.End()
	if err != nil {
		t.Fatalf("eom: %v", err)
	}
	res.Stage, res.Reply, res.Mods = "eom", act, mods
	return res
}

// String is "c", "a", "y 550 5.7.1 text", … for failure messages.
func (r Result) String() string {
	if r.Reply == nil {
		return r.Stage + ": no reply"
	}
	if r.Reply.Code == milter.ActReplyCode {
		return fmt.Sprintf("%s: %c %d %s", r.Stage, r.Reply.Code, r.Reply.SMTPCode, r.Reply.SMTPText)
	}
	return fmt.Sprintf("%s: %c", r.Stage, r.Reply.Code)
}
