package redistest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestStartParallel(t *testing.T) {
	for i := 0; i < 6; i++ {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			t.Parallel()
			s := Start(t)
			c := s.Client()
			ctx := context.Background()
			if err := c.Set(ctx, "k", s.Addr, 0).Err(); err != nil {
				t.Fatal(err)
			}
			if got := c.Get(ctx, "k").Val(); got != s.Addr {
				t.Fatalf("got %q, want %q (servers must not be shared)", got, s.Addr)
			}
		})
	}
}

func TestPauseResume(t *testing.T) {
	s := Start(t)
	c := s.Client()
	ctx := context.Background()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	s.Pause()
	pctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	err := c.Ping(pctx).Err()
	cancel()
	if err == nil {
		t.Fatal("PING answered while paused")
	}
	s.Resume()
	deadline := time.Now().Add(5 * time.Second)
	for c.Ping(ctx).Err() != nil {
		if time.Now().After(deadline) {
			t.Fatal("no PING after Resume")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestKillRestart(t *testing.T) {
	tests := []struct {
		name     string
		opts     []Option
		wantKept bool
	}{
		{"volatile", nil, false},
		{"persistent", []Option{WithPersistence(), WithConfig("appendfsync always")}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := Start(t, tt.opts...)
			c := s.Client()
			ctx := context.Background()
			if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
				t.Fatal(err)
			}
			addr := s.Addr
			s.Kill()
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			err := c.Ping(cctx).Err()
			cancel()
			if err == nil {
				t.Fatal("PING answered after Kill")
			}
			s.Restart()
			if s.Addr != addr {
				t.Fatalf("addr changed %s -> %s", addr, s.Addr)
			}
			v, err := c.Get(ctx, "k").Result()
			if kept := err == nil && v == "v"; kept != tt.wantKept {
				t.Fatalf("key kept=%v (v=%q err=%v), want %v", kept, v, err, tt.wantKept)
			}
		})
	}
}

func TestReplicaOf(t *testing.T) {
	p := Start(t)
	r := Start(t, WithReplicaOf(p.Addr))
	ctx := context.Background()
	if err := p.Client().Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	rc := r.Client()
	deadline := time.Now().Add(10 * time.Second)
	for {
		v, err := rc.Get(ctx, "k").Result()
		if err == nil && v == "v" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica never got the key: %q %v", v, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := rc.Set(ctx, "x", "y", 0).Err(); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("write to replica: err=%v, want READONLY", err)
	}
}
