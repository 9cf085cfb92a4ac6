// Package message holds one mail transaction's message while it arrives, so
// that a milter can read the whole of it at end of message.
//
// Why: Postfix sends a message to a milter in pieces — one packet per header
// field, then the body in chunks of at most 64 KiB — and a milter that signs,
// verifies, scans or journals needs all of it at the end, byte for byte. DKIM's
// "simple" canonicalization (RFC 6376 §3.4.1, §3.4.3) hashes header fields and
// body exactly as sent, and an archive journal must hold what was received, not
// a re-serialisation of it. A session's memory must stay bounded whatever the
// message size, so a Message keeps its first Options.MemoryLimit bytes in
// memory and moves to a temporary file (a spill file) once it grows past that.
//
// The runtime writes, in order: each header field with AddHeader, EndHeaders
// at the end of the header block, then the body with Write. At end of message
// Reader, HeaderReader and BodyReader give the RFC 5322 message (RFC 5322 §2.1:
// header fields, an empty line, the body), its header fields or its body, as
// many times as needed, each as an independent io.SectionReader. Close ends
// the transaction: it removes the spill file and frees the memory.
//
// # Bytes exactly as received
//
// A header field is stored as name ":" value CRLF, where value is what the MTA
// sent after the colon (leading whitespace included, when the milter protocol
// option SMFIP_HDR_LEADSPC is in force). Postfix joins folded lines with a bare
// "\n"; each bare LF is written as CRLF, the line ending of the message on the
// wire (RFC 5322 §2.2.3), and a CRLF already there is kept. Nothing else is
// checked or changed: a NUL, a bare CR or an 8-bit byte in a name or a value is
// stored as it came, because the journal records what was sent and a signature
// covers what was sent. The body is stored as written (Postfix sends it with
// CRLF line ends).
//
// # Failure
//
// A write that would take the message past Options.MaxSize stores the part
// that fits and fails with ErrTooLarge: the message then holds exactly its
// first MaxSize bytes and stays readable. An I/O error on the spill file (disk
// full, file-size limit) is returned by the write that met it, naming the file,
// and by every later write (see Err); the message then holds, and its readers
// read, exactly the bytes that reached the file (bytes of earlier writes that
// were still in the buffer in front of the file are lost with it; the message
// is incomplete, and Err says so). In every case Close still
// removes the file.
//
// Spill files are named "geomilter-msg-*" (mode 0600) in Options.Dir. A process
// that crashed leaves its files behind; CleanDir removes them at start-up.
// Removing the file of a live Message does not disturb it on Linux (its reads
// go through the open descriptor), so sharing a directory between processes
// is safe.
package message

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
)

// DefaultMemoryLimit keeps ordinary mail (most messages are well under
// 256 KiB) off the disk and bounds what one session holds for a large one.
const DefaultMemoryLimit = 256 << 10

// FilePrefix starts the name of every spill file; CleanDir removes only
// files with this prefix.
const FilePrefix = "geomilter-msg-"

// fileBuffer is the size of the buffer in front of a spill file. Body chunks
// from Postfix (up to 64 KiB) larger than it go to the file directly.
const fileBuffer = 32 << 10

var (
	// ErrTooLarge is returned (wrapped) by a write that would take the
	// message past Options.MaxSize.
	ErrTooLarge = errors.New("message too large")
	// ErrClosed is returned by writes after Close, and by reads of a
	// reader after Close.
	ErrClosed = errors.New("message closed")
	// ErrHeadersEnded is returned (wrapped) by AddHeader after EndHeaders
	// or after the body has started.
	ErrHeadersEnded = errors.New("header field after the end of the header block")
)

// Options configures a Message.
type Options struct {
	// Dir is the directory for spill files; "" means os.TempDir(). It is
	// created (mode 0700) when the first file is needed.
	Dir string
	// MemoryLimit is how many bytes are kept in memory before the message
	// moves to a spill file: a message of exactly MemoryLimit bytes stays in
	// memory. 0 means DefaultMemoryLimit; a negative value means never spill
	// (tests).
	MemoryLimit int64
	// MaxSize is the largest message accepted, in bytes; 0 (or less) means
	// unlimited.
	MaxSize int64
}

// Message is one transaction's message. Its methods are safe for concurrent
// use (the writes of a transaction come from its session, in order); the
// readers it hands out may be used from any goroutines, concurrently, until
// Close.
type Message struct {
	dir      string
	memLimit int64 // < 0: never spill
	maxSize  int64 // 0: unlimited

	mu        sync.Mutex
	mem       []byte // the message while it is in memory; nil once spilled
	f         *os.File
	w         *bufio.Writer // in front of f
	onDisk    int64         // bytes that reached f (counted below w)
	size      int64         // bytes stored (in mem, or in f plus w's buffer)
	hdrEnd    int64         // end of the header fields
	ended     bool          // the empty line after the header fields was written (or attempted)
	bodyStart int64         // hdrEnd + 2 once ended
	err       error         // the first I/O error on the spill file; sticky
	closed    atomic.Bool
}

// New returns an empty message. Nothing is created on disk until the message
// grows past the memory limit.
func New(o Options) *Message {
	m := &Message{dir: o.Dir, memLimit: o.MemoryLimit, maxSize: o.MaxSize}
	if m.memLimit == 0 {
		m.memLimit = DefaultMemoryLimit
	}
	if m.maxSize < 0 {
		m.maxSize = 0
	}
	return m
}

// AddHeader appends one header field: name ":" raw CRLF, where raw is what
// the MTA sent after the colon, byte for byte, except that each bare LF
// (between folded lines) becomes CRLF. See the package comment.
func (m *Message) AddHeader(name, raw string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.usable(); err != nil {
		return err
	}
	if m.ended {
		return fmt.Errorf("message: header %q: %w", name, ErrHeadersEnded)
	}
	if err := m.writeString(name); err != nil {
		return err
	}
	if err := m.writeString(":"); err != nil {
		return err
	}
	// RFC 5322 §2.2.3: a folded field's lines end in CRLF. Postfix's milter
	// client hands over the value with "\n" between the lines.
	for {
		i := strings.IndexByte(raw, '\n')
		if i < 0 {
			break
		}
		if i > 0 && raw[i-1] == '\r' {
			if err := m.writeString(raw[:i+1]); err != nil {
				return err
			}
		} else {
			if err := m.writeString(raw[:i]); err != nil {
				return err
			}
			if err := m.writeString("\r\n"); err != nil {
				return err
			}
		}
		raw = raw[i+1:]
	}
	if err := m.writeString(raw); err != nil {
		return err
	}
	if err := m.writeString("\r\n"); err != nil {
		return err
	}
	m.hdrEnd = m.size
	return nil
}

// EndHeaders writes the empty line that ends the header block (RFC 5322
// §2.1). Calling it again does nothing; the first body write implies it.
func (m *Message) EndHeaders() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.usable(); err != nil {
		return err
	}
	return m.endHeaders()
}

func (m *Message) endHeaders() error {
	if m.ended {
		return nil
	}
	m.ended = true
	m.hdrEnd = m.size
	m.bodyStart = m.size + 2
	return m.writeString("\r\n")
}

// Write appends body bytes as they arrive. It implies EndHeaders. A write
// past MaxSize stores the part that fits and returns its length with
// ErrTooLarge.
func (m *Message) Write(p []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.usable(); err != nil {
		return 0, err
	}
	if err := m.endHeaders(); err != nil {
		return 0, err
	}
	return write(m, p)
}

// usable reports why the message takes no more writes, if it does not.
func (m *Message) usable() error {
	if m.closed.Load() {
		return ErrClosed
	}
	return m.err
}

func (m *Message) writeString(s string) error {
	_, err := write(m, s)
	return err
}

// write stores p, or the part of it that fits under MaxSize. It takes header
// strings and body slices alike, without converting (and copying) either.
func write[T string | []byte](m *Message, p T) (int, error) {
	var tooLarge error
	if m.maxSize > 0 && m.size+int64(len(p)) > m.maxSize {
		fit := m.maxSize - m.size
		tooLarge = fmt.Errorf("message: %d bytes would pass the limit of %d: %w", m.size+int64(len(p)), m.maxSize, ErrTooLarge)
		p = p[:fit]
	}
	if len(p) > 0 {
		if m.f == nil && (m.memLimit < 0 || m.size+int64(len(p)) <= m.memLimit) {
			appendMem(m, p)
		} else if before := m.size; writeFile(m, p) != nil {
			// What of p reached the file before the error is in.
			return int(min(max(m.size-before, 0), int64(len(p)))), m.err
		}
	}
	if tooLarge != nil {
		return len(p), tooLarge
	}
	return len(p), nil
}

// appendMem grows mem without ever holding more than memLimit bytes of
// capacity, so that a session's memory is bounded by the limit.
func appendMem[T string | []byte](m *Message, p T) {
	need := len(m.mem) + len(p)
	if need > cap(m.mem) {
		c := max(2*cap(m.mem), need, 4096)
		if m.memLimit >= 0 && int64(c) > m.memLimit {
			c = int(m.memLimit)
		}
		b := make([]byte, len(m.mem), c)
		copy(b, m.mem)
		m.mem = b
	}
	m.mem = append(m.mem, p...)
	m.size += int64(len(p))
}

// writeFile writes p to the spill file, creating it (and moving the memory
// part into it) first if need be.
func writeFile[T string | []byte](m *Message, p T) error {
	if m.f == nil {
		if err := m.spill(); err != nil {
			return err
		}
	}
	var err error
	switch p := any(p).(type) {
	case string:
		_, err = m.w.WriteString(p)
	case []byte:
		_, err = m.w.Write(p)
	}
	if err != nil {
		return m.fail(err)
	}
	m.size += int64(len(p))
	return nil
}

func (m *Message) spill() error {
	dir := m.dir
	if dir == "" {
		dir = os.TempDir()
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		m.err = fmt.Errorf("message: spill file: %w", err)
		return m.err
	}
	f, err := os.CreateTemp(dir, FilePrefix+"*") // mode 0600
	if err != nil {
		m.err = fmt.Errorf("message: spill file: %w", err)
		return m.err
	}
	m.f = f
	m.w = bufio.NewWriterSize(countingWriter{f, &m.onDisk}, fileBuffer)
	mem := m.mem
	m.mem = nil
	if _, err := m.w.Write(mem); err != nil {
		return m.fail(err)
	}
	return nil
}

// fail records an I/O error on the spill file. From then on the message is
// what reached the file: bufio keeps what it could not write.
func (m *Message) fail(err error) error {
	m.err = fmt.Errorf("message: spill file: %w", err) // err names the file (*os.PathError)
	m.size = m.onDisk
	return m.err
}

// Err returns the I/O error that stopped the message taking writes, or nil.
// It is not ErrTooLarge: a message cut at MaxSize takes no more bytes but is
// sound.
func (m *Message) Err() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.err
}

// countingWriter counts the bytes that reach the file, so that after a
// failed write the message knows exactly what it holds.
type countingWriter struct {
	f *os.File
	n *int64
}

func (c countingWriter) Write(p []byte) (int, error) {
	n, err := c.f.Write(p)
	*c.n += int64(n)
	return n, err
}

// Reader returns the whole message, from its first header field to the end
// of the body, as written so far (before EndHeaders: the header fields). Each
// call returns a new reader, independent of the others.
func (m *Message) Reader() *io.SectionReader {
	return m.section(func() (int64, int64) { return 0, m.size })
}

// HeaderReader returns the header fields, each ending in CRLF, without the
// empty line that ends the header block.
func (m *Message) HeaderReader() *io.SectionReader {
	return m.section(func() (int64, int64) { return 0, m.headerSize() })
}

// BodyReader returns the body: everything after the empty line.
func (m *Message) BodyReader() *io.SectionReader {
	return m.section(func() (int64, int64) { return m.bodyOff(), m.bodySize() })
}

// section makes a reader of the bytes span returns, over what the message
// holds now. The buffer in front of the spill file is flushed first, so that
// the file has every byte the reader covers.
func (m *Message) section(span func() (off, n int64)) *io.SectionReader {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed.Load() {
		// At least one byte, so that even an empty message's reader says
		// ErrClosed rather than io.EOF.
		off, n := span()
		return io.NewSectionReader(closedReader{}, off, max(n, 1))
	}
	if m.w != nil && m.err == nil {
		if err := m.w.Flush(); err != nil {
			m.fail(err) //nolint:errcheck // kept in m.err, reported by Err and later writes
		}
	}
	off, n := span()
	ra := &readerAt{m: m, f: m.f}
	if m.f == nil {
		// A reader keeps the bytes it covers: later appends never change
		// them, and a spill leaves this array to the readers that have it.
		ra.mem = m.mem[:m.size:m.size]
	}
	return io.NewSectionReader(ra, off, n)
}

// readerAt reads a message's memory part or its spill file, until Close.
type readerAt struct {
	m   *Message
	mem []byte
	f   *os.File
}

func (r *readerAt) ReadAt(p []byte, off int64) (int, error) {
	if r.m.closed.Load() {
		return 0, ErrClosed
	}
	if r.f == nil {
		return bytes.NewReader(r.mem).ReadAt(p, off)
	}
	n, err := r.f.ReadAt(p, off)
	if errors.Is(err, os.ErrClosed) {
		err = ErrClosed
	}
	return n, err
}

// closedReader is what readers made after Close read.
type closedReader struct{}

func (closedReader) ReadAt([]byte, int64) (int, error) { return 0, ErrClosed }

// Size returns the number of bytes stored: header fields, the empty line if
// written, and the body.
func (m *Message) Size() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.size
}

// HeaderSize returns the size of the header fields (without the empty line).
func (m *Message) HeaderSize() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.headerSize()
}

// BodySize returns the size of the body.
func (m *Message) BodySize() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.bodySize()
}

// The spans below are clamped to size: a message cut by MaxSize or by a
// write error may end inside a header field or inside the empty line.
func (m *Message) headerSize() int64 {
	if m.ended {
		return min(m.hdrEnd, m.size)
	}
	return m.size // header fields written so far (possibly a partial one)
}

func (m *Message) bodyOff() int64 {
	if !m.ended {
		return m.size
	}
	return min(m.bodyStart, m.size)
}

func (m *Message) bodySize() int64 {
	return m.size - m.bodyOff()
}

// Spilled reports whether the message is in a spill file.
func (m *Message) Spilled() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.f != nil
}

// Close removes the spill file, if any, and frees the memory. Readers, those
// made before and after, read ErrClosed from then on; the sizes stay. Calling it again does nothing and returns nil.
func (m *Message) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed.Swap(true) {
		return nil
	}
	m.mem = nil
	if m.f == nil {
		return nil
	}
	name := m.f.Name()
	var errs []error
	if err := m.f.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		errs = append(errs, fmt.Errorf("message: close spill file: %w", err))
	}
	// Remove even if Close failed: the file must not outlive the transaction.
	if err := os.Remove(name); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("message: remove spill file: %w", err))
	}
	m.f, m.w = nil, nil
	return errors.Join(errs...)
}

// CleanDir removes the spill files in dir ("" means os.TempDir()) that a
// process which crashed left behind: regular files whose name starts with
// FilePrefix, nothing else. A missing dir has nothing to clean. Call it at
// start-up, before serving; a live Message whose file it removes keeps
// working (see the package comment).
func CleanDir(dir string) (removed int, err error) {
	if dir == "" {
		dir = os.TempDir()
	}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("message: clean %s: %w", dir, err)
	}
	var errs []error
	for _, e := range entries {
		if !e.Type().IsRegular() || !strings.HasPrefix(e.Name(), FilePrefix) {
			continue
		}
		p := dir + string(os.PathSeparator) + e.Name()
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("message: clean: %w", err))
			continue
		}
		removed++
	}
	return removed, errors.Join(errs...)
}
