package state_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/shared/redistest"
	"github.com/geomilter/geomilter/shared/state"
)

// TestACLUserFromPasswordFile connects as the ACL users that
// deploy/redis/primary.conf and peer-replica.conf define for geomilter, with
// the password read from a file, and exercises every call.
func TestACLUserFromPasswordFile(t *testing.T) {
	srv := redistest.Start(t, redistest.WithConfig(
		"user default on nopass ~* &* +@all", // redistest's own readiness PING
		"user geomilter on >s3cret ~gm:* &gm:* -@all +@read +@write +@pubsub +@transaction +@connection +@scripting -@dangerous +info",
	))
	peer := redistest.Start(t, redistest.WithConfig(
		"user default on nopass ~* &* +@all",
		"user geomilter on >s3cret ~gm:* &gm:* -@all +@read +@pubsub +@transaction +@connection -@dangerous +info",
	))
	pass := filepath.Join(t.TempDir(), "redis.pass")
	if err := os.WriteFile(pass, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	open := func(passFile string) *state.Store {
		st, err := state.Open(state.Options{Site: "lax", Timeout: time.Second, Logger: zerolog.Nop(),
			Local: state.InstanceConfig{Addr: srv.Addr, Username: "geomilter", PasswordFile: passFile},
			Peers: map[string]state.InstanceConfig{"dal": {Addr: peer.Addr, Username: "geomilter", PasswordFile: passFile}}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	}
	st := open(pass)
	ctx := context.Background()
	if _, err := st.Incr(ctx, "s", time.Minute); err != nil {
		t.Fatalf("Incr: %v", err)
	}
	if _, err := st.PutRules(ctx, []state.RuleDoc{{ID: "r", Doc: []byte(`{}`)}}); err != nil {
		t.Fatalf("PutRules: %v", err)
	}
	if _, _, err := st.GreylistSeen(ctx, "k", time.Hour); err != nil {
		t.Fatalf("GreylistSeen: %v", err)
	}
	if err := st.SetAdd(ctx, "n", "m", time.Hour); err != nil {
		t.Fatalf("SetAdd: %v", err)
	}
	if _, err := st.GCTombstones(ctx, time.Hour); err != nil {
		t.Fatalf("GCTombstones: %v", err)
	}
	if _, _, err := st.LoadRules(ctx); err != nil {
		t.Fatalf("LoadRules: %v", err)
	}
	if ok, err := st.SetHas(ctx, "n", "m"); err != nil || !ok {
		t.Fatalf("SetHas: %v, %v", ok, err)
	}
	if v := st.Versions(ctx); len(v) != 2 {
		t.Fatalf("Versions: %v", v)
	}
	for _, s := range st.Status(ctx) {
		if s.Replication == nil || s.Replication.Role != "master" || s.Failures != 0 || s.LastError != "" {
			t.Fatalf("status of %s: %+v", s.Site, s)
		}
	}
	subscribed := make(chan string, 4)
	subCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	st.Subscribe(subCtx, func(site string) { subscribed <- site })
	for got := map[string]bool{}; len(got) < 2; {
		select {
		case s := <-subscribed:
			got[s] = true
		case <-time.After(settle):
			t.Fatalf("subscriptions: %v", got)
		}
	}

	// A wrong password is an answer, not an outage: reported on every call,
	// and the breaker stays closed.
	bad := filepath.Join(t.TempDir(), "bad.pass")
	os.WriteFile(bad, []byte("wrong\n"), 0o600)
	stBad := open(bad)
	_, err := stBad.Incr(ctx, "s", time.Minute)
	if err == nil || errors.Is(err, state.ErrUnavailable) {
		t.Fatalf("wrong password: %v; want an auth error, not ErrUnavailable", err)
	}
}

// TestSentinel reaches the primary through a real Sentinel.
func TestSentinel(t *testing.T) {
	primary := redistest.Start(t)
	sentinelAddr := startSentinel(t, primary.Addr, "", "")
	st, err := state.Open(state.Options{Site: "lax", Timeout: time.Second, Logger: zerolog.Nop(),
		Local: state.InstanceConfig{SentinelMaster: "lax", SentinelAddrs: []string{sentinelAddr}}})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	cnt, err := st.Incr(ctx, "via-sentinel", time.Minute)
	if err != nil || cnt.Local != 1 {
		t.Fatalf("Incr through Sentinel: %+v, %v", cnt, err)
	}
	n, err := primary.Client().Keys(ctx, "gm:{lax}:rl:via-sentinel:*").Result()
	if err != nil || len(n) != 1 {
		t.Fatalf("counter not on the primary: %v, %v", n, err)
	}
}

// startSentinel runs redis-server in sentinel mode monitoring primary as
// "lax", with extra sentinel.conf lines, and waits until it knows the
// primary, asking with username and password (empty: no AUTH).
func startSentinel(t *testing.T, primary, username, password string, conf ...string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	host, pport, _ := net.SplitHostPort(primary)
	dir := t.TempDir()
	confFile := filepath.Join(dir, "sentinel.conf")
	text := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %q\nsentinel monitor lax %s %s 1\n", port, dir, host, pport)
	for _, line := range conf {
		text += line + "\n"
	}
	os.WriteFile(confFile, []byte(text), 0o600)
	cmd := exec.Command(redistest.Binary, confFile, "--sentinel")
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Skipf("cannot run sentinel: %v", err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	sc := redis.NewSentinelClient(&redis.Options{Addr: addr, Username: username, Password: password})
	defer sc.Close()
	poll(t, "sentinel knows the primary", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := sc.GetMasterAddrByName(ctx, "lax").Result()
		return err
	})
	return addr
}

// TestSentinelCredentials: the sentinels are asked with their own
// credentials, or none, never with the instance's: sentinels and data
// instances keep separate users.
func TestSentinelCredentials(t *testing.T) {
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	instancePass, sentinelPass := file("instance.pass", "inst-s3cret"), file("sentinel.pass", "sent-s3cret")
	// The primary: geomilter's user, plus the default user for redistest's
	// readiness PING and for the sentinel's monitoring.
	primary := redistest.Start(t, redistest.WithConfig(
		"user default on nopass ~* &* +@all",
		"user geomilter on >inst-s3cret ~gm:* &gm:* +@all",
	))
	tests := []struct {
		name               string
		sentinelConf       []string
		sentinelUser, pass string // what the test's own sentinel client uses
		cfg                state.InstanceConfig
	}{
		{"sentinel without AUTH, instance with a password", nil, "", "",
			state.InstanceConfig{Username: "geomilter", PasswordFile: instancePass}},
		{"sentinel with its own user", []string{"user default off", "user watcher on >sent-s3cret ~* &* +@all"}, "watcher", "sent-s3cret",
			state.InstanceConfig{Username: "geomilter", PasswordFile: instancePass, SentinelUsername: "watcher", SentinelPasswordFile: sentinelPass}},
		{"sentinel with requirepass only", []string{"requirepass sent-s3cret"}, "", "sent-s3cret",
			state.InstanceConfig{Username: "geomilter", PasswordFile: instancePass, SentinelPasswordFile: sentinelPass}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.SentinelMaster = "lax"
			cfg.SentinelAddrs = []string{startSentinel(t, primary.Addr, tc.sentinelUser, tc.pass, tc.sentinelConf...)}
			st, err := state.Open(state.Options{Site: "lax", Timeout: time.Second, Logger: zerolog.Nop(), Local: cfg})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			ctx := context.Background()
			if _, err := st.Incr(ctx, "via-sentinel", time.Minute); err != nil {
				t.Fatalf("Incr through Sentinel: %v", err)
			}
		})
	}
}
