package spool

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"
)

// Bit rot after fsync: a record that verified when it was written no longer
// does. Next reports ErrCorrupt (with the records before it first);
// SkipCorrupt moves the sink past exactly the bad bytes and reading goes on.
func TestSkipCorruptAfterFsync(t *testing.T) {
	const n = 10
	data := func(i int) []byte { return []byte(fmt.Sprintf("rec-%03d", i)) }
	recLen := int64(recHeaderLen + len(data(0)))
	at := func(i int) int64 { return segHeaderLen + int64(i)*recLen } // offset of record i (0-based)

	cases := []struct {
		name    string
		damage  map[int64]byte // offset -> new byte
		good    int            // records delivered before the damage
		skipped int64
		after   int // first record delivered after the skip
	}{
		{"a data byte", map[int64]byte{at(4) + recHeaderLen + 2: '#'}, 4, recLen, 5},
		{"the length field", map[int64]byte{at(4) + 5: 0xff, at(4) + 6: 0xff}, 4, recLen, 5},
		{"two records in a row", map[int64]byte{at(4) + recHeaderLen: '#', at(5) + 9: 0x7f}, 4, 2 * recLen, 6},
		{"the last record", map[int64]byte{at(n-1) + recHeaderLen: '#'}, n - 1, recLen, n},
		{"the first record", map[int64]byte{at(0) + 1: 0x00}, 0, recLen, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s := openT(t, Options{Dir: dir, Sinks: []string{"site"}, Durability: Durable})
			r := readerT(t, s, "site")
			for i := 0; i < n; i++ {
				if err := s.Append(data(i)); err != nil {
					t.Fatal(err)
				}
			}
			f, err := os.OpenFile(segFiles(t, dir)[0], os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			for off, b := range tc.damage {
				if _, err := f.WriteAt([]byte{b}, off); err != nil {
					t.Fatal(err)
				}
			}
			f.Close()

			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var got []Record
			for len(got) < tc.good {
				recs, err := r.Next(ctx, n)
				if err != nil {
					t.Fatalf("Next after %d records: %v", len(got), err)
				}
				got = append(got, recs...)
			}
			if len(got) != tc.good {
				t.Fatalf("got %d records before the damage, want %d", len(got), tc.good)
			}
			if tc.good > 0 {
				if err := r.Commit(got[len(got)-1].Seq); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := r.Next(ctx, n); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Next at the damage: %v, want ErrCorrupt", err)
			}
			skipped, err := r.SkipCorrupt()
			if err != nil || skipped != tc.skipped {
				t.Fatalf("SkipCorrupt = %d, %v; want %d bytes", skipped, err, tc.skipped)
			}
			if again, err := r.SkipCorrupt(); err != nil || again != 0 {
				t.Fatalf("SkipCorrupt on a good record = %d, %v; want 0 (nothing to skip)", again, err)
			}
			// A rewind (the drainer's, after a failed send) does not meet the
			// damage again. What follows it, and what is appended later, arrives.
			r.Rewind()
			for i := n; i < n+2; i++ {
				if err := s.Append(data(i)); err != nil {
					t.Fatal(err)
				}
			}
			want := n + 2 - tc.after
			got = readN(t, r, want)
			for k, rec := range got {
				if string(rec.Data) != string(data(tc.after+k)) {
					t.Fatalf("record %d after the skip: %q, want %q", k, rec.Data, data(tc.after+k))
				}
			}
			if err := r.Commit(got[len(got)-1].Seq); err != nil {
				t.Fatal(err)
			}
			expectNone(t, r)
		})
	}
}

func TestSkipCorruptWithNothingCorrupt(t *testing.T) {
	s := openT(t, Options{Dir: t.TempDir(), Sinks: []string{"site"}, Durability: Durable})
	r := readerT(t, s, "site")
	if n, err := r.SkipCorrupt(); n != 0 || err != nil {
		t.Fatalf("empty spool: SkipCorrupt = %d, %v", n, err)
	}
	appendN(t, s, 0, 3)
	if n, err := r.SkipCorrupt(); n != 0 || err != nil {
		t.Fatalf("good records: SkipCorrupt = %d, %v", n, err)
	}
	checkRun(t, readN(t, r, 3), 1, 0)
}
