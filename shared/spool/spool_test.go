package spool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func openT(t *testing.T, opts Options) *Spool {
	t.Helper()
	if opts.SyncEvery == 0 {
		opts.SyncEvery = 5 * time.Millisecond
	}
	s, err := Open(opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func readerT(t *testing.T, s *Spool, sink string) *Reader {
	t.Helper()
	r, err := s.Reader(sink)
	if err != nil {
		t.Fatalf("Reader(%q): %v", sink, err)
	}
	return r
}

func payload(i int) []byte {
	return []byte(fmt.Sprintf("event-%d-%s", i, strings.Repeat("x", i%37)))
}

func appendN(t *testing.T, s *Spool, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		if err := s.Append(payload(i)); err != nil {
			t.Fatalf("Append(%d): %v", i, err)
		}
	}
}

// readN reads exactly n records, waiting generously for GroupCommit flushes.
func readN(t *testing.T, r *Reader, n int) []Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []Record
	for len(out) < n {
		recs, err := r.Next(ctx, n-len(out))
		if err != nil {
			t.Fatalf("Next after %d of %d records: %v", len(out), n, err)
		}
		out = append(out, recs...)
	}
	return out
}

// expectNone asserts that no record is available (call after Sync).
func expectNone(t *testing.T, r *Reader) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	recs, err := r.Next(ctx, 10)
	if !errors.Is(err, context.DeadlineExceeded) || len(recs) != 0 {
		t.Fatalf("Next = %d records (first seq %v), %v; want none and DeadlineExceeded", len(recs), firstSeq(recs), err)
	}
}

func firstSeq(recs []Record) any {
	if len(recs) == 0 {
		return nil
	}
	return recs[0].Seq
}

func checkRun(t *testing.T, recs []Record, firstSeq uint64, firstPayload int) {
	t.Helper()
	for k, rec := range recs {
		if want := firstSeq + uint64(k); rec.Seq != want {
			t.Fatalf("record %d: seq %d, want %d", k, rec.Seq, want)
		}
		if want := payload(firstPayload + k); !bytes.Equal(rec.Data, want) {
			t.Fatalf("record seq %d: data %q, want %q", rec.Seq, rec.Data, want)
		}
	}
}

func segFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*.seg"))
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(m)
	return m
}

var modes = []struct {
	name string
	d    Durability
}{{"GroupCommit", GroupCommit}, {"Durable", Durable}}

func TestAppendReadCommitReopen(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			dir := t.TempDir()
			opts := Options{Dir: dir, Sinks: []string{"site"}, Durability: m.d, SegmentBytes: 1024}
			s := openT(t, opts)
			r := readerT(t, s, "site")
			appendN(t, s, 0, 100)
			recs := readN(t, r, 100)
			checkRun(t, recs, 1, 0)
			if err := r.Commit(60); err != nil {
				t.Fatalf("Commit: %v", err)
			}
			if err := s.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}

			s = openT(t, opts)
			r = readerT(t, s, "site")
			checkRun(t, readN(t, r, 40), 61, 60)
			expectNone(t, r)
			appendN(t, s, 100, 5)
			checkRun(t, readN(t, r, 5), 101, 100)
			if st := s.Stats(); st.LastSeq != 105 || st.PerSink["site"].CommittedSeq != 60 || st.PerSink["site"].Pending != 45 {
				t.Fatalf("Stats = %+v; want LastSeq 105, committed 60, pending 45", st)
			}
		})
	}
}

func TestRecordDataIsCopied(t *testing.T) {
	s := openT(t, Options{Dir: t.TempDir(), Sinks: []string{"a"}, Durability: Durable})
	r := readerT(t, s, "a")
	in := []byte("original")
	if err := s.Append(in); err != nil {
		t.Fatal(err)
	}
	copy(in, "CHANGED!")
	recs := readN(t, r, 1)
	appendN(t, s, 0, 50)
	readN(t, r, 50) // reuses the reader's buffer
	if string(recs[0].Data) != "original" {
		t.Fatalf("kept record data = %q, want %q", recs[0].Data, "original")
	}
}

func TestNextBlocksUntilAppendAndHonoursContext(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			s := openT(t, Options{Dir: t.TempDir(), Sinks: []string{"a"}, Durability: m.d})
			r := readerT(t, s, "a")
			got := make(chan []Record, 1)
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				recs, err := r.Next(ctx, 10)
				if err != nil {
					t.Errorf("Next: %v", err)
				}
				got <- recs
			}()
			time.Sleep(20 * time.Millisecond) // let Next block; the test holds without it
			if err := s.Append([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			recs := <-got
			if len(recs) != 1 || string(recs[0].Data) != "hello" || recs[0].Seq != 1 {
				t.Fatalf("Next = %+v, want one record seq 1 \"hello\"", recs)
			}

			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				_, err := r.Next(ctx, 10)
				done <- err
			}()
			cancel()
			select {
			case err := <-done:
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("Next after cancel = %v, want context.Canceled", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Next did not return after ctx was cancelled")
			}
		})
	}
}

func TestRewindAndCommitRules(t *testing.T) {
	s := openT(t, Options{Dir: t.TempDir(), Sinks: []string{"a"}, Durability: Durable})
	r := readerT(t, s, "a")
	appendN(t, s, 0, 10)
	checkRun(t, readN(t, r, 5), 1, 0)
	r.Rewind()
	checkRun(t, readN(t, r, 5), 1, 0) // nothing committed: same records again

	if err := r.Commit(7); err == nil {
		t.Fatal("Commit beyond the last returned record succeeded")
	}
	if err := r.Commit(3); err != nil {
		t.Fatal(err)
	}
	if err := r.Commit(2); err != nil {
		t.Fatalf("Commit of an older seq: %v, want no-op", err)
	}
	r.Rewind()
	checkRun(t, readN(t, r, 7), 4, 3)
	if got := s.Stats().PerSink["a"].CommittedSeq; got != 3 {
		t.Fatalf("CommittedSeq = %d, want 3", got)
	}
}

func TestSinksDrainIndependently(t *testing.T) {
	dir := t.TempDir()
	clk := newFakeClock()
	opts := Options{Dir: dir, Sinks: []string{"fast", "dark"}, Durability: Durable, SegmentBytes: 512, Clock: clk.Now}
	s := openT(t, opts)
	fast, dark := readerT(t, s, "fast"), readerT(t, s, "dark")
	t0 := clk.Now()
	for i := 0; i < 60; i++ {
		appendN(t, s, i, 1)
		clk.Advance(time.Second)
	}
	recs := readN(t, fast, 60)
	if err := fast.Commit(recs[59].Seq); err != nil {
		t.Fatal(err)
	}
	expectNone(t, fast)

	st := s.Stats()
	if got := st.PerSink["fast"]; got.Pending != 0 || !got.OldestUnsent.IsZero() || got.CommittedSeq != 60 {
		t.Fatalf("fast sink stats %+v, want nothing pending at 60", got)
	}
	if got := st.PerSink["dark"]; got.Pending != 60 || !got.OldestUnsent.Equal(t0) {
		t.Fatalf("dark sink stats %+v, want 60 pending, oldest %v", got, t0)
	}
	if st.Records != 60 || !st.OldestUnsent.Equal(t0) || st.Bytes <= 0 {
		t.Fatalf("stats %+v, want 60 records pending since %v", st, t0)
	}
	if n := len(segFiles(t, dir)); n < 3 {
		t.Fatalf("%d segments, want several kept for the dark sink", n)
	}

	// The dark sink catches up: everything but the active segment goes.
	checkRun(t, readN(t, dark, 60), 1, 0)
	if err := dark.Commit(60); err != nil {
		t.Fatal(err)
	}
	if n := len(segFiles(t, dir)); n != 1 {
		t.Fatalf("%d segment files after every sink committed everything, want 1", n)
	}
	if st := s.Stats(); st.Records != 0 || st.Bytes != 0 || !st.OldestUnsent.IsZero() || st.Segments != 1 {
		t.Fatalf("stats %+v, want empty", st)
	}
}

func TestOldestUnsentTracksCommitsAndRestarts(t *testing.T) {
	dir := t.TempDir()
	clk := newFakeClock()
	opts := Options{Dir: dir, Sinks: []string{"a"}, Durability: GroupCommit, Clock: clk.Now}
	s := openT(t, opts)
	r := readerT(t, s, "a")
	times := make([]time.Time, 5)
	for i := range times {
		times[i] = clk.Now()
		appendN(t, s, i, 1)
		clk.Advance(time.Minute)
	}
	if got := s.Stats().OldestUnsent; !got.Equal(times[0]) {
		t.Fatalf("OldestUnsent = %v, want %v", got, times[0])
	}
	recs := readN(t, r, 2) // the rest are not read yet: the time comes from disk
	if !recs[1].Time.Equal(times[1]) {
		t.Fatalf("Record.Time = %v, want %v", recs[1].Time, times[1])
	}
	if err := r.Commit(2); err != nil {
		t.Fatal(err)
	}
	if got := s.Stats().PerSink["a"].OldestUnsent; !got.Equal(times[2]) {
		t.Fatalf("after commit 2, OldestUnsent = %v, want %v", got, times[2])
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openT(t, opts)
	r = readerT(t, s, "a")
	if got := s.Stats().PerSink["a"]; !got.OldestUnsent.Equal(times[2]) || got.Pending != 3 {
		t.Fatalf("after restart: %+v, want 3 pending since %v", got, times[2])
	}
	readN(t, r, 3)
	if err := r.Commit(5); err != nil {
		t.Fatal(err)
	}
	if got := s.Stats().OldestUnsent; !got.IsZero() {
		t.Fatalf("OldestUnsent = %v with nothing pending, want zero", got)
	}
	later := clk.Now()
	appendN(t, s, 5, 1)
	if got := s.Stats().OldestUnsent; !got.Equal(later) {
		t.Fatalf("OldestUnsent = %v, want the new record's %v", got, later)
	}
}

func TestMaxBytesDropsNewRecords(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			dir := t.TempDir()
			s := openT(t, Options{Dir: dir, Sinks: []string{"a", "b"}, Durability: m.d, MaxBytes: 4096, SegmentBytes: 1024})
			a, b := readerT(t, s, "a"), readerT(t, s, "b")
			rec := bytes.Repeat([]byte("r"), 100) // 124 bytes with its header
			accepted, dropped := 0, 0
			for i := 0; i < 100; i++ {
				switch err := s.Append(rec); {
				case err == nil:
					accepted++
				case errors.Is(err, ErrFull):
					dropped++
				default:
					t.Fatalf("Append: %v", err)
				}
			}
			st := s.Stats()
			if accepted == 0 || dropped == 0 || st.Dropped != uint64(dropped) || st.Bytes > 4096 {
				t.Fatalf("accepted %d dropped %d, stats %+v: want both, Dropped counted, Bytes <= 4096", accepted, dropped, st)
			}
			if err := s.Sync(); err != nil {
				t.Fatal(err)
			}
			recs := readN(t, a, accepted)
			expectNone(t, a) // dropped records were not written
			if recs[len(recs)-1].Seq != uint64(accepted) {
				t.Fatalf("last seq %d, want %d (a dropped record takes no Seq)", recs[len(recs)-1].Seq, accepted)
			}
			if err := a.Commit(uint64(accepted)); err != nil {
				t.Fatal(err)
			}
			if err := s.Append(rec); !errors.Is(err, ErrFull) {
				t.Fatalf("Append with sink b still behind = %v, want ErrFull", err)
			}
			readN(t, b, accepted)
			if err := b.Commit(uint64(accepted)); err != nil {
				t.Fatal(err)
			}
			if err := s.Append(rec); err != nil {
				t.Fatalf("Append after every sink caught up: %v", err)
			}
		})
	}
}

func TestNoSinksKeepsOnlyActiveSegment(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, Options{Dir: dir, Durability: Durable, SegmentBytes: 256, MaxBytes: 1000})
	appendN(t, s, 0, 100) // far more than MaxBytes: nothing is pending without sinks
	if n := len(segFiles(t, dir)); n != 1 {
		t.Fatalf("%d segment files, want 1", n)
	}
	if _, err := s.Reader("a"); err == nil {
		t.Fatal("Reader of an unknown sink succeeded")
	}
}

func TestSinkListChangesAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, Options{Dir: dir, Sinks: []string{"old"}, Durability: Durable, SegmentBytes: 512})
	appendN(t, s, 0, 40)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(segFiles(t, dir)); n < 2 {
		t.Fatalf("%d segments before restart, want several", n)
	}

	// "old" is gone and "new" appears: new starts at the head, and the
	// removed sink no longer pins the backlog.
	s = openT(t, Options{Dir: dir, Sinks: []string{"new"}, Durability: Durable, SegmentBytes: 512})
	r := readerT(t, s, "new")
	expectNone(t, r)
	if _, err := os.Stat(filepath.Join(dir, "old.cursor")); !os.IsNotExist(err) {
		t.Fatalf("cursor of removed sink: stat err %v, want not exist", err)
	}
	if n := len(segFiles(t, dir)); n != 1 {
		t.Fatalf("%d segments after the only pinning sink was removed, want 1", n)
	}
	appendN(t, s, 40, 3)
	checkRun(t, readN(t, r, 3), 41, 40)
}

func TestSeqNeverReused(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, Sinks: []string{"a"}, Durability: Durable, SegmentBytes: 256}
	s := openT(t, opts)
	r := readerT(t, s, "a")
	appendN(t, s, 0, 20)
	readN(t, r, 20)
	if err := r.Commit(20); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s = openT(t, opts)
	appendN(t, s, 20, 1)
	r = readerT(t, s, "a")
	checkRun(t, readN(t, r, 1), 21, 20)
	if err := r.Commit(21); err != nil {
		t.Fatal(err)
	}
	s.Close()

	// Even with every segment lost, the cursor keeps Seqs above what the
	// sink has seen.
	for _, f := range segFiles(t, dir) {
		os.Remove(f)
	}
	s = openT(t, opts)
	appendN(t, s, 0, 1)
	if recs := readN(t, readerT(t, s, "a"), 1); recs[0].Seq != 22 {
		t.Fatalf("seq after losing every segment = %d, want 22", recs[0].Seq)
	}
}

func TestCursorFileDamage(t *testing.T) {
	tests := []struct {
		name     string
		damage   func(b []byte) // b is the 1024-byte cursor file
		wantNext uint64         // Seq of the first record Next returns
	}{
		{"latest slot torn", func(b []byte) { b[cursorSlotSpan+5] ^= 0xff }, 3},
		{"both slots torn", func(b []byte) { b[5] ^= 0xff; b[cursorSlotSpan+5] ^= 0xff }, 1},
		{"truncated to zero", func(b []byte) { clear(b) }, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			opts := Options{Dir: dir, Sinks: []string{"a"}, Durability: Durable}
			s := openT(t, opts)
			r := readerT(t, s, "a")
			appendN(t, s, 0, 10)
			readN(t, r, 10)
			// Open writes 0 to slot 0; commits alternate slots: 1 -> slot 1,
			// 2 -> slot 0, 5 -> slot 1. Slot 1 holds the latest value (5),
			// slot 0 the previous one (2).
			for _, c := range []uint64{1, 2, 5} {
				if err := r.Commit(c); err != nil {
					t.Fatal(err)
				}
			}
			s.Close()
			path := filepath.Join(dir, "a.cursor")
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			tc.damage(b)
			if err := os.WriteFile(path, b, 0o640); err != nil {
				t.Fatal(err)
			}
			s = openT(t, opts)
			recs := readN(t, readerT(t, s, "a"), 1)
			if recs[0].Seq != tc.wantNext {
				t.Fatalf("first record after reopen: seq %d, want %d", recs[0].Seq, tc.wantNext)
			}
		})
	}
}

func TestCloseStopsEverything(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, Options{Dir: dir, Sinks: []string{"a"}})
	r := readerT(t, s, "a")
	done := make(chan error, 1)
	go func() {
		_, err := r.Next(context.Background(), 1)
		done <- err
	}()
	appendN(t, s, 0, 3) // GroupCommit: Close must still make them durable
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil && !errors.Is(err, ErrClosed) {
			t.Fatalf("blocked Next after Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("blocked Next did not return after Close")
	}
	if err := s.Append([]byte("x")); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close = %v, want ErrClosed", err)
	}
	if _, err := r.Next(context.Background(), 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Next after Close = %v, want ErrClosed", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	s = openT(t, Options{Dir: dir, Sinks: []string{"a"}})
	recs := readN(t, readerT(t, s, "a"), 3)
	checkRun(t, recs, 1, 0)
}

func TestOpenRejects(t *testing.T) {
	dir := t.TempDir()
	openT(t, Options{Dir: dir, Sinks: []string{"a"}})
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"directory in use", Options{Dir: dir}, "in use"},
		{"empty dir", Options{}, "Dir is empty"},
		{"bad sink name", Options{Dir: t.TempDir(), Sinks: []string{"../x"}}, "invalid sink name"},
		{"duplicate sink", Options{Dir: t.TempDir(), Sinks: []string{"a", "a"}}, "duplicate sink"},
		{"tiny segments", Options{Dir: t.TempDir(), SegmentBytes: 10}, "too small"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Open(tc.opts)
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Open error %q, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestTooLargeRecordIsRefused(t *testing.T) {
	s := openT(t, Options{Dir: t.TempDir(), Sinks: []string{"a"}})
	if err := s.Append(make([]byte, maxRecordLen+1)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Append = %v, want ErrTooLarge", err)
	}
	if got := s.Stats().Dropped; got != 1 {
		t.Fatalf("Dropped = %d, want 1", got)
	}
}

func TestDurableConcurrentAppendsShareFsyncs(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, Sinks: []string{"a"}, Durability: Durable, SegmentBytes: 4096}
	s := openT(t, opts)
	const writers, each = 8, 40
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				if err := s.Append([]byte(fmt.Sprintf("w%d-%d", w, i))); err != nil {
					t.Errorf("Append: %v", err)
					return
				}
				// Durable: the record is visible to readers (they only see
				// fsynced data) as soon as Append returns.
				if st := s.Stats(); st.DurableSeq < 1 {
					t.Errorf("DurableSeq %d after a durable Append", st.DurableSeq)
				}
			}
		}(w)
	}
	wg.Wait()
	st := s.Stats()
	if st.DurableSeq != writers*each {
		t.Fatalf("DurableSeq = %d, want %d", st.DurableSeq, writers*each)
	}
	recs := readN(t, readerT(t, s, "a"), writers*each)
	seen := make(map[string]bool)
	for k, rec := range recs {
		if rec.Seq != uint64(k+1) {
			t.Fatalf("record %d has seq %d", k, rec.Seq)
		}
		seen[string(rec.Data)] = true
	}
	if len(seen) != writers*each {
		t.Fatalf("%d distinct records, want %d", len(seen), writers*each)
	}
}
