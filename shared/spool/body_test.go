package spool

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"
)

// bodyGen is an io.Reader of size deterministic bytes: the seed as 8
// little-endian bytes, then a splitmix64 stream of it. It allocates nothing,
// so tests can stream 40 MB through the spool and measure the spool alone.
type bodyGen struct {
	seed      uint64
	size, off int64
	word      uint64
	wordIdx   int64
}

func newBodyGen(seed uint64, size int64) *bodyGen {
	return &bodyGen{seed: seed, size: size, wordIdx: -1}
}

func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

func (g *bodyGen) byteAt(k int64) byte {
	if k < 8 {
		return byte(g.seed >> (8 * k))
	}
	if w := k / 8; w != g.wordIdx {
		g.word, g.wordIdx = splitmix(g.seed^uint64(w)), w
	}
	return byte(g.word >> (8 * (k % 8)))
}

func (g *bodyGen) Read(p []byte) (int, error) {
	if g.off >= g.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), g.size-g.off))
	for i := 0; i < n; i++ {
		p[i] = g.byteAt(g.off + int64(i))
	}
	g.off += int64(n)
	return n, nil
}

// equalsGen reads r to its end and checks that it yields exactly the bytes
// of newBodyGen(seed, size) and then io.EOF.
func equalsGen(r io.Reader, seed uint64, size int64) error {
	g := newBodyGen(seed, size)
	got := make([]byte, 64<<10)
	want := make([]byte, 64<<10)
	var off int64
	for {
		n, err := r.Read(got)
		if n > 0 {
			if off+int64(n) > size {
				return fmt.Errorf("more than %d bytes", size)
			}
			if _, gerr := io.ReadFull(g, want[:n]); gerr != nil {
				return gerr
			}
			if !bytes.Equal(got[:n], want[:n]) {
				return fmt.Errorf("bytes %d..%d differ", off, off+int64(n))
			}
			off += int64(n)
		}
		if errors.Is(err, io.EOF) {
			if off != size {
				return fmt.Errorf("io.EOF after %d of %d bytes", off, size)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("after %d bytes: %w", off, err)
		}
	}
}

// checkRecordBody opens rec and compares its content with the generator.
func checkRecordBody(t *testing.T, rec Record, seed uint64, size int64) {
	t.Helper()
	if rec.Size != size {
		t.Fatalf("seq %d: Size %d, want %d", rec.Seq, rec.Size, size)
	}
	if rec.InFile() != (size > inlineMax) {
		t.Fatalf("seq %d of %d bytes: InFile %v", rec.Seq, size, rec.InFile())
	}
	rc, err := rec.Open()
	if err != nil {
		t.Fatalf("seq %d: Open: %v", rec.Seq, err)
	}
	defer rc.Close()
	if err := equalsGen(rc, seed, size); err != nil {
		t.Fatalf("seq %d: content: %v", rec.Seq, err)
	}
}

func bodyFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*.body"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestAppendFromSizes(t *testing.T) {
	sizes := []struct {
		name string
		size int64
	}{
		{"empty", 0},
		{"1 byte", 1},
		{"inline limit - 1", inlineMax - 1},
		{"inline limit", inlineMax},
		{"inline limit + 1", inlineMax + 1},
		{"copy buffer x 3 - 1", 3*bodyBufLen - 1},
		{"copy buffer x 3", 3 * bodyBufLen},
		{"copy buffer x 3 + 1", 3*bodyBufLen + 1},
		{"40 MB", 40 << 20},
	}
	for _, m := range modes {
		for _, tc := range sizes {
			t.Run(m.name+"/"+tc.name, func(t *testing.T) {
				dir := t.TempDir()
				opts := Options{Dir: dir, Sinks: []string{"a", "b"}, Durability: m.d, SegmentBytes: 4096}
				s := openT(t, opts)
				appendN(t, s, 0, 1)
				if err := s.AppendFrom(newBodyGen(7, tc.size), tc.size); err != nil {
					t.Fatalf("AppendFrom: %v", err)
				}
				appendN(t, s, 1, 1)
				wantFiles := 0
				if tc.size > inlineMax {
					wantFiles = 1
				}
				if st := s.Stats(); st.BodyFiles != wantFiles || st.Bytes < tc.size {
					t.Fatalf("Stats: %d body files, %d bytes pending; want %d files, >= %d bytes", st.BodyFiles, st.Bytes, wantFiles, tc.size)
				}
				a := readerT(t, s, "a")
				recs := readN(t, a, 3)
				checkRun(t, recs[:1], 1, 0)
				checkRecordBody(t, recs[1], 7, tc.size)
				checkRun(t, recs[2:], 3, 1)

				// A restart keeps it for both sinks; once both have
				// committed it, its body file is gone.
				if err := a.Commit(3); err != nil {
					t.Fatal(err)
				}
				if err := s.Close(); err != nil {
					t.Fatal(err)
				}
				s = openT(t, opts)
				if n := len(bodyFiles(t, dir)); n != wantFiles {
					t.Fatalf("%d body files after reopen, want %d (sink b has not read it)", n, wantFiles)
				}
				b := readerT(t, s, "b")
				recs = readN(t, b, 3)
				checkRecordBody(t, recs[1], 7, tc.size)
				if err := b.Commit(3); err != nil {
					t.Fatal(err)
				}
				if n := len(bodyFiles(t, dir)); n != 0 {
					t.Fatalf("%d body files after every sink committed, want 0", n)
				}
				if st := s.Stats(); st.Bytes != 0 || st.BodyBytes != 0 || st.BodyFiles != 0 {
					t.Fatalf("Stats after every sink committed: %+v", st)
				}
			})
		}
	}
}

// The point of body files: a 40 MB record goes in and comes out through
// fixed buffers. TotalAlloc counts every allocation, freed or not.
func TestAppendFromMemoryFlat(t *testing.T) {
	const size = 40 << 20
	s := openT(t, Options{Dir: t.TempDir(), Sinks: []string{"a"}, Durability: Durable})
	r := readerT(t, s, "a")
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	if err := s.AppendFrom(newBodyGen(1, size), size); err != nil {
		t.Fatal(err)
	}
	recs := readN(t, r, 1)
	rc, err := recs[0].Open()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{rc}, buf)
	rc.Close()
	if err != nil || n != size {
		t.Fatalf("read back %d bytes, %v", n, err)
	}
	runtime.ReadMemStats(&after)
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 4<<20 {
		t.Fatalf("writing and reading a 40 MB record allocated %d bytes, want < 4 MiB", grew)
	}
	t.Logf("allocated %d KiB for a 40 MiB record in and out", (after.TotalAlloc-before.TotalAlloc)>>10)
}

// failReader yields n bytes, then err (io.EOF: a short record).
type failReader struct {
	n   int64
	err error
}

func (f *failReader) Read(p []byte) (int, error) {
	if f.n == 0 {
		return 0, f.err
	}
	k := min(int64(len(p)), f.n)
	clear(p[:k])
	f.n -= k
	return int(k), nil
}

func TestAppendFromReadFailureLeavesNothing(t *testing.T) {
	boom := errors.New("client went away")
	tests := []struct {
		name string
		size int64
		r    failReader // yields r.n bytes then r.err
		want error
	}{
		{"short inline", 100, failReader{50, io.EOF}, io.ErrUnexpectedEOF},
		{"error inline", 100, failReader{50, boom}, boom},
		{"empty inline", 100, failReader{0, io.EOF}, io.ErrUnexpectedEOF},
		{"short body", 2 << 20, failReader{1 << 20, io.EOF}, io.ErrUnexpectedEOF},
		{"empty body", 2 << 20, failReader{0, io.EOF}, io.ErrUnexpectedEOF},
		{"error in body", 2 << 20, failReader{bodyBufLen + 1, boom}, boom},
		{"error at the last byte", 2 << 20, failReader{2<<20 - 1, boom}, boom},
	}
	for _, m := range modes {
		for _, tc := range tests {
			t.Run(m.name+"/"+tc.name, func(t *testing.T) {
				dir := t.TempDir()
				s := openT(t, Options{Dir: dir, Sinks: []string{"a"}, Durability: m.d})
				fr := tc.r
				if err := s.AppendFrom(&fr, tc.size); !errors.Is(err, tc.want) {
					t.Fatalf("AppendFrom = %v, want %v", err, tc.want)
				}
				if n := len(bodyFiles(t, dir)); n != 0 {
					t.Fatalf("%d body files left", n)
				}
				if st := s.Stats(); st.Bytes != 0 || st.LastSeq != 0 {
					t.Fatalf("after a failed AppendFrom: %d bytes pending, LastSeq %d; want 0, 0", st.Bytes, st.LastSeq)
				}
				appendN(t, s, 0, 1)
				checkRun(t, readN(t, readerT(t, s, "a"), 1), 1, 0)
			})
		}
	}
	s := openT(t, Options{Dir: t.TempDir()})
	if err := s.AppendFrom(bytes.NewReader(nil), -1); err == nil {
		t.Fatal("AppendFrom with a negative size succeeded")
	}
}

// untouchable fails the test if the spool reads it: a refused record must
// be refused before its content is consumed.
type untouchable struct{ t *testing.T }

func (u untouchable) Read([]byte) (int, error) {
	u.t.Error("the spool read a record it refused")
	return 0, io.EOF
}

func TestAppendFromByteBound(t *testing.T) {
	const maxBytes = 4 << 20
	dir := t.TempDir()
	s := openT(t, Options{Dir: dir, Sinks: []string{"a"}, Durability: Durable, MaxBytes: maxBytes})
	r := readerT(t, s, "a")
	if err := s.AppendFrom(untouchable{t}, maxBytes); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("AppendFrom of MaxBytes bytes = %v, want ErrTooLarge (its header does not fit)", err)
	}
	tiny := openT(t, Options{Dir: t.TempDir(), Sinks: []string{"a"}, MaxBytes: 1000})
	if err := tiny.AppendFrom(untouchable{t}, 1000); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("AppendFrom of an inline record over MaxBytes = %v, want ErrTooLarge", err)
	}
	if err := s.AppendFrom(newBodyGen(1, 3<<20), 3<<20); err != nil {
		t.Fatal(err)
	}
	if err := s.AppendFrom(untouchable{t}, 1<<20); !errors.Is(err, ErrFull) {
		t.Fatalf("AppendFrom past MaxBytes = %v, want ErrFull", err)
	}
	// The body counts for small records too.
	small := make([]byte, 1<<20-60)
	if err := s.Append(small); !errors.Is(err, ErrFull) {
		t.Fatalf("Append past MaxBytes = %v, want ErrFull", err)
	}
	if st := s.Stats(); st.Dropped != 3 || st.LastSeq != 1 || st.BodyFiles != 1 || st.Bytes > maxBytes {
		t.Fatalf("Stats %+v: want 3 dropped, 1 record, 1 body file, Bytes <= %d", st, maxBytes)
	}
	recs := readN(t, r, 1)
	checkRecordBody(t, recs[0], 1, 3<<20)
	if err := r.Commit(1); err != nil {
		t.Fatal(err)
	}
	if err := s.AppendFrom(newBodyGen(2, 3<<20), 3<<20); err != nil {
		t.Fatalf("AppendFrom after the sink caught up: %v", err)
	}
	checkRecordBody(t, readN(t, r, 1)[0], 2, 3<<20)
}

// blockingReader yields first bytes, signals started, then waits for release.
type blockingReader struct {
	first   int64
	started chan struct{}
	release chan struct{}
	rest    io.Reader
}

func (b *blockingReader) Read(p []byte) (int, error) {
	if b.first > 0 {
		k := min(int64(len(p)), b.first)
		clear(p[:k])
		b.first -= k
		if b.first == 0 {
			close(b.started)
		}
		return int(k), nil
	}
	<-b.release
	return b.rest.Read(p)
}

// While one session's big record is still arriving, other sessions' small
// Durable appends complete, become visible and count against MaxBytes with
// the big record's reserved space.
func TestAppendFromDoesNotBlockSmallAppends(t *testing.T) {
	const size = 3 << 20
	dir := t.TempDir()
	s := openT(t, Options{Dir: dir, Sinks: []string{"a"}, Durability: Durable, MaxBytes: size + 64<<10})
	r := readerT(t, s, "a")
	br := &blockingReader{first: 1 << 20, started: make(chan struct{}), release: make(chan struct{}),
		rest: bytes.NewReader(make([]byte, size-1<<20))}
	done := make(chan error, 1)
	go func() { done <- s.AppendFrom(br, size) }()
	<-br.started
	appendN(t, s, 0, 50)
	checkRun(t, readN(t, r, 50), 1, 0)
	if err := s.Append(make([]byte, 64<<10)); !errors.Is(err, ErrFull) {
		t.Fatalf("Append into the space reserved by the big record = %v, want ErrFull", err)
	}
	close(br.release)
	if err := <-done; err != nil {
		t.Fatalf("AppendFrom: %v", err)
	}
	recs := readN(t, r, 1)
	if recs[0].Seq != 51 || recs[0].Size != size || !recs[0].InFile() {
		t.Fatalf("big record: seq %d size %d; want seq 51 (it takes its Seq when complete), %d bytes", recs[0].Seq, recs[0].Size, size)
	}
	rc, err := recs[0].Open()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if n, err := io.Copy(io.Discard, rc); n != size || err != nil {
		t.Fatalf("read %d bytes, %v", n, err)
	}
}

// Big and small records from concurrent goroutines: every one arrives
// whole, in each writer's order, with contiguous Seqs.
func TestAppendFromConcurrentMixed(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			dir := t.TempDir()
			s := openT(t, Options{Dir: dir, Sinks: []string{"a"}, Durability: m.d, SegmentBytes: 8192})
			const writers, each = 6, 8
			sizeOf := func(seed uint64) int64 { return inlineMax - 5 + int64(splitmix(seed)%(2<<20)) }
			var wg sync.WaitGroup
			for w := 0; w < writers; w++ {
				wg.Add(1)
				go func(w int) {
					defer wg.Done()
					for i := 0; i < each; i++ {
						var err error
						if w%2 == 0 {
							seed := uint64(w)<<32 | uint64(i)
							err = s.AppendFrom(newBodyGen(seed, sizeOf(seed)), sizeOf(seed))
						} else {
							err = s.Append([]byte(fmt.Sprintf("w%d-%d", w, i)))
						}
						if err != nil {
							t.Errorf("writer %d record %d: %v", w, i, err)
							return
						}
					}
				}(w)
			}
			wg.Wait()
			recs := readN(t, readerT(t, s, "a"), writers*each)
			next := make([]int, writers)
			for k, rec := range recs {
				if rec.Seq != uint64(k+1) {
					t.Fatalf("record %d has seq %d", k, rec.Seq)
				}
				var w, i int
				if rec.Size < 100 {
					if _, err := fmt.Sscanf(string(rec.Data), "w%d-%d", &w, &i); err != nil {
						t.Fatalf("seq %d: %q", rec.Seq, rec.Data)
					}
				} else {
					rc, err := rec.Open()
					if err != nil {
						t.Fatal(err)
					}
					var seed [8]byte
					_, err = io.ReadFull(rc, seed[:])
					rc.Close()
					if err != nil {
						t.Fatal(err)
					}
					sd := binary.LittleEndian.Uint64(seed[:])
					w, i = int(sd>>32), int(uint32(sd))
					checkRecordBody(t, rec, sd, sizeOf(sd))
				}
				if w >= writers || i != next[w] {
					t.Fatalf("seq %d is writer %d record %d, want record %d", rec.Seq, w, i, next[min(w, writers-1)])
				}
				next[w]++
			}
		})
	}
}

// A crash can cut the record of a body file anywhere (and leave a body file
// with no record at all): Open drops the torn record like any other, deletes
// the file nobody refers to, and numbering goes on after the last whole
// record.
func TestBodyRecordTornTail(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, Sinks: []string{"a"}, Durability: Durable}
	s := openT(t, opts)
	appendN(t, s, 0, 3)
	const size = inlineMax + 1000
	if err := s.AppendFrom(newBodyGen(9, size), size); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	seg := segFiles(t, dir)[0]
	orig, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	bodies := bodyFiles(t, dir)
	if len(bodies) != 1 {
		t.Fatalf("%d body files, want 1", len(bodies))
	}
	body, err := os.ReadFile(bodies[0])
	if err != nil {
		t.Fatal(err)
	}
	cursor, err := os.ReadFile(filepath.Join(dir, "a.cursor"))
	if err != nil {
		t.Fatal(err)
	}
	start := len(orig) - (recHeaderLen + bodyRefLen)

	check := func(t *testing.T, segBytes []byte, bodyLen int, wantBody bool, wantCorrupt int64) {
		t.Helper()
		for path, b := range map[string][]byte{seg: segBytes, bodies[0]: body[:bodyLen], filepath.Join(dir, "a.cursor"): cursor} {
			if err := os.WriteFile(path, b, 0o640); err != nil {
				t.Fatal(err)
			}
		}
		s, err := Open(opts)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		defer s.Close()
		want := uint64(3)
		if wantBody {
			want = 4
		}
		if st := s.Stats(); st.LastSeq != want || st.CorruptBytes != wantCorrupt {
			t.Fatalf("LastSeq %d, CorruptBytes %d; want %d, %d", st.LastSeq, st.CorruptBytes, want, wantCorrupt)
		}
		if n := len(bodyFiles(t, dir)); (n == 1) != wantBody {
			t.Fatalf("%d body files after Open; want the file kept only if its record is", n)
		}
		if err := s.Append([]byte("after")); err != nil {
			t.Fatal(err)
		}
		recs := readN(t, readerT(t, s, "a"), int(want)+1)
		checkRun(t, recs[:3], 1, 0)
		if wantBody {
			checkRecordBody(t, recs[3], 9, size)
		}
		if last := recs[want]; last.Seq != want+1 || string(last.Data) != "after" {
			t.Fatalf("record after recovery: seq %d %q, want seq %d \"after\"", last.Seq, last.Data, want+1)
		}
	}
	t.Run("record truncated", func(t *testing.T) {
		for k := start; k < len(orig); k++ {
			check(t, orig[:k], len(body), false, int64(k-start))
		}
	})
	t.Run("record byte flipped", func(t *testing.T) {
		for k := start; k < len(orig); k++ {
			b := bytes.Clone(orig)
			b[k] ^= 0x41
			check(t, b, len(body), false, int64(len(orig)-start))
		}
	})
	t.Run("partial body file without its record", func(t *testing.T) {
		for _, n := range []int{0, 1, bodyBufLen - 1, bodyBufLen, len(body) - 1, len(body)} {
			check(t, orig[:start], n, false, 0)
		}
	})
	t.Run("intact", func(t *testing.T) {
		check(t, orig, len(body), true, 0)
	})
}

// Damage to a body file after its record was written (it cannot come from a
// crash: the file is fsynced first): a missing or resized file makes Next
// report ErrCorrupt at the record and SkipCorrupt steps over exactly that
// record; a changed byte is caught by the CRC-32C as the content is read.
func TestBodyFileDamage(t *testing.T) {
	const size = inlineMax + 5000
	tests := []struct {
		name   string
		damage func(path string) error
		atNext bool // Next reports it; otherwise Read does
	}{
		{"missing", os.Remove, true},
		{"truncated by one byte", func(p string) error { return os.Truncate(p, size-1) }, true},
		{"truncated to half", func(p string) error { return os.Truncate(p, size/2) }, true},
		{"one byte longer", func(p string) error { return os.Truncate(p, size+1) }, true},
		{"a byte changed", func(p string) error {
			f, err := os.OpenFile(p, os.O_RDWR, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = f.WriteAt([]byte{0xff}, size-10)
			return err
		}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s := openT(t, Options{Dir: dir, Sinks: []string{"a"}, Durability: Durable})
			r := readerT(t, s, "a")
			appendN(t, s, 0, 1)
			if err := s.AppendFrom(newBodyGen(3, size), size); err != nil {
				t.Fatal(err)
			}
			appendN(t, s, 1, 1)
			if err := tc.damage(bodyFiles(t, dir)[0]); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			recs, err := r.Next(ctx, 10)
			if err != nil {
				t.Fatal(err)
			}
			if !tc.atNext {
				if len(recs) != 3 {
					t.Fatalf("Next = %d records, want 3", len(recs))
				}
				rc, err := recs[1].Open()
				if err != nil {
					t.Fatal(err)
				}
				defer rc.Close()
				if _, err := io.Copy(io.Discard, rc); !errors.Is(err, ErrCorrupt) {
					t.Fatalf("reading a changed body: %v, want ErrCorrupt", err)
				}
				return
			}
			checkRun(t, recs, 1, 0)
			if _, err := r.Next(ctx, 10); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Next at the damaged body = %v, want ErrCorrupt", err)
			}
			if n, err := r.SkipCorrupt(); err != nil || n != recHeaderLen+bodyRefLen {
				t.Fatalf("SkipCorrupt = %d, %v; want %d (its record)", n, err, recHeaderLen+bodyRefLen)
			}
			recs = readN(t, r, 1)
			checkRun(t, recs, 3, 1)
			if err := r.Commit(3); err != nil {
				t.Fatal(err)
			}
			if n := len(bodyFiles(t, dir)); n != 0 {
				t.Fatalf("%d body files after the sink passed the record, want 0", n)
			}
		})
	}
}
