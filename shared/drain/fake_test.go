package drain

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/geomilter/geomilter/shared/spool"
)

// memSource is an in-memory Source with the spool.Reader cursor semantics.
type memSource struct {
	mu        sync.Mutex
	recs      []spool.Record
	read      int // index of the next record Next returns
	committed uint64
	wake      chan struct{}
}

func newMemSource() *memSource { return &memSource{wake: make(chan struct{})} }

func (m *memSource) add(data ...string) {
	m.mu.Lock()
	for _, d := range data {
		m.recs = append(m.recs, spool.Record{Seq: uint64(len(m.recs) + 1), Data: []byte(d)})
	}
	close(m.wake)
	m.wake = make(chan struct{})
	m.mu.Unlock()
}

func (m *memSource) addEvents(n int) {
	d := make([]string, n)
	m.mu.Lock()
	base := len(m.recs)
	m.mu.Unlock()
	for i := range d {
		d[i] = fmt.Sprintf(`{"schema":1,"event_id":"ev-%d","n":%d}`, base+i, base+i)
	}
	m.add(d...)
}

func (m *memSource) Next(ctx context.Context, max int) ([]spool.Record, error) {
	for {
		m.mu.Lock()
		if m.read < len(m.recs) {
			end := min(m.read+max, len(m.recs))
			out := append([]spool.Record(nil), m.recs[m.read:end]...)
			m.read = end
			m.mu.Unlock()
			return out, nil
		}
		wake := m.wake
		m.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (m *memSource) Commit(seq uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if seq > m.committed {
		m.committed = seq
	}
	return nil
}

func (m *memSource) Rewind() {
	m.mu.Lock()
	m.read = int(m.committed)
	m.mu.Unlock()
}

func (m *memSource) pending() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return int64(len(m.recs)) - int64(m.committed)
}

// eventually polls cond until it holds or a generous deadline passes.
func eventually(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// runDrainer starts d.Run and stops it at test end, checking it returned nil.
func runDrainer(t *testing.T, d *Drainer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("Run did not return after cancel")
		}
	})
}

// SkipCorrupt: a memSource never holds corrupt data.
func (m *memSource) SkipCorrupt() (int64, error) { m.Rewind(); return 0, nil }
