package spool

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Environment of the child process of TestCrashKill.
const (
	childEnvDir   = "GEOMILTER_SPOOL_CRASH_DIR"
	childEnvMode  = "GEOMILTER_SPOOL_CRASH_MODE"
	childEnvRound = "GEOMILTER_SPOOL_CRASH_ROUND"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(childEnvDir); dir != "" {
		os.Exit(crashChild(dir))
	}
	os.Exit(m.Run())
}

// crashPayload is what round appends as its i-th record: self-describing so
// that the parent can check every byte.
func crashPayload(round, i int) []byte {
	return []byte(fmt.Sprintf("r=%d i=%d |%s|", round, i, strings.Repeat(string(rune('a'+i%26)), i%300)))
}

func parseCrashPayload(b []byte) (round, i int, ok bool) {
	if _, err := fmt.Sscanf(string(b), "r=%d i=%d |", &round, &i); err != nil {
		return 0, 0, false
	}
	return round, i, bytes.Equal(b, crashPayload(round, i))
}

// crashSeed identifies the i-th record of a round when it is a body.
func crashSeed(round, i int) uint64 { return uint64(round)<<32 | uint64(i) }

// crashBodySize is between just over the inline limit and 4 MiB.
func crashBodySize(seed uint64) int64 { return inlineMax + 1 + int64(splitmix(seed)%(4<<20-inlineMax)) }

// crashChild appends until it is killed. In the body- modes every third
// record is a body file record (AppendFrom) of up to 4 MiB. After each record it knows to be
// durable it prints the record's index on stdout: in Durable mode after
// Append returns, in GroupCommit mode after a Sync.
func crashChild(dir string) int {
	round, _ := strconv.Atoi(os.Getenv(childEnvRound))
	mode := GroupCommit
	if m := os.Getenv(childEnvMode); m == "durable" || m == "body-durable" {
		mode = Durable
	}
	s, err := Open(Options{Dir: dir, Sinks: []string{"s"}, Durability: mode, SegmentBytes: 16 << 10, SyncEvery: 2 * time.Millisecond})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	bodies := strings.HasPrefix(os.Getenv(childEnvMode), "body-")
	for i := 0; ; i++ {
		var err error
		if seed := crashSeed(round, i); bodies && i%3 == 1 {
			err = s.AppendFrom(newBodyGen(seed, crashBodySize(seed)), crashBodySize(seed))
		} else {
			err = s.Append(crashPayload(round, i))
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		durable := mode == Durable
		if !durable && (i%20 == 19 || bodies && i%3 == 1) {
			if err := s.Sync(); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 2
			}
			durable = true
		}
		if durable {
			fmt.Fprintf(os.Stdout, "%d\n", i)
		}
	}
}

// TestCrashKill SIGKILLs a child process appending in a loop, several times
// on the same directory, and checks after each kill that the spool holds a
// contiguous, valid prefix of what each round appended, including every
// record the child was told was durable, with Seqs contiguous across rounds.
func TestCrashKill(t *testing.T) {
	dir := t.TempDir()
	rounds := []string{"durable", "group", "durable", "group", "durable"}
	reported := make([]int, len(rounds)) // highest index reported durable per round
	for round, mode := range rounds {
		killAfter := 30 + 40*round // lines read before the kill
		// A random little while after the last line read, so that the kill
		// lands anywhere in an append.
		reported[round] = runAndKill(t, dir, mode, round, killAfter, 3*time.Millisecond)

		s, err := Open(Options{Dir: dir, Sinks: []string{"s"}})
		if err != nil {
			t.Fatalf("round %d: Open after kill: %v", round, err)
		}
		recs := readN(t, readerT(t, s, "s"), int(s.Stats().LastSeq))
		next := make([]int, len(rounds)) // next index expected per round
		lastRound := 0
		for k, rec := range recs {
			if rec.Seq != uint64(k+1) {
				t.Fatalf("round %d: record %d has seq %d, want %d", round, k, rec.Seq, k+1)
			}
			r, i, ok := parseCrashPayload(rec.Data)
			if !ok || r > round || r < lastRound || i != next[r] {
				t.Fatalf("round %d: seq %d holds %q: want round %d..%d index %d", round, rec.Seq, rec.Data, lastRound, round, next[lastRound])
			}
			lastRound = r
			next[r]++
		}
		for r := 0; r <= round; r++ {
			if next[r] <= reported[r] {
				t.Fatalf("round %d: round %d has records 0..%d, but %d was reported durable", round, r, next[r]-1, reported[r])
			}
		}
		t.Logf("round %d (%s): %d records on disk, %d reported durable, %d corrupt bytes cut",
			round, mode, next[round], reported[round]+1, s.Stats().CorruptBytes)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestTornTail damages the final record of the last segment at every byte
// offset (truncation, and a flipped byte) and checks that Open keeps every
// earlier record, drops the damaged one, and continues the Seq after the
// last valid record.
func TestTornTail(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, Sinks: []string{"a"}, Durability: Durable}
	s := openT(t, opts)
	const n = 5
	for i := 0; i < n; i++ {
		if err := s.Append(bytes.Repeat([]byte{byte('A' + i)}, 200)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	segs := segFiles(t, dir)
	if len(segs) != 1 {
		t.Fatalf("%d segments, want 1", len(segs))
	}
	orig, err := os.ReadFile(segs[0])
	if err != nil {
		t.Fatal(err)
	}
	cursor, err := os.ReadFile(filepath.Join(dir, "a.cursor"))
	if err != nil {
		t.Fatal(err)
	}
	start := len(orig) - (recHeaderLen + 200)

	check := func(t *testing.T, seg []byte, wantRecs int, wantCorrupt int64) {
		t.Helper()
		if err := os.WriteFile(segs[0], seg, 0o640); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "a.cursor"), cursor, 0o640); err != nil {
			t.Fatal(err)
		}
		s, err := Open(opts)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		defer s.Close()
		st := s.Stats()
		if st.LastSeq != uint64(wantRecs) || st.CorruptBytes != wantCorrupt {
			t.Fatalf("LastSeq %d, CorruptBytes %d; want %d, %d", st.LastSeq, st.CorruptBytes, wantRecs, wantCorrupt)
		}
		if err := s.Append([]byte("after")); err != nil {
			t.Fatal(err)
		}
		r := readerT(t, s, "a")
		recs := readN(t, r, wantRecs+1)
		for k, rec := range recs[:wantRecs] {
			if rec.Seq != uint64(k+1) || !bytes.Equal(rec.Data, bytes.Repeat([]byte{byte('A' + k)}, 200)) {
				t.Fatalf("record %d: seq %d data %.20q...", k, rec.Seq, rec.Data)
			}
		}
		if last := recs[wantRecs]; last.Seq != uint64(wantRecs+1) || string(last.Data) != "after" {
			t.Fatalf("record appended after recovery: seq %d %q, want seq %d \"after\"", last.Seq, last.Data, wantRecs+1)
		}
	}

	t.Run("truncated", func(t *testing.T) {
		for k := start; k < len(orig); k++ {
			check(t, orig[:k], n-1, int64(k-start))
		}
	})
	t.Run("flipped byte", func(t *testing.T) {
		for k := start; k < len(orig); k++ {
			b := bytes.Clone(orig)
			b[k] ^= 0x41
			check(t, b, n-1, int64(len(orig)-start))
		}
	})
	t.Run("garbage after the last record", func(t *testing.T) {
		tail := orig[start:]
		dup := bytes.Clone(tail) // a valid record, but its Seq repeats
		rnd := make([]byte, 300)
		rand.New(rand.NewSource(1)).Read(rnd)
		for name, g := range map[string][]byte{"zeros": make([]byte, 4096), "random": rnd, "repeated record": dup} {
			t.Run(name, func(t *testing.T) {
				check(t, append(bytes.Clone(orig), g...), n, int64(len(g)))
			})
		}
	})
	t.Run("torn header of a new segment", func(t *testing.T) {
		next := segPath(dir, n+1)
		for k := 0; k < segHeaderLen; k++ {
			if err := os.WriteFile(next, encodeSegHeader(n + 1)[:k], 0o640); err != nil {
				t.Fatal(err)
			}
			check(t, orig, n, int64(k))
			if err := os.Remove(next); err != nil && !os.IsNotExist(err) {
				t.Fatal(err)
			}
		}
	})
}

// TestCrashKillBodies is TestCrashKill with every third record streamed into
// a body file of up to 4 MiB, so that most kills land in the middle of one:
// the spool then holds a contiguous prefix of each round whose records (body
// content included) are whole, everything reported durable, and exactly
// the body files its records refer to.
func TestCrashKillBodies(t *testing.T) {
	dir := t.TempDir()
	rounds := []string{"body-durable", "body-group", "body-durable", "body-group", "body-durable", "body-durable"}
	reported := make([]int, len(rounds))
	for round, mode := range rounds {
		killAfter := 3 + 2*round
		// A body of up to 4 MiB takes milliseconds to copy and fsync: a
		// random delay of up to 30 ms lands anywhere in one.
		reported[round] = runAndKill(t, dir, mode, round, killAfter, 30*time.Millisecond)

		filesAtKill := len(bodyFiles(t, dir))
		s, err := Open(Options{Dir: dir, Sinks: []string{"s"}})
		if err != nil {
			t.Fatalf("round %d: Open after kill: %v", round, err)
		}
		recs := readN(t, readerT(t, s, "s"), int(s.Stats().LastSeq))
		next := make([]int, len(rounds))
		lastRound, inFile := 0, 0
		for k, rec := range recs {
			if rec.Seq != uint64(k+1) {
				t.Fatalf("round %d: record %d has seq %d, want %d", round, k, rec.Seq, k+1)
			}
			var r, i int
			if rec.InFile() {
				inFile++
				rc, err := rec.Open()
				if err != nil {
					t.Fatalf("round %d: seq %d: %v", round, rec.Seq, err)
				}
				var b [8]byte
				_, err = io.ReadFull(rc, b[:])
				rc.Close()
				if err != nil {
					t.Fatalf("round %d: seq %d: %v", round, rec.Seq, err)
				}
				seed := binary.LittleEndian.Uint64(b[:])
				r, i = int(seed>>32), int(uint32(seed))
				checkRecordBody(t, rec, seed, crashBodySize(seed))
			} else {
				var ok bool
				if r, i, ok = parseCrashPayload(rec.Data); !ok {
					t.Fatalf("round %d: seq %d holds %.40q", round, rec.Seq, rec.Data)
				}
			}
			if r > round || r < lastRound || i != next[r] || rec.InFile() != (i%3 == 1) {
				t.Fatalf("round %d: seq %d is round %d index %d (in a file: %v): want round %d..%d index %d",
					round, rec.Seq, r, i, rec.InFile(), lastRound, round, next[lastRound])
			}
			lastRound = r
			next[r]++
		}
		for r := 0; r <= round; r++ {
			if next[r] <= reported[r] {
				t.Fatalf("round %d: round %d has records 0..%d, but %d was reported durable", round, r, next[r]-1, reported[r])
			}
		}
		if n := len(bodyFiles(t, dir)); n != inFile {
			t.Fatalf("round %d: %d body files on disk for %d records in files", round, n, inFile)
		}
		t.Logf("round %d (%s): %d records on disk, %d reported durable, %d corrupt bytes cut, %d body files, %d partial ones removed",
			round, mode, next[round], reported[round]+1, s.Stats().CorruptBytes, inFile, filesAtKill-inFile)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// runAndKill runs the child appender (mode, round) on dir, reads the
// indexes it reports durable, SIGKILLs it a random moment of up to maxDelay
// after the killAfter-th, and returns the highest index reported (-1: none).
func runAndKill(t *testing.T, dir, mode string, round, killAfter int, maxDelay time.Duration) int {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnvDir+"="+dir, childEnvMode+"="+mode, childEnvRound+"="+strconv.Itoa(round))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	reported := -1
	sc := bufio.NewScanner(out)
	lines := 0
	for sc.Scan() {
		i, err := strconv.Atoi(sc.Text())
		if err != nil {
			t.Fatalf("round %d: child printed %q", round, sc.Text())
		}
		reported = i
		if lines++; lines == killAfter {
			time.Sleep(time.Duration(rand.Int63n(int64(maxDelay))))
			if err := cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
		}
	}
	err = cmd.Wait()
	if lines < killAfter {
		t.Fatalf("round %d: child exited after %d lines: %v\n%s", round, lines, err, stderr.String())
	}
	return reported
}
