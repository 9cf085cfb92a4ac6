package content

import (
	"archive/zip"
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/geomilter/geomilter/shared/mimewalk"
)

// FuzzWalk walks arbitrary input under small limits and checks that the walk
// never panics (a recovered panic shows as a Problem "panic"), never fails
// on a reader that does not, and that the Report and what the sink received
// stay within the limits. The first four bytes choose the limits; the rest
// is the message. Seeds: testdata/fuzz/FuzzWalk and the messages below.
func FuzzWalk(f *testing.F) {
	z := zipOf(f, true, zipEntry{"a.exe", zip.Deflate, exe}, zipEntry{"b.txt", zip.Store, []byte("text")})
	for _, m := range []string{
		crlf("Subject: x", "", "http://Example.com:80/ www.example.org. https://[::1]/"),
		crlf("Content-Type: text/html", "", `<a href="https://a.example/">x</a><img src=//b.example/i>`),
		attachment("x.zip", "application/zip", z),
		attachment("r.pdf", "application/pdf", exe),
		nested(12),
	} {
		f.Add([]byte("\x03\x08\x40\x05" + m))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < 4 {
			return
		}
		lim := Limits{
			MaxDepth:      1 + int(in[0]%8),
			MaxParts:      1 + int(in[1]%64),
			MaxScanBytes:  1 + int64(in[2])*64,
			MaxURLs:       1 + int(in[3]%16),
			MaxZipEntries: 1 + int(in[3]/16),
		}
		var r rec
		rep, err := Walk(bytes.NewReader(in[4:]), int64(len(in)-4), &r, lim)
		if err != nil {
			t.Fatalf("error on a reader that never fails: %v", err)
		}
		for _, p := range rep.Problems {
			if p.Kind == "panic" {
				t.Fatalf("panic: %s", p.Detail)
			}
		}
		if len(rep.Problems) > mimewalk.MaxProblems || rep.Parts > lim.MaxParts ||
			rep.TextParts+rep.Attachments > rep.Parts || rep.ZipProblems > rep.Attachments {
			t.Fatalf("report out of bounds: %+v", rep)
		}
		if len(r.attach) > rep.Attachments*(1+lim.MaxZipEntries) {
			t.Fatalf("%d attachments reported for %d parts", len(r.attach), rep.Attachments)
		}
		for _, l := range r.lines {
			if len(l) > MaxLine || strings.IndexByte(l, '\n') >= 0 {
				t.Fatalf("line of %d bytes or with a line end", len(l))
			}
		}
		if len(r.urls) > lim.MaxURLs || len(rep.URLDomains) > len(r.urls) {
			t.Fatalf("%d hosts, %d domains, limit %d", len(r.urls), len(rep.URLDomains), lim.MaxURLs)
		}
		distinct(t, "host", r.urls)
		distinct(t, "domain", rep.URLDomains)
		for _, h := range r.urls {
			if h == "" || strings.HasSuffix(h, ".") || !utf8.ValidString(h) || h != strings.ToLower(h) ||
				strings.ContainsAny(h, "/@[] \t") || strings.Contains(h, ":") && !strings.Contains(h, "::") && strings.Count(h, ":") < 2 {
				t.Fatalf("bad host %q", h)
			}
		}
		if r.sizeSet != 1 || r.size != int64(len(in)-4) {
			t.Fatalf("Size %d in %d calls", r.size, r.sizeSet)
		}
	})
}

func distinct(t *testing.T, what string, list []string) {
	seen := make(map[string]bool, len(list))
	for _, s := range list {
		if seen[s] {
			t.Fatalf("%s %q twice", what, s)
		}
		seen[s] = true
	}
}
