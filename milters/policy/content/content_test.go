package content

import (
	"archive/zip"
	"bytes"
	"compress/flate"
	"encoding/base64"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/geomilter/geomilter/shared/mimewalk"
)

func crlf(lines ...string) string { return strings.Join(lines, "\r\n") }

// rec is a Sink that records everything.
type rec struct {
	lines   []string
	attach  []string // "name|typ"
	urls    []string
	size    int64
	sizeSet int
}

func (r *rec) Text(line []byte)            { r.lines = append(r.lines, string(line)) }
func (r *rec) Attachment(name, typ string) { r.attach = append(r.attach, name+"|"+typ) }
func (r *rec) URL(host string)             { r.urls = append(r.urls, host) }
func (r *rec) Size(n int64)                { r.size, r.sizeSet = n, r.sizeSet+1 }

// exe is the start of a PE executable.
var exe = append([]byte("MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff"), bytes.Repeat([]byte{0}, 200)...)

// zipOf builds a zip archive with archive/zip: method per entry, and a
// data descriptor when descriptor is set (archive/zip writes one for every
// entry made with Create/CreateHeader; CreateRaw with sizes set writes none).
func zipOf(t testing.TB, descriptor bool, entries ...zipEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, e := range entries {
		var w io.Writer
		var err error
		data := e.data
		if descriptor {
			w, err = zw.CreateHeader(&zip.FileHeader{Name: e.name, Method: e.method})
		} else {
			fh := &zip.FileHeader{Name: e.name, Method: e.method, CRC32: crc32.ChecksumIEEE(e.data), UncompressedSize64: uint64(len(e.data))}
			if e.method == zip.Deflate {
				var c bytes.Buffer
				fw, _ := flate.NewWriter(&c, flate.BestCompression)
				fw.Write(e.data)
				fw.Close()
				data = c.Bytes()
			}
			fh.CompressedSize64 = uint64(len(data))
			w, err = zw.CreateRaw(fh)
		}
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	if b := buf.Bytes(); b[6]&0x8 == 0 == descriptor {
		t.Fatalf("data descriptor flag %v, want %v", !descriptor, descriptor)
	}
	return buf.Bytes()
}

type zipEntry struct {
	name   string
	method uint16
	data   []byte
}

// attachment is a multipart message with a text part and one base64
// attachment.
func attachment(name, ctype string, data []byte) string {
	b64 := base64.StdEncoding.EncodeToString(data)
	var lines []string
	for len(b64) > 76 {
		lines = append(lines, b64[:76])
		b64 = b64[76:]
	}
	lines = append(lines, b64)
	return crlf(append(append([]string{
		"From: a@example.org", "Subject: doc", "Content-Type: multipart/mixed; boundary=b", "",
		"--b", "Content-Type: text/plain", "", "see attached",
		"--b", "Content-Type: " + ctype + "; name=\"" + name + "\"", "Content-Disposition: attachment; filename=\"" + name + "\"",
		"Content-Transfer-Encoding: base64", ""}, lines...), "--b--", "")...)
}

func TestWalk(t *testing.T) {
	storedExe := zipOf(t, false, zipEntry{"readme.txt", zip.Store, []byte("hello there")}, zipEntry{"invoice.pdf", zip.Store, exe})
	deflatedExe := zipOf(t, false, zipEntry{"a.txt", zip.Deflate, bytes.Repeat([]byte("text "), 1000)}, zipEntry{"dir/run.scr", zip.Deflate, exe})
	descr := zipOf(t, true, zipEntry{"one.txt", zip.Store, []byte("stored with a descriptor")},
		zipEntry{"two.exe", zip.Deflate, exe}, zipEntry{"three.pdf", zip.Store, []byte("%PDF-1.4 x")})
	inner := zipOf(t, false, zipEntry{"evil.exe", zip.Store, exe})
	nestedZip := zipOf(t, false, zipEntry{"inner.zip", zip.Store, inner}, zipEntry{"after.txt", zip.Deflate, []byte("plain text after")})
	encrypted := zipOf(t, false, zipEntry{"secret.exe", zip.Store, exe})
	encrypted[6] |= 1 // general purpose flag bit 0: encrypted

	tests := []struct {
		name     string
		msg      string
		lines    []string
		attach   []string
		urls     []string
		domains  []string
		problems []string // kinds
		zipProbs int
	}{
		{
			name:   "renamed executable",
			msg:    attachment("invoice.pdf", "application/pdf", exe),
			lines:  []string{"see attached"},
			attach: []string{"invoice.pdf|exe"},
		},
		{
			name:   "double extension",
			msg:    attachment("invoice.pdf.exe", "application/octet-stream", exe),
			lines:  []string{"see attached"},
			attach: []string{"invoice.pdf.exe|exe"},
		},
		{
			name:   "exe inside a stored zip",
			msg:    attachment("docs.zip", "application/zip", storedExe),
			lines:  []string{"see attached"},
			attach: []string{"docs.zip|zip", "readme.txt|text/plain", "invoice.pdf|exe"},
		},
		{
			name:   "exe inside a deflated zip",
			msg:    attachment("docs.zip", "application/zip", deflatedExe),
			lines:  []string{"see attached"},
			attach: []string{"docs.zip|zip", "a.txt|text/plain", "dir/run.scr|exe"},
		},
		{
			name:   "zip with data descriptors",
			msg:    attachment("d.zip", "application/zip", descr),
			lines:  []string{"see attached"},
			attach: []string{"d.zip|zip", "one.txt|text/plain", "two.exe|exe", "three.pdf|pdf"},
		},
		{
			name:   "nested zip listed, not opened",
			msg:    attachment("n.zip", "application/zip", nestedZip),
			lines:  []string{"see attached"},
			attach: []string{"n.zip|zip", "inner.zip|zip", "after.txt|text/plain"},
		},
		{
			name:   "encrypted entry: name only",
			msg:    attachment("e.zip", "application/zip", encrypted),
			lines:  []string{"see attached"},
			attach: []string{"e.zip|zip", "secret.exe|"},
		},
		{
			name:     "truncated zip",
			msg:      attachment("t.zip", "application/zip", storedExe[:60]),
			lines:    []string{"see attached"},
			attach:   []string{"t.zip|zip", "readme.txt|text/plain"},
			zipProbs: 1,
		},
		{
			name: "html links and text",
			msg: crlf("Content-Type: text/html; charset=utf-8", "",
				`<p>Pay <a href="https://Login.Example.CO.UK:8443/x?y=1">here</a></p><img src="http://192.0.2.7/p.gif">`,
				`<a href="mailto:x@example.org">mail</a> <a href="/relative">r</a> <a href=//cdn.example.net/a>c</a>`),
			lines:   []string{"", "Pay here", "", "mail r c"}, // </p> and the line end in the source
			urls:    []string{"login.example.co.uk", "192.0.2.7", "cdn.example.net"},
			domains: []string{"example.co.uk", "example.net"},
		},
		{
			name: "text urls",
			msg: crlf("Subject: t", "", "Go to http://user:pw@Shop.Example.com./buy, or www.example.org.",
				"HTTPS://[2001:DB8::1]:443/ and (https://b%2Eexample.info) again http://shop.example.com",
				"not a url: awww.example.net or http:/ or https://"),
			lines: []string{"Go to http://user:pw@Shop.Example.com./buy, or www.example.org.",
				"HTTPS://[2001:DB8::1]:443/ and (https://b%2Eexample.info) again http://shop.example.com",
				"not a url: awww.example.net or http:/ or https://"},
			urls:    []string{"shop.example.com", "www.example.org", "2001:db8::1", "b.example.info"},
			domains: []string{"example.com", "example.org", "example.info"},
		},
		{
			name: "base64, quoted-printable and charsets",
			msg: crlf("Content-Type: multipart/alternative; boundary=x", "",
				"--x", "Content-Type: text/plain; charset=iso-8859-1", "Content-Transfer-Encoding: quoted-printable", "",
				"Caf=E9 cr=E8me soft=", "break www.b=FCcher.example",
				"--x", "Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: base64", "",
				base64.StdEncoding.EncodeToString([]byte("Grüße\r\nvon http://bücher.example/\r\n")),
				"--x--"),
			lines:   []string{"Café crème softbreak www.bücher.example", "Grüße", "von http://bücher.example/"},
			urls:    []string{"www.bücher.example", "bücher.example"},
			domains: []string{"xn--bcher-kva.example"},
		},
		{
			name: "malformed MIME reported",
			msg: crlf("Content-Type: multipart/mixed; boundary=z", "", "--z", "Content-Transfer-Encoding: base64", "", "aGVsbG8*", "--z",
				"Content-Type: text/plain; charset=x-unknown", "", "odd"),
			lines:    []string{"hello", "odd"},
			problems: []string{"encoding", "charset", "boundary"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var r rec
			rep, err := Walk(strings.NewReader(tc.msg), int64(len(tc.msg)), &r, Limits{})
			if err != nil {
				t.Fatal(err)
			}
			var kinds []string
			for _, p := range rep.Problems {
				kinds = append(kinds, p.Kind)
			}
			check := func(what string, got, want any) {
				t.Helper()
				if !reflect.DeepEqual(got, want) {
					t.Errorf("%s: got %q, want %q", what, got, want)
				}
			}
			check("lines", r.lines, tc.lines)
			check("attachments", r.attach, tc.attach)
			check("urls", r.urls, tc.urls)
			check("domains", rep.URLDomains, tc.domains)
			check("problems", kinds, tc.problems)
			if rep.ZipProblems != tc.zipProbs {
				t.Errorf("ZipProblems %d, want %d", rep.ZipProblems, tc.zipProbs)
			}
			if r.size != int64(len(tc.msg)) || r.sizeSet != 1 {
				t.Errorf("Size %d (%d calls), want %d once", r.size, r.sizeSet, len(tc.msg))
			}
		})
	}
}

func TestLongLines(t *testing.T) {
	words := strings.Repeat("word ", 4000) // 20,000 bytes, no line end
	runes := strings.Repeat("é", MaxLine)  // 2 bytes each: a cut must not split one
	msg := crlf("Subject: l", "", words, runes, "http://a.example/"+strings.Repeat("x", 9000), "short")
	var r rec
	if _, err := Walk(strings.NewReader(msg), -1, &r, Limits{}); err != nil {
		t.Fatal(err)
	}
	var joined strings.Builder
	for i, l := range r.lines {
		if len(l) > MaxLine {
			t.Errorf("line %d is %d bytes", i, len(l))
		}
		if strings.Contains(l, "\n") {
			t.Errorf("line %d holds a line end", i)
		}
		joined.WriteString(l)
	}
	if want := strings.ReplaceAll(strings.TrimPrefix(msg, "Subject: l\r\n\r\n"), "\r\n", ""); joined.String() != want {
		t.Errorf("the pieces do not add up to the text (%d bytes, want %d)", joined.Len(), len(want))
	}
	for i, l := range r.lines {
		if strings.HasPrefix(l, "word") && !strings.HasSuffix(l, " ") && i+1 < len(r.lines) && strings.HasPrefix(r.lines[i+1], "word") {
			t.Errorf("line %d cut inside a word: …%q", i, l[len(l)-10:])
		}
		if strings.HasPrefix(l, "é") && !strings.HasSuffix(l, "é") {
			t.Errorf("line %d cut inside a character", i)
		}
	}
	if r.size != int64(len(msg)) || !reflect.DeepEqual(r.urls, []string{"a.example"}) {
		t.Errorf("Size %d (want %d, read bytes), urls %q", r.size, len(msg), r.urls)
	}
}

func TestLimitsHold(t *testing.T) {
	var text strings.Builder
	text.WriteString("Subject: many\r\n\r\n")
	for i := 0; i < 300; i++ {
		fmt.Fprintf(&text, "http://h%d.example%d.com/ http://h%d.example%d.com/\r\n", i, i%50, i, i%50)
	}
	var entries []zipEntry
	for i := 0; i < 30; i++ {
		entries = append(entries, zipEntry{fmt.Sprintf("f%d.txt", i), zip.Store, []byte("x")})
	}
	many := attachment("m.zip", "application/zip", zipOf(t, false, entries...))

	t.Run("urls", func(t *testing.T) {
		var r rec
		rep, _ := Walk(strings.NewReader(text.String()), 0, &r, Limits{MaxURLs: 120})
		if len(r.urls) != 120 || len(rep.URLDomains) != 50 {
			t.Errorf("%d hosts, %d domains; want 120 and 50", len(r.urls), len(rep.URLDomains))
		}
		seen := map[string]bool{}
		for _, h := range r.urls {
			if seen[h] {
				t.Errorf("host %q twice", h)
			}
			seen[h] = true
		}
	})
	t.Run("zip entries", func(t *testing.T) {
		var r rec
		rep, _ := Walk(strings.NewReader(many), 0, &r, Limits{MaxZipEntries: 10})
		if len(r.attach) != 11 || rep.ZipProblems != 1 {
			t.Errorf("%d attachments reported, ZipProblems %d; want 1+10 and 1", len(r.attach), rep.ZipProblems)
		}
	})
	t.Run("scan bytes", func(t *testing.T) {
		var r rec
		rep, _ := Walk(strings.NewReader(many), 0, &r, Limits{MaxScanBytes: 400})
		if !rep.Truncated || rep.ZipProblems != 1 {
			t.Errorf("Truncated %v, ZipProblems %d; want true and 1", rep.Truncated, rep.ZipProblems)
		}
	})
	t.Run("depth bomb", func(t *testing.T) {
		var r rec
		rep, _ := Walk(strings.NewReader(nested(1000)), 0, &r, Limits{})
		if !hasKind(rep, "depth") || rep.Parts > mimewalk.DefaultMaxDepth+1 {
			t.Errorf("parts %d, problems %v", rep.Parts, rep.Problems)
		}
	})
	t.Run("parts bomb", func(t *testing.T) {
		var r rec
		rep, _ := Walk(strings.NewReader(partsBomb(100000)), 0, &r, Limits{})
		if !hasKind(rep, "parts") || rep.Parts != mimewalk.DefaultMaxParts || !rep.Truncated {
			t.Errorf("parts %d, truncated %v, problems %v", rep.Parts, rep.Truncated, rep.Problems)
		}
	})
}

func hasKind(rep Report, kind string) bool {
	for _, p := range rep.Problems {
		if p.Kind == kind {
			return true
		}
	}
	return false
}

func nested(depth int) string {
	var b strings.Builder
	for i := 0; i < depth; i++ {
		fmt.Fprintf(&b, "Content-Type: multipart/mixed; boundary=\"d%d\"\r\n\r\n--d%d\r\n", i, i)
	}
	b.WriteString("\r\nbottom\r\n")
	for i := depth - 1; i >= 0; i-- {
		fmt.Fprintf(&b, "--d%d--\r\n", i)
	}
	return b.String()
}

func partsBomb(n int) string {
	var b strings.Builder
	b.WriteString("Content-Type: multipart/mixed; boundary=p\r\n\r\n")
	for i := 0; i < n; i++ {
		b.WriteString("--p\r\n\r\n\r\n")
	}
	return b.String()
}

// panicky is a Sink that panics, as a broken dependency would.
type panicky struct{ rec }

func (p *panicky) Attachment(string, string) { panic("boom") }

type failing struct{}

func (failing) Read([]byte) (int, error) { return 0, errors.New("spool gone") }

func TestFailures(t *testing.T) {
	var p panicky
	rep, err := Walk(strings.NewReader(attachment("a.pdf", "application/pdf", exe)), 10, &p, Limits{})
	if err != nil || !hasKind(rep, "panic") || !rep.Truncated {
		t.Errorf("panic: err %v, report %+v", err, rep)
	}
	var r rec
	if _, err := Walk(failing{}, 10, &r, Limits{}); err == nil || !strings.Contains(err.Error(), "spool gone") {
		t.Errorf("failing reader: err %v", err)
	}
	// A source failing inside a zip is an error too, not a zip problem.
	msg := attachment("z.zip", "application/zip", zipOf(t, false, zipEntry{"a", zip.Store, bytes.Repeat([]byte("a"), 5000)}))
	if _, err := Walk(io.MultiReader(strings.NewReader(msg[:len(msg)-100]), failing{}), 10, &r, Limits{}); err == nil {
		t.Error("failing reader inside a zip: no error")
	}
}
