package mimewalk

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"
)

// crlf joins lines with CRLF, the line end of mail on the wire.
func crlf(lines ...string) string { return strings.Join(lines, "\r\n") }

// seen is what a test visitor records of one part.
type seen struct {
	Path, Type, Name, Charset, Disp string
	Depth                           int
	Text, Attach                    bool
	Body                            string
}

func (s seen) String() string {
	return fmt.Sprintf("{%q %s name=%q cs=%q disp=%q d=%d text=%v att=%v body=%q}",
		s.Path, s.Type, s.Name, s.Charset, s.Disp, s.Depth, s.Text, s.Attach, s.Body)
}

// walkAll walks m with lim and records every part with its whole body (HTML
// reduced to text).
func walkAll(t *testing.T, m string, lim Limits) ([]seen, Result) {
	t.Helper()
	var got []seen
	res, err := Walk(strings.NewReader(m), lim, func(p *Part, body io.Reader) error {
		b, err := io.ReadAll(TextReader(p, body))
		if err != nil {
			return err
		}
		got = append(got, seen{p.Path, p.MediaType, p.FileName, p.Charset, p.Disposition, p.Depth, p.Text, p.Attachment, string(b)})
		return nil
	})
	if err != nil {
		t.Fatalf("Walk: %v", err)
	}
	return got, res
}

func kinds(r Result) []string {
	var k []string
	for _, p := range r.Problems {
		k = append(k, p.Kind)
	}
	return k
}

func enc64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestWalk(t *testing.T) {
	tests := []struct {
		name     string
		msg      string
		want     []seen
		problems []string // kinds, in order
	}{
		{
			name: "single part, no Content-Type (RFC 2045 §5.2: text/plain)",
			msg:  crlf("Subject: hi", "", "Hello,", "world."),
			want: []seen{{Path: "", Type: "text/plain", Text: true, Body: "Hello,\r\nworld."}},
		},
		{
			name: "single part base64 text with charset utf-8",
			msg: crlf("Content-Type: text/plain; charset=UTF-8", "Content-Transfer-Encoding: base64", "",
				enc64("Grüße, 4111 1111 1111 1111")),
			want: []seen{{Type: "text/plain", Charset: "utf-8", Text: true, Body: "Grüße, 4111 1111 1111 1111"}},
		},
		{
			name: "multipart/alternative: quoted-printable text and base64 HTML",
			msg: crlf(
				"MIME-Version: 1.0",
				`Content-Type: multipart/alternative; boundary="b1"`,
				"",
				"This is the preamble.",
				"--b1",
				"Content-Type: text/plain; charset=iso-8859-1",
				"Content-Transfer-Encoding: quoted-printable",
				"",
				"caf=E9 au lait, a soft=",
				" break and =3D sign",
				"--b1",
				"Content-Type: text/html; charset=utf-8",
				"Content-Transfer-Encoding: base64",
				"",
				enc64("<p>caf&eacute;</p><script>var x=1;</script><b>au</b> lait"),
				"--b1--",
				"epilogue",
			),
			want: []seen{
				{Path: "1", Type: "text/plain", Charset: "iso-8859-1", Depth: 1, Text: true, Body: "café au lait, a soft break and = sign"},
				{Path: "2", Type: "text/html", Charset: "utf-8", Depth: 1, Text: true, Body: "\ncafé\nau lait"},
			},
		},
		{
			name: "mixed with attachments: pdf, double extension, inline image",
			msg: crlf(
				`Content-Type: multipart/mixed; boundary=XYZ`,
				"",
				"--XYZ",
				"",
				"See attached.",
				"--XYZ",
				`Content-Type: application/pdf; name="invoice.pdf"`,
				`Content-Disposition: attachment; filename="invoice.pdf"`,
				"Content-Transfer-Encoding: base64",
				"",
				enc64("%PDF-1.4 ..."),
				"--XYZ",
				`Content-Type: application/octet-stream`,
				`Content-Disposition: attachment; filename="invoice.pdf.exe"`,
				"Content-Transfer-Encoding: base64",
				"",
				enc64("MZ\x90\x00"),
				"--XYZ",
				`Content-Type: image/png`,
				`Content-Disposition: inline`,
				"",
				"png",
				"--XYZ",
				`Content-Type: text/plain; name=notes.txt`,
				"",
				"notes",
				"--XYZ--",
			),
			want: []seen{
				{Path: "1", Type: "text/plain", Depth: 1, Text: true, Body: "See attached."},
				{Path: "2", Type: "application/pdf", Name: "invoice.pdf", Disp: "attachment", Depth: 1, Attach: true, Body: "%PDF-1.4 ..."},
				{Path: "3", Type: "application/octet-stream", Name: "invoice.pdf.exe", Disp: "attachment", Depth: 1, Attach: true, Body: "MZ\x90\x00"},
				{Path: "4", Type: "image/png", Disp: "inline", Depth: 1, Attach: true, Body: "png"},
				{Path: "5", Type: "text/plain", Name: "notes.txt", Depth: 1, Attach: true, Body: "notes"},
			},
		},
		{
			name: "nested message/rfc822 (IMAP numbering, RFC 3501 §6.4.5)",
			msg: crlf(
				`Content-Type: multipart/mixed; boundary=outer`,
				"",
				"--outer",
				"Content-Type: text/plain",
				"",
				"forwarding",
				"--outer",
				"Content-Type: message/rfc822",
				"",
				"Subject: inner",
				`Content-Type: multipart/alternative; boundary=inner`,
				"",
				"--inner",
				"",
				"inner text",
				"--inner",
				"Content-Type: text/html",
				"",
				"<div>inner&nbsp;html</div>",
				"--inner--",
				"",
				"--outer",
				"Content-Type: message/rfc822",
				"",
				"Subject: single",
				"",
				"single body",
				"--outer--",
			),
			want: []seen{
				{Path: "1", Type: "text/plain", Depth: 1, Text: true, Body: "forwarding"},
				{Path: "2.1", Type: "text/plain", Depth: 3, Text: true, Body: "inner text"},
				{Path: "2.2", Type: "text/html", Depth: 3, Text: true, Body: "\ninner\u00a0html\n"},
				{Path: "3.1", Type: "text/plain", Depth: 2, Text: true, Body: "single body"},
			},
		},
		{
			name: "charsets: windows-1252, Shift_JIS, unknown",
			msg: crlf(
				`Content-Type: multipart/mixed; boundary=c`,
				"",
				"--c",
				"Content-Type: text/plain; charset=windows-1252",
				"",
				"\x80 100 \x93quoted\x94",
				"--c",
				"Content-Type: text/plain; charset=Shift_JIS",
				"",
				"\x93\xfa\x96\x7b",
				"--c",
				"Content-Type: text/plain; charset=x-nonsense",
				"",
				"as is \xff",
				"--c--",
			),
			want: []seen{
				{Path: "1", Type: "text/plain", Charset: "windows-1252", Depth: 1, Text: true, Body: "€ 100 “quoted”"},
				{Path: "2", Type: "text/plain", Charset: "shift_jis", Depth: 1, Text: true, Body: "日本"},
				{Path: "3", Type: "text/plain", Charset: "x-nonsense", Depth: 1, Text: true, Body: "as is \xff"},
			},
			problems: []string{"charset"},
		},
		{
			name: "file names: RFC 2231 UTF-8, RFC 2231 continuations in ISO-8859-1, RFC 2047",
			msg: crlf(
				`Content-Type: multipart/mixed; boundary=f`,
				"",
				"--f",
				"Content-Type: application/pdf",
				"Content-Disposition: attachment; filename*=UTF-8''%E2%82%AC%20rates.pdf",
				"",
				"x",
				"--f",
				"Content-Type: application/pdf",
				"Content-Disposition: attachment;",
				" filename*0*=iso-8859-1''caf%E9;",
				` filename*1=".pdf"`,
				"",
				"x",
				"--f",
				`Content-Type: application/octet-stream; name="=?UTF-8?B?`+enc64("Rechnung.pdf.exe")+`?="`,
				"",
				"x",
				"--f--",
			),
			want: []seen{
				{Path: "1", Type: "application/pdf", Name: "€ rates.pdf", Disp: "attachment", Depth: 1, Attach: true, Body: "x"},
				{Path: "2", Type: "application/pdf", Name: "café.pdf", Disp: "attachment", Depth: 1, Attach: true, Body: "x"},
				{Path: "3", Type: "application/octet-stream", Name: "Rechnung.pdf.exe", Depth: 1, Attach: true, Body: "x"},
			},
		},
		{
			name: "close delimiter missing",
			msg: crlf(
				`Content-Type: multipart/mixed; boundary=m`,
				"",
				"--m",
				"",
				"one",
				"--m",
				"",
				"two",
			),
			want: []seen{
				{Path: "1", Type: "text/plain", Depth: 1, Text: true, Body: "one"},
				{Path: "2", Type: "text/plain", Depth: 1, Text: true, Body: "two"},
			},
			problems: []string{"boundary"},
		},
		{
			name: "boundary that never appears",
			msg:  crlf(`Content-Type: multipart/mixed; boundary=nothere`, "", "--other", "", "text", "--other--"),
			want: nil, problems: []string{"boundary"},
		},
		{
			name:     "multipart without boundary parameter is scanned as text",
			msg:      crlf(`Content-Type: multipart/mixed`, "", "body text"),
			want:     []seen{{Type: "text/plain", Text: true, Body: "body text"}},
			problems: []string{"boundary"},
		},
		{
			name: "bad base64: junk skipped, the rest decoded",
			msg: crlf("Content-Type: text/plain", "Content-Transfer-Encoding: base64", "",
				enc64("hello ")+"!!*", enc64("world")),
			want:     []seen{{Type: "text/plain", Text: true, Body: "hello world"}},
			problems: []string{"encoding"},
		},
		{
			name:     "unknown transfer encoding passes the body as is",
			msg:      crlf("Content-Transfer-Encoding: x-uuencode", "", "begin 644 a"),
			want:     []seen{{Type: "text/plain", Text: true, Body: "begin 644 a"}},
			problems: []string{"encoding"},
		},
		{
			name:     "invalid Content-Type is text/plain",
			msg:      crlf("Content-Type: ;;;", "", "text"),
			want:     []seen{{Type: "text/plain", Text: true, Body: "text"}},
			problems: []string{"header"},
		},
		{
			name: "part without header block: its text is still the body",
			msg: crlf(`Content-Type: multipart/mixed; boundary=n`, "", "--n",
				"no blank line here, 4111111111111111", "--n--"),
			want:     []seen{{Path: "1", Type: "text/plain", Depth: 1, Text: true, Body: "no blank line here, 4111111111111111"}},
			problems: []string{"header"},
		},
		{
			name: "bare LF line ends and a delimiter lookalike inside a part",
			msg: strings.Join([]string{`Content-Type: multipart/mixed; boundary=lf`, "", "--lf", "",
				"--lfx is not a delimiter", "--lf-- ", ""}, "\n"),
			want: []seen{{Path: "1", Type: "text/plain", Depth: 1, Text: true, Body: "--lfx is not a delimiter"}},
		},
		{
			name: "multipart/digest: parts default to message/rfc822 (RFC 2046 §5.1.5)",
			msg: crlf(`Content-Type: multipart/digest; boundary=d`, "", "--d", "",
				"Subject: one", "", "first", "--d--"),
			want: []seen{{Path: "1.1", Type: "text/plain", Depth: 2, Text: true, Body: "first"}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, res := walkAll(t, tc.msg, Limits{})
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("parts:\n got %v\nwant %v", got, tc.want)
			}
			if k := kinds(res); !reflect.DeepEqual(k, tc.problems) {
				t.Errorf("problems: got %v (%v), want %v", k, res.Problems, tc.problems)
			}
			if res.Visited != len(tc.want) {
				t.Errorf("Visited = %d, want %d", res.Visited, len(tc.want))
			}
		})
	}
}

// nested builds a message of depth multiparts, one inside the other, with a
// text part at the bottom.
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

func TestLimits(t *testing.T) {
	t.Run("depth bomb: 1000 nested multiparts", func(t *testing.T) {
		got, res := walkAll(t, nested(1000), Limits{})
		if len(got) != 0 || !res.Has("depth") {
			t.Errorf("got %v, problems %v; want no parts and a depth problem", got, res.Problems)
		}
		if res.Parts != DefaultMaxDepth+1 {
			t.Errorf("Parts = %d, want %d", res.Parts, DefaultMaxDepth+1)
		}
	})
	t.Run("depth within the limit", func(t *testing.T) {
		got, res := walkAll(t, nested(DefaultMaxDepth), Limits{})
		if len(got) != 1 || got[0].Body != "bottom" || got[0].Depth != DefaultMaxDepth || len(res.Problems) != 0 {
			t.Errorf("got %v, problems %v; want the bottom part at depth %d", got, res.Problems, DefaultMaxDepth)
		}
		if want := strings.Repeat("1.", DefaultMaxDepth-1) + "1"; got[0].Path != want {
			t.Errorf("path %q, want %q", got[0].Path, want)
		}
	})
	t.Run("part bomb: 100,000 empty parts", func(t *testing.T) {
		var b strings.Builder
		b.WriteString("Content-Type: multipart/mixed; boundary=p\r\n\r\n")
		for i := 0; i < 100000; i++ {
			b.WriteString("--p\r\n\r\n\r\n")
		}
		b.WriteString("--p--\r\n")
		got, res := walkAll(t, b.String(), Limits{})
		if res.Parts != DefaultMaxParts || len(got) != DefaultMaxParts-1 || !res.Has("parts") || !res.Truncated {
			t.Errorf("Parts %d, visited %d, problems %v, truncated %v; want %d parts, a parts problem",
				res.Parts, len(got), kinds(res), res.Truncated, DefaultMaxParts)
		}
	})
	t.Run("long header lines", func(t *testing.T) {
		long := "X-Long: " + strings.Repeat("a", 200<<10)
		m := crlf(`Content-Type: multipart/mixed; boundary=h`, "", "--h", long,
			"Content-Type: text/plain", "", "after", "--h", "Content-Type: text/plain", "",
			strings.Repeat("b", 100<<10), "--h--")
		got, res := walkAll(t, m, Limits{})
		if len(got) != 2 || got[0].Body != "after" || len(got[1].Body) != 100<<10 || !res.Has("header") {
			t.Errorf("got %d parts (%.60v), problems %v; want 2 and a header problem", len(got), got, res.Problems)
		}
	})
	t.Run("decoded bytes", func(t *testing.T) {
		m := crlf(`Content-Type: multipart/mixed; boundary=b`, "", "--b", "", "0123456789",
			"--b", "", "abcdef", "--b", "Content-Disposition: attachment; filename=late.exe", "", "MZ", "--b--")
		var got []string
		var trunc []bool
		res, err := Walk(strings.NewReader(m), Limits{MaxDecodedBytes: 12}, func(p *Part, body io.Reader) error {
			b, _ := io.ReadAll(body)
			got = append(got, p.FileName+":"+string(b))
			trunc = append(trunc, p.Truncated)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if want := []string{":0123456789", ":ab", "late.exe:"}; !reflect.DeepEqual(got, want) {
			t.Errorf("bodies %q, want %q", got, want)
		}
		if want := []bool{false, true, true}; !reflect.DeepEqual(trunc, want) {
			t.Errorf("Truncated %v, want %v", trunc, want)
		}
		if res.DecodedBytes != 12 || !res.Truncated || !res.Has("bytes") {
			t.Errorf("result %+v", res)
		}
		// Spent exactly by the first part: the next is still marked.
		got, res = nil, Result{}
		res, err = Walk(strings.NewReader(m), Limits{MaxDecodedBytes: 10}, func(p *Part, body io.Reader) error {
			b, _ := io.ReadAll(body)
			got = append(got, string(b))
			return nil
		})
		if err != nil || !reflect.DeepEqual(got, []string{"0123456789", "", ""}) || !res.Has("bytes") || !res.Truncated {
			t.Errorf("budget spent by part 1: bodies %q, result %+v, err %v", got, res, err)
		}
	})
}

type failingReader struct {
	r   io.Reader
	err error
}

func (f *failingReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if err == io.EOF {
		return n, f.err
	}
	return n, err
}

func TestErrors(t *testing.T) {
	m := crlf(`Content-Type: multipart/mixed; boundary=e`, "", "--e", "", "one", "--e",
		"Content-Transfer-Encoding: base64", "", enc64("two"))
	errDisk := errors.New("disk on fire")
	t.Run("reading the message fails", func(t *testing.T) {
		_, err := Walk(&failingReader{strings.NewReader(m), errDisk}, Limits{}, func(p *Part, body io.Reader) error {
			_, err := io.Copy(io.Discard, body)
			return err
		})
		if !errors.Is(err, errDisk) {
			t.Errorf("err = %v, want %v", err, errDisk)
		}
	})
	t.Run("visitor that ignores the body still sees the failure", func(t *testing.T) {
		_, err := Walk(&failingReader{strings.NewReader(m), errDisk}, Limits{}, func(*Part, io.Reader) error { return nil })
		if !errors.Is(err, errDisk) {
			t.Errorf("err = %v, want %v", err, errDisk)
		}
	})
	t.Run("visit error stops the walk", func(t *testing.T) {
		stop := errors.New("found it")
		calls := 0
		_, err := Walk(strings.NewReader(m), Limits{}, func(*Part, io.Reader) error { calls++; return stop })
		if !errors.Is(err, stop) || calls != 1 {
			t.Errorf("err = %v after %d calls, want %v after 1", err, calls, stop)
		}
	})
}

func TestHeader(t *testing.T) {
	m := crlf("Subject: =?ISO-8859-1?Q?caf=E9?=", "X-Multi: a", "X-Multi: b", "Folded: one", "\ttwo", "", "body")
	var h Header
	_, err := Walk(strings.NewReader(m), Limits{}, func(p *Part, _ io.Reader) error { h = p.Header; return nil })
	if err != nil {
		t.Fatal(err)
	}
	if got := h.Text("subject"); got != "café" {
		t.Errorf("Text(subject) = %q", got)
	}
	if got := h.Values("x-multi"); !reflect.DeepEqual(got, []string{"a", "b"}) {
		t.Errorf("Values = %q", got)
	}
	if got := h.Get("Folded"); got != "one two" {
		t.Errorf("Get(Folded) = %q", got)
	}
	var keys []string
	h.Each(func(k, _ string) bool { keys = append(keys, k); return true })
	if h.Len() != 4 || !reflect.DeepEqual(keys, []string{"Subject", "X-Multi", "X-Multi", "Folded"}) || !h.Has("X-Multi") {
		t.Errorf("Len %d, keys %q", h.Len(), keys)
	}
}

func TestHTMLText(t *testing.T) {
	tests := []struct{ in, want string }{
		{"<html><head><title>T</title><style>p{color:red}</style></head><body><p>Hi &amp; bye</p></body></html>", "\n\n\nT\n\n\n\nHi & bye\n\n\n"},
		{"a<script type='x'>alert('<p>')</script>b", "ab"},
		{"<SCRIPT>x</ScRiPt >y", "y"},
		{"1 < 2 &lt; 3 &#x34; &#53; &copy &unknown; &", "1 < 2 < 3 4 5 © &unknown; &"},
		{"<!-- hidden -- still --> shown <!DOCTYPE html><?xml x?>", " shown "},
		{`<a href="x>y" title='>'>link</a>`, "link"},
		{"<table><tr><td>4111</td><td>1111</td></tr></table>", "\n\n\t4111\t\t1111\t\n\n"},
		{"line<br>next<br/>end", "line\nnext\nend"},
		{"unclosed <b", "unclosed "},
		{"ends with <", "ends with <"},
	}
	for _, tc := range tests {
		for _, chunk := range []int{1, 3, 4096} {
			b, err := io.ReadAll(newHTMLText(&chunked{strings.NewReader(tc.in), chunk}))
			if err != nil || string(b) != tc.want {
				t.Errorf("chunks of %d: %q → %q, %v; want %q", chunk, tc.in, b, err, tc.want)
			}
		}
	}
}

// chunked reads at most n bytes at a time, to put chunk ends everywhere.
type chunked struct {
	r io.Reader
	n int
}

func (c *chunked) Read(p []byte) (int, error) { return c.r.Read(p[:min(len(p), c.n)]) }

func TestDecoders(t *testing.T) {
	qp := []struct{ in, want string }{
		{"a=3Db", "a=b"},
		{"soft=\r\nbreak", "softbreak"},
		{"soft= \t\r\nbreak", "softbreak"},
		{"lf=\nbreak", "lfbreak"},
		{"literal = sign", "literal = sign"},
		{"bad =zz hex", "bad =zz hex"},
		{"half =4", "half =4"},
		{"end=", "end"},
		{"ctl\x01byte", "ctl\x01byte"},
		{strings.Repeat("x", 10000) + "=41", strings.Repeat("x", 10000) + "A"},
	}
	for _, tc := range qp {
		for _, chunk := range []int{1, 2, 4096} {
			b, err := io.ReadAll(&qpReader{r: &chunked{strings.NewReader(tc.in), chunk}})
			if err != nil || string(b) != tc.want {
				t.Errorf("QP chunks of %d: %.40q → %.40q, %v; want %.40q", chunk, tc.in, b, err, tc.want)
			}
		}
	}
	b64s := []struct {
		in, want string
		problem  bool
	}{
		{enc64("hello"), "hello", false},
		{"aGVs\r\n bG8=\r\n", "hello", false},
		{enc64("one") + enc64("two!"), "onetwo!", false},
		{enc64("ab") + "\r\n" + enc64("cd"), "abcd", false},
		{"aGVs#bG8", "hello", true},
		{"aGVsb", "hel", true},
	}
	for _, tc := range b64s {
		for _, chunk := range []int{1, 3, 4096} {
			problem := false
			r := &base64Reader{r: &chunked{strings.NewReader(tc.in), chunk}, problem: func(string) { problem = true }}
			b, err := io.ReadAll(r)
			if err != nil || string(b) != tc.want || problem != tc.problem {
				t.Errorf("base64 chunks of %d: %q → %q, %v, problem %v; want %q, problem %v",
					chunk, tc.in, b, err, problem, tc.want, tc.problem)
			}
		}
	}
}

func TestSplitterChunks(t *testing.T) {
	// The same message read a byte, a few bytes, a buffer at a time gives
	// the same parts: no chunk end may hide a delimiter.
	m := crlf(`Content-Type: multipart/mixed; boundary="=_x"`, "", "pre", "--=_x", "", "a", "", "--=_x",
		"Content-Type: text/plain", "", "b\r\n--=_xno", "--=_x--", "")
	var want []string
	for _, chunk := range []int{4096, 1, 2, 7} {
		var got []string
		_, err := Walk(&chunked{strings.NewReader(m), chunk}, Limits{}, func(p *Part, body io.Reader) error {
			b, err := io.ReadAll(body)
			got = append(got, p.Path+"="+string(b))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if want == nil {
			want = got
			if w := []string{"1=a\r\n", "2=b\r\n--=_xno"}; !reflect.DeepEqual(got, w) {
				t.Fatalf("got %q, want %q", got, w)
			}
		} else if !reflect.DeepEqual(got, want) {
			t.Errorf("chunks of %d: got %q, want %q", chunk, got, want)
		}
	}
}

func TestSniff(t *testing.T) {
	tests := []struct{ in, want string }{
		{"MZ\x90\x00\x03", "exe"},
		{"\x7fELF\x02\x01", "elf"},
		{"\xcf\xfa\xed\xfe", "macho"},
		{"PK\x03\x04\x14\x00", "zip"},
		{"%PDF-1.7\n", "pdf"},
		{"#!/bin/sh\n", "script"},
		{"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1\x00", "ole"},
		{"Rar!\x1a\x07\x01\x00", "rar"},
		{"7z\xbc\xaf\x27\x1c\x00\x04", "7z"},
		{"\x1f\x8b\x08\x00", "gzip"},
		{"\x89PNG\r\n\x1a\n", "image/png"},
		{"Hello, world", "text/plain"},
		{"<html><body>", "text/html"},
		{"\x00\x01\x02\x03", "application/octet-stream"},
		{"", "text/plain"},
	}
	for _, tc := range tests {
		if got := Sniff([]byte(tc.in)); got != tc.want {
			t.Errorf("Sniff(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
