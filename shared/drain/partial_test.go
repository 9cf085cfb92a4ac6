package drain

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/geomilter/geomilter/shared/spool"
)

// stepSink delivers a batch one record at a time, like a sink with one
// request per record, and fails (temporarily) at the records named in
// failAt, each for the given number of attempts. It reports the records
// before the failure with a *PartialError unless plain is set.
type stepSink struct {
	mu     sync.Mutex
	failAt map[string]int // event id -> attempts still to fail
	plain  bool
	got    map[string]int // event id -> times delivered
	order  []string
}

func (s *stepSink) Name() string { return "step" }
func (s *stepSink) Close() error { return nil }
func (s *stepSink) Send(ctx context.Context, batch []spool.Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, r := range batch {
		id := EventID(r)
		if s.failAt[id] > 0 {
			s.failAt[id]--
			err := errors.New("scripted temporary failure at " + id)
			if s.plain {
				return err
			}
			return &PartialError{Done: i, Err: err}
		}
		s.got[id]++
		s.order = append(s.order, id)
	}
	return nil
}

func TestDrainerCommitsPartialBatches(t *testing.T) {
	tests := []struct {
		name       string
		plain      bool
		failAt     map[string]int
		wantDupes  int // records delivered more than once
		wantFailed float64
	}{
		{"partial error: nothing resent", false, map[string]int{"ev-3": 2, "ev-9": 1, "ev-14": 1}, 0, 4},
		{"failure at a batch's first record: Done 0", false, map[string]int{"ev-0": 2}, 0, 2},
		// The same failures without PartialError resend the delivered
		// head of the batch: this is what the partial report saves.
		{"plain error: head of the batch resent", true, map[string]int{"ev-3": 2, "ev-9": 1}, 3*2 + 2, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sp := openSpool(t, spool.Durable, "step")
			appendEvents(t, sp, "ev", 20)
			sink := &stepSink{failAt: tt.failAt, plain: tt.plain, got: map[string]int{}}
			m := NewMetrics(prometheus.NewRegistry(), "test")
			o := fastOpts(m) // batches of 7: ev-0..6, ev-7..13, ev-14..19
			o.Pending = pendingFor(sp, "step")
			d := New(reader(t, sp, "step"), sink, o)
			runDrainer(t, d)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := d.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			sink.mu.Lock()
			defer sink.mu.Unlock()
			if len(sink.got) != 20 {
				t.Fatalf("%d distinct records delivered, want 20", len(sink.got))
			}
			dupes := 0
			for _, n := range sink.got {
				dupes += n - 1
			}
			if dupes != tt.wantDupes {
				t.Errorf("%d redeliveries, want %d (order %v)", dupes, tt.wantDupes, sink.order)
			}
			if got := value(m.failed.WithLabelValues("step")); got != tt.wantFailed {
				t.Errorf("failed_total = %v, want %v", got, tt.wantFailed)
			}
			// Counted once each: a failed send counts nothing, a partial
			// one its delivered head.
			if got := value(m.sent.WithLabelValues("step")); got != 20 {
				t.Errorf("sent_total = %v, want 20", got)
			}
		})
	}
}

func TestPartialErrorUnwraps(t *testing.T) {
	base := context.DeadlineExceeded
	var err error = &PartialError{Done: 2, Err: base}
	if !errors.Is(err, base) {
		t.Fatalf("errors.Is(%v, %v) = false", err, base)
	}
	if got, want := err.Error(), "2 records delivered, then: context deadline exceeded"; got != want {
		t.Fatalf("Error() = %q, want %q", got, want)
	}
}
