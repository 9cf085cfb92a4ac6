package milterrt_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	milter "github.com/emersion/go-milter"

	. "github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/milterrt/miltertest"
	"github.com/rs/zerolog"
)

// TestMacrosMergedAcrossStages: go-milter replaces the macros at each stage;
// the runtime merges them, keeps connection-level ones across transactions
// and drops transaction-level ones when the transaction ends.
func TestMacrosMergedAcrossStages(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]map[string]string{} // "txn/stage" → macros
	snap := func(key string, st *State) {
		mu.Lock()
		defer mu.Unlock()
		m := map[string]string{}
		for k, v := range st.Macros {
			m[k] = v
		}
		seen[key] = m
	}
	tm := &testMilter{mk: func() *funcSession {
		n := 0
		return &funcSession{
			mail: func(st *State) Decision { n++; snap(string(rune('0'+n))+"/mail", st); return Continue() },
			eom: func(st *State, _ Modifier) Decision {
				snap(string(rune('0'+n))+"/eom", st)
				if st.QueueID() == "" || st.Macro("daemon_name") != "smtpd" || st.Macro("{j}") != "mx.example" {
					t.Errorf("txn %d: QueueID %q, Macro(daemon_name) %q", n, st.QueueID(), st.Macro("daemon_name"))
				}
				return Continue()
			},
		}
	}}
	for _, tcp := range []bool{false, true} {
		ts := start(t, tm, Options{}, tcp)
		c := ts.Dial(t)
		must := func(err error) {
			t.Helper()
			if err != nil {
				t.Fatal(err)
			}
		}
		must(c.Macros(milter.CodeConn, "j", "mx.example", "{daemon_name}", "smtpd"))
		miltertest.Cont(t, "conn")(c.Conn("client.example", milter.FamilyInet, 40000, "192.0.2.10"))
		must(c.Macros(milter.CodeHelo, "{tls_version}", "TLSv1.3"))
		miltertest.Cont(t, "helo")(c.Helo("helo.example"))
		must(c.Macros(milter.CodeMail, "{auth_authen}", "bob", "{mail_addr}", "a@example.org"))
		miltertest.Cont(t, "mail")(c.Mail("a@example.org", nil))
		must(c.Macros(milter.CodeRcpt, "{rcpt_addr}", "b@example.net"))
		miltertest.Cont(t, "rcpt")(c.Rcpt("b@example.net", nil))
		must(c.Macros(milter.CodeEOB, "i", "4ABC123"))
		c.EndExpect(t, milter.ActAccept, 0, "")

		// Second transaction: no macro packet before MAIL (go-milter still holds
		// the end-of-message map, which must not leak), then a new queue id.
		miltertest.Cont(t, "mail2")(c.Mail("c@example.org", nil))
		miltertest.Cont(t, "rcpt2")(c.Rcpt("d@example.net", nil))
		must(c.Macros(milter.CodeEOB, "i", "4DEF456"))
		c.EndExpect(t, milter.ActAccept, 0, "")

		ts.WaitTxns(t, 2)
		mu.Lock()
		want := map[string]map[string]string{
			"1/mail": {"j": "mx.example", "{daemon_name}": "smtpd", "{tls_version}": "TLSv1.3", "{auth_authen}": "bob", "{mail_addr}": "a@example.org"},
			"1/eom":  {"j": "mx.example", "{daemon_name}": "smtpd", "{tls_version}": "TLSv1.3", "{auth_authen}": "bob", "{mail_addr}": "a@example.org", "{rcpt_addr}": "b@example.net", "i": "4ABC123"},
			"2/mail": {"j": "mx.example", "{daemon_name}": "smtpd", "{tls_version}": "TLSv1.3"},
			"2/eom":  {"j": "mx.example", "{daemon_name}": "smtpd", "{tls_version}": "TLSv1.3", "i": "4DEF456"},
		}
		for k, w := range want {
			if !reflect.DeepEqual(seen[k], w) {
				t.Errorf("tcp=%v %s: macros %v, want %v", tcp, k, seen[k], w)
			}
		}
		seen = map[string]map[string]string{}
		mu.Unlock()
	}
}

// TestExactHeaders: with SMFIP_HDR_LEADSPC (negotiated whenever offered)
// HeaderField.Raw is the value byte for byte; without it, one space is put
// back where Postfix removed it.
func TestExactHeaders(t *testing.T) {
	noLead := miltertest.PostfixProtocol &^ milter.OptHeaderLeadingSpace
	cases := []struct {
		name, received string // the value after the colon as the SMTP client sent it
		offer          milter.OptProtocol
		raw, value     string
	}{
		{"space", " v", miltertest.PostfixProtocol, " v", "v"},
		{"no space after the colon", "v", miltertest.PostfixProtocol, "v", "v"},
		{"tab", "\tv w", miltertest.PostfixProtocol, "\tv w", "v w"},
		{"folded", " one\n two\n\tthree", miltertest.PostfixProtocol, " one\r\n two\r\n\tthree", "one two\tthree"},
		{"empty", "", miltertest.PostfixProtocol, "", ""},
		{"only a space", " ", miltertest.PostfixProtocol, " ", ""},
		{"trailing space kept", " v ", miltertest.PostfixProtocol, " v ", "v "},
		{"protocol 2: space", " v", miltertest.Proto2Protocol, " v", "v"},
		{"protocol 2: no space (one too many)", "v", miltertest.Proto2Protocol, " v", "v"},
		{"protocol 2: tab", "\tv", miltertest.Proto2Protocol, " \tv", "v"},
		{"protocol 2: folded", " one\n two", miltertest.Proto2Protocol, " one\r\n two", "one two"},
		{"protocol 2: empty", "", miltertest.Proto2Protocol, " ", ""},
		{"v6 without LEADSPC", "v", noLead, " v", "v"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got []HeaderField
			tm := &testMilter{mk: func() *funcSession {
				return &funcSession{header: func(_ *State, h HeaderField) Decision { got = append(got, h); return Continue() }}
			}}
			ts := start(t, tm, Options{}, false)
			c := ts.DialOffer(t, miltertest.PostfixActions, tc.offer)
			if lead := c.ProtocolOption(milter.OptHeaderLeadingSpace); lead != (tc.offer&milter.OptHeaderLeadingSpace != 0) {
				t.Fatalf("LEADSPC negotiated %v, offered %v", lead, tc.offer&milter.OptHeaderLeadingSpace != 0)
			}
			res := c.Send(t, miltertest.Transaction{Sender: "a@example.org", Rcpts: []miltertest.Rcpt{{Addr: "b@example.net"}},
				Headers: []miltertest.Header{{Name: "X-Test", Value: tc.received}}})
			if res.Reply.Code != milter.ActAccept {
				t.Fatalf("result %v", res)
			}
			want := HeaderField{Name: "X-Test", Raw: tc.raw, Value: tc.value}
			if len(got) != 1 || got[0] != want {
				t.Errorf("got %q, want %q", got, want)
			}
			if recs := ts.WaitTxns(t, 1); len(recs[0].Headers) != 1 || recs[0].Headers[0] != want {
				t.Errorf("reported %q", recs[0].Headers)
			}
		})
	}
	// A milter that does not read headers does not ask for LEADSPC.
	ts := start(t, &testMilter{stages: StageRcpt}, Options{}, false)
	if c := ts.DialOffer(t, miltertest.PostfixActions, miltertest.PostfixProtocol); c.ProtocolOption(milter.OptHeaderLeadingSpace) {
		t.Error("LEADSPC negotiated without StageHeaders")
	}
}

func TestHeadersKeepArrivalOrder(t *testing.T) {
	var got []HeaderField
	tm := &testMilter{mk: func() *funcSession {
		return &funcSession{eom: func(st *State, _ Modifier) Decision {
			got = append([]HeaderField(nil), st.Headers...)
			return Continue()
		}}
	}}
	ts := start(t, tm, Options{}, false)
	c := ts.Dial(t)
	c.Envelope(t, "a@example.org", "b@example.net")
	sent := [][2]string{
		{"Received", "from a by b"}, {"From", "A <a@example.org>"}, {"received", "from c by d"},
		{"Subject", ""}, {"X-Multi", "line one\n\tline two"}, {"To", "b@example.net"},
	}
	var want []HeaderField
	for _, h := range sent {
		miltertest.Cont(t, "header "+h[0])(c.HeaderField(h[0], h[1]))
		want = append(want, NewHeaderField(h[0], " "+h[1])) // protocol 2: Postfix removed one space
	}
	miltertest.Cont(t, "eoh")(c.HeaderEnd())
	miltertest.Cont(t, "body")(c.BodyChunk([]byte("hello\r\n")))
	c.EndExpect(t, milter.ActAccept, 0, "")
	recs := ts.WaitTxns(t, 1)
	if !reflect.DeepEqual(got, want) || !reflect.DeepEqual(recs[0].Headers, want) {
		t.Fatalf("headers %q (reported %q), want %q", got, recs[0].Headers, want)
	}
}

// TestRcptRejectKeepsTransaction: a rejected recipient fails alone; the
// transaction and the connection state go on, and a second transaction on the
// same connection still sees client and HELO.
func TestRcptRejectKeepsTransaction(t *testing.T) {
	type seenAt struct{ txn, addr, helo, sender string }
	var mu sync.Mutex
	var seen []seenAt
	tm := &testMilter{mk: func() *funcSession {
		return &funcSession{
			rcpt: func(st *State, r *Recipient) Decision {
				switch r.Addr {
				case "bad@example.net":
					return Reject("550", "5.1.1", "No such user").WithRule("unknown-user")
				case "later@example.net":
					return TempFail("", "", "")
				}
				return Continue()
			},
			eom: func(st *State, _ Modifier) Decision {
				mu.Lock()
				seen = append(seen, seenAt{st.TxnID, st.ClientAddr.String(), st.Helo, st.Sender})
				mu.Unlock()
				return Continue()
			},
		}
	}}
	ts := start(t, tm, Options{}, false)
	c := ts.Dial(t)
	c.Envelope(t, "a@example.org", "good1@example.net")
	miltertest.Expect(t, "rcpt bad", milter.ActReplyCode, 550, "5.1.1 No such user")(c.Rcpt("bad@example.net", nil))
	miltertest.Expect(t, "rcpt later", milter.ActReplyCode, 451, "4.7.1 Try again later")(c.Rcpt("later@example.net", nil))
	miltertest.Cont(t, "rcpt good2")(c.Rcpt("good2@example.net", nil))
	miltertest.Cont(t, "header")(c.HeaderField("Subject", "hi"))
	c.EndExpect(t, milter.ActAccept, 0, "")

	c.Txn(t, "<>", "x@example.net")
	c.EndExpect(t, milter.ActAccept, 0, "")

	recs := ts.WaitTxns(t, 2)
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 2 {
		t.Fatalf("EndOfMessage called %d times, want 2", len(seen))
	}
	for i, s := range seen {
		if s.addr != "192.0.2.10" || s.helo != "helo.example" {
			t.Errorf("txn %d lost connection state: %+v", i+1, s)
		}
	}
	if seen[0].txn == seen[1].txn || !strings.HasSuffix(seen[0].txn, ".1") || !strings.HasSuffix(seen[1].txn, ".2") {
		t.Errorf("txn ids %q, %q", seen[0].txn, seen[1].txn)
	}
	if seen[1].sender != "" {
		t.Errorf("null sender seen as %q", seen[1].sender)
	}
	r := recs[0]
	if r.Final.Action != ActionAccept || r.FinalStage != StageEOM || r.Aborted {
		t.Errorf("final %+v stage %v aborted %v", r.Final, r.FinalStage, r.Aborted)
	}
	var verdicts []string
	for _, x := range r.Rcpts {
		verdicts = append(verdicts, x.Addr+"="+x.Decision.Action.String()+"/"+x.Decision.RuleID)
	}
	want := []string{"good1@example.net=continue/", "bad@example.net=reject/unknown-user", "later@example.net=tempfail/", "good2@example.net=continue/"}
	if !reflect.DeepEqual(verdicts, want) {
		t.Errorf("rcpt verdicts %v, want %v", verdicts, want)
	}
	if got := ts.Counter(t, "geomilter_milter_decisions_total", "stage", "rcpt", "action", "reject"); got != 1 {
		t.Errorf("decisions_total{rcpt,reject} = %v, want 1", got)
	}
}

// TestOnTransactionOncePerTransaction drives each way a transaction can end
// and checks it is reported exactly once, with the right final decision.
func TestOnTransactionOncePerTransaction(t *testing.T) {
	type want struct {
		action  Action
		stage   Stages
		aborted bool
		sender  string
	}
	cases := []struct {
		name    string
		actions Modifications
		drive   func(t *testing.T, c *miltertest.Client)
		want    []want
		aborts  int32 // Session.Abort calls expected
	}{
		{"completed", 0, func(t *testing.T, c *miltertest.Client) {
			c.Envelope(t, "ok@example.org", "b@example.net")
			c.EndExpect(t, milter.ActAccept, 0, "")
			c.Close()
		}, []want{{ActionAccept, StageEOM, false, "ok@example.org"}}, 0},
		{"mail rejected", 0, func(t *testing.T, c *miltertest.Client) {
			miltertest.Cont(t, "conn")(c.Conn("h", milter.FamilyInet, 1, "192.0.2.1"))
			miltertest.Expect(t, "mail", milter.ActReplyCode, 550, "5.7.1 Sender blocked")(c.Mail("reject-mail@example.org", nil))
			c.Abort() // Postfix may send ABORT after the rejected MAIL
			c.Txn(t, "next@example.org", "b@example.net")
			c.EndExpect(t, milter.ActAccept, 0, "")
			c.Close()
		}, []want{{ActionReject, StageMail, false, "reject-mail@example.org"}, {ActionAccept, StageEOM, false, "next@example.org"}}, 1},
		{"all rcpts rejected then abort", 0, func(t *testing.T, c *miltertest.Client) {
			miltertest.Cont(t, "mail")(c.Mail("a@example.org", nil))
			miltertest.Expect(t, "rcpt1", milter.ActReplyCode, 550, "5.7.1 Message rejected")(c.Rcpt("reject-1@example.net", nil))
			miltertest.Expect(t, "rcpt2", milter.ActReplyCode, 550, "5.7.1 Message rejected")(c.Rcpt("reject-2@example.net", nil))
			c.Abort()
			c.Close()
		}, []want{{ActionReject, StageRcpt, true, "a@example.org"}}, 1},
		{"rset mid transaction", 0, func(t *testing.T, c *miltertest.Client) {
			c.Envelope(t, "a@example.org", "b@example.net")
			c.Abort()
			c.Close()
		}, []want{{ActionContinue, 0, true, "a@example.org"}}, 1},
		{"connection lost", 0, func(t *testing.T, c *miltertest.Client) {
			c.Envelope(t, "a@example.org", "b@example.net")
			miltertest.Cont(t, "header")(c.HeaderField("Subject", "x"))
			c.Raw.Close()
		}, []want{{ActionContinue, 0, true, "a@example.org"}}, 1},
		{"new mail without abort", 0, func(t *testing.T, c *miltertest.Client) {
			c.Envelope(t, "first@example.org", "b@example.net")
			c.Txn(t, "second@example.org", "b@example.net")
			c.EndExpect(t, milter.ActAccept, 0, "")
			c.Close()
		}, []want{{ActionContinue, 0, true, "first@example.org"}, {ActionAccept, StageEOM, false, "second@example.org"}}, 1},
		{"connect rejected", 0, func(t *testing.T, c *miltertest.Client) {
			miltertest.Expect(t, "conn", milter.ActReplyCode, 554, "5.7.1 Go away")(c.Conn("h", milter.FamilyInet, 1, "203.0.113.9"))
			c.Close()
		}, []want{{ActionReject, StageConnect, false, ""}}, 0},
		{"helo tempfailed", 0, func(t *testing.T, c *miltertest.Client) {
			miltertest.Cont(t, "conn")(c.Conn("h", milter.FamilyInet, 1, "192.0.2.1"))
			miltertest.Expect(t, "helo", milter.ActReplyCode, 421, "4.7.0 Later")(c.Helo("bad.helo"))
			c.Close()
		}, []want{{ActionTempFail, StageHelo, false, ""}}, 0},
		{"discard at eom", 0, func(t *testing.T, c *miltertest.Client) {
			c.Envelope(t, "discard@example.org", "b@example.net")
			c.EndExpect(t, milter.ActDiscard, 0, "")
			c.Close()
		}, []want{{ActionDiscard, StageEOM, false, "discard@example.org"}}, 0},
		{"accept at mail", 0, func(t *testing.T, c *miltertest.Client) {
			miltertest.Cont(t, "conn")(c.Conn("h", milter.FamilyInet, 1, "192.0.2.1"))
			miltertest.Expect(t, "mail", milter.ActAccept, 0, "")(c.Mail("accept-mail@example.org", nil))
			c.Close()
		}, []want{{ActionAccept, StageMail, false, "accept-mail@example.org"}}, 1},
		{"reject at header", 0, func(t *testing.T, c *miltertest.Client) {
			c.Envelope(t, "a@example.org", "b@example.net")
			miltertest.Expect(t, "header", milter.ActReplyCode, 554, "5.6.0 Bad header")(c.HeaderField("X-Bad", "1"))
			c.Close()
		}, []want{{ActionReject, StageHeaders, false, "a@example.org"}}, 1},
		{"quarantine at rcpt applied at eom", MayQuarantine, func(t *testing.T, c *miltertest.Client) {
			c.Envelope(t, "a@example.org", "hold@example.net")
			mods := c.EndExpect(t, milter.ActAccept, 0, "")
			if len(mods) != 1 || mods[0].Code != milter.ActQuarantine || mods[0].Reason != "suspicious rcpt" {
				t.Errorf("modify actions %+v, want one quarantine", mods)
			}
			c.Close()
		}, []want{{ActionQuarantine, StageEOM, false, "a@example.org"}}, 0},
		{"quarantine at eom", MayQuarantine, func(t *testing.T, c *miltertest.Client) {
			c.Envelope(t, "quarantine@example.org", "b@example.net")
			mods := c.EndExpect(t, milter.ActAccept, 0, "")
			if len(mods) != 1 || mods[0].Code != milter.ActQuarantine || mods[0].Reason != "held by milter" {
				t.Errorf("modify actions %+v, want one quarantine", mods)
			}
			c.Close()
		}, []want{{ActionQuarantine, StageEOM, false, "quarantine@example.org"}}, 0},
		{"quarantine without MayQuarantine tempfails", 0, func(t *testing.T, c *miltertest.Client) {
			c.Envelope(t, "quarantine@example.org", "b@example.net")
			c.EndExpect(t, milter.ActReplyCode, 451, "4.3.0 Temporary failure")
			c.Close()
		}, []want{{ActionTempFail, StageEOM, false, "quarantine@example.org"}}, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var aborts atomic.Int32
			tm := &testMilter{actions: tc.actions, mk: func() *funcSession {
				return &funcSession{
					connect: func(st *State) Decision {
						if st.ClientAddr.String() == "203.0.113.9" {
							return Reject("554", "5.7.1", "Go away")
						}
						return Continue()
					},
					helo: func(st *State) Decision {
						if st.Helo == "bad.helo" {
							return TempFail("421", "4.7.0", "Later")
						}
						return Continue()
					},
					mail: func(st *State) Decision {
						switch st.Sender {
						case "reject-mail@example.org":
							return Reject("", "", "Sender blocked")
						case "accept-mail@example.org":
							return Accept()
						}
						return Continue()
					},
					rcpt: func(st *State, r *Recipient) Decision {
						if strings.HasPrefix(r.Addr, "reject-") {
							return Reject("", "", "")
						}
						if r.Addr == "hold@example.net" {
							return Quarantine("suspicious rcpt")
						}
						return Continue()
					},
					header: func(st *State, h HeaderField) Decision {
						if h.Name == "X-Bad" {
							return Reject("554", "5.6.0", "Bad header")
						}
						return Continue()
					},
					eom: func(st *State, _ Modifier) Decision {
						switch st.Sender {
						case "discard@example.org":
							return Discard()
						case "quarantine@example.org":
							return Quarantine("")
						}
						return Continue()
					},
					abort: func(*State) { aborts.Add(1) },
				}
			}}
			ts := start(t, tm, Options{}, false)
			c := ts.Dial(t)
			tc.drive(t, c)
			recs := ts.WaitTxns(t, len(tc.want))
			ids := map[string]bool{}
			for i, w := range tc.want {
				r := recs[i]
				if r.Final.Action != w.action || r.FinalStage != w.stage || r.Aborted != w.aborted || r.Sender != w.sender {
					t.Errorf("txn %d: final %v stage %v aborted %v sender %q; want %v %v %v %q",
						i+1, r.Final.Action, r.FinalStage, r.Aborted, r.Sender, w.action, w.stage, w.aborted, w.sender)
				}
				if ids[r.TxnID] || r.TxnID == "" {
					t.Errorf("txn id %q empty or repeated", r.TxnID)
				}
				ids[r.TxnID] = true
			}
			miltertest.WaitFor(t, "session closed", func() bool { return ts.ActiveSessions() == 0 })
			if got := aborts.Load(); got != tc.aborts {
				t.Errorf("Session.Abort called %d times, want %d", got, tc.aborts)
			}
		})
	}
}

// TestPanicTempfailsTransactionOnly: a panic answers 451 for the rest of that
// transaction; the connection's next transaction and other sessions work.
func TestPanicTempfailsTransactionOnly(t *testing.T) {
	var closes atomic.Int32
	tm := &testMilter{mk: func() *funcSession {
		return &funcSession{
			mail: func(st *State) Decision {
				if st.Sender == "panic-mail@example.org" {
					panic("boom in mail")
				}
				return Continue()
			},
			rcpt: func(st *State, r *Recipient) Decision {
				if r.Addr == "panic@example.net" {
					var m map[string]int
					m["x"]++ // nil map write: a real runtime panic
				}
				return Continue()
			},
			eom: func(st *State, _ Modifier) Decision {
				if st.Sender == "panic-eom@example.org" {
					panic(errors.New("boom in eom"))
				}
				return Continue()
			},
			close: func(*State) { closes.Add(1) },
		}
	}}
	logs := &lockedBuffer{}
	ts := start(t, tm, Options{Logger: zerolog.New(logs)}, false)
	const tf = "4.3.0 Temporary failure"
	c := ts.Dial(t)
	miltertest.Cont(t, "conn")(c.Conn("h", milter.FamilyInet, 1, "192.0.2.1"))
	miltertest.Expect(t, "mail", milter.ActReplyCode, 451, tf)(c.Mail("panic-mail@example.org", nil))
	// Panic at RCPT: that recipient and the rest of the transaction tempfail.
	miltertest.Cont(t, "mail2")(c.Mail("a@example.org", nil))
	miltertest.Cont(t, "rcpt ok")(c.Rcpt("ok@example.net", nil))
	miltertest.Expect(t, "rcpt panic", milter.ActReplyCode, 451, tf)(c.Rcpt("panic@example.net", nil))
	miltertest.Expect(t, "rcpt after", milter.ActReplyCode, 451, tf)(c.Rcpt("after@example.net", nil))
	miltertest.Expect(t, "header", milter.ActReplyCode, 451, tf)(c.HeaderField("Subject", "x"))
	// Panic at EOM.
	c.Txn(t, "panic-eom@example.org", "b@example.net")
	c.EndExpect(t, milter.ActReplyCode, 451, tf)
	// The same connection still works.
	c.Txn(t, "fine@example.org", "b@example.net")
	c.EndExpect(t, milter.ActAccept, 0, "")
	// And so does another session.
	c2 := ts.Dial(t)
	c2.Envelope(t, "other@example.org", "b@example.net")
	c2.EndExpect(t, milter.ActAccept, 0, "")

	recs := ts.WaitTxns(t, 5)
	for i, w := range []Action{ActionTempFail, ActionTempFail, ActionTempFail, ActionAccept, ActionAccept} {
		if recs[i].Final.Action != w {
			t.Errorf("txn %d: final %v, want %v", i+1, recs[i].Final.Action, w)
		}
	}
	if got := ts.Counter(t, "geomilter_milter_panics_total"); got != 3 {
		t.Errorf("panics_total = %v, want 3", got)
	}
	c.Close()
	c2.Close()
	miltertest.WaitFor(t, "sessions closed", func() bool { return closes.Load() == 2 })
	out := logs.String()
	if n := strings.Count(out, `"message":"panic in milter session recovered; answering tempfail"`); n != 3 {
		t.Errorf("%d panic log lines, want 3:\n%s", n, out)
	}
	if !strings.Contains(out, `"session":"`+recs[0].SessionID+`"`) || !strings.Contains(out, "boom in mail") || !strings.Contains(out, "goroutine ") {
		t.Errorf("panic log lacks session id, value or stack:\n%s", out)
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestPanicInNewSessionAndConnect(t *testing.T) {
	var n atomic.Int32
	tm := &testMilter{stages: StageConnect, mk: func() *funcSession {
		if n.Add(1) == 1 {
			panic("cannot build session")
		}
		return &funcSession{connect: func(*State) Decision { panic("in connect") }}
	}}
	ts := start(t, tm, Options{}, false)
	for i := 0; i < 2; i++ {
		c := ts.Dial(t)
		miltertest.Expect(t, "conn", milter.ActReplyCode, 451, "4.3.0 Temporary failure")(c.Conn("h", milter.FamilyInet, 1, "192.0.2.1"))
		c.Close()
	}
	recs := ts.WaitTxns(t, 2)
	for _, r := range recs {
		if r.Final.Action != ActionTempFail || r.FinalStage != StageConnect {
			t.Errorf("final %+v at %v", r.Final, r.FinalStage)
		}
	}
}

func TestClientAddressFamilies(t *testing.T) {
	// Aborted holds Local() here.
	type txnRecord struct {
		Family     string
		ClientAddr net.IP
		Aborted    bool
	}
	var mu sync.Mutex
	var got []txnRecord
	tm := &testMilter{stages: StageConnect | StageMail, mk: func() *funcSession {
		return &funcSession{connect: func(st *State) Decision {
			mu.Lock()
			got = append(got, txnRecord{Family: st.Family, ClientAddr: st.ClientAddr, Aborted: st.Local()})
			mu.Unlock()
			return Continue()
		}}
	}}
	ts := start(t, tm, Options{}, false)
	cases := []struct {
		family milter.ProtoFamily
		port   uint16
		addr   string
		want   txnRecord
	}{
		{milter.FamilyInet, 25, "192.0.2.7", txnRecord{Family: "tcp4", ClientAddr: net.IPv4(192, 0, 2, 7).To4()}},
		{milter.FamilyInet6, 25, "2001:db8::7", txnRecord{Family: "tcp6", ClientAddr: net.ParseIP("2001:db8::7")}},
		{milter.FamilyUnix, 0, "/var/spool/postfix/public/pickup", txnRecord{Family: "unix"}},
		// What Postfix really sends for AF_UNIX: a 2-byte zero port before the address.
		{milter.FamilyUnix, 0, "\x00\x00/var/spool/postfix/public/pickup", txnRecord{Family: "unix"}},
		{milter.FamilyUnknown, 0, "", txnRecord{Family: "unknown"}},
		// What Postfix 3.7 really sends for a local submission through
		// non_smtpd_milters: IPv4 127.0.0.1 with port 0.
		{milter.FamilyInet, 0, "127.0.0.1", txnRecord{Family: "local"}},
		// A real loopback TCP client has a port: not local.
		{milter.FamilyInet, 41000, "127.0.0.1", txnRecord{Family: "tcp4", ClientAddr: net.IPv4(127, 0, 0, 1).To4()}},
	}
	for _, tc := range cases {
		c := ts.Dial(t)
		c.Conn("localhost", tc.family, tc.port, tc.addr)
		miltertest.Cont(t, "mail")(c.Mail("", nil)) // proves the session survived
		c.Close()
	}
	miltertest.WaitFor(t, "connects", func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == len(cases) })
	for i, tc := range cases {
		g := got[i]
		if g.Family != tc.want.Family || !g.ClientAddr.Equal(tc.want.ClientAddr) || (tc.want.ClientAddr == nil) != (g.ClientAddr == nil) {
			t.Errorf("%c %q: family %q addr %v, want %q %v", tc.family, tc.addr, g.Family, g.ClientAddr, tc.want.Family, tc.want.ClientAddr)
		}
		if g.Aborted != (tc.want.ClientAddr == nil) { // Aborted holds Local() here
			t.Errorf("%c %q: Local() = %v", tc.family, tc.addr, g.Aborted)
		}
		if tc.want.Family == "tcp4" && len(g.ClientAddr) != 4 {
			t.Errorf("IPv4 address not in 4-byte form: %d bytes", len(g.ClientAddr))
		}
	}
}

func TestIdleTimeoutClosesSession(t *testing.T) {
	var closes atomic.Int32
	tm := &testMilter{mk: func() *funcSession { return &funcSession{close: func(*State) { closes.Add(1) }} }}
	ts := start(t, tm, Options{IdleTimeout: time.Second}, false)
	c := ts.Dial(t)
	miltertest.Cont(t, "conn")(c.Conn("h", milter.FamilyInet, 1, "192.0.2.1"))
	miltertest.Cont(t, "mail")(c.Mail("a@example.org", nil))
	miltertest.WaitFor(t, "idle session closed", func() bool { return ts.ActiveSessions() == 0 })
	recs := ts.WaitTxns(t, 1)
	if !recs[0].Aborted {
		t.Errorf("transaction cut by idle timeout not reported as aborted: %+v", recs[0])
	}
	if closes.Load() != 1 {
		t.Errorf("Session.Close called %d times", closes.Load())
	}
	if _, err := c.Rcpt("b@example.net", nil); err == nil {
		t.Error("connection still usable after idle timeout")
	}
}

func TestMaxSessionsRefuses(t *testing.T) {
	ts := start(t, &testMilter{}, Options{MaxSessions: 2}, true)
	c1 := ts.Dial(t)
	c2 := ts.Dial(t)
	miltertest.WaitFor(t, "2 sessions", func() bool { return ts.ActiveSessions() == 2 })
	if c3, err := ts.TryDial(miltertest.Proto2Actions, miltertest.Proto2Protocol); err == nil {
		c3.Raw.Close()
		t.Fatal("third session accepted past MaxSessions=2")
	}
	if got := ts.Counter(t, "geomilter_milter_sessions_refused_total"); got != 1 {
		t.Errorf("refused_total = %v, want 1", got)
	}
	c1.Close()
	miltertest.WaitFor(t, "a slot freed", func() bool { return ts.ActiveSessions() == 1 })
	c3 := ts.Dial(t)
	c3.Envelope(t, "a@example.org", "b@example.net")
	c3.EndExpect(t, milter.ActAccept, 0, "")
	c2.Close()
	c3.Close()
}

// TestShutdownDrains: idle sessions are closed at once, a session inside a
// transaction finishes it, then Shutdown returns.
func TestShutdownDrains(t *testing.T) {
	inEOM := make(chan struct{})
	release := make(chan struct{})
	var closes atomic.Int32
	tm := &testMilter{mk: func() *funcSession {
		return &funcSession{
			eom: func(st *State, _ Modifier) Decision {
				if st.Sender == "slow@example.org" {
					close(inEOM)
					<-release
				}
				return Continue()
			},
			close: func(*State) { closes.Add(1) },
		}
	}}
	ts := start(t, tm, Options{}, false)
	busy := ts.Dial(t)
	idle := ts.Dial(t)
	miltertest.Cont(t, "idle conn")(idle.Conn("h", milter.FamilyInet, 1, "192.0.2.1"))
	busy.Envelope(t, "slow@example.org", "b@example.net")
	eomDone := make(chan error, 1)
	go func() {
		_, act, err := busy.End()
		if err == nil && act.Code != milter.ActAccept {
			err = errors.New("end: not accepted: " + string(rune(act.Code)))
		}
		eomDone <- err
	}()
	<-inEOM

	shutDone := make(chan error, 1)
	go func() { shutDone <- ts.Shutdown(context.Background()) }()
	miltertest.WaitFor(t, "idle session closed", func() bool { return closes.Load() == 1 })
	select {
	case err := <-shutDone:
		t.Fatalf("Shutdown returned (%v) while a transaction was in flight", err)
	case <-time.After(100 * time.Millisecond):
	}
	if _, err := net.Dial(ts.Network, ts.Addr); err == nil {
		t.Error("listener still accepting after Shutdown began")
	}
	close(release)
	if err := <-eomDone; err != nil {
		t.Fatalf("in-flight transaction: %v", err)
	}
	select {
	case err := <-shutDone:
		if err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return after the transaction ended")
	}
	if ts.ActiveSessions() != 0 || closes.Load() != 2 {
		t.Errorf("after Shutdown: %d active, %d closed", ts.ActiveSessions(), closes.Load())
	}
	recs := ts.WaitTxns(t, 1)
	if recs[0].Final.Action != ActionAccept {
		t.Errorf("final %v", recs[0].Final.Action)
	}
}

func TestShutdownForcesAfterDeadline(t *testing.T) {
	inEOM := make(chan struct{})
	release := make(chan struct{})
	tm := &testMilter{mk: func() *funcSession {
		return &funcSession{eom: func(*State, Modifier) Decision { close(inEOM); <-release; return Continue() }}
	}}
	ts := start(t, tm, Options{}, false)
	c := ts.Dial(t)
	c.Envelope(t, "a@example.org", "b@example.net")
	go c.End()
	<-inEOM
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- ts.Shutdown(ctx) }()
	<-ctx.Done()
	time.Sleep(50 * time.Millisecond)
	close(release) // the stuck callback returns; its reply cannot be written
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Shutdown = %v, want DeadlineExceeded", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return")
	}
	if n := ts.ActiveSessions(); n != 0 {
		t.Errorf("%d sessions left", n)
	}
	ts.WaitTxns(t, 1)
}

func TestModifier(t *testing.T) {
	body := bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n"), 2500) // 160 KB
	var errs []error
	tm := &testMilter{actions: MayAddHeader | MayChangeBody, mk: func() *funcSession {
		return &funcSession{eom: func(st *State, m Modifier) Decision {
			errs = []error{
				m.AddHeader("X-Geomilter", "checked"),
				m.InsertHeader(0, "X-First", "1"),
				m.ReplaceBody(bytes.NewReader(body)),
				m.ChangeHeader(1, "Subject", "x"),
				m.AddRcpt("x@example.net"),
				m.Quarantine("no"),
			}
			return Accept()
		}}
	}}
	ts := start(t, tm, Options{}, false)
	c := ts.Dial(t)
	c.Envelope(t, "a@example.org", "b@example.net")
	mods := c.EndExpect(t, milter.ActAccept, 0, "")
	for i, err := range errs[:3] {
		if err != nil {
			t.Errorf("allowed modification %d: %v", i, err)
		}
	}
	for i, err := range errs[3:] {
		if !errors.Is(err, ErrNotNegotiated) {
			t.Errorf("undeclared modification %d: %v, want ErrNotNegotiated", i+3, err)
		}
	}
	var gotBody []byte
	var codes []milter.ModifyActCode
	for _, m := range mods {
		codes = append(codes, m.Code)
		if m.Code == milter.ActReplBody {
			if len(m.Body) > milter.MaxBodyChunk {
				t.Errorf("body chunk of %d bytes", len(m.Body))
			}
			gotBody = append(gotBody, m.Body...)
		}
	}
	if want := bytes.ReplaceAll(body, []byte("\r\n"), []byte("\n")); !bytes.Equal(gotBody, want) {
		t.Errorf("replaced body: %d bytes, want %d", len(gotBody), len(want))
	}
	if len(codes) < 4 || codes[0] != milter.ActAddHeader || codes[1] != milter.ActInsertHeader {
		t.Errorf("modify actions %q", codes)
	}
	// Only the declared actions are negotiated.
	if c.ActionOpts != milter.OptAddHeader|milter.OptChangeBody {
		t.Errorf("negotiated actions %#x", c.ActionOpts)
	}
}

func TestNegotiatesOnlyListedStages(t *testing.T) {
	var calls []string
	var mu sync.Mutex
	rec := func(s string) { mu.Lock(); calls = append(calls, s); mu.Unlock() }
	tm := &testMilter{stages: StageRcpt | StageHeaders, mk: func() *funcSession {
		return &funcSession{
			connect: func(*State) Decision { rec("connect"); return Continue() },
			mail:    func(*State) Decision { rec("mail"); return Continue() },
			rcpt:    func(st *State, r *Recipient) Decision { rec("rcpt:" + st.Sender); return Continue() },
			header:  func(_ *State, h HeaderField) Decision { rec("header:" + h.Name); return Continue() },
			eoh:     func(*State) Decision { rec("eoh"); return Continue() },
			eom:     func(st *State, _ Modifier) Decision { rec("eom:" + st.TxnID[len(st.TxnID)-2:]); return Continue() },
		}
	}}
	ts := start(t, tm, Options{}, false)
	c := ts.Dial(t)
	if want := milter.OptNoConnect | milter.OptNoHelo | milter.OptNoMailFrom | milter.OptNoBody | milter.OptNoEOH; c.ProtocolOpts != want {
		t.Fatalf("protocol %#x, want %#x", c.ProtocolOpts, want)
	}
	c.Envelope(t, "a@example.org", "b@example.net") // client skips what was negotiated away
	miltertest.Cont(t, "header")(c.HeaderField("Subject", "x"))
	miltertest.Cont(t, "eoh")(c.HeaderEnd())
	c.EndExpect(t, milter.ActAccept, 0, "")
	// Without MAIL, a transaction starts at its first event.
	miltertest.Cont(t, "rcpt")(c.Rcpt("c@example.net", nil))
	c.EndExpect(t, milter.ActAccept, 0, "")
	ts.WaitTxns(t, 2)
	mu.Lock()
	defer mu.Unlock()
	want := []string{"rcpt:", "header:Subject", "eom:.1", "rcpt:", "eom:.2"}
	if !reflect.DeepEqual(calls, want) {
		t.Errorf("calls %q, want %q", calls, want)
	}
}

func TestStickyConnectionDecisions(t *testing.T) {
	tm := &testMilter{actions: MayQuarantine, mk: func() *funcSession {
		return &funcSession{helo: func(st *State) Decision {
			if st.Helo == "discard.me" {
				return Discard()
			}
			return Quarantine("bad client")
		}}
	}}
	ts := start(t, tm, Options{}, false)
	c := ts.Dial(t)
	miltertest.Cont(t, "conn")(c.Conn("h", milter.FamilyInet, 1, "192.0.2.1"))
	miltertest.Cont(t, "helo")(c.Helo("quarantine.me"))
	for i := 0; i < 2; i++ {
		c.Txn(t, "a@example.org", "b@example.net")
		mods := c.EndExpect(t, milter.ActAccept, 0, "")
		if len(mods) != 1 || mods[0].Code != milter.ActQuarantine || mods[0].Reason != "bad client" {
			t.Errorf("txn %d: modify actions %+v", i+1, mods)
		}
	}
	// The first connection's transactions are reported after their replies:
	// wait for them, so that the order of the reports is known.
	miltertest.WaitFor(t, "2 transactions", func() bool { return len(ts.Txns()) == 2 })
	c2 := ts.Dial(t)
	miltertest.Cont(t, "conn")(c2.Conn("h", milter.FamilyInet, 1, "192.0.2.1"))
	miltertest.Cont(t, "helo")(c2.Helo("discard.me"))
	miltertest.Expect(t, "mail", milter.ActDiscard, 0, "")(c2.Mail("a@example.org", nil))
	recs := ts.WaitTxns(t, 3)
	for i, w := range []Action{ActionQuarantine, ActionQuarantine, ActionDiscard} {
		if recs[i].Final.Action != w {
			t.Errorf("txn %d: final %v, want %v", i+1, recs[i].Final.Action, w)
		}
	}
}

func TestIDsAndMetricsRegistration(t *testing.T) {
	ts := start(t, &testMilter{}, Options{}, false)
	re := regexp.MustCompile(`^[0-9a-f]{12}\.[0-9]+$`)
	ids := map[string]bool{}
	for i := 0; i < 3; i++ {
		c := ts.Dial(t)
		c.Envelope(t, "a@example.org", "b@example.net")
		c.EndExpect(t, milter.ActAccept, 0, "")
		c.Close()
	}
	for _, r := range ts.WaitTxns(t, 3) {
		if !re.MatchString(r.TxnID) || !strings.HasPrefix(r.TxnID, r.SessionID+".") || ids[r.SessionID] {
			t.Errorf("bad or repeated ids: session %q txn %q", r.SessionID, r.TxnID)
		}
		ids[r.SessionID] = true
	}
	mfs, err := ts.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
		for _, m := range mf.GetMetric() {
			ok := false
			for _, l := range m.GetLabel() {
				ok = ok || l.GetName() == "milter" && l.GetValue() == "test"
			}
			if !ok {
				t.Errorf("%s: labels %v, want milter=test", mf.GetName(), m.GetLabel())
			}
		}
	}
	for _, n := range []string{"geomilter_milter_sessions_active", "geomilter_milter_sessions_total", "geomilter_milter_sessions_refused_total",
		"geomilter_milter_panics_total", "geomilter_milter_decisions_total", "geomilter_milter_stage_duration_seconds", "geomilter_milter_transactions_total"} {
		if !names[n] {
			t.Errorf("metric %s not registered", n)
		}
	}
	if got := ts.Counter(t, "geomilter_milter_transactions_total", "action", "accept"); got != 3 {
		t.Errorf("transactions_total{accept} = %v", got)
	}
}

// TestReplaceBodyStreams: the new body is read and sent in packets of at most
// 64 KiB, with CRLF turned into LF even when a CRLF straddles two reads.
func TestReplaceBodyStreams(t *testing.T) {
	edge := append(bytes.Repeat([]byte("x"), milter.MaxBodyChunk-1), "\r\nafter\r\n"...) // CR last byte of the first read
	bodies := map[string][]byte{
		"empty":            nil,
		"short":            []byte("a\r\nb"),
		"CRLF on the edge": edge,
		"lone CRs":         []byte("a\rb\r\r\nc\r"),
		"LF only":          []byte("a\nb\n"),
		"large":            bytes.Repeat([]byte("0123456789abcdef\r\n"), 20000), // 360 KB: flushed early
	}
	readers := map[string]func([]byte) io.Reader{
		"whole":     func(b []byte) io.Reader { return bytes.NewReader(b) },
		"one byte":  func(b []byte) io.Reader { return iotest.OneByteReader(bytes.NewReader(b)) },
		"data+err":  func(b []byte) io.Reader { return iotest.DataErrReader(bytes.NewReader(b)) },
		"half read": func(b []byte) io.Reader { return iotest.HalfReader(bytes.NewReader(b)) },
	}
	for bn, body := range bodies {
		for rn, mk := range readers {
			t.Run(bn+"/"+rn, func(t *testing.T) {
				var rerr error
				tm := &testMilter{actions: MayChangeBody, mk: func() *funcSession {
					return &funcSession{eom: func(st *State, m Modifier) Decision {
						rerr = m.ReplaceBody(mk(body))
						return Continue()
					}}
				}}
				ts := start(t, tm, Options{}, false)
				c := ts.Dial(t)
				c.Envelope(t, "a@example.org", "b@example.net")
				mods := c.EndExpect(t, milter.ActAccept, 0, "")
				if rerr != nil {
					t.Fatal(rerr)
				}
				var got []byte
				n := 0
				for _, m := range mods {
					if m.Code != milter.ActReplBody {
						t.Fatalf("modification %c", m.Code)
					}
					if len(m.Body) > milter.MaxBodyChunk {
						t.Errorf("packet of %d bytes", len(m.Body))
					}
					got = append(got, m.Body...)
					n++
				}
				if want := bytes.ReplaceAll(body, []byte("\r\n"), []byte("\n")); !bytes.Equal(got, want) || n == 0 {
					t.Errorf("%d packets, body %d bytes %q…, want %d bytes", n, len(got), got[:min(len(got), 20)], len(want))
				}
			})
		}
	}
	var rerr error
	tm := &testMilter{actions: MayChangeBody, mk: func() *funcSession {
		return &funcSession{eom: func(st *State, m Modifier) Decision {
			rerr = m.ReplaceBody(iotest.ErrReader(errors.New("disk gone")))
			return TempFail("", "", "")
		}}
	}}
	ts := start(t, tm, Options{}, false)
	c := ts.Dial(t)
	c.Envelope(t, "a@example.org", "b@example.net")
	c.EndExpect(t, milter.ActReplyCode, 451, "4.7.1 Try again later")
	if rerr == nil || !strings.Contains(rerr.Error(), "disk gone") {
		t.Errorf("reader error: %v", rerr)
	}
}
