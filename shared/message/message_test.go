package message

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// readAll reads r completely, failing the test on an error.
func readAll(t testing.TB, r io.Reader) string {
	t.Helper()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return string(b)
}

// dirEntries lists the names in dir.
func dirEntries(t testing.TB, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// checkParts checks the invariants between the readers and the sizes.
func checkParts(t testing.TB, m *Message, wantHeader, wantBody string) {
	t.Helper()
	whole, hdr, body := readAll(t, m.Reader()), readAll(t, m.HeaderReader()), readAll(t, m.BodyReader())
	if hdr != wantHeader {
		t.Errorf("header = %q, want %q", hdr, wantHeader)
	}
	if body != wantBody {
		t.Errorf("body = %q, want %q", body, wantBody)
	}
	if want := wantHeader + "\r\n" + wantBody; whole != want {
		t.Errorf("whole = %q, want %q", whole, want)
	}
	if m.Size() != int64(len(whole)) || m.HeaderSize() != int64(len(hdr)) || m.BodySize() != int64(len(body)) {
		t.Errorf("sizes %d/%d/%d, read %d/%d/%d", m.Size(), m.HeaderSize(), m.BodySize(), len(whole), len(hdr), len(body))
	}
}

func TestHeaderBytes(t *testing.T) {
	cases := []struct {
		name, field, raw string
		want             string
	}{
		{"no space after the colon", "Subject", "hello", "Subject:hello\r\n"},
		{"a space after the colon", "Subject", " hello", "Subject: hello\r\n"},
		{"a tab after the colon", "Subject", "\thello", "Subject:\thello\r\n"},
		{"folded with LF", "Received", " from a\n\tby b\n\tfor c", "Received: from a\r\n\tby b\r\n\tfor c\r\n"},
		{"folded with CRLF", "Received", " from a\r\n\tby b", "Received: from a\r\n\tby b\r\n"},
		{"folded with both", "X", " a\r\n b\n c", "X: a\r\n b\r\n c\r\n"},
		{"LF first", "X", "\n b", "X:\r\n b\r\n"},
		{"empty value", "X-Empty", "", "X-Empty:\r\n"},
		{"only a space", "X-Empty", " ", "X-Empty: \r\n"},
		{"8-bit bytes", "Subject", " gr\xfc\xdf \xe2\x82\xac \xff", "Subject: gr\xfc\xdf \xe2\x82\xac \xff\r\n"},
		// As received: the journal and a signature cover what was sent.
		{"a NUL", "X", " a\x00b", "X: a\x00b\r\n"},
		{"a bare CR", "X", " a\rb", "X: a\rb\r\n"},
		{"a CR at the end", "X", " a\r", "X: a\r\r\n"},
		{"trailing whitespace", "X", " a \t", "X: a \t\r\n"},
	}
	for _, limit := range []int64{-1, 4} { // in memory, and spilled from the first bytes
		for _, tc := range cases {
			t.Run(fmt.Sprintf("%s/limit=%d", tc.name, limit), func(t *testing.T) {
				m := New(Options{Dir: t.TempDir(), MemoryLimit: limit})
				defer m.Close()
				if err := m.AddHeader(tc.field, tc.raw); err != nil {
					t.Fatal(err)
				}
				if err := m.AddHeader("To", " b@example.org"); err != nil {
					t.Fatal(err)
				}
				if _, err := m.Write([]byte("body\r\n")); err != nil {
					t.Fatal(err)
				}
				checkParts(t, m, tc.want+"To: b@example.org\r\n", "body\r\n")
				if got, want := m.Spilled(), limit > 0; got != want {
					t.Errorf("Spilled = %v, want %v", got, want)
				}
			})
		}
	}
}

func TestSequence(t *testing.T) {
	cases := []struct {
		name       string
		run        func(m *Message) error
		hdr, body  string
		ended      bool // the empty line was written
		wantErr    error
		wantErrMsg string
	}{
		{
			name: "EndHeaders is idempotent",
			run: func(m *Message) error {
				return errors.Join(m.AddHeader("A", " 1"), m.EndHeaders(), m.EndHeaders(), m.EndHeaders())
			},
			hdr: "A: 1\r\n", ended: true,
		},
		{
			name: "a body write implies EndHeaders",
			run: func(m *Message) error {
				err := m.AddHeader("A", " 1")
				_, err2 := m.Write([]byte("x"))
				return errors.Join(err, err2, m.EndHeaders())
			},
			hdr: "A: 1\r\n", body: "x", ended: true,
		},
		{
			name: "no body",
			run:  func(m *Message) error { return errors.Join(m.AddHeader("A", " 1"), m.EndHeaders()) },
			hdr:  "A: 1\r\n", ended: true,
		},
		{
			name:  "no headers",
			run:   func(m *Message) error { _, err := m.Write([]byte("just a body\r\n")); return err },
			body:  "just a body\r\n",
			ended: true,
		},
		{
			name:  "empty writes",
			run:   func(m *Message) error { _, err := m.Write(nil); return errors.Join(err, m.EndHeaders()) },
			ended: true,
		},
		{
			name: "header after EndHeaders",
			run: func(m *Message) error {
				return errors.Join(m.AddHeader("A", " 1"), m.EndHeaders(), m.AddHeader("B", " 2"))
			},
			hdr: "A: 1\r\n", ended: true,
			wantErr: ErrHeadersEnded, wantErrMsg: `message: header "B": header field after the end of the header block`,
		},
		{
			name: "header after the body started",
			run: func(m *Message) error {
				_, err := m.Write([]byte("b"))
				return errors.Join(err, m.AddHeader("B", " 2"))
			},
			body: "b", ended: true,
			wantErr: ErrHeadersEnded,
		},
		{
			name: "body in many pieces",
			run: func(m *Message) error {
				var errs []error
				for _, p := range []string{"a", "b\r", "\n", "", "cd\r\n"} {
					_, err := m.Write([]byte(p))
					errs = append(errs, err)
				}
				return errors.Join(errs...)
			},
			body: "ab\r\ncd\r\n", ended: true,
		},
		{
			name: "nothing yet",
			run:  func(m *Message) error { return nil },
		},
		{
			name: "headers without EndHeaders",
			run:  func(m *Message) error { return m.AddHeader("A", " 1") },
			hdr:  "A: 1\r\n",
		},
	}
	for _, limit := range []int64{-1, 0, 3} {
		for _, tc := range cases {
			t.Run(fmt.Sprintf("%s/limit=%d", tc.name, limit), func(t *testing.T) {
				m := New(Options{Dir: t.TempDir(), MemoryLimit: limit})
				defer m.Close()
				err := tc.run(m)
				if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				if tc.wantErrMsg != "" && err.Error() != tc.wantErrMsg {
					t.Errorf("err = %q, want %q", err, tc.wantErrMsg)
				}
				if tc.ended {
					checkParts(t, m, tc.hdr, tc.body)
					return
				}
				// Before EndHeaders the message is its header fields.
				if got := readAll(t, m.Reader()); got != tc.hdr {
					t.Errorf("whole = %q, want %q", got, tc.hdr)
				}
				if got := readAll(t, m.HeaderReader()); got != tc.hdr {
					t.Errorf("header = %q, want %q", got, tc.hdr)
				}
				if got := readAll(t, m.BodyReader()); got != "" {
					t.Errorf("body = %q, want none", got)
				}
			})
		}
	}
}

// The memory limit is the largest message kept in memory: limit bytes stay,
// limit+1 spill, and the bytes are the same either way.
func TestSpillBoundary(t *testing.T) {
	const limit = 1000
	hdr := "Subject: x\r\n" // 12 bytes, then 2 for the empty line
	for _, tc := range []struct {
		size    int
		spilled bool
	}{
		{limit - 1, false},
		{limit, false},
		{limit + 1, true},
		{2*limit + 17, true},
	} {
		for _, chunk := range []int{1, 7, limit} {
			t.Run(fmt.Sprintf("size=%d/chunk=%d", tc.size, chunk), func(t *testing.T) {
				dir := t.TempDir()
				m := New(Options{Dir: dir, MemoryLimit: limit})
				defer m.Close()
				if err := m.AddHeader("Subject", " x"); err != nil {
					t.Fatal(err)
				}
				body := strings.Repeat("0123456789abcdef", tc.size/16+1)[:tc.size-len(hdr)-2]
				for b := body; len(b) > 0; {
					n := min(chunk, len(b))
					if _, err := m.Write([]byte(b[:n])); err != nil {
						t.Fatal(err)
					}
					b = b[n:]
				}
				if err := m.EndHeaders(); err != nil { // in case the body is empty
					t.Fatal(err)
				}
				if m.Size() != int64(tc.size) {
					t.Fatalf("Size = %d, want %d", m.Size(), tc.size)
				}
				if m.Spilled() != tc.spilled {
					t.Errorf("Spilled = %v, want %v", m.Spilled(), tc.spilled)
				}
				if files := dirEntries(t, dir); (len(files) == 1) != tc.spilled {
					t.Errorf("files in dir: %q, spilled %v", files, tc.spilled)
				}
				checkParts(t, m, hdr, body)
				if cap(m.mem) > limit {
					t.Errorf("memory part has capacity %d, past the limit %d", cap(m.mem), limit)
				}
			})
		}
	}
}

func TestSpillFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "messages") // created on demand
	m := New(Options{Dir: dir, MemoryLimit: 10})
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("New touched the disk: %v", err)
	}
	if _, err := m.Write([]byte("01234567")); err != nil { // 10 bytes with the empty line
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("spilled under the limit: %v", err)
	}
	if _, err := m.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	files := dirEntries(t, dir)
	if len(files) != 1 || !strings.HasPrefix(files[0], FilePrefix) {
		t.Fatalf("files = %q", files)
	}
	for p, want := range map[string]os.FileMode{dir: 0o700 | os.ModeDir, filepath.Join(dir, files[0]): 0o600} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode(), want)
		}
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if files := dirEntries(t, dir); len(files) != 0 {
		t.Errorf("after Close: %q", files)
	}
}

func TestMaxSize(t *testing.T) {
	for _, limit := range []int64{-1, 5} {
		for _, tc := range []struct {
			name      string
			max       int64
			run       func(m *Message) (int, error)
			n         int
			hdr, body string
			ended     bool
		}{
			{
				name: "the body fits exactly", max: 9 + 2 + 4,
				run: func(m *Message) (int, error) { m.AddHeader("A", " 1234"); return m.Write([]byte("abcd")) },
				n:   4, hdr: "A: 1234\r\n", body: "abcd", ended: true,
			},
			{
				name: "the body is cut", max: 9 + 2 + 4,
				run: func(m *Message) (int, error) { m.AddHeader("A", " 1234"); return m.Write([]byte("abcdef")) },
				n:   4, hdr: "A: 1234\r\n", body: "abcd", ended: true,
			},
			{
				name: "the empty line is cut", max: 10,
				run: func(m *Message) (int, error) { m.AddHeader("A", " 1234"); return m.Write([]byte("abcdef")) },
				hdr: "A: 1234\r\n\r", ended: true,
			},
			{
				name: "a header field is cut", max: 7,
				run: func(m *Message) (int, error) { return 0, m.AddHeader("A", " 1234") },
				hdr: "A: 1234",
			},
		} {
			t.Run(fmt.Sprintf("%s/limit=%d", tc.name, limit), func(t *testing.T) {
				m := New(Options{Dir: t.TempDir(), MemoryLimit: limit, MaxSize: tc.max})
				defer m.Close()
				n, err := tc.run(m)
				want := error(nil)
				if tc.name != "the body fits exactly" {
					want = ErrTooLarge
				}
				if !errors.Is(err, want) || (want == nil) != (err == nil) {
					t.Fatalf("err = %v, want %v", err, want)
				}
				if n != tc.n {
					t.Errorf("n = %d, want %d", n, tc.n)
				}
				whole := readAll(t, m.Reader())
				if int64(len(whole)) > tc.max || m.Size() != int64(len(whole)) {
					t.Errorf("Size = %d, read %d bytes, MaxSize %d", m.Size(), len(whole), tc.max)
				}
				if got := readAll(t, m.BodyReader()); got != tc.body {
					t.Errorf("body = %q, want %q", got, tc.body)
				}
				if got := readAll(t, m.HeaderReader()); tc.ended && got != strings.TrimSuffix(tc.hdr, "\r") {
					t.Errorf("header = %q, want %q", got, tc.hdr)
				}
				if !strings.HasPrefix(whole, tc.hdr) {
					t.Errorf("whole = %q, want it to start %q", whole, tc.hdr)
				}
				// Full: every further byte fails, nothing changes.
				if _, err := m.Write([]byte("z")); !errors.Is(err, ErrTooLarge) && m.Size() == tc.max {
					t.Errorf("write when full: %v", err)
				}
				if m.Err() != nil {
					t.Errorf("Err = %v, want nil: a cut message is sound", m.Err())
				}
			})
		}
	}
}

func TestReadersIndependent(t *testing.T) {
	for _, limit := range []int64{-1, 64} {
		t.Run(fmt.Sprintf("limit=%d", limit), func(t *testing.T) {
			m := New(Options{Dir: t.TempDir(), MemoryLimit: limit})
			defer m.Close()
			m.AddHeader("From", " a@example.org")
			m.AddHeader("Subject", " readers")
			body := strings.Repeat("line of the body\r\n", 20)
			m.Write([]byte(body))
			want := "From: a@example.org\r\nSubject: readers\r\n\r\n" + body

			// Interleaved reads of two readers of the whole message.
			r1, r2 := m.Reader(), m.Reader()
			var b1, b2 bytes.Buffer
			buf := make([]byte, 7)
			for {
				n1, err1 := r1.Read(buf)
				b1.Write(buf[:n1])
				n2, err2 := r2.Read(buf[:3])
				b2.Write(buf[:n2])
				if err1 == io.EOF && err2 == io.EOF {
					break
				}
			}
			if b1.String() != want || b2.String() != want {
				t.Fatalf("interleaved reads differ:\n%q\n%q", b1.String(), b2.String())
			}
			// Again, and concurrently.
			var wg sync.WaitGroup
			got := make([]string, 8)
			for i := range got {
				wg.Add(1)
				go func() {
					defer wg.Done()
					b, _ := io.ReadAll(m.Reader())
					got[i] = string(b)
				}()
			}
			wg.Wait()
			for i, g := range got {
				if g != want {
					t.Errorf("reader %d read %q", i, g)
				}
			}
			checkParts(t, m, "From: a@example.org\r\nSubject: readers\r\n", body)
			// A reader covers what was written when it was made.
			r := m.Reader()
			m.Write([]byte("more\r\n"))
			if got := readAll(t, r); got != want {
				t.Errorf("old reader read %q", got)
			}
			if got := readAll(t, m.Reader()); got != want+"more\r\n" {
				t.Errorf("new reader read %q", got)
			}
		})
	}
}

func TestClose(t *testing.T) {
	for _, limit := range []int64{-1, 8} {
		t.Run(fmt.Sprintf("limit=%d", limit), func(t *testing.T) {
			dir := t.TempDir()
			m := New(Options{Dir: dir, MemoryLimit: limit})
			m.AddHeader("A", " 1")
			m.Write([]byte("body that is longer than the limit"))
			r := m.Reader()
			if err := m.Close(); err != nil {
				t.Fatal(err)
			}
			if files := dirEntries(t, dir); len(files) != 0 {
				t.Errorf("files after Close: %q", files)
			}
			if err := m.Close(); err != nil {
				t.Errorf("second Close: %v", err)
			}
			if m.Spilled() {
				t.Error("Spilled after Close")
			}
			for name, r := range map[string]io.Reader{"old reader": r, "Reader": m.Reader(), "HeaderReader": m.HeaderReader(), "BodyReader": m.BodyReader()} {
				if _, err := r.Read(make([]byte, 10)); !errors.Is(err, ErrClosed) {
					t.Errorf("%s after Close: %v, want ErrClosed", name, err)
				}
			}
			if _, err := m.Write([]byte("x")); !errors.Is(err, ErrClosed) {
				t.Errorf("Write after Close: %v", err)
			}
			if err := m.AddHeader("B", " 2"); !errors.Is(err, ErrClosed) {
				t.Errorf("AddHeader after Close: %v", err)
			}
			if err := m.EndHeaders(); !errors.Is(err, ErrClosed) {
				t.Errorf("EndHeaders after Close: %v", err)
			}
		})
	}
}

func TestCleanDir(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{FilePrefix + "123", FilePrefix + "x", "geomilter-other", "keep.eml", "msg-123"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, FilePrefix+"dir"), 0o700); err != nil { // not a file: kept
		t.Fatal(err)
	}
	// A live message's file: removing it must not disturb the message.
	m := New(Options{Dir: dir, MemoryLimit: 1})
	defer m.Close()
	m.Write([]byte("live body"))

	n, err := CleanDir(dir)
	if err != nil || n != 3 {
		t.Fatalf("CleanDir = %d, %v; want 3, nil", n, err)
	}
	got := strings.Join(dirEntries(t, dir), " ")
	if want := "geomilter-msg-dir geomilter-other keep.eml msg-123"; got != want {
		t.Errorf("left %q, want %q", got, want)
	}
	m.Write([]byte(" goes on"))
	checkParts(t, m, "", "live body goes on")
	if err := m.Close(); err != nil {
		t.Errorf("Close after CleanDir: %v", err)
	}
	if n, err := CleanDir(filepath.Join(dir, "missing")); n != 0 || err != nil {
		t.Errorf("missing dir: %d, %v", n, err)
	}
}

// A spill file that cannot be created: the write says why, naming the path,
// the message keeps what it had, and takes no more.
func TestSpillCreateError(t *testing.T) {
	base := t.TempDir()
	file := filepath.Join(base, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(file, "messages") // under a regular file
	m := New(Options{Dir: dir, MemoryLimit: 16})
	defer m.Close()
	if err := m.AddHeader("A", " 1"); err != nil {
		t.Fatal(err)
	}
	_, err := m.Write([]byte("a body longer than sixteen bytes"))
	if err == nil || !strings.Contains(err.Error(), "mkdir "+file+": not a directory") {
		t.Fatalf("err = %v, want one naming %s", err, file)
	}
	if m.Err() == nil {
		t.Error("Err = nil")
	}
	if _, err2 := m.Write([]byte("x")); err2 == nil || err2.Error() != err.Error() {
		t.Errorf("next write: %v, want the same error", err2)
	}
	if m.Spilled() {
		t.Error("Spilled without a file")
	}
	checkParts(t, m, "A: 1\r\n", "")
}

func TestSpillReadOnlyDir(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root writes to read-only directories")
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o500); err != nil {
		t.Fatal(err)
	}
	defer os.Chmod(dir, 0o700)
	m := New(Options{Dir: dir, MemoryLimit: 4})
	defer m.Close()
	_, err := m.Write([]byte("0123456789"))
	if !errors.Is(err, os.ErrPermission) || !strings.Contains(err.Error(), dir) {
		t.Fatalf("err = %v, want permission denied naming %s", err, dir)
	}
}

// The spill file fails under the message (here: closed behind its back).
// The write returns the error naming the file; the message holds what reached
// the file; Close still removes it.
func TestSpillWriteError(t *testing.T) {
	dir := t.TempDir()
	m := New(Options{Dir: dir, MemoryLimit: 100})
	m.AddHeader("A", " 1")
	first := bytes.Repeat([]byte("a"), 200)
	if _, err := m.Write(first); err != nil {
		t.Fatal(err)
	}
	m.Reader() // flushes: the 208 bytes are in the file
	name := m.f.Name()
	m.f.Close()
	_, err := m.Write(bytes.Repeat([]byte("b"), 2*fileBuffer))
	if err == nil || !strings.Contains(err.Error(), name) || !errors.Is(err, os.ErrClosed) {
		t.Fatalf("err = %v, want one naming %s", err, name)
	}
	if m.Size() != 6+2+200 {
		t.Errorf("Size = %d, want %d", m.Size(), 6+2+200)
	}
	if err := m.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if files := dirEntries(t, dir); len(files) != 0 {
		t.Errorf("files after Close: %q", files)
	}
}
