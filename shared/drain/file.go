package drain

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/geomilter/geomilter/shared/spool"
)

// FileSink appends records as NDJSON lines to a local file, fsyncing each
// batch, and rotates it by size (path.1 is the newest old file, path.<keep>
// the oldest). A file moved away by an external rotator (logrotate) is noticed
// and a new one is started.
type FileSink struct {
	name     string
	path     string
	maxBytes int64
	keep     int

	mu   sync.Mutex
	f    *os.File
	size int64
}

// NewFileSink returns a sink appending to path. maxBytes <= 0 disables
// rotation; keep is how many rotated files are kept (0 = none). The parent
// directory is created on first use; opening errors surface as Send errors
// and are retried like any other sink failure.
func NewFileSink(name, path string, maxBytes int64, keep int) *FileSink {
	if keep < 0 {
		keep = 0
	}
	return &FileSink{name: name, path: path, maxBytes: maxBytes, keep: keep}
}

// Name implements Sink.
func (s *FileSink) Name() string { return s.name }

// Close implements Sink.
func (s *FileSink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	s.f = nil
	if err != nil {
		return fmt.Errorf("file sink %s: close: %w", s.name, err)
	}
	return nil
}

// Send implements Sink. Records go to the current file until the next line
// would take it past maxBytes; then the file is rotated (a single line longer
// than maxBytes still gets a file of its own).
func (s *FileSink) Send(ctx context.Context, batch []spool.Record) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("file sink %s: %w", s.name, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.open(); err != nil {
		return err
	}
	var buf bytes.Buffer
	for _, r := range batch {
		line := int64(len(r.Data) + 1)
		if s.maxBytes > 0 && s.size+int64(buf.Len()) > 0 && s.size+int64(buf.Len())+line > s.maxBytes {
			if err := s.write(buf.Bytes()); err != nil {
				return err
			}
			buf.Reset()
			if err := s.rotate(); err != nil {
				return err
			}
		}
		start := buf.Len()
		buf.Write(r.Data)
		b := buf.Bytes()[start:]
		for i := range b {
			if b[i] == '\n' || b[i] == '\r' {
				b[i] = ' '
			}
		}
		buf.WriteByte('\n')
	}
	return s.write(buf.Bytes())
}

// open (re)opens the file if it is not open or was moved away.
func (s *FileSink) open() error {
	if s.f != nil {
		cur, err1 := s.f.Stat()
		onDisk, err2 := os.Stat(s.path)
		if err1 == nil && err2 == nil && os.SameFile(cur, onDisk) {
			return nil
		}
		_ = s.f.Close()
		s.f = nil
	}
	if err := os.MkdirAll(filepath.Dir(s.path), 0o750); err != nil {
		return fmt.Errorf("file sink %s: %w", s.name, err)
	}
	f, err := os.OpenFile(s.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return fmt.Errorf("file sink %s: %w", s.name, err)
	}
	st, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return fmt.Errorf("file sink %s: %w", s.name, err)
	}
	s.f, s.size = f, st.Size()
	return nil
}

// write appends b and fsyncs. On failure the file is cut back to its previous
// length so that a retried batch never leaves a torn line behind.
func (s *FileSink) write(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	n, err := s.f.Write(b)
	if err == nil {
		err = s.f.Sync()
	}
	if err != nil {
		if n > 0 {
			_ = s.f.Truncate(s.size)
		}
		return fmt.Errorf("file sink %s: write %s: %w", s.name, s.path, err)
	}
	s.size += int64(n)
	return nil
}

// rotate shifts path.N to path.N+1 (dropping path.keep), path to path.1, and
// opens a fresh path.
func (s *FileSink) rotate() error {
	if err := s.f.Close(); err != nil {
		s.f = nil
		return fmt.Errorf("file sink %s: close for rotation: %w", s.name, err)
	}
	s.f = nil
	numbered := func(i int) string { return s.path + "." + strconv.Itoa(i) }
	if s.keep == 0 {
		if err := os.Remove(s.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("file sink %s: rotate: %w", s.name, err)
		}
	} else {
		if err := os.Remove(numbered(s.keep)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("file sink %s: rotate: %w", s.name, err)
		}
		for i := s.keep - 1; i >= 1; i-- {
			if err := os.Rename(numbered(i), numbered(i+1)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("file sink %s: rotate: %w", s.name, err)
			}
		}
		if err := os.Rename(s.path, numbered(1)); err != nil {
			return fmt.Errorf("file sink %s: rotate: %w", s.name, err)
		}
	}
	// Make the renames durable before writing to the new file.
	if d, err := os.Open(filepath.Dir(s.path)); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return s.open()
}
