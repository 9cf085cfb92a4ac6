package state_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/shared/redistest"
	"github.com/geomilter/geomilter/shared/state"
)

// TestBudgetedCounter: hits go to the store while it answers, to memory
// (flagged as a fallback) while it does not, and straight to memory with
// an in-memory backend or none; the metrics say where each hit went.
func TestBudgetedCounter(t *testing.T) {
	srv := redistest.Start(t)
	store, err := state.Open(state.Options{Site: "a", Local: state.InstanceConfig{Addr: srv.Addr},
		Timeout: 100 * time.Millisecond, BreakerFailures: 1000, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	ctx := context.Background()
	reqs := []state.IncrReq{{Subject: "a", Window: time.Minute}, {Subject: "b", Window: time.Minute}}

	tests := []struct {
		name                              string
		counter                           state.Counter
		pause                             bool
		wantFallback                      bool
		wantRedis, wantMem, wantFallbacks float64
	}{
		{"redis answers", store, false, false, 2, 0, 0},
		{"redis frozen", store, true, true, 0, 2, 2},
		{"no store", nil, false, false, 0, 2, 0},
		{"memory backend", state.NewMemStore(nil), false, false, 0, 2, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			b, err := state.NewBudgetedCounter(state.BudgetedCounterOptions{Counter: tc.counter,
				Timeout: 100 * time.Millisecond, Milter: "test", Registerer: reg})
			if err != nil {
				t.Fatal(err)
			}
			if tc.pause {
				srv.Pause()
				defer srv.Resume()
			}
			res, err := b.IncrMany(ctx, reqs)
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Counts) != 2 || res.Counts[0].Total < 1 || res.Fallback != tc.wantFallback || res.PeerDegraded {
				t.Errorf("result %+v, want 2 counts and fallback %v", res, tc.wantFallback)
			}
			want := map[string]float64{"redis": tc.wantRedis, "memory": tc.wantMem}
			for store, n := range want {
				if v := gaugeOf(t, reg, "geomilter_test_rate_counts_total", store); v != n {
					t.Errorf("counts{store=%s} = %v, want %v", store, v, n)
				}
			}
			if v := gaugeOf(t, reg, "geomilter_test_rate_fallbacks_total", ""); v != tc.wantFallbacks {
				t.Errorf("fallbacks = %v, want %v", v, tc.wantFallbacks)
			}
		})
	}

	// An invalid window is refused by memory too: an error, nothing counted.
	b, _ := state.NewBudgetedCounter(state.BudgetedCounterOptions{})
	if _, err := b.IncrMany(ctx, []state.IncrReq{{Subject: "x", Window: 0}}); err == nil {
		t.Error("a zero window was counted")
	}
	// Metrics need a name.
	if _, err := state.NewBudgetedCounter(state.BudgetedCounterOptions{Registerer: prometheus.NewRegistry()}); err == nil {
		t.Error("metrics registered without a milter name")
	}
}

// gaugeOf reads one counter's value (label store, or the unlabelled one).
func gaugeOf(t *testing.T, g prometheus.Gatherer, name, store string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if store == "" {
				return m.GetCounter().GetValue()
			}
			for _, l := range m.GetLabel() {
				if l.GetName() == "store" && l.GetValue() == store {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
