package service

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/shared/config"
	"github.com/geomilter/geomilter/shared/state"
)

func TestStateOptions(t *testing.T) {
	pass := filepath.Join(t.TempDir(), "gm.pass")
	sentinelPass := filepath.Join(t.TempDir(), "sentinel.pass")
	for _, f := range []string{pass, sentinelPass} {
		if err := os.WriteFile(f, []byte("secret\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg := &config.Config{Site: "lax", Redis: &config.RedisConfig{
		Local: config.InstanceConfig{Addr: "127.0.0.1:6379", Username: "gm", PasswordFile: pass,
			TLS: &config.TLSConfig{ServerName: "redis.lax"}},
		Peers: map[string]config.InstanceConfig{
			"dal": {Sentinel: &config.SentinelConfig{MasterName: "gm-dal", Addrs: []string{"10.0.0.1:26379"}}},
			"nyc": {Username: "gm", PasswordFile: pass,
				Sentinel: &config.SentinelConfig{MasterName: "gm-nyc", Addrs: []string{"10.0.0.2:26379"}, Username: "watcher", PasswordFile: sentinelPass}},
		},
		Timeout: 30 * time.Millisecond, DialTimeout: 80 * time.Millisecond,
		Breaker: config.BreakerConfig{Failures: 4, OpenFor: 3 * time.Second},
	}}
	o := StateOptions(cfg, zerolog.Nop())
	want := state.Options{
		Site: "lax",
		Local: state.InstanceConfig{Addr: "127.0.0.1:6379", Username: "gm", PasswordFile: pass,
			TLS: &state.TLSConfig{ServerName: "redis.lax"}},
		Peers: map[string]state.InstanceConfig{
			"dal": {SentinelMaster: "gm-dal", SentinelAddrs: []string{"10.0.0.1:26379"}},
			// The sentinels' credentials are theirs, not the instance's.
			"nyc": {Username: "gm", PasswordFile: pass, SentinelMaster: "gm-nyc", SentinelAddrs: []string{"10.0.0.2:26379"},
				SentinelUsername: "watcher", SentinelPasswordFile: sentinelPass},
		},
		Timeout: 30 * time.Millisecond, DialTimeout: 80 * time.Millisecond, BreakerFailures: 4, BreakerOpenFor: 3 * time.Second,
		Logger: zerolog.Nop(),
	}
	if !reflect.DeepEqual(o, want) {
		t.Errorf("StateOptions\n got %+v\nwant %+v", o, want)
	}
	if _, err := state.Open(o); err != nil {
		t.Errorf("the mapped options do not open: %v", err)
	}
}
