package mimewalk

import (
	"io"
	"strings"
	"testing"

	"github.com/geomilter/geomilter/shared/memtest"
)

// bigMessage is a message of about total bytes: a long quoted-printable text
// part, an HTML part that is one text run, a base64 attachment, and a part
// that is a single line without a line end.
func bigMessage(total int64) io.Reader {
	q := total / 5
	s := strings.NewReader
	return io.MultiReader(
		s("Content-Type: multipart/mixed; boundary=big\r\n\r\n--big\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"),
		memtest.Repeat("Caf=E9 card 4111 1111 1111 1111 and a soft =\r\nbreak, more text here.\r\n", q),
		s("\r\n--big\r\nContent-Type: text/html\r\n\r\n<p>"),
		memtest.Repeat("text &amp; more text without any tag ", q),
		s("\r\n--big\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=a.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n"),
		memtest.Repeat(strings.Repeat("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo", 2)+"\r\n", 2*q),
		s("\r\n--big\r\nContent-Type: text/plain\r\n\r\n"),
		memtest.Repeat("no line end at all ", q),
		s("\r\n--big--\r\n"),
	)
}

// TestMemoryBounded walks a 50 MB message, reading every decoded byte (no
// MaxDecodedBytes in the way), and checks that the heap grew by far less than
// the message: issue 15 and 17 ask for growth under 64 MiB; the walk itself
// should need a few buffers per part.
func TestMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("50 MB walk")
	}
	const size = 50 << 20
	base := memtest.Start()
	s := &memtest.Sampler{R: bigMessage(size)}
	var decoded int64
	res, err := Walk(s, Limits{MaxDecodedBytes: 1 << 40}, func(p *Part, body io.Reader) error {
		n, err := io.Copy(io.Discard, &memtest.Sampler{R: TextReader(p, body)})
		decoded += n
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	growth := s.Growth(base)
	t.Logf("read %d bytes, decoded %d, %d parts, peak heap growth %.1f MiB, problems %v",
		s.N, decoded, res.Visited, float64(growth)/(1<<20), res.Problems)
	if s.N < size || res.Visited != 4 || decoded < size/2 {
		t.Errorf("read %d, visited %d, decoded %d: the message was not walked whole", s.N, res.Visited, decoded)
	}
	if growth > 16<<20 {
		t.Errorf("heap grew by %d bytes walking a %d-byte message; want under 16 MiB", growth, size)
	}
}

func BenchmarkWalk(b *testing.B) {
	const size = 10 << 20
	b.SetBytes(size)
	for b.Loop() {
		_, err := Walk(bigMessage(size), Limits{MaxDecodedBytes: 1 << 40}, func(p *Part, body io.Reader) error {
			_, err := io.Copy(io.Discard, TextReader(p, body))
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkBombs(b *testing.B) {
	var parts strings.Builder
	parts.WriteString("Content-Type: multipart/mixed; boundary=p\r\n\r\n")
	for i := 0; i < 100000; i++ {
		parts.WriteString("--p\r\n\r\n\r\n")
	}
	for _, bc := range []struct{ name, msg string }{{"depth1000", nested(1000)}, {"parts100k", parts.String()}} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := Walk(strings.NewReader(bc.msg), Limits{}, func(*Part, io.Reader) error { return nil }); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
