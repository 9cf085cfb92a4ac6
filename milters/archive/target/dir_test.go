package target

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/geomilter/geomilter/milters/archive/journal"
	"github.com/geomilter/geomilter/shared/drain"
)

func TestDirWritesEmlAndJSON(t *testing.T) {
	// Over 256 KiB: the spool keeps it in a body file (Record.Open path).
	big := testMsg + strings.Repeat("0123456789abcdef\r\n", 30000)
	tests := []struct {
		name, msg string
	}{
		{"small, 7-bit", testMsg},
		{"small, 8-bit", testMsg8},
		{"large, in a body file", big},
		{"no final CRLF, bare LF kept", "Subject: x\n\nbody without end"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dead, _ := newDead(t)
			ts := newTestSpool(t)
			h := testHeader("lax-20261207T051500Z-0123456789abcdef", tt.msg)
			ts.add(t, h, tt.msg)
			ts.add(t, testHeader("lax-other", tt.msg, "vault"), tt.msg) // not for this target
			path := filepath.Join(t.TempDir(), "archive")
			tg := newTarget(t, Config{Name: "files", Type: TypeDir, Path: path}, dead)
			batch := ts.batch(t, 2)
			// Twice: a resend after a crash rewrites the same files.
			for i := 0; i < 2; i++ {
				if err := tg.Send(sendCtx(t), batch); err != nil {
					t.Fatalf("Send %d: %v", i, err)
				}
			}
			day := filepath.Join(path, "2026", "12", "07")
			ents, err := os.ReadDir(day)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
			}
			want := []string{h.ID + ".eml", h.ID + ".json"}
			if !reflect.DeepEqual(names, want) {
				t.Fatalf("%s holds %v, want %v (no temporary files, nothing for other targets)", day, names, want)
			}
			eml, err := os.ReadFile(filepath.Join(day, h.ID+".eml"))
			if err != nil {
				t.Fatal(err)
			}
			if string(eml) != tt.msg {
				t.Fatalf(".eml differs from the original: %d bytes, want %d", len(eml), len(tt.msg))
			}
			b, err := os.ReadFile(filepath.Join(day, h.ID+".json"))
			if err != nil {
				t.Fatal(err)
			}
			var got journal.Header
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatal(err)
			}
			h.Version = journal.Version
			if !reflect.DeepEqual(&got, h) {
				t.Fatalf(".json header\n%+v\nwant\n%+v", got, *h)
			}
			if !strings.Contains(string(b), "\n  \"id\": ") {
				t.Errorf(".json is not indented: %s", b)
			}
			fi, err := os.Stat(filepath.Join(day, h.ID+".eml"))
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o640 {
				t.Errorf(".eml mode %v, want 0640", fi.Mode().Perm())
			}
		})
	}
}

func TestDirDiskErrorIsTemporary(t *testing.T) {
	dead, _ := newDead(t)
	ts := newTestSpool(t)
	ts.add(t, testHeader("lax-1", testMsg), testMsg)
	// The path is a file: every write fails (as root, permissions would not).
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tg := newTarget(t, Config{Name: "files", Type: TypeDir, Path: filepath.Join(file, "archive")}, dead)
	err := tg.Send(sendCtx(t), ts.batch(t, 1))
	if err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("Send = %v, want a 'not a directory' error", err)
	}
	if st := dead.Status("files"); st.Count != 0 {
		t.Fatalf("disk error dead-lettered: %+v", st)
	}
}

func TestDirPartialBatch(t *testing.T) {
	dead, _ := newDead(t)
	ts := newTestSpool(t)
	path := t.TempDir()
	h1, h2 := testHeader("lax-1", testMsg), testHeader("lax-2", testMsg)
	h2.Time = h2.Time.AddDate(0, 0, 1) // another day's directory, made unwritable below
	ts.add(t, h1, testMsg)
	ts.add(t, h2, testMsg)
	if err := os.MkdirAll(filepath.Join(path, "2026", "12"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(path, "2026", "12", "08"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tg := newTarget(t, Config{Name: "files", Type: TypeDir, Path: path}, dead)
	err := tg.Send(sendCtx(t), ts.batch(t, 2))
	var pe *drain.PartialError
	if !errors.As(err, &pe) || pe.Done != 1 {
		t.Fatalf("Send = %#v, want a PartialError with Done 1", err)
	}
	if _, err := os.Stat(filepath.Join(path, "2026", "12", "07", "lax-1.json")); err != nil {
		t.Fatalf("first record not written: %v", err)
	}
}

func TestDirCorruptRecordIsDeadLetteredRaw(t *testing.T) {
	dead, _ := newDead(t)
	ts := newTestSpool(t)
	ts.add(t, testHeader("lax-1", testMsg), testMsg)
	ts.addRaw(t, "GMJ1 {broken json\n")
	// An id that is no file name (Encode refuses it; a record may still
	// hold one).
	js, err := json.Marshal(testHeader("../escape", testMsg))
	if err != nil {
		t.Fatal(err)
	}
	ts.addRaw(t, strings.Replace(journal.Magic+string(js)+"\n"+testMsg, `"v":0`, `"v":1`, 1))
	recs := ts.batch(t, 3)
	tg := newTarget(t, Config{Name: "files", Type: TypeDir, Path: t.TempDir()}, dead)
	if err := tg.Send(sendCtx(t), recs); err != nil {
		t.Fatalf("Send: %v", err)
	}
	checkRawDeadLetter(t, dead, "files", recs[1].Seq, "GMJ1 {broken json\n")
	b, err := os.ReadFile(filepath.Join(dead.Dir("files"), "seq-"+itoa(recs[2].Seq)+".json"))
	if err != nil {
		t.Fatal(err)
	}
	// Decode or our own check refuses it, whichever comes first.
	if !strings.Contains(string(b), "journal id") || !strings.Contains(string(b), "../escape") {
		t.Fatalf("dead letter of the bad id: %s", b)
	}
	if st := dead.Status("files"); st.Count != 2 {
		t.Fatalf("status %+v, want 2 dead letters", st)
	}
}
