package spool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Retention tests use records of exactly rrecLen bytes in segments of
// exactly four, so which segment holds which record is known: segment k
// (from 0) holds Seqs 4k+1..4k+4, record i is appended at t0 + (i-1) min.
const (
	rdataLen = 40
	rrecLen  = recHeaderLen + rdataLen
	rsegLen  = segHeaderLen + 4*rrecLen
)

func rpayload(i int) []byte {
	p := fmt.Sprintf("rec-%d-", i)
	return []byte(p + strings.Repeat("r", rdataLen-len(p)))
}

// recTime is the append time of record i in these tests.
func recTime(t0 time.Time, i int) time.Time { return t0.Add(time.Duration(i-1) * time.Minute) }

// fillDelivered appends records from..to (one a minute, as recTime says)
// and commits them all to sink "a".
func fillDelivered(t *testing.T, s *Spool, clk *fakeClock, t0 time.Time, from, to int) {
	t.Helper()
	for i := from; i <= to; i++ {
		clk.Advance(recTime(t0, i).Sub(clk.Now()))
		if err := s.Append(rpayload(i)); err != nil {
			t.Fatalf("Append(%d): %v", i, err)
		}
	}
	r := readerT(t, s, "a")
	recs := readN(t, r, to-from+1)
	if err := r.Commit(recs[len(recs)-1].Seq); err != nil {
		t.Fatalf("Commit: %v", err)
	}
}

// segBases returns the base Seqs of the segment files in dir.
func segBases(t *testing.T, dir string) []int {
	t.Helper()
	var out []int
	for _, p := range segFiles(t, dir) {
		b, err := strconv.Atoi(strings.TrimSuffix(filepath.Base(p), ".seg"))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// readUpTo reads from r until it has returned Seq last.
func readUpTo(t *testing.T, r *Reader, last uint64) []Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []Record
	for len(out) == 0 || out[len(out)-1].Seq < last {
		recs, err := r.Next(ctx, 100)
		if err != nil {
			t.Fatalf("Next after %d records: %v", len(out), err)
		}
		out = append(out, recs...)
	}
	return out
}

func checkRRun(t *testing.T, recs []Record, first, last int) {
	t.Helper()
	if len(recs) != last-first+1 {
		t.Fatalf("got %d records (first Seq %v), want Seqs %d..%d", len(recs), firstSeq(recs), first, last)
	}
	for k, rec := range recs {
		if want := first + k; rec.Seq != uint64(want) || !bytes.Equal(rec.Data, rpayload(want)) {
			t.Fatalf("record %d: Seq %d data %q, want Seq %d", k, rec.Seq, rec.Data, want)
		}
	}
}

func TestRetention(t *testing.T) {
	cases := []struct {
		name        string
		retain      time.Duration
		retainBytes int64
		now         int // clock at record now's time when collection runs
		first       int // first record left on disk
		segs        int // Stats.RetainedSegments
	}{
		{"Retain 0 deletes delivered segments at once", 0, 0, 20, 17, 0},
		{"nothing old enough", time.Hour, 0, 20, 1, 4},
		{"segments whose newest record is Retain old go", 10 * time.Minute, 0, 20, 9, 2},
		{"newest record exactly Retain old goes", 10 * time.Minute, 0, 22, 13, 1},
		{"one minute short of Retain stays", 10 * time.Minute, 0, 21, 9, 2},
		{"the segment taking appends stays", 10 * time.Minute, 0, 200, 17, 0},
		{"RetainBytes keeps the newest that fit", 24 * time.Hour, 2 * rsegLen, 20, 9, 2},
		{"RetainBytes one byte short", 24 * time.Hour, 2*rsegLen - 1, 20, 13, 1},
		{"RetainBytes below one segment", 24 * time.Hour, 100, 20, 17, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			clk := newFakeClock()
			t0 := clk.t
			s := openT(t, Options{Dir: dir, Sinks: []string{"a"}, Durability: Durable, SegmentBytes: rsegLen,
				Clock: clk.Now, Retain: tc.retain, RetainBytes: tc.retainBytes})
			fillDelivered(t, s, clk, t0, 1, 20)
			clk.Advance(recTime(t0, tc.now).Sub(clk.Now()))
			s.collect()

			var want []int
			for b := tc.first; b <= 17; b += 4 {
				want = append(want, b)
			}
			if got := segBases(t, dir); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("segments %v, want %v", got, want)
			}
			st := s.Stats()
			if st.RetainedSegments != tc.segs || st.RetainedBytes != int64(tc.segs*rsegLen) || st.Bytes != 0 {
				t.Errorf("Stats: RetainedSegments %d RetainedBytes %d Bytes %d; want %d, %d, 0",
					st.RetainedSegments, st.RetainedBytes, st.Bytes, tc.segs, tc.segs*rsegLen)
			}
			if o := s.Oldest(); !o.Equal(recTime(t0, tc.first)) || !st.Oldest.Equal(o) {
				t.Errorf("Oldest %v, Stats.Oldest %v; want %v", o, st.Oldest, recTime(t0, tc.first))
			}

			// A replay from Oldest returns exactly what is left; one from
			// the time of the newest deleted record reports the gap.
			rr, err := s.ReplayReader(s.Oldest())
			if err != nil {
				t.Fatalf("ReplayReader(Oldest): %v", err)
			}
			defer rr.Close()
			checkRRun(t, readUpTo(t, rr, 20), tc.first, 20)
			if tc.first > 1 {
				_, err := s.ReplayReader(recTime(t0, tc.first-1))
				if !errors.Is(err, ErrReplayGone) {
					t.Fatalf("ReplayReader(time of deleted record %d) = %v, want ErrReplayGone", tc.first-1, err)
				}
				if _, err := s.ReplayReader(time.Time{}); !errors.Is(err, ErrReplayGone) {
					t.Fatalf("ReplayReader(zero time) = %v, want ErrReplayGone", err)
				}
			}
		})
	}
}

// A replay window in the middle of what is kept, and one after everything.
func TestReplayReaderWindow(t *testing.T) {
	dir := t.TempDir()
	clk := newFakeClock()
	t0 := clk.t
	s := openT(t, Options{Dir: dir, Sinks: []string{"a", "b"}, Durability: Durable, SegmentBytes: rsegLen,
		Clock: clk.Now, Retain: time.Hour})
	fillDelivered(t, s, clk, t0, 1, 20) // delivered to a, pending for b

	cases := []struct {
		name  string
		since time.Time
		first int
	}{
		{"zero time: everything", time.Time{}, 1},
		{"exactly a record's time", recTime(t0, 7), 7},
		{"between two records", recTime(t0, 10).Add(time.Second), 11},
		{"first record of a segment", recTime(t0, 13), 13},
		{"last record", recTime(t0, 20), 20},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rr, err := s.ReplayReader(tc.since)
			if err != nil {
				t.Fatal(err)
			}
			defer rr.Close()
			recs := readUpTo(t, rr, 20)
			checkRRun(t, recs, tc.first, 20)
			// Commit moves only the reader: no cursor file, nothing pinned.
			if err := rr.Commit(20); err != nil {
				t.Fatalf("Commit: %v", err)
			}
		})
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "*.cursor")); len(m) != 2 {
		t.Fatalf("cursor files %v, want a's and b's only", m)
	}

	// After every record: the reader waits for the next append, and a Close
	// wakes a Next that waits.
	rr, err := s.ReplayReader(recTime(t0, 21))
	if err != nil {
		t.Fatal(err)
	}
	expectNone(t, rr)
	clk.Advance(time.Hour) // record 21 at t0+80m
	if err := s.Append(rpayload(21)); err != nil {
		t.Fatal(err)
	}
	checkRRun(t, readN(t, rr, 1), 21, 21)
	done := make(chan error, 1)
	go func() {
		_, err := rr.Next(context.Background(), 1)
		done <- err
	}()
	if err := rr.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Fatalf("Next on a closed replay reader = %v, want ErrClosed", err)
	}
	if err := rr.Commit(21); !errors.Is(err, ErrClosed) {
		t.Fatalf("Commit on a closed replay reader = %v, want ErrClosed", err)
	}
	if err := readerT(t, s, "a").Close(); err == nil {
		t.Fatal("Close of a sink's reader succeeded")
	}
}

// A replay reader pins nothing: what retention deletes ahead of it makes
// Next fail with ErrReplayGone, while a reader that had read a deleted
// segment to its end goes on.
func TestReplayReaderGoneUnderIt(t *testing.T) {
	dir := t.TempDir()
	clk := newFakeClock()
	t0 := clk.t
	s := openT(t, Options{Dir: dir, Sinks: []string{"a"}, Durability: Durable, SegmentBytes: rsegLen,
		Clock: clk.Now, Retain: 10 * time.Minute})
	fillDelivered(t, s, clk, t0, 1, 20) // segments from Seq 9 on are kept

	mid, err := s.ReplayReader(recTime(t0, 9)) // will stop in the middle of 9..12
	if err != nil {
		t.Fatal(err)
	}
	defer mid.Close()
	checkRRun(t, readN(t, mid, 2), 9, 10)
	if err := mid.Commit(10); err != nil {
		t.Fatal(err)
	}
	behind, err := s.ReplayReader(recTime(t0, 9)) // will read 9..12 to the end, then 13..16 go
	if err != nil {
		t.Fatal(err)
	}
	defer behind.Close()
	checkRRun(t, readN(t, behind, 4), 9, 12)
	end, err := s.ReplayReader(recTime(t0, 13)) // will read 13..16 to the end
	if err != nil {
		t.Fatal(err)
	}
	defer end.Close()
	checkRRun(t, readN(t, end, 4), 13, 16)

	clk.Advance(recTime(t0, 26).Sub(clk.Now())) // 9..12 and 13..16 age out
	s.collect()
	if got := segBases(t, dir); fmt.Sprint(got) != "[17]" {
		t.Fatalf("segments %v, want [17]: a replay reader must not pin them", got)
	}
	if recs, err := mid.Next(context.Background(), 10); !errors.Is(err, ErrReplayGone) {
		t.Fatalf("Next after its segment was deleted = %d records (first %v), %v; want ErrReplayGone", len(recs), firstSeq(recs), err)
	}
	if recs, err := behind.Next(context.Background(), 10); !errors.Is(err, ErrReplayGone) {
		t.Fatalf("Next with the next segment deleted = %d records (first %v), %v; want ErrReplayGone", len(recs), firstSeq(recs), err)
	}
	mid.Rewind() // back to just after 10: still gone
	if _, err := mid.Next(context.Background(), 10); !errors.Is(err, ErrReplayGone) {
		t.Fatalf("Next after Rewind = %v, want ErrReplayGone", err)
	}
	checkRRun(t, readUpTo(t, end, 20), 17, 20)
}

// Retained segments survive Close and Open; Open ages them by the times of
// their records, scanned from disk.
func TestRetentionAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	clk := newFakeClock()
	t0 := clk.t
	opts := Options{Dir: dir, Sinks: []string{"a"}, Durability: Durable, SegmentBytes: rsegLen,
		Clock: clk.Now, Retain: 10 * time.Minute}
	s, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	fillDelivered(t, s, clk, t0, 1, 20) // keeps 9..
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	steps := []struct {
		now   int // clock at Open
		first int
	}{
		{20, 9},  // nothing more to age; 1..8 were deleted by the first run
		{22, 13}, // 9..12 age out at Open
		{300, 17},
	}
	for _, st := range steps {
		clk.Advance(recTime(t0, st.now).Sub(clk.Now()))
		s, err := Open(opts)
		if err != nil {
			t.Fatal(err)
		}
		var want []int
		for b := st.first; b <= 17; b += 4 {
			want = append(want, b)
		}
		if got := segBases(t, dir); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("Open at record %d's time: segments %v, want %v", st.now, got, want)
		}
		if o := s.Oldest(); !o.Equal(recTime(t0, st.first)) {
			t.Errorf("Open at record %d's time: Oldest %v, want %v", st.now, o, recTime(t0, st.first))
		}
		if _, err := s.ReplayReader(recTime(t0, st.first-1)); !errors.Is(err, ErrReplayGone) {
			t.Errorf("Open at record %d's time: ReplayReader(time of deleted record %d) = %v, want ErrReplayGone", st.now, st.first-1, err)
		}
		rr, err := s.ReplayReader(s.Oldest())
		if err != nil {
			t.Fatal(err)
		}
		checkRRun(t, readUpTo(t, rr, 20), st.first, 20)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// Retained bytes never make an Append fail: MaxBytes bounds undelivered
// bytes only.
func TestRetainedBytesDoNotCountAgainstMaxBytes(t *testing.T) {
	dir := t.TempDir()
	clk := newFakeClock()
	t0 := clk.t
	s := openT(t, Options{Dir: dir, Sinks: []string{"a"}, Durability: Durable, SegmentBytes: rsegLen,
		MaxBytes: 2 * rsegLen, Clock: clk.Now, Retain: time.Hour, RetainBytes: 100 * rsegLen})
	for i := 1; i <= 40; i += 4 {
		fillDelivered(t, s, clk, t0, i, i+3)
	}
	st := s.Stats()
	if st.Dropped != 0 || st.RetainedBytes != 9*rsegLen || st.RetainedBytes <= 2*rsegLen {
		t.Fatalf("Dropped %d, RetainedBytes %d; want 0 and %d (over MaxBytes %d)", st.Dropped, st.RetainedBytes, 9*rsegLen, 2*rsegLen)
	}
}

// Body files of delivered records are kept with their segment, replayed,
// kept across a restart, and cut oldest first over RetainBytes.
func TestRetainBodies(t *testing.T) {
	const bodySize = inlineMax + 1000
	// Records 1..6: the even ones are body records of bodySize+i bytes.
	fill := func(t *testing.T, s *Spool, clk *fakeClock, t0 time.Time) {
		t.Helper()
		for i := 1; i <= 6; i++ {
			clk.Advance(recTime(t0, i).Sub(clk.Now()))
			var err error
			if i%2 == 0 {
				err = s.AppendFrom(newBodyGen(uint64(i), bodySize+int64(i)), bodySize+int64(i))
			} else {
				err = s.Append(rpayload(i))
			}
			if err != nil {
				t.Fatalf("append %d: %v", i, err)
			}
		}
	}
	check := func(t *testing.T, recs []Record, first int) {
		t.Helper()
		if len(recs) != 6-first+1 {
			t.Fatalf("got %d records, want Seqs %d..6", len(recs), first)
		}
		for k, rec := range recs {
			i := first + k
			switch {
			case rec.Seq != uint64(i):
				t.Fatalf("record %d: Seq %d, want %d", k, rec.Seq, i)
			case i%2 == 0:
				checkRecordBody(t, rec, uint64(i), bodySize+int64(i))
			case !bytes.Equal(rec.Data, rpayload(i)):
				t.Fatalf("Seq %d: data %q", i, rec.Data)
			}
		}
	}
	commitAll := func(t *testing.T, s *Spool) {
		t.Helper()
		r := readerT(t, s, "a")
		recs := readUpTo(t, r, 6)
		if err := r.Commit(recs[len(recs)-1].Seq); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("kept, replayed, across restart", func(t *testing.T) {
		dir := t.TempDir()
		clk := newFakeClock()
		t0 := clk.t
		opts := Options{Dir: dir, Sinks: []string{"a"}, Durability: Durable, Clock: clk.Now, Retain: time.Hour}
		s, err := Open(opts)
		if err != nil {
			t.Fatal(err)
		}
		fill(t, s, clk, t0)
		commitAll(t, s)
		if n := len(bodyFiles(t, dir)); n != 3 {
			t.Fatalf("%d body files after delivery, want 3 kept", n)
		}
		st := s.Stats()
		if st.BodyFiles != 0 || st.Bytes != 0 || st.RetainedBytes != 3*bodySize+2+4+6 {
			t.Fatalf("Stats: BodyFiles %d Bytes %d RetainedBytes %d; want 0, 0, %d", st.BodyFiles, st.Bytes, st.RetainedBytes, 3*bodySize+12)
		}
		rr, err := s.ReplayReader(recTime(t0, 3))
		if err != nil {
			t.Fatal(err)
		}
		check(t, readUpTo(t, rr, 6), 3)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}

		s, err = Open(opts)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if n := len(bodyFiles(t, dir)); n != 3 {
			t.Fatalf("%d body files after Open, want 3 kept", n)
		}
		rr, err = s.ReplayReader(recTime(t0, 1))
		if err != nil {
			t.Fatal(err)
		}
		defer rr.Close()
		check(t, readUpTo(t, rr, 6), 1)
	})

	t.Run("RetainBytes cuts the oldest bodies", func(t *testing.T) {
		dir := t.TempDir()
		clk := newFakeClock()
		t0 := clk.t
		s := openT(t, Options{Dir: dir, Sinks: []string{"a"}, Durability: Durable, Clock: clk.Now,
			Retain: time.Hour, RetainBytes: bodySize * 3 / 2})
		fill(t, s, clk, t0)
		early, err := s.ReplayReader(time.Time{}) // before anything is deleted
		if err != nil {
			t.Fatal(err)
		}
		defer early.Close()
		got := readN(t, early, 2) // 1 and the body record 2, not opened yet
		commitAll(t, s)           // bodies of 2 and 4 go
		if _, err := got[1].Open(); !errors.Is(err, ErrReplayGone) {
			t.Fatalf("Open of a replayed record whose body was cut = %v, want ErrReplayGone", err)
		}
		if n := len(bodyFiles(t, dir)); n != 1 {
			t.Fatalf("%d body files, want 1", n)
		}
		if st := s.Stats(); st.RetainedBytes != bodySize+6 {
			t.Fatalf("RetainedBytes %d, want %d", st.RetainedBytes, bodySize+6)
		}
		if o := s.Oldest(); !o.Equal(recTime(t0, 5)) {
			t.Fatalf("Oldest %v, want record 5's time %v", o, recTime(t0, 5))
		}
		if _, err := early.Next(context.Background(), 10); !errors.Is(err, ErrReplayGone) {
			t.Fatalf("Next of a reader behind cut bodies = %v, want ErrReplayGone", err)
		}
		if _, err := s.ReplayReader(recTime(t0, 4)); !errors.Is(err, ErrReplayGone) {
			t.Fatalf("ReplayReader(record 4's time) = %v, want ErrReplayGone", err)
		}
		rr, err := s.ReplayReader(s.Oldest())
		if err != nil {
			t.Fatal(err)
		}
		defer rr.Close()
		check(t, readUpTo(t, rr, 6), 5)
	})
}
