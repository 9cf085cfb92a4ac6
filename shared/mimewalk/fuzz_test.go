package mimewalk

import (
	"bytes"
	"io"
	"testing"
)

// FuzzWalk walks arbitrary input under small limits and checks that the walk
// never panics, that its Result stays within the limits, and that the
// visitor is never handed more than MaxDecodedBytes in all. The first four
// bytes choose the limits; the rest is the message. Seeds: testdata/fuzz/FuzzWalk
// and the messages below.
func FuzzWalk(f *testing.F) {
	for _, m := range []string{
		crlf("Subject: x", "", "body"),
		nested(12),
		crlf(`Content-Type: multipart/mixed; boundary=a`, "", "--a", "Content-Transfer-Encoding: base64", "", "aGVsbG8=", "--a",
			"Content-Type: text/html; charset=windows-1252", "Content-Transfer-Encoding: quoted-printable", "",
			"<p>caf=E9 &amp; <script>x</script>", "--a", "Content-Type: message/rfc822", "", "Content-Type: text/plain", "", "inner", "--a--"),
		crlf(`Content-Type: multipart/digest; boundary="b"`, "", "--b", "", "Subject: d", "", "digest", "--b"),
		crlf("Content-Type: application/octet-stream; name*0*=iso-8859-1''a%E9; name*1=.exe", "", "MZ"),
	} {
		f.Add([]byte("\x03\x08\x40\x20" + m))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < 4 {
			return
		}
		lim := Limits{
			MaxDepth:        1 + int(in[0]%8),
			MaxParts:        1 + int(in[1]%64),
			MaxDecodedBytes: 1 + int64(in[2])*16,
			MaxHeaderBytes:  16 + int(in[3])*4,
		}
		var handed int64
		visits := 0
		res, err := Walk(bytes.NewReader(in[4:]), lim, func(p *Part, body io.Reader) error {
			visits++
			if p.Depth > lim.MaxDepth {
				t.Errorf("part %q at depth %d beyond MaxDepth %d", p.Path, p.Depth, lim.MaxDepth)
			}
			if p.MediaType == "" {
				t.Errorf("part %q without a media type", p.Path)
			}
			counted := &countingReader{r: body, n: &handed}
			if visits%2 == 0 {
				// Read part of it only, and sniff it.
				buf := make([]byte, SniffLen)
				n, _ := io.ReadFull(counted, buf)
				Sniff(buf[:n])
				return nil
			}
			_, err := io.Copy(io.Discard, TextReader(p, counted))
			return err
		})
		if err != nil {
			t.Fatalf("Walk on a bytes.Reader: %v", err)
		}
		if handed > lim.MaxDecodedBytes || handed != res.DecodedBytes {
			t.Errorf("visitor handed %d bytes, Result %d, MaxDecodedBytes %d", handed, res.DecodedBytes, lim.MaxDecodedBytes)
		}
		if res.Parts > lim.MaxParts || res.Visited > res.Parts || res.Visited != visits {
			t.Errorf("Parts %d, Visited %d, visits %d, MaxParts %d", res.Parts, res.Visited, visits, lim.MaxParts)
		}
		if len(res.Problems) > MaxProblems {
			t.Errorf("%d problems listed", len(res.Problems))
		}
	})
}

type countingReader struct {
	r io.Reader
	n *int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	*c.n += int64(n)
	return n, err
}
