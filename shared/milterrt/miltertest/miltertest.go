// Package miltertest serves a milter for tests, in the spirit of
// net/http/httptest: Serve runs a real milterrt.Server on a temporary socket
// until the test ends and records every transaction it reports; Dial gives a
// client (go-milter's) that drives it the way Postfix does, event by event or
// a whole transaction at once (Client.Send), including from a raw RFC 5322
// message (SplitMessage).
package miltertest

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	milter "github.com/emersion/go-milter"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/geomilter/geomilter/shared/milterrt"
)

// Offers an MTA makes at option negotiation.
const (
	// Proto2Actions and Proto2Protocol are a protocol 2 offer (what go-milter
	// and older MTAs offer): every modification of protocol 2, every stage
	// skippable, no "no reply" flags, so every event gets a reply.
	Proto2Actions  = milter.OptAddHeader | milter.OptChangeBody | milter.OptAddRcpt | milter.OptRemoveRcpt | milter.OptChangeHeader | milter.OptQuarantine
	Proto2Protocol = milter.OptNoConnect | milter.OptNoHelo | milter.OptNoMailFrom | milter.OptNoRcptTo | milter.OptNoBody | milter.OptNoHeaders | milter.OptNoEOH
	// PostfixActions and PostfixProtocol are what Postfix 3.7 offers: version
	// 6, every action, every protocol flag up to SMFIP_HDR_LEADSPC.
	PostfixActions  = milter.OptAction(0x1ff)
	PostfixProtocol = milter.OptProtocol(0x1fffff)
)

// Server is a milterrt.Server under test.
type Server struct {
	*milterrt.Server
	Network, Addr string               // for net.Dial
	Registry      *prometheus.Registry // where the server's metrics are, unless the caller set Options.Registerer

	mu   sync.Mutex
	txns []milterrt.State
}

// Serve runs m on a unix socket in a fresh short directory (socket paths are
// limited to 108 bytes, which t.TempDir can exceed) and shuts it down when the
// test ends. Unless opts sets them, metrics go to Server.Registry and every
// transaction is recorded (see Txns, WaitTxns).
func Serve(t testing.TB, m milterrt.Milter, opts milterrt.Options) *Server {
	t.Helper()
	dir, err := os.MkdirTemp("", "mt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return serve(t, m, opts, "unix:"+filepath.Join(dir, "m.sock"))
}

// ServeTCP is Serve on 127.0.0.1 and a free port.
func ServeTCP(t testing.TB, m milterrt.Milter, opts milterrt.Options) *Server {
	t.Helper()
	return serve(t, m, opts, "inet:127.0.0.1:0")
}

func serve(t testing.TB, m milterrt.Milter, opts milterrt.Options, spec string) *Server {
	t.Helper()
	s := &Server{Registry: prometheus.NewRegistry()}
	if opts.Registerer == nil {
		opts.Registerer = s.Registry
	}
	if opts.OnTransaction == nil {
		opts.OnTransaction = s.record
	}
	ln, err := milterrt.Listen(spec)
	if err != nil {
		t.Fatal(err)
	}
	s.Network, s.Addr = ln.Addr().Network(), ln.Addr().String()
	s.Server = milterrt.New(m, opts)
	served := make(chan error, 1)
	go func() { served <- s.Server.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Server.Shutdown(ctx)
		if err := <-served; !errors.Is(err, milterrt.ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return s
}

func (s *Server) record(st *milterrt.State) {
	c := CopyState(st)
	s.mu.Lock()
	s.txns = append(s.txns, c)
	s.mu.Unlock()
}

// CopyState returns a copy of st that shares nothing with it (State is reused
// by the runtime after OnTransaction). The message is left out: it is
// closed when the transaction ends.
func CopyState(st *milterrt.State) milterrt.State {
	c := *st
	c.Message = nil // closed when the transaction ends
	c.Rcpts = nil
	for _, r := range st.Rcpts {
		x := *r
		x.Params = append(milterrt.Params(nil), r.Params...)
		c.Rcpts = append(c.Rcpts, &x)
	}
	c.MailParams = append(milterrt.Params(nil), st.MailParams...)
	c.Headers = append([]milterrt.HeaderField(nil), st.Headers...)
	c.ClientAddr = append(net.IP(nil), st.ClientAddr...)
	if st.ClientAddr == nil {
		c.ClientAddr = nil
	}
	c.Macros = make(map[string]string, len(st.Macros))
	for k, v := range st.Macros {
		c.Macros[k] = v
	}
	c.Reasons = append([]string(nil), st.Reasons...)
	c.RuleIDs = append([]string(nil), st.RuleIDs...)
	c.Degraded = append([]string(nil), st.Degraded...)
	if st.Scores != nil {
		c.Scores = make(map[string]float64, len(st.Scores))
		for k, v := range st.Scores {
			c.Scores[k] = v
		}
	}
	return c
}

// Txns returns the transactions reported so far, in order.
func (s *Server) Txns() []milterrt.State {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]milterrt.State(nil), s.txns...)
}

// settle is how long WaitTxns waits past the n-th transaction for one that
// should not be there (a transaction reported twice).
const settle = 50 * time.Millisecond

// WaitTxns waits until n transactions were reported, checks that no more
// follow shortly after, and returns them; it fails the test otherwise.
func (s *Server) WaitTxns(t testing.TB, n int) []milterrt.State {
	t.Helper()
	WaitFor(t, "transactions reported", func() bool { return len(s.Txns()) >= n })
	time.Sleep(settle)
	got := s.Txns()
	if len(got) != n {
		t.Fatalf("got %d transactions reported, want %d: %+v", len(got), n, got)
	}
	return got
}

// WaitFor polls cond until it holds, failing the test after 10 seconds.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Counter returns the value of a counter (or the sum of a counter vector's
// series matching labels, given as name, value, …) from Server.Registry.
func (s *Server) Counter(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := s.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, l := range m.GetLabel() {
					found = found || l.GetName() == labels[i] && l.GetValue() == labels[i+1]
				}
				if !found {
					continue metric
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}
