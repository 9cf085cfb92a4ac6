package rules

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func exampleSnapshot(t testing.TB) *Snapshot {
	t.Helper()
	set, err := ParseFile("../../deploy/examples/rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	set.Version = "v42"
	s, err := Compile(set)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSaveLoad(t *testing.T) {
	dir := t.TempDir()
	s := exampleSnapshot(t)
	at := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	if err := s.SaveAt(dir, at); err != nil {
		t.Fatal(err)
	}
	set, info, err := LoadSaved(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !info.SavedAt.Equal(at) || info.Checksum != s.Checksum() || info.Version != "v42" || len(info.Skipped) != 0 {
		t.Errorf("info = %+v", info)
	}
	if info.Count != len(set.Rules)+len(set.Tenants) || len(set.Rules) != s.Len() {
		t.Errorf("count %d, rules %d, snapshot %d", info.Count, len(set.Rules), s.Len())
	}
	again, err := Compile(set)
	if err != nil {
		t.Fatal(err)
	}
	if again.Checksum() != s.Checksum() || again.Version() != "v42" {
		t.Errorf("reloaded snapshot: checksum %s version %s, want %s v42", again.Checksum(), again.Version(), s.Checksum())
	}

	// Saving again replaces the file and leaves no temporary files behind.
	if err := s.Save(dir); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 || entries[0].Name() != SnapshotFile {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("directory holds %v, want only %s", names, SnapshotFile)
	}
}

func TestLoadSavedCorrupt(t *testing.T) {
	dir := t.TempDir()
	if err := exampleSnapshot(t).Save(dir); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, SnapshotFile)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	hdrEnd := bytes.IndexByte(good, '\n') + 1
	flip := func(at int) []byte {
		b := bytes.Clone(good)
		b[at] ^= 0x20
		return b
	}
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "no header line"},
		{"header only, cut", good[:hdrEnd-5], "no header line"},
		{"truncated body", good[:len(good)-10], "header says"},
		{"truncated at header end", good[:hdrEnd], "header says"},
		{"appended garbage", append(bytes.Clone(good), "{}\n"...), "header says"},
		{"flipped byte in body", flip(hdrEnd + 40), "checksum"},
		{"flipped byte in last doc", flip(len(good) - 5), "checksum"},
		{"garbled header", append([]byte("{not json\n"), good[hdrEnd:]...), "unreadable header"},
		{"other format", bytes.Replace(good, []byte(snapshotFormat), []byte("geomilter-rules-snapshot/9"), 1), "unknown format"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := os.WriteFile(path, tt.data, 0o600); err != nil {
				t.Fatal(err)
			}
			set, _, err := LoadSaved(dir)
			if err == nil {
				t.Fatalf("loaded a damaged file: %d rules", len(set.Rules))
			}
			if set != nil {
				t.Errorf("a Set was returned with the error")
			}
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %v, want ErrCorrupt containing %q", err, tt.want)
			}
		})
	}
}

// TestLoadSavedBadDocCount: a body whose lines do not match the header's
// count (consistent checksum, written by a buggy writer) is refused.
func TestLoadSavedBadDocCount(t *testing.T) {
	body := []byte(`{"id":"r","doc":{"milter":"access","scope":"global","action":"allow"}}` + "\n")
	data := savedFile(t, body, 2)
	if _, _, err := decodeSaved(data); err == nil || !strings.Contains(err.Error(), "header says 2") {
		t.Errorf("error = %v", err)
	}
}

// TestLoadSavedSkipsInvalidDocs: an intact file with a document this
// version does not understand loads the rest and reports the skipped one.
func TestLoadSavedSkipsInvalidDocs(t *testing.T) {
	body := []byte(`{"id":"new","doc":{"milter":"access","scope":"global","action":"reject","match":{"ja4":["x"]}}}` + "\n" +
		`{"id":"old","doc":{"milter":"access","scope":"global","action":"allow"}}` + "\n")
	set, info, err := decodeSaved(savedFile(t, body, 2))
	if err != nil {
		t.Fatal(err)
	}
	if len(set.Rules) != 1 || set.Rules[0].ID != "old" || len(info.Skipped) != 1 {
		t.Errorf("rules %+v skipped %v", set.Rules, info.Skipped)
	}
}

func TestLoadSavedMissing(t *testing.T) {
	_, _, err := LoadSaved(t.TempDir())
	if !errors.Is(err, fs.ErrNotExist) || errors.Is(err, ErrCorrupt) {
		t.Errorf("error = %v, want not-exist and not corrupt", err)
	}
}

func TestSaveFailsInMissingDir(t *testing.T) {
	if err := exampleSnapshot(t).Save(filepath.Join(t.TempDir(), "nope")); err == nil {
		t.Errorf("Save into a missing directory succeeded")
	}
}

// savedFile builds a snapshot file with a correct checksum around body.
func savedFile(t *testing.T, body []byte, count int) []byte {
	t.Helper()
	sum := sha256.Sum256(body)
	hdr, err := json.Marshal(savedHeader{
		Format: snapshotFormat, SavedAt: time.Now(), Checksum: "sha256:" + hex.EncodeToString(sum[:]),
		Count: count, Bytes: len(body),
	})
	if err != nil {
		t.Fatal(err)
	}
	return append(append(hdr, '\n'), body...)
}
