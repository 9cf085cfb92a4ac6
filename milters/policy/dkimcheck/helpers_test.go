package dkimcheck

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// field is a header field as the milter runtime hands it over
// (milterrt.HeaderField's Name and Raw).
type field struct{ name, raw string }

// splitMessage cuts a CRLF message into fields and body the way Postfix
// sends them to a milter: name without the colon, raw = everything after
// the colon with folds as "\r\n" and no final line end.
func splitMessage(t testing.TB, msg []byte) ([]field, []byte) {
	t.Helper()
	end := bytes.Index(msg, []byte("\r\n\r\n"))
	if end < 0 {
		t.Fatal("message has no blank line")
	}
	head, body := string(msg[:end+2]), msg[end+4:]
	var fields []field
	for _, line := range strings.SplitAfter(head, "\r\n") {
		if line == "" {
			continue
		}
		line = strings.TrimSuffix(line, "\r\n")
		if line[0] == ' ' || line[0] == '\t' {
			fields[len(fields)-1].raw += "\r\n" + line
			continue
		}
		name, raw, ok := strings.Cut(line, ":")
		if !ok {
			t.Fatalf("header line without colon: %q", line)
		}
		fields = append(fields, field{strings.TrimRight(name, " \t"), raw})
	}
	return fields, body
}

// feed gives msg to v as the milter would, body in chunks of size bytes.
func feed(t testing.TB, v *Verifier, msg []byte, size int) {
	t.Helper()
	fields, body := splitMessage(t, msg)
	for _, f := range fields {
		v.Header(f.name, f.raw)
	}
	v.EndHeaders()
	for len(body) > 0 {
		n := min(size, len(body))
		v.Body(body[:n])
		body = body[n:]
	}
}

// zone is a fixed set of key records: the RFC 8463 test vectors and keys
// made by the tests. The DNS path itself is tested in shared/resolver
// against a real in-process server; here the records are the input.
type zone map[string]string

func (z zone) lookup(_ context.Context, name string) ([]string, error) {
	if rec, ok := z[strings.TrimSuffix(strings.ToLower(name), ".")]; ok {
		return []string{rec}, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
}

// rfc8463Zone reads testdata/rfc8463-keys.txt: "name record" per line.
func rfc8463Zone(t testing.TB) zone {
	t.Helper()
	f, err := os.Open("testdata/rfc8463-keys.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	z := zone{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, rec, ok := strings.Cut(sc.Text(), " ")
		if ok {
			z[name] = rec
		}
	}
	return z
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkNoLeak fails if goroutines started since before remain. The count
// settles within moments of the last one returning; it is polled, not
// timed: a leak never settles and fails after the poll limit.
func checkNoLeak(t testing.TB, before int) {
	t.Helper()
	for i := 0; i < 500; i++ {
		if runtime.NumGoroutine() <= before {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	buf := make([]byte, 1<<16)
	t.Errorf("goroutines: %d before, %d after\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
}
