package target

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"

	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/milters/archive/journal"
	"github.com/geomilter/geomilter/shared/spool"
)

// DirTarget writes each record as <path>/<YYYY>/<MM>/<DD>/<ID>.eml (the
// original message, byte for byte) and <ID>.json (the journal header,
// envelope included), dated by the journal time in UTC. Both are written
// atomically, the .json last: a .json means a complete pair. Writing the
// same record again rewrites the same two files with the same bytes, so a
// resend after a crash is harmless. Every disk error is temporary.
type DirTarget struct {
	name string
	path string
	dead *DeadLetters
	log  zerolog.Logger
	fw   fileWriter
}

func newDir(c Config, dead *DeadLetters, log zerolog.Logger) *DirTarget {
	return &DirTarget{name: c.Name, path: c.Path, dead: dead, log: log}
}

// Name implements drain.Sink.
func (t *DirTarget) Name() string { return t.name }

// Close implements drain.Sink.
func (t *DirTarget) Close() error { return nil }

// Send implements drain.Sink.
func (t *DirTarget) Send(ctx context.Context, batch []spool.Record) error {
	return sendEach(ctx, t.name, batch, t.dead, t.one)
}

func (t *DirTarget) one(_ context.Context, rec spool.Record) error {
	return forTarget(t.name, rec, t.write)
}

func (t *DirTarget) write(h *journal.Header, msg io.Reader) error {
	day := h.Time.UTC()
	dir := filepath.Join(t.path, day.Format("2006"), day.Format("01"), day.Format("02"))
	src := &srcReader{r: msg}
	err := t.fw.write(dir, h.ID+".eml", func(w io.Writer) error {
		_, err := io.Copy(w, src)
		return err
	})
	if err != nil {
		if src.err != nil {
			return fmt.Errorf("record %s: %w", h.ID, src.err)
		}
		return fmt.Errorf("record %s: %w", h.ID, err)
	}
	err = t.fw.write(dir, h.ID+".json", func(w io.Writer) error {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(h)
	})
	if err != nil {
		return fmt.Errorf("record %s: %w", h.ID, err)
	}
	return nil
}
