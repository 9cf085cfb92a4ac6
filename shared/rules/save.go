package rules

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// SnapshotFile is the name of the saved snapshot inside its directory.
const SnapshotFile = "rules.snapshot"

// snapshotFormat is the first line's format tag; a file with another tag is
// refused rather than guessed at.
const snapshotFormat = "geomilter-rules-snapshot/1"

// savedHeader is the first line of a saved snapshot. Bytes and Checksum
// cover the body (everything after the header line), so a truncated or
// corrupted file is recognised before anything in it is used.
type savedHeader struct {
	Format   string    `json:"format"`
	SavedAt  time.Time `json:"saved_at"`
	Version  string    `json:"version"`
	Checksum string    `json:"checksum"`
	Count    int       `json:"count"`
	Bytes    int       `json:"bytes"`
}

// savedLine is one document of the body, as writeBody writes it.
type savedLine struct {
	ID  string          `json:"id"`
	Doc json.RawMessage `json:"doc"`
}

// SavedInfo describes a saved snapshot.
type SavedInfo struct {
	SavedAt  time.Time
	Version  string
	Checksum string // "sha256:…", equal to the Checksum of the Snapshot saved
	Count    int    // documents (tenants and rules) in the file
	// Skipped lists documents that were intact but invalid for this
	// version (written by a newer one); they are left out of the Set.
	Skipped []error
}

// writeBody writes the snapshot body: one JSON line {"id":…,"doc":…} per
// document (tenants and rules), ordered by id — the canonical form whose
// hash is the Snapshot's checksum. It returns the number of documents.
func writeBody(w io.Writer, set *Set) (int, error) {
	type entry struct {
		id      string
		tenant  *Tenant
		rule    *Rule
		signing *Signing
	}
	entries := make([]entry, 0, len(set.Tenants)+len(set.Rules)+len(set.Signing))
	for i := range set.Tenants {
		entries = append(entries, entry{id: set.Tenants[i].DocID(), tenant: &set.Tenants[i]})
	}
	for i := range set.Rules {
		entries = append(entries, entry{id: set.Rules[i].DocID(), rule: &set.Rules[i]})
	}
	for i := range set.Signing {
		// The key file's path, never the key: snapshots are plain files.
		entries = append(entries, entry{id: set.Signing[i].DocID(), signing: &set.Signing[i]})
	}
	slices.SortFunc(entries, func(a, b entry) int { return strings.Compare(a.id, b.id) })

	// One buffer and encoder for all lines: this runs over every rule.
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	encode := func(v any) error {
		if err := enc.Encode(v); err != nil {
			return err
		}
		buf.Truncate(buf.Len() - 1) // Encode's newline
		return nil
	}
	for _, e := range entries {
		buf.Reset()
		buf.WriteString(`{"id":`)
		if err := encode(e.id); err != nil {
			return 0, fmt.Errorf("doc %q: %w", e.id, err)
		}
		buf.WriteString(`,"doc":`)
		var err error
		if e.tenant != nil {
			err = encode(tenantToSpec(e.tenant))
		} else if e.signing != nil {
			err = encode(signingToSpec(e.signing))
		} else {
			err = encode(ruleToSpec(e.rule))
		}
		if err != nil {
			return 0, fmt.Errorf("doc %q: %w", e.id, err)
		}
		buf.WriteString("}\n")
		if _, err := w.Write(buf.Bytes()); err != nil {
			return 0, err
		}
	}
	return len(entries), nil
}

// Save writes the snapshot to dir/SnapshotFile atomically: a temporary file
// is written and fsynced, renamed over the old one, and the directory is
// fsynced, so after a crash the file is either the old or the new snapshot.
func (s *Snapshot) Save(dir string) error { return s.SaveAt(dir, time.Now()) }

// SaveAt is Save with the saving time given (for tests and callers with
// their own clock).
func (s *Snapshot) SaveAt(dir string, now time.Time) error {
	var body bytes.Buffer
	count, err := writeBody(&body, s.set)
	if err != nil {
		return fmt.Errorf("save rules snapshot: %w", err)
	}
	sum := sha256.Sum256(body.Bytes())
	hdr, err := json.Marshal(savedHeader{
		Format:   snapshotFormat,
		SavedAt:  now.UTC(),
		Version:  s.Version(),
		Checksum: "sha256:" + hex.EncodeToString(sum[:]),
		Count:    count,
		Bytes:    body.Len(),
	})
	if err != nil {
		return fmt.Errorf("save rules snapshot: %w", err)
	}
	if err := writeAtomic(dir, SnapshotFile, append(append(hdr, '\n'), body.Bytes()...)); err != nil {
		return fmt.Errorf("save rules snapshot in %s: %w", dir, err)
	}
	return nil
}

func writeAtomic(dir, name string, data []byte) (err error) {
	f, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Chmod(0o640); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync() // make the rename itself durable
}

// LoadSaved reads the snapshot saved in dir. A missing file is an error
// wrapping fs.ErrNotExist; a file that is truncated, corrupted or of an
// unknown format is an error too, and nothing of it is returned. Intact
// documents that this version finds invalid are skipped and listed in
// SavedInfo.Skipped.
func LoadSaved(dir string) (*Set, SavedInfo, error) {
	path := filepath.Join(dir, SnapshotFile)
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, SavedInfo{}, fmt.Errorf("load rules snapshot: %w", err)
	}
	set, info, err := decodeSaved(data)
	if err != nil {
		return nil, SavedInfo{}, fmt.Errorf("load rules snapshot %s: %w", path, err)
	}
	return set, info, nil
}

// ErrCorrupt is wrapped by every LoadSaved error about a damaged file (as
// opposed to a missing or unreadable one).
var ErrCorrupt = errors.New("corrupt snapshot file")

func decodeSaved(data []byte) (*Set, SavedInfo, error) {
	nl := bytes.IndexByte(data, '\n')
	if nl < 0 {
		return nil, SavedInfo{}, fmt.Errorf("%w: no header line (truncated?)", ErrCorrupt)
	}
	var h savedHeader
	if err := json.Unmarshal(data[:nl], &h); err != nil {
		return nil, SavedInfo{}, fmt.Errorf("%w: unreadable header: %v", ErrCorrupt, err)
	}
	if h.Format != snapshotFormat {
		return nil, SavedInfo{}, fmt.Errorf("%w: unknown format %q (want %q)", ErrCorrupt, h.Format, snapshotFormat)
	}
	body := data[nl+1:]
	if len(body) != h.Bytes {
		return nil, SavedInfo{}, fmt.Errorf("%w: body is %d bytes, header says %d (truncated or appended to)", ErrCorrupt, len(body), h.Bytes)
	}
	sum := sha256.Sum256(body)
	if got := "sha256:" + hex.EncodeToString(sum[:]); got != h.Checksum {
		return nil, SavedInfo{}, fmt.Errorf("%w: checksum %s does not match header %s", ErrCorrupt, got, h.Checksum)
	}
	docs := make([]Doc, 0, bytes.Count(body, []byte("\n")))
	for len(body) > 0 {
		i := bytes.IndexByte(body, '\n')
		if i < 0 {
			return nil, SavedInfo{}, fmt.Errorf("%w: last line has no newline", ErrCorrupt)
		}
		var l savedLine
		if err := json.Unmarshal(body[:i], &l); err != nil {
			return nil, SavedInfo{}, fmt.Errorf("%w: document %d: %v", ErrCorrupt, len(docs)+1, err)
		}
		docs = append(docs, Doc{ID: l.ID, Body: l.Doc})
		body = body[i+1:]
	}
	if len(docs) != h.Count {
		return nil, SavedInfo{}, fmt.Errorf("%w: %d documents, header says %d", ErrCorrupt, len(docs), h.Count)
	}
	set, skipped := SetFromDocs(docs)
	set.Version = h.Version
	return set, SavedInfo{SavedAt: h.SavedAt, Version: h.Version, Checksum: h.Checksum, Count: h.Count, Skipped: skipped}, nil
}
