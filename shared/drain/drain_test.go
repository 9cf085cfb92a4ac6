package drain

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/geomilter/geomilter/shared/spool"
)

// scriptSink fails its first failFirst sends (or all while failing is true)
// and records every acknowledged record.
type scriptSink struct {
	mu        sync.Mutex
	failFirst int
	hang      bool // block until ctx is done
	calls     int
	got       map[string]int // event id -> times acknowledged
	order     []string
}

func (s *scriptSink) Name() string { return "script" }
func (s *scriptSink) Close() error { return nil }
func (s *scriptSink) Send(ctx context.Context, batch []spool.Record) error {
	s.mu.Lock()
	s.calls++
	hang := s.hang
	fail := s.calls <= s.failFirst
	s.mu.Unlock()
	if hang {
		<-ctx.Done()
		return ctx.Err()
	}
	if fail {
		return errors.New("scripted failure")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.got == nil {
		s.got = map[string]int{}
	}
	for _, r := range batch {
		id := EventID(r)
		s.got[id]++
		s.order = append(s.order, id)
	}
	return nil
}

func (s *scriptSink) distinct() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.got)
}

func fastOpts(m *Metrics) Options {
	return Options{BatchSize: 7, MinBackoff: time.Millisecond, MaxBackoff: 20 * time.Millisecond,
		SendTimeout: 200 * time.Millisecond, Metrics: m}
}

func TestDrainerDeliversEverythingDespiteFailures(t *testing.T) {
	tests := []struct {
		name      string
		failFirst int
		records   int
	}{
		{"healthy", 0, 100},
		{"first sends fail", 5, 100},
		{"single record, failing", 3, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := newMemSource()
			sink := &scriptSink{failFirst: tt.failFirst}
			m := NewMetrics(prometheus.NewRegistry(), "test")
			d := New(src, sink, fastOpts(m))
			src.addEvents(tt.records)
			runDrainer(t, d)
			eventually(t, "all records committed", 10*time.Second, func() bool { return src.pending() == 0 })
			if got := sink.distinct(); got != tt.records {
				t.Fatalf("sink has %d distinct records, want %d", got, tt.records)
			}
			// Order is preserved: the spool is a queue, and a retry resends from the cursor.
			for i, id := range sink.order {
				if want := "ev-" + itoa(i); id != want {
					t.Fatalf("record %d is %s, want %s", i, id, want)
				}
			}
			if got := value(m.failed.WithLabelValues("script")); got != float64(tt.failFirst) {
				t.Errorf("failed_total = %v, want %d", got, tt.failFirst)
			}
			if got := value(m.sent.WithLabelValues("script")); got != float64(tt.records) {
				t.Errorf("sent_total = %v, want %d", got, tt.records)
			}
			if got := value(m.retrying.WithLabelValues("script")); got != 0 {
				t.Errorf("retrying = %v after recovery, want 0", got)
			}
		})
	}
}

func itoa(i int) string {
	return string(appendInt(nil, i))
}

func appendInt(b []byte, i int) []byte {
	if i >= 10 {
		b = appendInt(b, i/10)
	}
	return append(b, byte('0'+i%10))
}

func TestDrainerHangingSinkTimesOutAndRetries(t *testing.T) {
	src := newMemSource()
	sink := &scriptSink{hang: true}
	m := NewMetrics(nil, "test")
	o := fastOpts(m)
	o.SendTimeout = 50 * time.Millisecond
	d := New(src, sink, o)
	src.addEvents(10)
	runDrainer(t, d)

	eventually(t, "retrying gauge", 5*time.Second, func() bool {
		return value(m.retrying.WithLabelValues("script")) == 1 &&
			value(m.failed.WithLabelValues("script")) >= 3
	})
	if src.pending() != 10 {
		t.Fatalf("pending = %d while sink hangs, want 10 (nothing committed)", src.pending())
	}
	sink.mu.Lock()
	sink.hang = false
	sink.mu.Unlock()
	eventually(t, "delivery after the sink recovers", 10*time.Second, func() bool { return src.pending() == 0 })
	if sink.distinct() != 10 {
		t.Fatalf("distinct = %d, want 10", sink.distinct())
	}
}

func TestBackoff(t *testing.T) {
	tests := []struct {
		name     string
		rnd      float64
		failures int
		want     time.Duration
	}{
		{"first retry, max jitter", 1, 1, 100 * time.Millisecond},
		{"doubles", 1, 2, 200 * time.Millisecond},
		{"doubles again", 1, 4, 800 * time.Millisecond},
		{"capped", 1, 20, 30 * time.Second},
		{"huge failure count stays capped", 1, 5000, 30 * time.Second},
		{"full jitter scales", 0.5, 3, 200 * time.Millisecond},
		{"full jitter can be zero", 0, 3, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := New(newMemSource(), &scriptSink{}, Options{Rand: func() float64 { return tt.rnd }})
			if got := d.backoff(tt.failures); got != tt.want {
				t.Fatalf("backoff(%d) = %v, want %v", tt.failures, got, tt.want)
			}
		})
	}
}

func TestFlush(t *testing.T) {
	tests := []struct {
		name    string
		pending bool // use Options.Pending rather than idleness
		hang    bool
		wantErr bool
	}{
		{"idle detection, healthy sink", false, false, false},
		{"pending func, healthy sink", true, false, false},
		{"idle detection, hung sink", false, true, true},
		{"pending func, hung sink", true, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := newMemSource()
			sink := &scriptSink{hang: tt.hang}
			o := fastOpts(nil)
			o.SendTimeout = 30 * time.Millisecond
			if tt.pending {
				o.Pending = src.pending
			}
			d := New(src, sink, o)
			runDrainer(t, d)
			src.addEvents(50)
			bound := 5 * time.Second
			if tt.hang {
				bound = 500 * time.Millisecond
			}
			ctx, cancel := context.WithTimeout(context.Background(), bound)
			defer cancel()
			err := d.Flush(ctx)
			if tt.wantErr {
				if err == nil || !errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("Flush = %v, want deadline error", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Flush: %v", err)
			}
			if p := src.pending(); p != 0 || sink.distinct() != 50 {
				t.Fatalf("after Flush: pending %d, delivered %d; want 0, 50", p, sink.distinct())
			}
		})
	}
}

func TestRunTwiceIsRefused(t *testing.T) {
	d := New(newMemSource(), &scriptSink{}, fastOpts(nil))
	runDrainer(t, d)
	eventually(t, "first Run started", 5*time.Second, func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		return d.running
	})
	if err := d.Run(context.Background()); err == nil {
		t.Fatal("second concurrent Run returned nil, want error")
	}
}

// value reads a counter or gauge.
func value(m prometheus.Metric) float64 {
	var pm dto.Metric
	if err := m.Write(&pm); err != nil {
		panic(err)
	}
	if pm.Counter != nil {
		return pm.Counter.GetValue()
	}
	return pm.Gauge.GetValue()
}
