package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
)

// A cursor file holds two fixed slots, at offsets 0 and cursorSlotSpan. A
// commit overwrites the slot not holding the current value and fsyncs, so a
// write torn by a crash damages only that slot and the other still holds the
// previous value: one fsync per commit, no rename, no directory sync.
const (
	cursorSlotLen  = 16
	cursorSlotSpan = 512 // slots in different disk sectors
	cursorFileLen  = 2 * cursorSlotSpan
)

type cursorFile struct {
	f    *os.File
	slot int // slot holding the current value
}

func encodeCursorSlot(seq uint64) []byte {
	b := make([]byte, cursorSlotLen)
	binary.LittleEndian.PutUint32(b[0:], cursorMagic)
	binary.LittleEndian.PutUint64(b[4:], seq)
	binary.LittleEndian.PutUint32(b[12:], crc32.Checksum(b[:12], castagnoli))
	return b
}

func decodeCursorSlot(b []byte) (uint64, bool) {
	if len(b) < cursorSlotLen || binary.LittleEndian.Uint32(b[0:]) != cursorMagic {
		return 0, false
	}
	if crc32.Checksum(b[:12], castagnoli) != binary.LittleEndian.Uint32(b[12:]) {
		return 0, false
	}
	return binary.LittleEndian.Uint64(b[4:]), true
}

// createCursor writes a new cursor file atomically (temp file, fsync,
// rename, directory fsync) so that it either exists whole or not at all.
func createCursor(dir, path string, seq uint64) (*cursorFile, error) {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, cursorFileLen)
	copy(buf, encodeCursorSlot(seq))
	if _, err := f.WriteAt(buf, 0); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, err
	}
	if err := os.Rename(tmp, path); err != nil {
		f.Close()
		return nil, err
	}
	if err := syncDir(dir); err != nil {
		f.Close()
		return nil, err
	}
	return &cursorFile{f: f, slot: 0}, nil
}

// openCursor opens an existing cursor file. ok is false when neither slot
// holds a valid value (the caller decides what a lost cursor means).
func openCursor(path string) (c *cursorFile, seq uint64, ok bool, err error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, 0, false, err
	}
	buf := make([]byte, cursorFileLen)
	n, err := f.ReadAt(buf, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		f.Close()
		return nil, 0, false, err
	}
	buf = buf[:n]
	c = &cursorFile{f: f}
	s0, ok0 := decodeCursorSlot(buf)
	var s1 uint64
	var ok1 bool
	if len(buf) > cursorSlotSpan {
		s1, ok1 = decodeCursorSlot(buf[cursorSlotSpan:])
	}
	switch {
	case ok0 && ok1 && s1 > s0, ok1 && !ok0:
		c.slot = 1
		return c, s1, true, nil
	case ok0:
		c.slot = 0
		return c, s0, true, nil
	default:
		// Writing slot 0 next leaves nothing valid behind if that write is
		// torn too; the file was already unreadable, so nothing is lost.
		c.slot = 1
		return c, 0, false, nil
	}
}

// write durably records seq.
func (c *cursorFile) write(seq uint64) error {
	slot := 1 - c.slot
	if _, err := c.f.WriteAt(encodeCursorSlot(seq), int64(slot*cursorSlotSpan)); err != nil {
		return err
	}
	if err := c.f.Sync(); err != nil {
		return err
	}
	c.slot = slot
	return nil
}

func (c *cursorFile) close() error { return c.f.Close() }

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", filepath.Clean(dir), err)
	}
	return nil
}
