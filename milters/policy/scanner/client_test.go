package scanner

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
)

func testLogger(t *testing.T) zerolog.Logger { return zerolog.New(zerolog.NewTestWriter(t)) }

func testLoggerB(b *testing.B) zerolog.Logger { return zerolog.New(zerolog.NewTestWriter(b)) }

// closedAddr is a loopback address nothing listens on (connection refused).
func closedAddr(t *testing.T) string {
	t.Helper()
	a, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// tcpServer accepts connections on loopback and hands each to serve; it
// stops when the test ends.
func tcpServer(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() { defer wg.Done(); serve(c) }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

func count(c *client, outcome string) float64 {
	return testutil.ToFloat64(c.met.requests.WithLabelValues(c.name, outcome))
}

// TestRefusedOpensBreaker: a refused connection is an error (not a
// timeout); Failures in a row open the breaker, and then nothing is sent.
func TestRefusedOpensBreaker(t *testing.T) {
	for _, typ := range []string{TypeRspamd, TypeSpamd} {
		t.Run(typ, func(t *testing.T) {
			addr := closedAddr(t)
			if typ == TypeRspamd {
				addr = "http://" + addr
			}
			c := newTestScanner(t, Config{Type: typ, Address: addr, Budget: 5 * time.Second,
				Breaker: BreakerConfig{Failures: 3, OpenFor: time.Hour}}, prometheus.NewRegistry())
			for i := range 3 {
				r := c.Scan(context.Background(), hamMsg)
				if r.Err == nil || r.TimedOut || r.Skipped != "" || !strings.Contains(r.Err.Error(), "scanner "+typ+":") {
					t.Fatalf("message %d: %+v", i, r)
				}
				if !strings.Contains(r.Err.Error(), "refused") {
					t.Errorf("message %d: error %q does not say refused", i, r.Err)
				}
			}
			r := c.Scan(context.Background(), hamMsg)
			if r.Skipped != SkippedBreakerOpen || r.Err != nil {
				t.Fatalf("after 3 failures: %+v", r)
			}
			if count(c, outcomeError) != 3 || count(c, outcomeBreaker) != 1 {
				t.Errorf("outcomes: error %v breaker %v", count(c, outcomeError), count(c, outcomeBreaker))
			}
		})
	}
}

// TestSuccessResetsFailures: failures must be in a row to open the breaker.
func TestSuccessResetsFailures(t *testing.T) {
	b := newBreaker(BreakerConfig{Failures: 2, OpenFor: time.Hour}, func(context.Context) error { return nil }, func(bool, error) {})
	defer b.close()
	b.failure(errors.New("x"))
	b.success()
	b.failure(errors.New("x"))
	if !b.allow() {
		t.Fatal("open after failure, success, failure")
	}
	b.failure(errors.New("x"))
	if b.allow() {
		t.Fatal("closed after 2 failures in a row")
	}
}

// TestDarkSpamd: a scanner that accepts and never answers costs the budget
// and is TimedOut.
func TestDarkSpamd(t *testing.T) {
	addr := tcpServer(t, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
	const budget = 200 * time.Millisecond
	c := newTestScanner(t, Config{Type: TypeSpamd, Address: addr, Budget: budget}, prometheus.NewRegistry())
	start := time.Now()
	r := c.Scan(context.Background(), hamMsg)
	if !r.TimedOut || r.Err == nil || time.Since(start) < budget {
		t.Fatalf("%+v after %v", r, time.Since(start))
	}
	if count(c, outcomeTimeout) != 1 {
		t.Errorf("timeouts %v", count(c, outcomeTimeout))
	}
	// A caller's deadline shorter than the budget: still the scanner's
	// timeout, counted against its breaker.
	ctx, cancel := context.WithTimeout(context.Background(), budget/4)
	defer cancel()
	r = c.Scan(ctx, hamMsg)
	if !r.TimedOut || r.Err == nil || count(c, outcomeTimeout) != 2 || c.breaker.failuresInARow() != 2 {
		t.Fatalf("caller's deadline: %+v, timeouts %v, failures %d", r, count(c, outcomeTimeout), c.breaker.failuresInARow())
	}
	// A large message to a scanner that reads nothing: the write blocks,
	// and the budget still bounds it.
	dark := tcpServer(t, func(net.Conn) { <-t.Context().Done() })
	d := newTestScanner(t, Config{Type: TypeSpamd, Address: dark, Budget: budget}, prometheus.NewRegistry())
	if r := d.Scan(context.Background(), message("big", strings.Repeat("x", 8<<20))); !r.TimedOut {
		t.Fatalf("large message to a scanner not reading: %+v", r)
	}
}

// TestHostileReplies: replies over 1 MiB, error statuses and garbage are
// errors naming the scanner and the step.
func TestHostileReplies(t *testing.T) {
	big := strings.Repeat("A", maxReply+10)
	h := func(status int, body string) string {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			w.WriteHeader(status)
			_, _ = io.WriteString(w, body)
		}))
		t.Cleanup(s.Close)
		return s.URL
	}
	spamdSays := func(reply string) string {
		return tcpServer(t, func(c net.Conn) {
			defer c.Close()
			buf := make([]byte, 4096)
			_, _ = c.Read(buf)
			_, _ = io.WriteString(c, reply)
		})
	}
	cases := []struct {
		name string
		cfg  Config
		err  string
	}{
		{"rspamd 2 MiB", Config{Type: TypeRspamd, Address: h(200, `{"score":1,"required_score":15,"action":"reject","x":"`+big+`"}`)}, "scanner rspamd: reading the reply: reply longer than 1048576 bytes"},
		{"rspamd 500", Config{Type: TypeRspamd, Address: h(500, `{"error":"Message is too large"}`)}, `scanner rspamd: reply: HTTP 500: "Message is too large"`},
		{"rspamd HTML", Config{Type: TypeRspamd, Address: h(200, `<html>`)}, "scanner rspamd: reply: not the JSON of a verdict"},
		{"spamd 2 MiB", Config{Type: TypeSpamd, Address: spamdSays("SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1 / 5\r\n\r\n" + big)}, "scanner spamd: reading the reply: reply longer than 1048576 bytes"},
		{"spamd error", Config{Type: TypeSpamd, Address: spamdSays("SPAMD/1.0 76 Bad header line: x\r\n")}, "scanner spamd: reply: spamd says 76 Bad header line: x"},
		{"spamd nothing", Config{Type: TypeSpamd, Address: spamdSays("")}, "scanner spamd: reply: no end of headers"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Budget = 10 * time.Second
			c := newTestScanner(t, tc.cfg, prometheus.NewRegistry())
			r := c.Scan(context.Background(), hamMsg)
			if r.Err == nil || r.Err.Error() != tc.err && !strings.HasPrefix(r.Err.Error(), tc.err) {
				t.Fatalf("error %v, want %q", r.Err, tc.err)
			}
			if r.TimedOut || count(c, outcomeError) != 1 {
				t.Errorf("timedOut %v, errors counted %v", r.TimedOut, count(c, outcomeError))
			}
		})
	}
}

// TestNotTheScannersFault: a message larger than max_size is not sent; a
// message shorter than its Size and a caller giving up are not counted
// against the breaker.
func TestNotTheScannersFault(t *testing.T) {
	var got int
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got++
		mu.Unlock()
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, `{"score":1,"required_score":15,"action":"no action"}`)
	}))
	defer srv.Close()
	c := newTestScanner(t, Config{Type: TypeRspamd, Address: srv.URL, MaxSize: 300,
		Breaker: BreakerConfig{Failures: 1, OpenFor: time.Hour}}, prometheus.NewRegistry())

	big := message("big", strings.Repeat("x", 400))
	if r := c.Scan(context.Background(), big); r.Skipped != SkippedTooLarge || r.Err != nil {
		t.Fatalf("too large: %+v", r)
	}
	small := message("s", "")
	small.Size = 90 // the text is shorter: our fault
	small.Open = func() io.Reader { return strings.NewReader("Subject: s\r\n\r\nhi\r\n") }
	if r := c.Scan(context.Background(), small); r.Err == nil || !errors.Is(r.Err, errMessage) {
		t.Fatalf("short message: %+v", r)
	}
	nothing := small
	nothing.Open = func() io.Reader { return nil }
	if r := c.Scan(context.Background(), nothing); r.Err == nil || !errors.Is(r.Err, errMessage) {
		t.Fatalf("no reader: %+v", r)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if r := c.Scan(ctx, small); r.Err == nil || r.TimedOut {
		t.Fatalf("canceled: %+v", r)
	}
	if !c.breaker.allow() {
		t.Fatal("the breaker opened for failures that were not the scanner's")
	}
	if count(c, outcomeTooLarge) != 1 || count(c, outcomeLocalFail) != 2 || count(c, outcomeCanceled) != 1 {
		t.Errorf("outcomes: too_large %v local_fail %v canceled %v", count(c, outcomeTooLarge), count(c, outcomeLocalFail), count(c, outcomeCanceled))
	}
	ok := message("ok", "hi")
	if r := c.Scan(context.Background(), ok); r.Err != nil || r.Score != 1 {
		t.Fatalf("ok: %+v", r)
	}
}

// TestSetNames: several scanners of one type are told apart by address;
// the same one twice is refused.
func TestSetNames(t *testing.T) {
	reg := prometheus.NewRegistry()
	s, err := NewSet([]Config{
		{Type: TypeSpamd, Address: "127.0.0.1:1"}, {Type: TypeSpamd, Address: "127.0.0.1:2"},
		{Type: TypeRspamd, Address: "http://127.0.0.1:3"},
	}, testLogger(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var names []string
	for _, c := range s.clients {
		names = append(names, c.Name())
	}
	if strings.Join(names, " ") != "spamd@127.0.0.1:1 spamd@127.0.0.1:2 rspamd" {
		t.Errorf("names %v", names)
	}
	if _, err := NewSet([]Config{{Type: TypeSpamd, Address: "127.0.0.1:1"}, {Type: TypeSpamd, Address: "127.0.0.1:1"}}, testLogger(t), reg); err == nil {
		t.Error("the same scanner twice accepted")
	}
	if _, err := NewSet([]Config{{Type: "clamd", Address: "x"}}, testLogger(t), reg); err == nil {
		t.Error("an unknown type accepted")
	}
	var empty *Set
	if empty.Len() != 0 || empty.Scan(context.Background(), hamMsg) != nil || empty.Close() != nil {
		t.Error("a nil Set is not empty")
	}
}
