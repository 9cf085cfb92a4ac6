package message

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

// FuzzMessage drives a Message with a random sequence of header fields, an
// end of header block and body writes, under a small memory limit (so that
// the spill happens at every possible point), and checks the readers against
// a model built independently: header part + CRLF + body part is the whole.
//
// The input is a little program: each op byte, then its operand bytes:
//
//	op%4 == 0: AddHeader; a length byte, the name, a length byte, the raw value
//	op%4 == 1: EndHeaders
//	op%4 == 2, 3: Write; a length byte (times 7 for 3), the bytes
//
// The first byte is the memory limit plus 1 (-1 never spills, 0 is the
// default).
func FuzzMessage(f *testing.F) {
	f.Add([]byte("\x10\x00\x07Subject\x06 hello\x01\x02\x05body!"))
	f.Add([]byte("\x03\x00\x01X\x09 a\n\tb\r\n c\x02\x02ab\x03\x04abcd"))
	f.Add([]byte("\x00\x02\x04body\x00\x01A\x01B"))
	f.Add([]byte("\x40\x00\x00\x00\x01\x01\x02\x00"))
	f.Fuzz(func(t *testing.T, prog []byte) {
		if len(prog) == 0 {
			return
		}
		limit := int64(prog[0]) - 1
		prog = prog[1:]
		take := func(n int) string {
			n = min(n, len(prog))
			s := string(prog[:n])
			prog = prog[n:]
			return s
		}
		length := func() int {
			if len(prog) == 0 {
				return 0
			}
			n := int(prog[0])
			prog = prog[1:]
			return n
		}
		dir := t.TempDir()
		m := New(Options{Dir: dir, MemoryLimit: limit})
		var hdr, body strings.Builder
		ended := false
		for len(prog) > 0 {
			op := prog[0]
			prog = prog[1:]
			switch op % 4 {
			case 0:
				name := take(length())
				raw := take(length())
				err := m.AddHeader(name, raw)
				if ended {
					if err == nil {
						t.Fatal("AddHeader after the end of the header block succeeded")
					}
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				hdr.WriteString(name + ":")
				for i := 0; i < len(raw); i++ { // bare LF → CRLF, the model way
					if raw[i] == '\n' && (i == 0 || raw[i-1] != '\r') {
						hdr.WriteByte('\r')
					}
					hdr.WriteByte(raw[i])
				}
				hdr.WriteString("\r\n")
			case 1:
				if err := m.EndHeaders(); err != nil {
					t.Fatal(err)
				}
				ended = true
			default:
				n := length()
				if op%4 == 3 {
					n *= 7
				}
				p := take(n)
				if k, err := m.Write([]byte(p)); err != nil || k != len(p) {
					t.Fatalf("Write = %d, %v", k, err)
				}
				body.WriteString(p)
				ended = true
			}
		}
		if err := m.EndHeaders(); err != nil {
			t.Fatal(err)
		}
		want := hdr.String() + "\r\n" + body.String()
		for range 2 { // readers are repeatable
			got := readAll(t, m.Reader())
			if got != want {
				t.Fatalf("whole:\n got %q\nwant %q", got, want)
			}
			parts := readAll(t, io.MultiReader(m.HeaderReader(), strings.NewReader("\r\n"), m.BodyReader()))
			if parts != got {
				t.Fatalf("header + CRLF + body = %q, whole = %q", parts, got)
			}
		}
		if m.HeaderSize() != int64(hdr.Len()) || m.BodySize() != int64(body.Len()) || m.Size() != int64(len(want)) {
			t.Fatalf("sizes %d/%d/%d, want %d/%d/%d", m.HeaderSize(), m.BodySize(), m.Size(), hdr.Len(), body.Len(), len(want))
		}
		effective := limit
		if limit == 0 {
			effective = DefaultMemoryLimit
		}
		if spilled := effective >= 0 && int64(len(want)) > effective; m.Spilled() != spilled {
			t.Fatalf("Spilled = %v with %d bytes and limit %d", m.Spilled(), len(want), limit)
		}
		if m.Spilled() {
			// Reads at random offsets of the file agree with the model too.
			r := m.Reader()
			b := make([]byte, 5)
			for off := int64(0); off < r.Size(); off += 3 {
				n, _ := r.ReadAt(b, off)
				if !bytes.Equal(b[:n], []byte(want[off:off+int64(n)])) {
					t.Fatalf("ReadAt %d = %q", off, b[:n])
				}
			}
		}
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
		if files := dirEntries(t, dir); len(files) != 0 {
			t.Fatalf("files after Close: %q", files)
		}
	})
}
