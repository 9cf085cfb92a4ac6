package target

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
)

// fileWriter writes files atomically: a reader of the directory sees either
// no file or the whole file, also after a crash. The dir target and the
// dead letters share it.
type fileWriter struct {
	known sync.Map // directories known to exist, with their entry durable in the parent
}

// write creates dir/name with the bytes fill writes: a temporary file in the
// same directory (a dot file, which ingest tools skip), fsync, rename over
// name (so rewriting a file is harmless), fsync of the directory so the
// rename survives a crash. Missing directories are created, each made
// durable in its parent.
func (w *fileWriter) write(dir, name string, fill func(io.Writer) error) error {
	if err := w.ensureDir(dir); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if errors.Is(err, fs.ErrNotExist) {
		// Removed behind our back since we last saw it.
		w.known.Delete(dir)
		if err = w.ensureDir(dir); err != nil {
			return err
		}
		f, err = os.CreateTemp(dir, "."+name+".tmp-*")
	}
	if err != nil {
		return fmt.Errorf("create temporary file for %s: %w", filepath.Join(dir, name), err)
	}
	tmp := f.Name()
	done := false
	defer func() {
		if !done {
			f.Close()
			os.Remove(tmp)
		}
	}()
	bw := bufio.NewWriterSize(f, 64<<10)
	if err := fill(bw); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	// Archive copies are not for every local user; the group may read them
	// (an ingest service).
	if err := f.Chmod(0o640); err != nil {
		return fmt.Errorf("chmod %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return fmt.Errorf("rename into place: %w", err)
	}
	done = true
	return syncDir(dir)
}

// ensureDir creates dir and its missing parents, fsyncing each parent
// whose entries changed.
func (w *fileWriter) ensureDir(dir string) error {
	if _, ok := w.known.Load(dir); ok {
		return nil
	}
	if fi, err := os.Stat(dir); err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("%s: not a directory", dir)
		}
		w.known.Store(dir, true)
		return nil
	}
	parent := filepath.Dir(dir)
	if parent != dir {
		if err := w.ensureDir(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o750); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create directory: %w", err)
	}
	if err := syncDir(parent); err != nil {
		return err
	}
	w.known.Store(dir, true)
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open directory for fsync: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	return nil
}
