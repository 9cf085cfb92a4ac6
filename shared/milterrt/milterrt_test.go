package milterrt

import (
	"bytes"
	"context"
	"errors"
	"net"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	milter "github.com/emersion/go-milter"
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
		c := ts.mustDial(t)
		must := func(err error) {
			t.Helper()
			if err != nil {
				t.Fatal(err)
			}
		}
		must(c.Macros(milter.CodeConn, "j", "mx.example", "{daemon_name}", "smtpd"))
		cont(t, "conn")(c.Conn("client.example", milter.FamilyInet, 40000, "192.0.2.10"))
		must(c.Macros(milter.CodeHelo, "{tls_version}", "TLSv1.3"))
		cont(t, "helo")(c.Helo("helo.example"))
		must(c.Macros(milter.CodeMail, "{auth_authen}", "bob", "{mail_addr}", "a@example.org"))
		cont(t, "mail")(c.Mail("a@example.org", nil))
		must(c.Macros(milter.CodeRcpt, "{rcpt_addr}", "b@example.net"))
		cont(t, "rcpt")(c.Rcpt("b@example.net", nil))
		must(c.Macros(milter.CodeEOB, "i", "4ABC123"))
		c.end(t, milter.ActAccept, 0, "")

		// Second transaction: no macro packet before MAIL (go-milter still holds
		// the end-of-message map, which must not leak), then a new queue id.
		cont(t, "mail2")(c.Mail("c@example.org", nil))
		cont(t, "rcpt2")(c.Rcpt("d@example.net", nil))
		must(c.Macros(milter.CodeEOB, "i", "4DEF456"))
		c.end(t, milter.ActAccept, 0, "")

		ts.rec.wait(t, 2)
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

func TestHeadersKeepArrivalOrder(t *testing.T) {
	var got []HeaderField
	tm := &testMilter{mk: func() *funcSession {
		return &funcSession{eom: func(st *State, _ Modifier) Decision {
			got = append([]HeaderField(nil), st.Headers...)
			return Continue()
		}}
	}}
	ts := start(t, tm, Options{}, false)
	c := ts.mustDial(t)
	c.envelope(t, "a@example.org", "b@example.net")
	want := []HeaderField{
		{"Received", "from a by b"}, {"From", "A <a@example.org>"}, {"received", "from c by d"},
		{"Subject", ""}, {"X-Multi", "line one\n\tline two"}, {"To", "b@example.net"},
	}
	for _, h := range want {
		cont(t, "header "+h.Name)(c.HeaderField(h.Name, h.Value))
	}
	cont(t, "eoh")(c.HeaderEnd())
	cont(t, "body")(c.BodyChunk([]byte("hello\r\n")))
	c.end(t, milter.ActAccept, 0, "")
	recs := ts.rec.wait(t, 1)
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
	c := ts.mustDial(t)
	c.envelope(t, "a@example.org", "good1@example.net")
	expect(t, "rcpt bad", milter.ActReplyCode, 550, "5.1.1 No such user")(c.Rcpt("bad@example.net", nil))
	expect(t, "rcpt later", milter.ActReplyCode, 451, "4.7.1 Try again later")(c.Rcpt("later@example.net", nil))
	cont(t, "rcpt good2")(c.Rcpt("good2@example.net", nil))
	cont(t, "header")(c.HeaderField("Subject", "hi"))
	c.end(t, milter.ActAccept, 0, "")

	c.txn(t, "<>", "x@example.net")
	c.end(t, milter.ActAccept, 0, "")

	recs := ts.rec.wait(t, 2)
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
	if got := counterValue(ts.srv.met.decisions[StageRcpt.index()][ActionReject]); got != 1 {
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
		drive   func(t *testing.T, c *client)
		want    []want
		aborts  int32 // Session.Abort calls expected
	}{
		{"completed", 0, func(t *testing.T, c *client) {
			c.envelope(t, "ok@example.org", "b@example.net")
			c.end(t, milter.ActAccept, 0, "")
			c.Close()
		}, []want{{ActionAccept, StageEOM, false, "ok@example.org"}}, 0},
		{"mail rejected", 0, func(t *testing.T, c *client) {
			cont(t, "conn")(c.Conn("h", milter.FamilyInet, 1, "192.0.2.1"))
			expect(t, "mail", milter.ActReplyCode, 550, "5.7.1 Sender blocked")(c.Mail("reject-mail@example.org", nil))
			c.Abort() // Postfix may send ABORT after the rejected MAIL
			c.txn(t, "next@example.org", "b@example.net")
			c.end(t, milter.ActAccept, 0, "")
			c.Close()
		}, []want{{ActionReject, StageMail, false, "reject-mail@example.org"}, {ActionAccept, StageEOM, false, "next@example.org"}}, 1},
		{"all rcpts rejected then abort", 0, func(t *testing.T, c *client) {
			cont(t, "mail")(c.Mail("a@example.org", nil))
			expect(t, "rcpt1", milter.ActReplyCode, 550, "5.7.1 Message rejected")(c.Rcpt("reject-1@example.net", nil))
			expect(t, "rcpt2", milter.ActReplyCode, 550, "5.7.1 Message rejected")(c.Rcpt("reject-2@example.net", nil))
			c.Abort()
			c.Close()
		}, []want{{ActionReject, StageRcpt, true, "a@example.org"}}, 1},
		{"rset mid transaction", 0, func(t *testing.T, c *client) {
			c.envelope(t, "a@example.org", "b@example.net")
			c.Abort()
			c.Close()
		}, []want{{ActionContinue, 0, true, "a@example.org"}}, 1},
		{"connection lost", 0, func(t *testing.T, c *client) {
			c.envelope(t, "a@example.org", "b@example.net")
			cont(t, "header")(c.HeaderField("Subject", "x"))
			c.conn.Close()
		}, []want{{ActionContinue, 0, true, "a@example.org"}}, 1},
		{"new mail without abort", 0, func(t *testing.T, c *client) {
			c.envelope(t, "first@example.org", "b@example.net")
			c.txn(t, "second@example.org", "b@example.net")
			c.end(t, milter.ActAccept, 0, "")
			c.Close()
		}, []want{{ActionContinue, 0, true, "first@example.org"}, {ActionAccept, StageEOM, false, "second@example.org"}}, 1},
		{"connect rejected", 0, func(t *testing.T, c *client) {
			expect(t, "conn", milter.ActReplyCode, 554, "5.7.1 Go away")(c.Conn("h", milter.FamilyInet, 1, "203.0.113.9"))
			c.Close()
		}, []want{{ActionReject, StageConnect, false, ""}}, 0},
		{"helo tempfailed", 0, func(t *testing.T, c *client) {
			cont(t, "conn")(c.Conn("h", milter.FamilyInet, 1, "192.0.2.1"))
			expect(t, "helo", milter.ActReplyCode, 421, "4.7.0 Later")(c.Helo("bad.helo"))
			c.Close()
		}, []want{{ActionTempFail, StageHelo, false, ""}}, 0},
		{"discard at eom", 0, func(t *testing.T, c *client) {
			c.envelope(t, "discard@example.org", "b@example.net")
			c.end(t, milter.ActDiscard, 0, "")
			c.Close()
		}, []want{{ActionDiscard, StageEOM, false, "discard@example.org"}}, 0},
		{"accept at mail", 0, func(t *testing.T, c *client) {
			cont(t, "conn")(c.Conn("h", milter.FamilyInet, 1, "192.0.2.1"))
			expect(t, "mail", milter.ActAccept, 0, "")(c.Mail("accept-mail@example.org", nil))
			c.Close()
		}, []want{{ActionAccept, StageMail, false, "accept-mail@example.org"}}, 1},
		{"reject at header", 0, func(t *testing.T, c *client) {
			c.envelope(t, "a@example.org", "b@example.net")
			expect(t, "header", milter.ActReplyCode, 554, "5.6.0 Bad header")(c.HeaderField("X-Bad", "1"))
			c.Close()
		}, []want{{ActionReject, StageHeaders, false, "a@example.org"}}, 1},
		{"quarantine at rcpt applied at eom", MayQuarantine, func(t *testing.T, c *client) {
			c.envelope(t, "a@example.org", "hold@example.net")
			mods := c.end(t, milter.ActAccept, 0, "")
			if len(mods) != 1 || mods[0].Code != milter.ActQuarantine || mods[0].Reason != "suspicious rcpt" {
				t.Errorf("modify actions %+v, want one quarantine", mods)
			}
			c.Close()
		}, []want{{ActionQuarantine, StageEOM, false, "a@example.org"}}, 0},
		{"quarantine at eom", MayQuarantine, func(t *testing.T, c *client) {
			c.envelope(t, "quarantine@example.org", "b@example.net")
			mods := c.end(t, milter.ActAccept, 0, "")
			if len(mods) != 1 || mods[0].Code != milter.ActQuarantine || mods[0].Reason != "held by milter" {
				t.Errorf("modify actions %+v, want one quarantine", mods)
			}
			c.Close()
		}, []want{{ActionQuarantine, StageEOM, false, "quarantine@example.org"}}, 0},
		{"quarantine without MayQuarantine tempfails", 0, func(t *testing.T, c *client) {
			c.envelope(t, "quarantine@example.org", "b@example.net")
			c.end(t, milter.ActReplyCode, 451, "4.3.0 Temporary failure")
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
			c := ts.mustDial(t)
			tc.drive(t, c)
			recs := ts.rec.wait(t, len(tc.want))
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
			waitFor(t, "session closed", func() bool { return ts.srv.ActiveSessions() == 0 })
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
	c := ts.mustDial(t)
	cont(t, "conn")(c.Conn("h", milter.FamilyInet, 1, "192.0.2.1"))
	expect(t, "mail", milter.ActReplyCode, 451, tf)(c.Mail("panic-mail@example.org", nil))
	// Panic at RCPT: that recipient and the rest of the transaction tempfail.
	cont(t, "mail2")(c.Mail("a@example.org", nil))
	cont(t, "rcpt ok")(c.Rcpt("ok@example.net", nil))
	expect(t, "rcpt panic", milter.ActReplyCode, 451, tf)(c.Rcpt("panic@example.net", nil))
	expect(t, "rcpt after", milter.ActReplyCode, 451, tf)(c.Rcpt("after@example.net", nil))
	expect(t, "header", milter.ActReplyCode, 451, tf)(c.HeaderField("Subject", "x"))
	// Panic at EOM.
	c.txn(t, "panic-eom@example.org", "b@example.net")
	c.end(t, milter.ActReplyCode, 451, tf)
	// The same connection still works.
	c.txn(t, "fine@example.org", "b@example.net")
	c.end(t, milter.ActAccept, 0, "")
	// And so does another session.
	c2 := ts.mustDial(t)
	c2.envelope(t, "other@example.org", "b@example.net")
	c2.end(t, milter.ActAccept, 0, "")

	recs := ts.rec.wait(t, 5)
	for i, w := range []Action{ActionTempFail, ActionTempFail, ActionTempFail, ActionAccept, ActionAccept} {
		if recs[i].Final.Action != w {
			t.Errorf("txn %d: final %v, want %v", i+1, recs[i].Final.Action, w)
		}
	}
	if got := counterValue(ts.srv.met.panics); got != 3 {
		t.Errorf("panics_total = %v, want 3", got)
	}
	c.Close()
	c2.Close()
	waitFor(t, "sessions closed", func() bool { return closes.Load() == 2 })
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
		c := ts.mustDial(t)
		expect(t, "conn", milter.ActReplyCode, 451, "4.3.0 Temporary failure")(c.Conn("h", milter.FamilyInet, 1, "192.0.2.1"))
		c.Close()
	}
	recs := ts.rec.wait(t, 2)
	for _, r := range recs {
		if r.Final.Action != ActionTempFail || r.FinalStage != StageConnect {
			t.Errorf("final %+v at %v", r.Final, r.FinalStage)
		}
	}
}

func TestClientAddressFamilies(t *testing.T) {
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
		c := ts.mustDial(t)
		c.Conn("localhost", tc.family, tc.port, tc.addr)
		cont(t, "mail")(c.Mail("", nil)) // proves the session survived
		c.Close()
	}
	waitFor(t, "connects", func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == len(cases) })
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
	c := ts.mustDial(t)
	cont(t, "conn")(c.Conn("h", milter.FamilyInet, 1, "192.0.2.1"))
	cont(t, "mail")(c.Mail("a@example.org", nil))
	waitFor(t, "idle session closed", func() bool { return ts.srv.ActiveSessions() == 0 })
	recs := ts.rec.wait(t, 1)
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
	c1 := ts.mustDial(t)
	c2 := ts.mustDial(t)
	waitFor(t, "2 sessions", func() bool { return ts.srv.ActiveSessions() == 2 })
	if c3, err := ts.dial(t); err == nil {
		c3.conn.Close()
		t.Fatal("third session accepted past MaxSessions=2")
	}
	if got := counterValue(ts.srv.met.refused); got != 1 {
		t.Errorf("refused_total = %v, want 1", got)
	}
	c1.Close()
	waitFor(t, "a slot freed", func() bool { return ts.srv.ActiveSessions() == 1 })
	c3 := ts.mustDial(t)
	c3.envelope(t, "a@example.org", "b@example.net")
	c3.end(t, milter.ActAccept, 0, "")
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
	busy := ts.mustDial(t)
	idle := ts.mustDial(t)
	cont(t, "idle conn")(idle.Conn("h", milter.FamilyInet, 1, "192.0.2.1"))
	busy.envelope(t, "slow@example.org", "b@example.net")
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
	go func() { shutDone <- ts.srv.Shutdown(context.Background()) }()
	waitFor(t, "idle session closed", func() bool { return closes.Load() == 1 })
	select {
	case err := <-shutDone:
		t.Fatalf("Shutdown returned (%v) while a transaction was in flight", err)
	case <-time.After(100 * time.Millisecond):
	}
	if _, err := net.Dial(ts.network, ts.addr); err == nil {
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
	if ts.srv.ActiveSessions() != 0 || closes.Load() != 2 {
		t.Errorf("after Shutdown: %d active, %d closed", ts.srv.ActiveSessions(), closes.Load())
	}
	recs := ts.rec.wait(t, 1)
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
	c := ts.mustDial(t)
	c.envelope(t, "a@example.org", "b@example.net")
	go c.End()
	<-inEOM
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- ts.srv.Shutdown(ctx) }()
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
	if n := ts.srv.ActiveSessions(); n != 0 {
		t.Errorf("%d sessions left", n)
	}
	ts.rec.wait(t, 1)
}

func TestModifier(t *testing.T) {
	body := bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n"), 2500) // 160 KB
	var errs []error
	tm := &testMilter{actions: MayAddHeader | MayChangeBody, mk: func() *funcSession {
		return &funcSession{eom: func(st *State, m Modifier) Decision {
			errs = []error{
				m.AddHeader("X-Geomilter", "checked"),
				m.InsertHeader(0, "X-First", "1"),
				m.ReplaceBody(body),
				m.ChangeHeader(1, "Subject", "x"),
				m.AddRcpt("x@example.net"),
				m.Quarantine("no"),
			}
			return Accept()
		}}
	}}
	ts := start(t, tm, Options{}, false)
	c := ts.mustDial(t)
	c.envelope(t, "a@example.org", "b@example.net")
	mods := c.end(t, milter.ActAccept, 0, "")
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
	c := ts.mustDial(t)
	if want := milter.OptNoConnect | milter.OptNoHelo | milter.OptNoMailFrom | milter.OptNoBody | milter.OptNoEOH; c.ProtocolOpts != want {
		t.Fatalf("protocol %#x, want %#x", c.ProtocolOpts, want)
	}
	c.envelope(t, "a@example.org", "b@example.net") // client skips what was negotiated away
	cont(t, "header")(c.HeaderField("Subject", "x"))
	cont(t, "eoh")(c.HeaderEnd())
	c.end(t, milter.ActAccept, 0, "")
	// Without MAIL, a transaction starts at its first event.
	cont(t, "rcpt")(c.Rcpt("c@example.net", nil))
	c.end(t, milter.ActAccept, 0, "")
	ts.rec.wait(t, 2)
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
	c := ts.mustDial(t)
	cont(t, "conn")(c.Conn("h", milter.FamilyInet, 1, "192.0.2.1"))
	cont(t, "helo")(c.Helo("quarantine.me"))
	for i := 0; i < 2; i++ {
		c.txn(t, "a@example.org", "b@example.net")
		mods := c.end(t, milter.ActAccept, 0, "")
		if len(mods) != 1 || mods[0].Code != milter.ActQuarantine || mods[0].Reason != "bad client" {
			t.Errorf("txn %d: modify actions %+v", i+1, mods)
		}
	}
	c2 := ts.mustDial(t)
	cont(t, "conn")(c2.Conn("h", milter.FamilyInet, 1, "192.0.2.1"))
	cont(t, "helo")(c2.Helo("discard.me"))
	expect(t, "mail", milter.ActDiscard, 0, "")(c2.Mail("a@example.org", nil))
	recs := ts.rec.wait(t, 3)
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
		c := ts.mustDial(t)
		c.envelope(t, "a@example.org", "b@example.net")
		c.end(t, milter.ActAccept, 0, "")
		c.Close()
	}
	for _, r := range ts.rec.wait(t, 3) {
		if !re.MatchString(r.TxnID) || !strings.HasPrefix(r.TxnID, r.SessionID+".") || ids[r.SessionID] {
			t.Errorf("bad or repeated ids: session %q txn %q", r.SessionID, r.TxnID)
		}
		ids[r.SessionID] = true
	}
	mfs, err := ts.reg.Gather()
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
	if got := counterValue(ts.srv.met.txns[ActionAccept]); got != 3 {
		t.Errorf("transactions_total{accept} = %v", got)
	}
	// A second server for the same milter on the same registry shares the metrics.
	s2 := New(&testMilter{}, Options{Registerer: ts.reg})
	if s2.met.sessions != ts.srv.met.sessions {
		t.Error("second server did not reuse the registered collectors")
	}
}
