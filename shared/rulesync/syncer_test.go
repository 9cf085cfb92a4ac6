package rulesync

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/shared/redistest"
	"github.com/geomilter/geomilter/shared/rules"
	"github.com/geomilter/geomilter/shared/state"
)

type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}

// TestMain silences go-redis's process-wide logger: the tests kill servers
// on purpose.
func TestMain(m *testing.M) {
	redis.SetLogger(quietLogger{})
	os.Exit(m.Run())
}

const settle = 15 * time.Second

func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(settle)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v, still waiting for %s: %v", settle, what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func rejectDoc(id, sender string) state.RuleDoc {
	return state.RuleDoc{ID: id, Doc: json.RawMessage(fmt.Sprintf(
		`{"id":%q,"milter":"access","scope":"global","match":{"sender":[%q]},"action":"reject"}`, id, sender))}
}

func hasRule(s *Syncer, id string) error {
	if s.Current().Rule(id) == nil {
		return fmt.Errorf("rule %s not in the snapshot (%d rules, %s)", id, s.Current().Len(), s.Detail())
	}
	return nil
}

func lacksRule(s *Syncer, id string) error {
	if s.Current().Rule(id) != nil {
		return fmt.Errorf("rule %s still in the snapshot", id)
	}
	return nil
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

const goodRules = `rules:
  - {id: r1, milter: access, scope: global, match: {sender: [a@x.test]}, action: reject}
`

func TestStandaloneFileAndReload(t *testing.T) {
	dir := t.TempDir()
	stateDir := filepath.Join(dir, "state")
	if err := os.Mkdir(stateDir, 0o755); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "rules.yaml")
	writeFile(t, file, goodRules)
	reg := prometheus.NewRegistry()
	s, err := Start(context.Background(), Options{RulesFile: file, StateDir: stateDir, Registerer: reg, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := hasRule(s, "r1"); err != nil {
		t.Fatal(err)
	}
	if st := s.Status(); st.Source != SourceFile || st.Rules != 1 {
		t.Fatalf("status %+v", st)
	}
	if v := testutil.ToFloat64(s.m.source.WithLabelValues(SourceFile)); v != 1 {
		t.Errorf("source{file} = %v", v)
	}

	// An invalid file is refused as a whole; the rules in force stay.
	writeFile(t, file, "rules:\n  - {id: r2, milter: access, scope: global, action: rejct}\n")
	err = s.Reload()
	if err == nil || !strings.Contains(err.Error(), "rules.yaml:2") {
		t.Fatalf("reload of an invalid file: %v", err)
	}
	if err := hasRule(s, "r1"); err != nil {
		t.Fatal(err)
	}
	if s.Status().LastError == "" {
		t.Error("status does not show the failed reload")
	}

	writeFile(t, file, strings.ReplaceAll(goodRules, "r1", "r2"))
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	if hasRule(s, "r2") != nil || lacksRule(s, "r1") != nil || s.Status().LastError != "" {
		t.Fatalf("after a good reload: %s", s.Detail())
	}
	set, info, err := rules.LoadSaved(stateDir)
	if err != nil || info.Checksum != s.Current().Checksum() || len(set.Rules) != 1 {
		t.Fatalf("saved snapshot: %v %+v", err, info)
	}
	s.Close()

	// A restart with a broken file serves the saved snapshot.
	writeFile(t, file, "rules: [\n")
	s2, err := Start(context.Background(), Options{RulesFile: file, StateDir: stateDir, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if st := s2.Status(); st.Source != SourceDisk || hasRule(s2, "r2") != nil || !strings.Contains(st.LastError, "rules.yaml") {
		t.Fatalf("restart with a broken file: %+v", st)
	}
	// ... and with no saved snapshot either, it does not start.
	if _, err := Start(context.Background(), Options{RulesFile: file, StateDir: t.TempDir(), Logger: zerolog.Nop()}); err == nil {
		t.Fatal("started with a broken file and no saved snapshot")
	}
}

// pair is site a (a primary and a local replica of b's primary, read by the
// Syncer under test) and site b (its primary, written by b's store).
type pair struct {
	pa, pb, rab *redistest.Server
	a, b        *state.Store
	stateDir    string
}

func newPair(t *testing.T) *pair {
	t.Helper()
	p := &pair{stateDir: t.TempDir()}
	p.pa = redistest.Start(t, redistest.WithPersistence())
	p.pb = redistest.Start(t)
	p.rab = redistest.Start(t, redistest.WithReplicaOf(p.pb.Addr), redistest.WithConfig("replica-serve-stale-data yes"))
	eventually(t, "replica link up", func() error {
		info, err := p.rab.Client().Info(context.Background(), "replication").Result()
		if err != nil || !strings.Contains(info, "master_link_status:up") {
			return fmt.Errorf("link not up (%v)", err)
		}
		return nil
	})
	p.a = p.openA(t)
	var err error
	p.b, err = state.Open(state.Options{Site: "b", Local: state.InstanceConfig{Addr: p.pb.Addr},
		Timeout: 250 * time.Millisecond, BreakerOpenFor: 200 * time.Millisecond, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.b.Close() })
	return p
}

func (p *pair) openA(t *testing.T) *state.Store {
	t.Helper()
	st, err := state.Open(state.Options{Site: "a", Local: state.InstanceConfig{Addr: p.pa.Addr},
		Peers:   map[string]state.InstanceConfig{"b": {Addr: p.rab.Addr}},
		Timeout: 250 * time.Millisecond, BulkTimeout: 500 * time.Millisecond, BreakerOpenFor: 200 * time.Millisecond,
		Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func (p *pair) start(t *testing.T, st *state.Store, reg prometheus.Registerer) *Syncer {
	t.Helper()
	s, err := Start(context.Background(), Options{Store: st, StateDir: p.stateDir, Registerer: reg,
		PollEvery: 100 * time.Millisecond, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func put(t *testing.T, st *state.Store, docs ...state.RuleDoc) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := st.PutRules(ctx, docs); err != nil {
		t.Fatal(err)
	}
}

func TestRedisFollowsEverySite(t *testing.T) {
	p := newPair(t)
	put(t, p.a, rejectDoc("a1", "x@a.test"))
	reg := prometheus.NewRegistry()
	s := p.start(t, p.a, reg)
	if err := hasRule(s, "a1"); err != nil {
		t.Fatal(err) // the initial load is synchronous
	}
	if st := s.Status(); st.Source != SourceRedis {
		t.Fatalf("status %+v", st)
	}

	put(t, p.b, rejectDoc("b1", "x@b.test"))
	eventually(t, "b's rule at a", func() error { return hasRule(s, "b1") })
	put(t, p.a, rejectDoc("a2", "y@a.test"))
	eventually(t, "a's new rule", func() error { return hasRule(s, "a2") })
	ctx := context.Background()
	if _, err := p.a.DeleteRules(ctx, []string{"a1"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a1 deleted", func() error { return lacksRule(s, "a1") })

	// The saved snapshot follows.
	eventually(t, "saved snapshot current", func() error {
		_, info, err := rules.LoadSaved(p.stateDir)
		if err != nil {
			return err
		}
		if info.Checksum != s.Current().Checksum() {
			return errors.New("checksum differs")
		}
		return nil
	})
	if v := testutil.ToFloat64(s.m.source.WithLabelValues(SourceRedis)); v != 1 {
		t.Errorf("source{redis} = %v", v)
	}
	if n := testutil.ToFloat64(s.m.count); n != 2 {
		t.Errorf("snapshot_rules = %v, want 2", n)
	}
}

// A change announced nowhere (the notification was lost) is found by the
// version poll.
func TestPollFindsUnannouncedChange(t *testing.T) {
	p := newPair(t)
	s := p.start(t, p.a, nil)
	d := rejectDoc("silent", "s@b.test")
	v, _ := json.Marshal(map[string]any{"id": d.ID, "doc": d.Doc, "hlc": state.HLC{Wall: time.Now().UnixMilli(), Site: "b"}.String()})
	c := p.pb.Client()
	ctx := context.Background()
	if _, err := c.TxPipelined(ctx, func(pl redis.Pipeliner) error {
		pl.HSet(ctx, "gm:{b}:rules", d.ID, v)
		pl.Incr(ctx, "gm:{b}:rules:version")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "unannounced rule", func() error { return hasRule(s, "silent") })
}

// A document this version cannot read is skipped and counted once; the
// rest applies.
func TestInvalidDocSkipped(t *testing.T) {
	p := newPair(t)
	s := p.start(t, p.a, prometheus.NewRegistry())
	future := state.RuleDoc{ID: "future", Doc: json.RawMessage(
		`{"id":"future","milter":"access","scope":"global","match":{"spf":["fail"]},"action":"reject"}`)}
	put(t, p.b, future, rejectDoc("fine", "f@b.test"))
	eventually(t, "valid rule", func() error { return hasRule(s, "fine") })
	if err := lacksRule(s, "future"); err != nil {
		t.Fatal(err)
	}
	put(t, p.b, rejectDoc("fine2", "g@b.test"))
	eventually(t, "second rule", func() error { return hasRule(s, "fine2") })
	if n := testutil.ToFloat64(s.m.invalid); n != 1 {
		t.Errorf("invalid_docs_total = %v, want 1 (counted once across reloads)", n)
	}
	if st := s.Status(); st.Invalid != 1 || !strings.Contains(s.Detail(), "1 invalid") {
		t.Errorf("status %+v detail %q", st, s.Detail())
	}
}

func TestOwnPrimaryDown(t *testing.T) {
	p := newPair(t)
	put(t, p.a, rejectDoc("a1", "x@a.test"))
	put(t, p.b, rejectDoc("b1", "x@b.test"))
	s := p.start(t, p.a, nil)
	eventually(t, "both rules", func() error {
		if err := hasRule(s, "b1"); err != nil {
			return err
		}
		return hasRule(s, "a1")
	})
	eventually(t, "snapshot saved", func() error {
		_, info, err := rules.LoadSaved(p.stateDir)
		if err == nil && info.Count != 2 {
			err = fmt.Errorf("saved %d docs", info.Count)
		}
		return err
	})

	p.pa.Kill()
	// A change at b still applies; a's own rules stay from memory.
	put(t, p.b, rejectDoc("b2", "y@b.test"))
	eventually(t, "b's new rule while a's primary is down", func() error { return hasRule(s, "b2") })
	if err := hasRule(s, "a1"); err != nil {
		t.Fatal(err)
	}
	if st := s.Status(); len(st.Stale) != 1 || st.Stale[0] != "a" {
		t.Errorf("stale sites %v, want [a]", st.Stale)
	}

	// A process started now, with its own primary down, serves the disk
	// snapshot (which has b2 once it was saved after that change).
	eventually(t, "snapshot with b2 saved", func() error {
		_, info, err := rules.LoadSaved(p.stateDir)
		if err == nil && info.Count != 3 {
			err = fmt.Errorf("saved %d docs", info.Count)
		}
		return err
	})
	s2 := p.start(t, p.openA(t), nil)
	if st := s2.Status(); st.Source != SourceDisk {
		t.Fatalf("restart with own primary down: %+v", st)
	}
	for _, id := range []string{"a1", "b1", "b2"} {
		if err := hasRule(s2, id); err != nil {
			t.Error(err)
		}
	}
	// Once every site answers again it switches to Redis.
	p.pa.Restart()
	eventually(t, "back on redis", func() error {
		if src := s2.Status().Source; src != SourceRedis {
			return fmt.Errorf("source %s", src)
		}
		return nil
	})
	if err := hasRule(s2, "a1"); err != nil {
		t.Error(err) // a's primary persisted its data
	}
}

// A peer's local replica down: its rules stay (memory), the own site's
// changes apply.
func TestPeerReplicaDown(t *testing.T) {
	p := newPair(t)
	put(t, p.b, rejectDoc("b1", "x@b.test"))
	s := p.start(t, p.a, nil)
	eventually(t, "b's rule", func() error { return hasRule(s, "b1") })
	p.rab.Pause()
	t.Cleanup(p.rab.Resume)
	put(t, p.a, rejectDoc("a1", "x@a.test"))
	eventually(t, "own rule while the peer replica is frozen", func() error { return hasRule(s, "a1") })
	if err := hasRule(s, "b1"); err != nil {
		t.Fatal(err)
	}
	p.rab.Resume()
	put(t, p.b, rejectDoc("b2", "y@b.test"))
	eventually(t, "peer's rule after it answers again", func() error { return hasRule(s, "b2") })
	eventually(t, "no stale site", func() error {
		if st := s.Status(); len(st.Stale) != 0 {
			return fmt.Errorf("stale %v", st.Stale)
		}
		return nil
	})
}

func TestNothingAnswersNoSnapshot(t *testing.T) {
	st, err := state.Open(state.Options{Site: "a", Local: state.InstanceConfig{Addr: "127.0.0.1:1"}, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	s, err := Start(context.Background(), Options{Store: st, StateDir: t.TempDir(), Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if st := s.Status(); st.Source != SourceEmpty || s.Current().Len() != 0 {
		t.Fatalf("status %+v", st)
	}
	if d := s.Detail(); !strings.HasPrefix(d, "no rules") {
		t.Errorf("detail %q", d)
	}
}
