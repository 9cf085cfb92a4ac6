package target

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/shared/drain"
)

// The targets under the real drainer and spool cursor: good records
// delivered, the refused one dead-lettered, and the cursor past all of them.
func TestDrainerWithTargets(t *testing.T) {
	js, url := newJournalServer(t, map[string]int{"lax-2": 415})
	dead, _ := newDead(t)
	ts := newTestSpool(t)
	for _, id := range []string{"lax-1", "lax-2", "lax-3"} {
		ts.add(t, testHeader(id, testMsg), testMsg)
	}
	ts.addRaw(t, "garbage")
	tg := newTarget(t, Config{Name: "t", Type: TypeHTTP, URL: url}, dead)
	d := drain.New(ts.r, tg.(drain.Sink), drain.Options{BatchSize: 2, MinBackoff: time.Millisecond,
		MaxBackoff: 10 * time.Millisecond, Logger: zerolog.Nop(),
		Pending: func() int64 { return ts.sp.Stats().PerSink["t"].Pending }})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	fctx, fcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer fcancel()
	if err := d.Flush(fctx); err != nil {
		t.Fatal(err)
	}
	js.mu.Lock()
	defer js.mu.Unlock()
	if len(js.got) != 2 || js.got["lax-1"] != testMsg || js.got["lax-3"] != testMsg {
		t.Fatalf("server got %d records, want lax-1 and lax-3", len(js.got))
	}
	ents, err := os.ReadDir(dead.Dir("t"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if got := strings.Join(names, " "); got != "lax-2.eml lax-2.json seq-4.json seq-4.rec" {
		t.Fatalf("dead letters: %s", got)
	}
}

func TestDeadLetterDiskErrorIsTemporary(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	dead, err := NewDeadLetters(filepath.Join(file, "dead"), zerolog.Nop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, url := newJournalServer(t, map[string]int{"lax-1": 400})
	ts := newTestSpool(t)
	ts.add(t, testHeader("lax-1", testMsg), testMsg)
	tg := newTarget(t, Config{Name: "t", Type: TypeHTTP, URL: url}, dead)
	if err := tg.Send(sendCtx(t), ts.batch(t, 1)); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("Send = %v, want the dead-letter write error (temporary)", err)
	}
	if st := dead.Status("t"); st.Count != 0 {
		t.Fatalf("status %+v: counted a dead letter that was not written", st)
	}
}
