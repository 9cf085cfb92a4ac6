package message

import (
	"bytes"
	"errors"
	"os/signal"
	"strings"
	"syscall"
	"testing"
)

// A real write error from the kernel, as a full disk gives: the file-size
// limit (RLIMIT_FSIZE) makes write(2) fail with EFBIG past it. The write
// that meets it returns the error naming the file; the message holds exactly
// what reached the file and reads it back; Close removes the file.
func TestSpillFileSizeLimit(t *testing.T) {
	const fsize = 100 << 10
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
		t.Fatal(err)
	}
	// Past the limit the kernel also sends SIGXFSZ, which would kill the
	// test binary; ignored, write(2) returns EFBIG instead.
	signal.Ignore(syscall.SIGXFSZ)
	defer signal.Reset(syscall.SIGXFSZ)
	lim := old
	lim.Cur = fsize
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		t.Skipf("cannot set RLIMIT_FSIZE: %v", err)
	}
	defer syscall.Setrlimit(syscall.RLIMIT_FSIZE, &old)

	dir := t.TempDir()
	m := New(Options{Dir: dir, MemoryLimit: 10 << 10})
	m.AddHeader("Subject", " too big for the disk")
	piece := bytes.Repeat([]byte("x"), 12345)
	var err error
	written := int64(0)
	for i := 0; i < 20 && err == nil; i++ {
		var n int
		n, err = m.Write(piece)
		written += int64(n)
	}
	if !errors.Is(err, syscall.EFBIG) {
		t.Fatalf("err = %v, want EFBIG", err)
	}
	files := dirEntries(t, dir)
	if len(files) != 1 || !strings.Contains(err.Error(), files[0]) {
		t.Errorf("err = %q, want it to name the file %q", err, files)
	}
	if !errors.Is(m.Err(), syscall.EFBIG) {
		t.Errorf("Err = %v", m.Err())
	}
	if _, err2 := m.Write([]byte("y")); err2 == nil {
		t.Error("a write after the error succeeded")
	}
	// Writes report what they handed over; some of it may have been in the
	// buffer in front of the file when the error came, and is lost with it.
	if written < m.Size()-int64(len("Subject: too big for the disk\r\n\r\n")) {
		t.Errorf("writes reported %d body bytes, the message holds %d bytes in all", written, m.Size())
	}
	if m.Size() != fsize {
		t.Errorf("Size = %d, want the %d bytes that reached the file", m.Size(), fsize)
	}
	whole := readAll(t, m.Reader())
	hdr := "Subject: too big for the disk\r\n"
	if int64(len(whole)) != m.Size() || !strings.HasPrefix(whole, hdr+"\r\nxxx") || strings.Trim(whole[len(hdr)+2:], "x") != "" {
		t.Errorf("read back %d bytes, not the %d that reached the file", len(whole), m.Size())
	}
	if got := readAll(t, m.BodyReader()); int64(len(got)) != m.Size()-int64(len(hdr))-2 {
		t.Errorf("body of %d bytes", len(got))
	}
	if err := m.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if files := dirEntries(t, dir); len(files) != 0 {
		t.Errorf("files after Close: %q", files)
	}
}
