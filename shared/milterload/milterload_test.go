package milterload

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/geomilter/geomilter/shared/milterrt"
)

// serve runs m on a unix socket until the end of the test.
func serve(t testing.TB, m milterrt.Milter, opts milterrt.Options) (network, addr string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "mload") // short: unix socket paths are limited to 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ln, err := milterrt.Listen("unix:" + filepath.Join(dir, "m.sock"))
	if err != nil {
		t.Fatal(err)
	}
	srv := milterrt.New(m, opts)
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return "unix", ln.Addr().String()
}

func TestRunAgainstNoopMilter(t *testing.T) {
	for _, want := range []milterrt.Stages{0, milterrt.AllStages} {
		var txns atomic.Int64
		network, addr := serve(t, milterrt.NoopMilter{Want: want}, milterrt.Options{OnTransaction: func(*milterrt.State) { txns.Add(1) }})
		res, err := Run(context.Background(), Options{Network: network, Address: addr,
			Transactions: 200, Concurrency: 4, Rcpts: 3, TxnPerSession: 3, MessageBytes: 100_000})
		if err != nil {
			t.Fatal(err)
		}
		if res.Transactions != 200 || res.Errors != 0 || res.Actions["accept"] != 200 || len(res.Actions) != 1 {
			t.Fatalf("stages %v: %+v", want, res)
		}
		if !(res.P50 > 0 && res.P50 <= res.P99 && res.P99 <= res.Max && res.PerSecond > 0) {
			t.Errorf("latencies %+v", res)
		}
		// The server reports a transaction just after writing its reply: poll.
		for deadline := time.Now().Add(10 * time.Second); txns.Load() < 200 && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
		}
		if n := txns.Load(); n != 200 {
			t.Errorf("server saw %d transactions, want 200", n)
		}
		if s := res.String(); !strings.Contains(s, "200 transactions") || !strings.Contains(s, "accept=200") {
			t.Errorf("String() = %q", s)
		}
	}
}

// rejecting rejects senders and recipients by prefix and records what
// reached it.
type rejecting struct {
	milterrt.BaseSession
	seen *seen
}

type seen struct {
	headers, sessions atomic.Int64
	bodyBytes         atomic.Int64
	ipv6              atomic.Bool
}

type rejectMilter struct{ seen *seen }

func (rejectMilter) Name() string                          { return "reject" }
func (rejectMilter) Stages() milterrt.Stages               { return milterrt.AllStages }
func (rejectMilter) Modifications() milterrt.Modifications { return 0 }
func (m rejectMilter) NewSession(*milterrt.State) milterrt.Session {
	m.seen.sessions.Add(1)
	return &rejecting{seen: m.seen}
}

func (s *rejecting) Connect(st *milterrt.State) milterrt.Decision {
	if st.ClientAddr.To4() == nil {
		s.seen.ipv6.Store(true)
	}
	return milterrt.Continue()
}

func (s *rejecting) MailFrom(st *milterrt.State) milterrt.Decision {
	if strings.HasPrefix(st.Sender, "bad") {
		return milterrt.Reject("", "", "")
	}
	if strings.HasPrefix(st.Sender, "later") {
		return milterrt.TempFail("", "", "")
	}
	return milterrt.Continue()
}

func (s *rejecting) RcptTo(st *milterrt.State, r *milterrt.Recipient) milterrt.Decision {
	if strings.HasPrefix(r.Addr, "nobody") {
		return milterrt.Reject("550", "5.1.1", "No such user")
	}
	return milterrt.Continue()
}

func (s *rejecting) Header(st *milterrt.State, h milterrt.HeaderField) milterrt.Decision {
	s.seen.headers.Add(1)
	return milterrt.Continue()
}

func (s *rejecting) BodyChunk(st *milterrt.State, b []byte) milterrt.Decision {
	s.seen.bodyBytes.Add(int64(len(b)))
	return milterrt.Continue()
}

func (s *rejecting) EndOfMessage(st *milterrt.State, _ milterrt.Modifier) milterrt.Decision {
	if st.Sender == "discard@x" {
		return milterrt.Discard()
	}
	return milterrt.Continue()
}

func TestRunCountsFinalActions(t *testing.T) {
	sn := &seen{}
	network, addr := serve(t, rejectMilter{sn}, milterrt.Options{})
	senders := []string{"good@x", "bad@x", "later@x", "discard@x", "norcpt@x"}
	res, err := Run(context.Background(), Options{
		Network: network, Address: addr, Transactions: 50, Concurrency: 2, TxnPerSession: 5, Rcpts: 2, MessageBytes: 1000,
		Sender: func(i int) string { return senders[i%len(senders)] },
		Rcpt: func(i, j int) string {
			if senders[i%len(senders)] == "norcpt@x" || j == 1 {
				return "nobody@x" // every second recipient, and all of norcpt's
			}
			return "someone@x"
		},
		ClientIP: func(i int) net.IP { return net.IP{0x20, 0x01, 0x0d, 0xb8, 15: byte(i)} },
		Header:   func(i int) []milterrt.HeaderField { return []milterrt.HeaderField{{Name: "X-Load", Value: "1"}} },
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{"accept": 10, "replycode-5xx": 20, "replycode-4xx": 10, "discard": 10}
	if res.Transactions != 50 || res.Errors != 0 || len(res.Actions) != len(want) {
		t.Fatalf("%+v", res)
	}
	for k, v := range want {
		if res.Actions[k] != v {
			t.Errorf("actions[%s] = %d, want %d (all: %v)", k, res.Actions[k], v, res.Actions)
		}
	}
	// 20 messages reached DATA, each with 5 standard headers + 1 extra.
	if sn.headers.Load() != 20*6 || sn.bodyBytes.Load() != 20*1000 {
		t.Errorf("headers %d body bytes %d", sn.headers.Load(), sn.bodyBytes.Load())
	}
	if sn.sessions.Load() != 10 || !sn.ipv6.Load() {
		t.Errorf("sessions %d (want 10 for TxnPerSession 5), ipv6 seen %v", sn.sessions.Load(), sn.ipv6.Load())
	}
}

type stuckMilter struct{ release chan struct{} }

func (stuckMilter) Name() string                          { return "stuck" }
func (stuckMilter) Stages() milterrt.Stages               { return 0 }
func (stuckMilter) Modifications() milterrt.Modifications { return 0 }
func (m stuckMilter) NewSession(*milterrt.State) milterrt.Session {
	return stuckSession{release: m.release}
}

type stuckSession struct {
	milterrt.BaseSession
	release chan struct{}
}

func (s stuckSession) EndOfMessage(*milterrt.State, milterrt.Modifier) milterrt.Decision {
	<-s.release
	return milterrt.Continue()
}

func TestRunBoundedInTime(t *testing.T) {
	release := make(chan struct{})
	network, addr := serve(t, stuckMilter{release}, milterrt.Options{})
	t.Cleanup(func() { close(release) }) // runs before the server's Shutdown
	start := time.Now()
	res, err := Run(context.Background(), Options{Network: network, Address: addr,
		Transactions: 10, Concurrency: 2, Timeout: 300 * time.Millisecond})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("Run took %s with a 300ms timeout", took)
	}
	if res.Transactions != 0 || res.Errors != 0 {
		t.Errorf("cut transactions counted: %+v", res)
	}
}

func TestRunNothingListening(t *testing.T) {
	res, err := Run(context.Background(), Options{Network: "unix", Address: filepath.Join(t.TempDir(), "none.sock"), Transactions: 5})
	if err != nil {
		t.Fatal(err)
	}
	if res.Errors != 5 || res.Transactions != 0 {
		t.Errorf("%+v", res)
	}
	if _, err := Run(context.Background(), Options{}); err == nil {
		t.Error("Run without an address succeeded")
	}
}

// BenchmarkRun reports what milterload itself sustains against the runtime's
// NoopMilter with every stage negotiated (one op = one transaction).
func BenchmarkRun(b *testing.B) {
	network, addr := serve(b, milterrt.NoopMilter{Want: milterrt.AllStages}, milterrt.Options{})
	b.ResetTimer()
	res, err := Run(context.Background(), Options{Network: network, Address: addr, Transactions: b.N, Concurrency: 4, TxnPerSession: 1})
	if err != nil || res.Errors != 0 {
		b.Fatalf("%v %+v", err, res)
	}
	b.ReportMetric(res.PerSecond, "txn/s")
	b.ReportMetric(float64(res.P99.Microseconds()), "p99-µs")
}

func TestParseMessage(t *testing.T) {
	for _, tc := range []struct {
		name, raw   string
		wantHeaders []milterrt.HeaderField
		wantBody    string
		wantErr     string
	}{
		{name: "lf", raw: "From: <a@x>\nSubject:  hi\n\nline 1\nline 2\n",
			wantHeaders: []milterrt.HeaderField{{Name: "From", Value: "<a@x>"}, {Name: "Subject", Value: "hi"}},
			wantBody:    "line 1\r\nline 2\r\n"},
		{name: "crlf and folded", raw: "DKIM-Signature: v=1; a=rsa-sha256;\r\n\tb=abc\r\n def\r\nTo: b@y\r\n\r\nbody\r\n",
			wantHeaders: []milterrt.HeaderField{{Name: "DKIM-Signature", Value: "v=1; a=rsa-sha256;\n\tb=abc\n def"}, {Name: "To", Value: "b@y"}},
			wantBody:    "body\r\n"},
		{name: "last body line without newline", raw: "A: 1\n\nx", wantHeaders: []milterrt.HeaderField{{Name: "A", Value: "1"}}, wantBody: "x\r\n"},
		{name: "headers only", raw: "A: 1\nB:2\n", wantHeaders: []milterrt.HeaderField{{Name: "A", Value: "1"}, {Name: "B", Value: "2"}}},
		{name: "empty value", raw: "X-Empty:\n\n.\n", wantHeaders: []milterrt.HeaderField{{Name: "X-Empty", Value: ""}}, wantBody: ".\r\n"},
		{name: "not a header", raw: "From a@x\n\nbody\n", wantErr: "line 1: not a header"},
		{name: "space in name", raw: "A: 1\nBad Name: 2\n\n", wantErr: "line 2: not a header"},
		{name: "continuation first", raw: " folded\nA: 1\n\n", wantErr: "line 1: continuation"},
		{name: "no headers", raw: "\nbody only\n", wantErr: "no header fields"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := ParseMessage([]byte(tc.raw))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(m.Headers) != len(tc.wantHeaders) {
				t.Fatalf("headers %q, want %q", m.Headers, tc.wantHeaders)
			}
			for i := range m.Headers {
				if m.Headers[i] != tc.wantHeaders[i] {
					t.Errorf("header %d = %q, want %q", i, m.Headers[i], tc.wantHeaders[i])
				}
			}
			if string(m.Body) != tc.wantBody {
				t.Errorf("body %q, want %q", m.Body, tc.wantBody)
			}
		})
	}
}

// recordMilter keeps the headers and body of the last message it saw.
type recordMilter struct {
	mu      *sync.Mutex
	headers *[]milterrt.HeaderField
	body    *[]byte
}

func (recordMilter) Name() string                          { return "record" }
func (recordMilter) Stages() milterrt.Stages               { return milterrt.AllStages }
func (recordMilter) Modifications() milterrt.Modifications { return 0 }
func (m recordMilter) NewSession(*milterrt.State) milterrt.Session {
	return &recordSession{m: m}
}

type recordSession struct {
	milterrt.BaseSession
	m    recordMilter
	body []byte
}

func (s *recordSession) BodyChunk(_ *milterrt.State, b []byte) milterrt.Decision {
	s.body = append(s.body, b...)
	return milterrt.Continue()
}

func (s *recordSession) EndOfMessage(st *milterrt.State, _ milterrt.Modifier) milterrt.Decision {
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	*s.m.headers = append([]milterrt.HeaderField(nil), st.Headers...)
	*s.m.body = s.body
	s.body = nil
	return milterrt.Continue()
}

func TestRunSendsFixedMessage(t *testing.T) {
	var (
		mu      sync.Mutex
		headers []milterrt.HeaderField
		body    []byte
	)
	network, addr := serve(t, recordMilter{mu: &mu, headers: &headers, body: &body}, milterrt.Options{})
	msg, err := ParseMessage([]byte("DKIM-Signature: v=1; d=x;\n\tb=abc\nFrom: <a@x>\nSubject: fixed\n\nhello\n.dot line\n"))
	if err != nil {
		t.Fatal(err)
	}
	res, err := Run(context.Background(), Options{Network: network, Address: addr, Transactions: 6, Concurrency: 2,
		TxnPerSession: 2, MessageBytes: 5000, Message: msg})
	if err != nil || res.Transactions != 6 || res.Actions["accept"] != 6 {
		t.Fatalf("%v %+v", err, res)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(headers) != 3 || headers[0] != milterrt.NewHeaderField("DKIM-Signature", "v=1; d=x;\n\tb=abc") ||
		headers[2] != milterrt.NewHeaderField("Subject", "fixed") {
		t.Errorf("milter saw headers %q", headers)
	}
	if string(body) != "hello\r\n.dot line\r\n" {
		t.Errorf("milter saw body %q (MessageBytes must not apply to a fixed message)", body)
	}
}
