package drain

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/geomilter/geomilter/shared/spool"
)

func lines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 0 && b[len(b)-1] != '\n' {
		t.Fatalf("%s does not end with a newline (torn line)", path)
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

func TestFileSinkRotation(t *testing.T) {
	// Each record is `{"event_id":"NN"}` + "\n" = 18 bytes.
	rec := func(i int) spool.Record {
		return spool.Record{Seq: uint64(i), Data: []byte(fmt.Sprintf(`{"event_id":"%02d"}`, i))}
	}
	tests := []struct {
		name     string
		maxBytes int64
		keep     int
		records  int
		want     map[string][]int // file suffix -> record numbers in it
	}{
		{"no rotation", 0, 3, 5, map[string][]int{"": {0, 1, 2, 3, 4}}},
		{"rotates at the line that would exceed", 40, 3, 5,
			map[string][]int{"": {4}, ".1": {2, 3}, ".2": {0, 1}, ".3": nil}},
		{"keeps only keep old files", 40, 1, 7,
			map[string][]int{"": {6}, ".1": {4, 5}, ".2": nil}},
		{"keep 0 drops old data", 40, 0, 5,
			map[string][]int{"": {4}, ".1": nil}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "sub", "dir", "trail.ndjson")
			s := NewFileSink("f", path, tt.maxBytes, tt.keep)
			defer s.Close()
			// Uneven batches, so rotation happens inside and between batches.
			var batch []spool.Record
			for i := 0; i < tt.records; i++ {
				batch = append(batch, rec(i))
				if len(batch) == 3 || i == tt.records-1 {
					if err := s.Send(context.Background(), batch); err != nil {
						t.Fatal(err)
					}
					batch = nil
				}
			}
			for suffix, nums := range tt.want {
				var want []string
				for _, n := range nums {
					want = append(want, string(rec(n).Data))
				}
				got := lines(t, path+suffix)
				if strings.Join(got, "|") != strings.Join(want, "|") {
					t.Errorf("%s%s = %q, want %q", filepath.Base(path), suffix, got, want)
				}
				if st, err := os.Stat(path + suffix); err == nil && tt.maxBytes > 0 && st.Size() > tt.maxBytes {
					t.Errorf("%s%s is %d bytes, over max %d", filepath.Base(path), suffix, st.Size(), tt.maxBytes)
				}
			}
		})
	}
}

func TestFileSinkReopensAfterExternalRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "trail.ndjson")
	s := NewFileSink("f", path, 0, 0)
	defer s.Close()
	send := func(id string) {
		if err := s.Send(context.Background(), []spool.Record{{Seq: 1, Data: []byte(`{"event_id":"` + id + `"}`)}}); err != nil {
			t.Fatal(err)
		}
	}
	send("a")
	if err := os.Rename(path, path+".old"); err != nil {
		t.Fatal(err)
	}
	send("b")
	if got := lines(t, path); len(got) != 1 || !strings.Contains(got[0], `"b"`) {
		t.Fatalf("new file = %q, want only b", got)
	}
	if got := lines(t, path+".old"); len(got) != 1 || !strings.Contains(got[0], `"a"`) {
		t.Fatalf("moved file = %q, want only a", got)
	}
}

func TestFileSinkUnwritableDirFails(t *testing.T) {
	dir := t.TempDir()
	blocker := filepath.Join(dir, "not-a-dir")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s := NewFileSink("f", filepath.Join(blocker, "trail.ndjson"), 0, 0)
	err := s.Send(context.Background(), []spool.Record{{Seq: 1, Data: []byte(`{}`)}})
	if err == nil {
		t.Fatal("Send under a regular file succeeded, want error (so the drainer retries)")
	}
}
