package state

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestBreakerCycle(t *testing.T) {
	var healthy atomic.Bool
	var probes atomic.Int32
	probe := func() error {
		probes.Add(1)
		if healthy.Load() {
			return nil
		}
		return errors.New("no answer")
	}
	var mu sync.Mutex
	var transitions []string
	onChange := func(from, to BreakerState, _ error) {
		mu.Lock()
		transitions = append(transitions, from.String()+">"+to.String())
		mu.Unlock()
	}
	b := newBreaker(3, 20*time.Millisecond, time.Now, probe, onChange)
	defer b.shutdown()

	if !b.allow() {
		t.Fatal("a new breaker must be closed")
	}
	b.record(false, false, nil) // success
	if !b.allow() {
		t.Fatal("closed after a success")
	}
	// The first failure stops further callers at once…
	b.record(true, true, context.DeadlineExceeded)
	if b.allow() {
		t.Fatal("a caller was admitted after a timeout; only one may wait per cycle")
	}
	// …and background probes confirm until the breaker opens.
	waitFor(t, "breaker open", 5*time.Second, func() bool { return b.snapshot().state == BreakerOpen })
	before := probes.Load()
	waitFor(t, "a probe while open", 5*time.Second, func() bool { return probes.Load() > before })
	if b.allow() {
		t.Fatal("open breaker admitted a call")
	}
	healthy.Store(true)
	waitFor(t, "breaker closed after a good probe", 5*time.Second, func() bool { return b.snapshot().state == BreakerClosed })
	if !b.allow() {
		t.Fatal("closed breaker refused a call")
	}
	snap := b.snapshot()
	if snap.stats.trips != 1 || snap.stats.timedOut != 1 || snap.stats.fastFails < 2 {
		t.Fatalf("stats = %+v; want 1 trip, 1 timed-out call, >= 2 fast fails", snap.stats)
	}
	if !snap.openSince.IsZero() || snap.lastErr != nil {
		t.Fatalf("closed breaker still reports an outage: %+v", snap)
	}
	mu.Lock()
	got := append([]string(nil), transitions...)
	mu.Unlock()
	want := []string{"closed>suspect", "suspect>open", "open>closed"}
	if len(got) != len(want) {
		t.Fatalf("transitions = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("transitions = %v, want %v", got, want)
		}
	}
}

func TestBreakerBlipClosesWithoutOpening(t *testing.T) {
	b := newBreaker(3, time.Hour, time.Now, func() error { return nil }, nil)
	defer b.shutdown()
	b.record(true, false, errors.New("connection reset"))
	waitFor(t, "closed again", 5*time.Second, func() bool { return b.snapshot().state == BreakerClosed })
	if s := b.snapshot().stats; s.trips != 1 || s.timedOut != 0 || s.probes != 1 {
		t.Fatalf("stats = %+v", s)
	}
}

func TestBreakerRelapseOpensAtOnce(t *testing.T) {
	b := newBreaker(3, time.Hour, time.Now, func() error { return nil }, nil)
	defer b.shutdown()
	b.record(true, true, context.DeadlineExceeded)
	waitFor(t, "closed after a good probe", 5*time.Second, func() bool { return b.snapshot().state == BreakerClosed })
	// PING answers but the next real call times out again: no fast re-probe
	// cycle, the breaker opens and waits OpenFor (an hour here).
	b.record(true, true, context.DeadlineExceeded)
	time.Sleep(50 * time.Millisecond)
	if s := b.snapshot(); s.state != BreakerOpen || s.stats.probes != 1 {
		t.Fatalf("after relapse: state %v, %d probes; want open, no new probe yet", s.state, s.stats.probes)
	}
}

func TestBreakerFailuresOneOpensAtOnce(t *testing.T) {
	b := newBreaker(1, time.Hour, time.Now, func() error { return errors.New("down") }, nil)
	defer b.shutdown()
	b.record(true, true, context.DeadlineExceeded)
	if st := b.snapshot().state; st != BreakerOpen {
		t.Fatalf("state = %v, want open", st)
	}
}

func TestBreakerLateFailuresDoNotStartNewCycle(t *testing.T) {
	b := newBreaker(3, time.Hour, time.Now, func() error { return errors.New("down") }, nil)
	defer b.shutdown()
	// Three calls were in flight when the instance went dark.
	for i := 0; i < 3; i++ {
		b.record(true, true, context.DeadlineExceeded)
	}
	if s := b.snapshot().stats; s.trips != 1 || s.timedOut != 3 {
		t.Fatalf("stats = %+v, want one trip for the three in-flight calls", s)
	}
}

func TestClassify(t *testing.T) {
	live := context.Background()
	done, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name              string
		parent            context.Context
		err               error
		failure, timedOut bool
	}{
		{"success", live, nil, false, false},
		{"deadline", live, context.DeadlineExceeded, true, true},
		{"net timeout", live, &net.OpError{Op: "read", Err: timeoutErr{}}, true, true},
		{"refused", live, &net.OpError{Op: "dial", Err: errors.New("connection refused")}, true, false},
		{"caller gave up", done, context.Canceled, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, to := classify(tc.parent, tc.err)
			if f != tc.failure || to != tc.timedOut {
				t.Fatalf("classify = %v, %v; want %v, %v", f, to, tc.failure, tc.timedOut)
			}
		})
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

// blackHole accepts TCP connections and never answers: what a frozen
// (SIGSTOPped) or overloaded Redis looks like to a client.
func blackHole(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return l.Addr().String()
}

// TestUnresponsiveInstance drives a Store against instances that accept
// connections but never answer: Open must not block, the first call waits
// out its budget, every later call fails fast without network I/O.
func TestUnresponsiveInstance(t *testing.T) {
	st, err := Open(Options{
		Site:            "a",
		Local:           InstanceConfig{Addr: blackHole(t)},
		Peers:           map[string]InstanceConfig{"b": {Addr: blackHole(t)}},
		Timeout:         50 * time.Millisecond,
		BreakerOpenFor:  time.Hour, // no probe while the test runs
		BreakerFailures: 3,
		Logger:          zerolog.Nop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()

	ctx := context.Background()
	const calls = 20
	for i := 0; i < calls; i++ {
		_, err := st.Incr(ctx, "s", time.Minute)
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("call %d: err = %v, want ErrUnavailable", i, err)
		}
	}
	for _, s := range st.Status(ctx) {
		if s.Up || s.Trips != 1 || s.TimedOut != 1 {
			t.Errorf("%s %s: up=%v trips=%d timedOut=%d; want down, 1 trip, 1 call that waited", s.Site, s.Role, s.Up, s.Trips, s.TimedOut)
		}
		if s.Role == RolePrimary && s.FastFails < calls-1 {
			t.Errorf("primary: fast fails = %d, want >= %d", s.FastFails, calls-1)
		}
		if s.LastError == "" || s.OpenSince.IsZero() {
			t.Errorf("%s: status lacks last error / open since: %+v", s.Site, s)
		}
	}
	// LoadRules reports every site missing and returns nothing.
	merged, sources, err := st.LoadRules(ctx)
	if !errors.Is(err, ErrUnavailable) || len(merged) != 0 || sources["a"].Available || sources["b"].Available {
		t.Fatalf("LoadRules = %v, %v, %v", merged, sources, err)
	}
}

func TestOpenValidates(t *testing.T) {
	tests := []struct {
		name string
		o    Options
	}{
		{"no site", Options{Local: InstanceConfig{Addr: "127.0.0.1:1"}}},
		{"site with brace", Options{Site: "a}", Local: InstanceConfig{Addr: "127.0.0.1:1"}}},
		{"no local addr", Options{Site: "a"}},
		{"own site as peer", Options{Site: "a", Local: InstanceConfig{Addr: "127.0.0.1:1"}, Peers: map[string]InstanceConfig{"a": {Addr: "127.0.0.1:2"}}}},
		{"peer without addr", Options{Site: "a", Local: InstanceConfig{Addr: "127.0.0.1:1"}, Peers: map[string]InstanceConfig{"b": {}}}},
		{"sentinel without addrs", Options{Site: "a", Local: InstanceConfig{SentinelMaster: "m"}}},
		{"missing password file", Options{Site: "a", Local: InstanceConfig{Addr: "127.0.0.1:1", PasswordFile: "/nonexistent/pass"}}},
		{"sentinel credentials without sentinel", Options{Site: "a", Local: InstanceConfig{Addr: "127.0.0.1:1", SentinelUsername: "u"}}},
		{"missing sentinel password file", Options{Site: "a", Local: InstanceConfig{SentinelMaster: "m", SentinelAddrs: []string{"127.0.0.1:1"}, SentinelPasswordFile: "/nonexistent/pass"}}},
		{"missing CA file", Options{Site: "a", Local: InstanceConfig{Addr: "127.0.0.1:1", TLS: &TLSConfig{CAFile: "/nonexistent/ca.pem"}}}},
		{"cert without key", Options{Site: "a", Local: InstanceConfig{Addr: "127.0.0.1:1", TLS: &TLSConfig{CertFile: "/x.pem"}}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if st, err := Open(tc.o); err == nil {
				st.Close()
				t.Fatal("Open accepted invalid options")
			}
		})
	}
}
