package state_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/shared/redistest"
	"github.com/geomilter/geomilter/shared/state"
)

func openOne(t *testing.T, addr string, timeout, bulk, openFor time.Duration) *state.Store {
	t.Helper()
	st, err := state.Open(state.Options{Site: "a", Local: state.InstanceConfig{Addr: addr},
		Timeout: timeout, BulkTimeout: bulk, BreakerOpenFor: openFor, BreakerFailures: 3, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// TestStatusSlowInstanceKeepsBreakerClosed: a health poll that has to
// wait longer than the mail-path budget (a loaded host) gets its answer
// within its own budget, and neither opens nor feeds the breaker that the
// mail path goes through.
func TestStatusSlowInstanceKeepsBreakerClosed(t *testing.T) {
	srv := redistest.Start(t)
	st := openOne(t, srv.Addr, 50*time.Millisecond, 10*time.Second, time.Hour)
	ctx := context.Background()
	if _, err := st.Incr(ctx, "warm", time.Minute); err != nil {
		t.Fatal(err)
	}
	srv.Pause() // answers nothing until resumed: slower than the 50ms mail budget
	t.Cleanup(srv.Resume)
	done := make(chan []state.InstanceStatus, 1)
	go func() { done <- st.Status(ctx) }()
	time.Sleep(300 * time.Millisecond)
	srv.Resume()
	s := (<-done)[0]
	if s.Replication == nil || s.Replication.Role != "master" || s.StatusError != "" {
		t.Fatalf("status of a slow instance: replication %+v, status error %q; want its answer", s.Replication, s.StatusError)
	}
	s = st.Status(ctx)[0]
	if !s.Up || s.Breaker != "closed" || s.Failures != 0 || s.Trips != 0 || s.LastError != "" {
		t.Fatalf("after a slow status: %+v; want the breaker closed and untouched", s)
	}
	if _, err := st.Incr(ctx, "after", time.Minute); err != nil {
		t.Fatalf("mail-path call after a slow status: %v", err)
	}
}

// TestStatusReportsBreakerAfterCall: the breaker state in a Status is the
// one when Status returns — a mail-path call that found the instance dark
// while the status call was waiting shows, rather than the "closed" from
// before.
func TestStatusReportsBreakerAfterCall(t *testing.T) {
	srv := redistest.Start(t)
	st := openOne(t, srv.Addr, 50*time.Millisecond, 3*time.Second, time.Hour)
	ctx := context.Background()
	srv.Pause()
	t.Cleanup(srv.Resume)
	done := make(chan []state.InstanceStatus, 1)
	go func() { done <- st.Status(ctx) }()
	if _, err := st.Incr(ctx, "s", time.Minute); !errors.Is(err, state.ErrUnavailable) {
		t.Fatalf("Incr on a frozen instance: %v", err)
	}
	s := (<-done)[0]
	if s.Up || s.Breaker == "closed" || s.LastError == "" {
		t.Fatalf("status returned after a mail-path failure: up=%v breaker=%s last error %q; want it down", s.Up, s.Breaker, s.LastError)
	}
	if s.Failures != 1 || s.Trips != 1 {
		t.Fatalf("failures=%d trips=%d; want 1 and 1: the status call itself counts nothing", s.Failures, s.Trips)
	}
}
