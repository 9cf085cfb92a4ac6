package message

import (
	"bytes"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"runtime"
	"testing"
)

const (
	bigSize = 50 << 20 // the 50 MB of issue 13
	chunk   = 64 << 10 // as Postfix sends a body: at most 64 KiB a packet
)

// writeBig writes a message of bigSize bytes: a few header fields, then a
// pseudo-random body in chunk-sized writes from one reused buffer. It returns
// the SHA-256 of the bytes it wrote, as the message must read them.
func writeBig(tb testing.TB, m *Message, buf []byte) [sha256.Size]byte {
	tb.Helper()
	h := sha256.New()
	hdr := []struct{ name, raw string }{
		{"Received", " from a.example.org\n\tby mx.example.net; Mon, 7 Dec 2026 02:00:00 +0000"},
		{"From", " <a@example.org>"},
		{"Subject", "\tbig"},
	}
	for _, f := range hdr {
		if err := m.AddHeader(f.name, f.raw); err != nil {
			tb.Fatal(err)
		}
	}
	if _, err := io.Copy(h, m.HeaderReader()); err != nil {
		tb.Fatal(err)
	}
	h.Write([]byte("\r\n"))
	rng := rand.NewChaCha8([32]byte{1})
	left := int64(bigSize) - m.HeaderSize() - 2
	for left > 0 {
		p := buf[:min(int64(len(buf)), left)]
		rng.Read(p)
		if _, err := m.Write(p); err != nil {
			tb.Fatal(err)
		}
		h.Write(p)
		left -= int64(len(p))
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum
}

// A 50 MB message with the default memory limit: what is read back is what
// was written, byte for byte, and the heap does not grow with the message.
func TestMemoryFlat50MB(t *testing.T) {
	if testing.Short() {
		t.Skip("writes and reads 50 MB")
	}
	dir := t.TempDir()
	buf := make([]byte, chunk)
	hr := sha256.New() // allocated before the first measurement
	copyBuf := make([]byte, 32<<10)

	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	m := New(Options{Dir: dir})
	wrote := writeBig(t, m, buf)
	if !m.Spilled() {
		t.Fatal("a 50 MB message did not spill")
	}
	if m.Size() != bigSize {
		t.Fatalf("Size = %d, want %d", m.Size(), bigSize)
	}
	var during runtime.MemStats
	runtime.ReadMemStats(&during)

	// Read the whole message twice, and header + body once.
	for range 2 {
		hr.Reset()
		if _, err := io.CopyBuffer(hr, m.Reader(), copyBuf); err != nil {
			t.Fatal(err)
		}
		if got := hr.Sum(nil); !bytes.Equal(got, wrote[:]) {
			t.Fatalf("read back SHA-256 %x, wrote %x", got, wrote)
		}
	}
	hr.Reset()
	io.CopyBuffer(hr, io.MultiReader(m.HeaderReader(), bytes.NewReader([]byte("\r\n")), m.BodyReader()), copyBuf)
	if got := hr.Sum(nil); !bytes.Equal(got, wrote[:]) {
		t.Fatalf("header + body SHA-256 %x, wrote %x", got, wrote)
	}
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}

	const bound = 8 << 20 // vs the 64 MB of the issue, and the 50 MB message
	heapGrowth := int64(max(during.HeapInuse, after.HeapInuse)) - int64(before.HeapInuse)
	allocated := after.TotalAlloc - before.TotalAlloc
	t.Logf("50 MB message: heap in use grew %d KiB, %d KiB allocated in all, %d mallocs",
		heapGrowth>>10, allocated>>10, after.Mallocs-before.Mallocs)
	if heapGrowth > bound {
		t.Errorf("heap in use grew by %d bytes, bound %d", heapGrowth, bound)
	}
	if allocated > bound {
		t.Errorf("%d bytes allocated for the message, bound %d", allocated, bound)
	}
}

// BenchmarkMessage50MB writes a 50 MB message (headers, then the body in
// 64 KiB writes, as Postfix sends it), reads it back once and closes it: the
// cost of the spill file, without generating or hashing the bytes.
func BenchmarkMessage50MB(b *testing.B) {
	dir := b.TempDir()
	buf := make([]byte, chunk)
	rand.NewChaCha8([32]byte{2}).Read(buf)
	copyBuf := make([]byte, 32<<10)
	b.SetBytes(bigSize)
	b.ReportAllocs()
	for b.Loop() {
		m := New(Options{Dir: dir})
		m.AddHeader("From", " <a@example.org>")
		m.AddHeader("Subject", " big")
		for left := bigSize - m.HeaderSize() - 2; left > 0; left -= chunk {
			if _, err := m.Write(buf[:min(chunk, left)]); err != nil {
				b.Fatal(err)
			}
		}
		if n, err := io.CopyBuffer(io.Discard, m.Reader(), copyBuf); err != nil || n != bigSize {
			b.Fatalf("read %d bytes, %v", n, err)
		}
		if err := m.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// An ordinary small message (4 KiB body): it stays in memory.
func BenchmarkMessage4KiB(b *testing.B) {
	dir := b.TempDir()
	body := bytes.Repeat([]byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n"), 64) // 4 KiB
	var out bytes.Buffer
	out.Grow(8 << 10)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		m := New(Options{Dir: dir})
		m.AddHeader("Received", " from a.example.org\n\tby mx.example.net; Mon, 7 Dec 2026 02:00:00 +0000")
		m.AddHeader("From", " <a@example.org>")
		m.AddHeader("To", " <b@example.net>")
		m.AddHeader("Subject", " small")
		m.EndHeaders()
		if _, err := m.Write(body); err != nil {
			b.Fatal(err)
		}
		out.Reset()
		if _, err := out.ReadFrom(m.Reader()); err != nil {
			b.Fatal(err)
		}
		if m.Spilled() {
			b.Fatal("a 4 KiB message touched the disk")
		}
		m.Close()
	}
}
