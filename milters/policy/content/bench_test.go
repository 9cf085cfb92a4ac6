package content

import (
	"encoding/base64"
	"encoding/binary"
	"io"
	"strings"
	"testing"

	"github.com/geomilter/geomilter/shared/memtest"
)

// zipRun is the base64 of one stored zip entry (header, name, data starting
// with MZ) of 114 bytes: two base64 lines, so that repeating the text
// repeats the entry. Without a central directory the lister lists up to its
// entry limit and the rest of the part is skipped.
var zipRun = func() string {
	name := "a.exe"
	data := []byte("MZ" + strings.Repeat("x", 114-30-len(name)-2))
	h := make([]byte, 30, 114)
	copy(h, "PK\x03\x04")
	binary.LittleEndian.PutUint32(h[18:], uint32(len(data)))
	binary.LittleEndian.PutUint32(h[22:], uint32(len(data)))
	binary.LittleEndian.PutUint16(h[26:], uint16(len(name)))
	h = append(append(h, name...), data...)
	b := base64.StdEncoding.EncodeToString(h)
	return b[:76] + "\r\n" + b[76:] + "\r\n"
}()

// bigMessage is a message of about total bytes: a quoted-printable text
// part with URLs, an HTML part with links that is one text run, a base64
// zip attachment, and a text part that is a single line without a line end.
func bigMessage(total int64) io.Reader {
	q := total / 5
	s := strings.NewReader
	return io.MultiReader(
		s("Content-Type: multipart/mixed; boundary=big\r\n\r\n--big\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"),
		memtest.Repeat("Caf=E9 see http://www.example.com/x and www.example.org, a soft =\r\nbreak, more text here.\r\n", q),
		s("\r\n--big\r\nContent-Type: text/html\r\n\r\n<p>"),
		memtest.Repeat(`text &amp; <a href="https://link.example.net/?a=1&amp;b=2">more</a> text without any line end `, q),
		s("\r\n--big\r\nContent-Type: application/zip\r\nContent-Disposition: attachment; filename=a.zip\r\nContent-Transfer-Encoding: base64\r\n\r\n"),
		memtest.Repeat(zipRun, 2*q/int64(len(zipRun))*int64(len(zipRun))),
		s("\r\n--big\r\nContent-Type: text/plain\r\n\r\n"),
		memtest.Repeat("no line end at all ", q),
		s("\r\n--big--\r\n"),
	)
}

// counter is a Sink that counts.
type counter struct{ lines, attach, urls int }

func (c *counter) Text([]byte)               { c.lines++ }
func (c *counter) Attachment(string, string) { c.attach++ }
func (c *counter) URL(string)                { c.urls++ }
func (c *counter) Size(int64)                {}

// TestMemoryBounded walks a 50 MB message with no scan limit in the way and
// checks that the heap grew by far less than the message: issue 15 asks for
// growth under 64 MiB; the walk needs a few fixed buffers.
func TestMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("50 MB walk")
	}
	const size = 50 << 20
	base := memtest.Start()
	s := &memtest.Sampler{R: bigMessage(size)}
	var c counter
	rep, err := Walk(s, -1, &c, Limits{MaxScanBytes: 1 << 40})
	if err != nil {
		t.Fatal(err)
	}
	growth := s.Growth(base)
	t.Logf("read %d bytes, %d lines, %d attachments, %d hosts, domains %q, peak heap growth %.1f MiB, %v",
		s.N, c.lines, c.attach, c.urls, rep.URLDomains, float64(growth)/(1<<20), rep.Duration)
	if s.N < size*9/10 || rep.TextParts != 3 || c.attach != 1+DefaultMaxZipEntries || rep.ZipProblems != 1 || c.urls != 3 {
		t.Errorf("read %d, report %+v, sink %+v: the message was not walked whole", s.N, rep, c)
	}
	if growth > 16<<20 {
		t.Errorf("heap grew by %d bytes walking a %d-byte message; want under 16 MiB", growth, size)
	}
}

func BenchmarkWalkBig(b *testing.B) {
	const size = 10 << 20
	b.SetBytes(size)
	for b.Loop() {
		if _, err := Walk(bigMessage(size), size, &counter{}, Limits{MaxScanBytes: 1 << 40}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkBombs(b *testing.B) {
	for _, bc := range []struct{ name, msg string }{{"depth1000", nested(1000)}, {"parts100k", partsBomb(100000)}} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(bc.msg)))
			for b.Loop() {
				if _, err := Walk(strings.NewReader(bc.msg), int64(len(bc.msg)), &counter{}, Limits{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// typical is a 20 KB message as a newsletter or an invoice mail is: text
// and HTML alternatives with links, and a small PDF attachment.
func typical() string {
	var b strings.Builder
	b.WriteString("From: news@example.com\r\nTo: a@example.org\r\nSubject: News\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=outer\r\n\r\n--outer\r\n" +
		"Content-Type: multipart/alternative; boundary=alt\r\n\r\n--alt\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n")
	for i := 0; b.Len() < 7000; i++ {
		b.WriteString("Dear customer, our offer this week: see https://shop.example.com/item?id=42 =\r\nor write to us. Gr=C3=BC=C3=9Fe.\r\n")
	}
	b.WriteString("--alt\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html><body>")
	for b.Len() < 15000 {
		b.WriteString(`<p>Dear customer, our <b>offer</b> this week: <a href="https://shop.example.com/item?id=42&amp;utm=x">see it</a><img src="https://cdn.example.net/p.gif"></p>` + "\r\n")
	}
	b.WriteString("</body></html>\r\n--alt--\r\n--outer\r\nContent-Type: application/pdf; name=invoice.pdf\r\n" +
		"Content-Disposition: attachment; filename=invoice.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n")
	pdf := base64.StdEncoding.EncodeToString([]byte("%PDF-1.4\n" + strings.Repeat("0 0 obj << >> endobj\n", 180)))
	for len(pdf) > 76 {
		b.WriteString(pdf[:76] + "\r\n")
		pdf = pdf[76:]
	}
	b.WriteString(pdf + "\r\n--outer--\r\n")
	return b.String()
}

func BenchmarkWalkTypical(b *testing.B) {
	msg := typical()
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Walk(strings.NewReader(msg), int64(len(msg)), &counter{}, Limits{}); err != nil {
			b.Fatal(err)
		}
	}
}
