package journal

import (
	"bytes"
	"errors"
	"io"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-message"
	"github.com/geomilter/geomilter/shared/milterrt"
)

// parsedReport is a report read back with go-message.
type parsedReport struct {
	header   message.Header
	textCTE  string
	text     string // decoded
	rfc822   message.Header
	attached []byte
}

func parseReport(t *testing.T, report []byte) parsedReport {
	t.Helper()
	e, err := message.Read(bytes.NewReader(report))
	if err != nil {
		t.Fatalf("report does not parse: %v", err)
	}
	var p parsedReport
	p.header = e.Header
	mr := e.MultipartReader()
	if mr == nil {
		t.Fatalf("report is not multipart: %s", e.Header.Get("Content-Type"))
	}
	p1, err := mr.NextPart()
	if err != nil {
		t.Fatal(err)
	}
	if ct, params, _ := p1.Header.ContentType(); ct != "text/plain" || params["charset"] != "utf-8" {
		t.Errorf("part 1: Content-Type %s %v", ct, params)
	}
	p.textCTE = p1.Header.Get("Content-Transfer-Encoding")
	text, err := io.ReadAll(p1.Body)
	if err != nil {
		t.Fatal(err)
	}
	p.text = string(text)
	p2, err := mr.NextPart()
	if err != nil {
		t.Fatal(err)
	}
	if ct, _, _ := p2.Header.ContentType(); ct != "message/rfc822" {
		t.Errorf("part 2: Content-Type %s", ct)
	}
	p.rfc822 = p2.Header
	if p.attached, err = io.ReadAll(p2.Body); err != nil {
		t.Fatal(err)
	}
	if _, err := mr.NextPart(); err != io.EOF {
		t.Errorf("after 2 parts: %v, want io.EOF", err)
	}
	return p
}

func reportHeader(msg string, rcpts ...string) *Header {
	h := testHeader(int64(len(msg)))
	h.Envelope.Rcpts = nil
	for _, r := range rcpts {
		action := "continue"
		if a, ok := strings.CutPrefix(r, "!"); ok {
			r, action = a, "reject"
		}
		h.Envelope.Rcpts = append(h.Envelope.Rcpts, milterrt.EnvelopeRcpt{Addr: r, Action: action})
	}
	return h
}

var reportOpts = ReportOptions{From: "postmaster@mx1.example", To: "journal@archive.example", Host: "mx1.example"}

func TestWriteReport(t *testing.T) {
	tests := []struct {
		name        string
		msg         string
		sender      string
		rcpts       []string // "!addr": rejected
		opts        ReportOptions
		wantText    string
		wantSubject string // report's Subject field, decoded ("" none)
		wantTextCTE string
		wantCTE     string
	}{
		{
			name: "to cc bcc",
			msg: "From: Alice <alice@example.org>\r\nTo: Bob <bob@example.com>\r\nCc: carol@example.com\r\n" +
				"Subject: Quarterly\r\n figures\r\nMessage-ID: <m1@example.org>\r\n\r\nHello\r\n",
			sender: "alice@example.org",
			rcpts:  []string{"bob@example.com", "carol@example.com", "dave@example.com"},
			wantText: "Sender: alice@example.org\r\nSubject: Quarterly figures\r\nMessage-ID: <m1@example.org>\r\n" +
				"To: bob@example.com\r\nCc: carol@example.com\r\nBcc: dave@example.com\r\n",
			wantSubject: "Quarterly figures", wantTextCTE: "7bit", wantCTE: "7bit",
		},
		{
			name:  "encoded subject, null sender, 8bit, rejected recipient left out",
			msg:   "To: bob@example.com\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= aus =?iso-8859-1?q?K=F6ln?=\r\n\r\n\xc3\xa4\r\n",
			rcpts: []string{"<bob@example.com>", "!eve@example.com", "dave@example.com"},
			opts:  ReportOptions{EightBit: true},
			wantText: "Sender: <>\r\nSubject: Grüße aus Köln\r\nMessage-ID: <m1@example.org>\r\n" +
				"To: bob@example.com\r\nBcc: dave@example.com\r\n",
			wantSubject: "Grüße aus Köln", wantTextCTE: "quoted-printable", wantCTE: "8bit",
		},
		{
			name:   "raw 8-bit subject, no Message-ID, no body, no final CRLF",
			msg:    "Subject: Caf\xc3\xa9 \xff\r\nCc: Bob@Example.com",
			sender: "a@example.org",
			rcpts:  []string{"bob@example.com"},
			wantText: "Sender: a@example.org\r\nSubject: Café \uFFFD\r\nMessage-ID: <m1@example.org>\r\n" +
				"Cc: bob@example.com\r\n",
			wantSubject: "Café \uFFFD", wantTextCTE: "quoted-printable", wantCTE: "7bit",
		},
		{
			name:   "no subject, header injection attempts in the envelope",
			msg:    "From: x@example.org\r\n\r\n--=_geomilter-journal-00\r\n--=_geomilter-journal-00--\r\n",
			sender: "a@example.org\r\nBcc: evil@example.net",
			rcpts:  []string{"bob@example.com\nX: y"},
			wantText: "Sender: a@example.org  Bcc: evil@example.net\r\nSubject: \r\nMessage-ID: <m1@example.org>\r\n" +
				"Bcc: bob@example.com X: y\r\n",
			wantTextCTE: "7bit", wantCTE: "7bit",
		},
		{
			name:     "long encoded subject is folded",
			msg:      "Subject: " + strings.Repeat("=?utf-8?q?=C3=A9t=C3=A9?= ", 12) + "\r\n\r\n",
			wantText: "Sender: <>\r\nSubject: " + strings.Repeat("été", 12) + "\r\nMessage-ID: <m1@example.org>\r\n",
			// RFC 2047 §6.2: white space between adjacent encoded-words is ignored.
			wantSubject: strings.Repeat("été", 12), wantTextCTE: "quoted-printable", wantCTE: "7bit",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := reportHeader(tt.msg, tt.rcpts...)
			h.Envelope.Sender = tt.sender
			o := reportOpts
			o.EightBit = tt.opts.EightBit
			var out bytes.Buffer
			if err := WriteReport(&out, h, strings.NewReader(tt.msg), o); err != nil {
				t.Fatal(err)
			}
			report := out.Bytes()
			checkCRLF(t, report, len(tt.msg))
			p := parseReport(t, report)
			if p.text != tt.wantText {
				t.Errorf("text part:\n got %q\nwant %q", p.text, tt.wantText)
			}
			if !bytes.Equal(p.attached, []byte(tt.msg)) {
				t.Errorf("attached message differs:\n got %q\nwant %q", p.attached, tt.msg)
			}
			if p.textCTE != tt.wantTextCTE {
				t.Errorf("text part Content-Transfer-Encoding %q, want %q", p.textCTE, tt.wantTextCTE)
			}
			if got := p.rfc822.Get("Content-Transfer-Encoding"); got != tt.wantCTE {
				t.Errorf("rfc822 part Content-Transfer-Encoding %q, want %q", got, tt.wantCTE)
			}
			subj, err := p.header.Text("Subject")
			if err != nil {
				t.Errorf("report Subject: %v", err)
			}
			if subj != tt.wantSubject || !p.header.Has("Subject") != (tt.wantSubject == "") {
				t.Errorf("report Subject %q (present %v), want %q", subj, p.header.Has("Subject"), tt.wantSubject)
			}
			// A printable ASCII subject is copied as it was (encoded-words kept).
			if f, _ := first(parseFields([]byte(tt.msg)), "Subject"); isPrintableASCII(f) && f != "" {
				if got := p.header.Get("Subject"); got != f {
					t.Errorf("report Subject field %q, want the original %q", got, f)
				}
			}
			for name, want := range map[string]string{
				"From": o.From, "To": o.To, "Date": "Mon, 07 Dec 2026 05:15:00 +0000",
				"Message-Id": "<" + h.ID + "@mx1.example>", "Mime-Version": "1.0",
				"X-Geomilter-Journal-Id": h.ID,
			} {
				if got := p.header.Get(name); got != want {
					t.Errorf("report %s: %q, want %q", name, got, want)
				}
			}
			if !p.header.Has("X-MS-Journal-Report") || p.header.Get("X-MS-Journal-Report") != "" {
				t.Errorf("X-MS-Journal-Report: present %v, value %q; want present and empty",
					p.header.Has("X-MS-Journal-Report"), p.header.Get("X-MS-Journal-Report"))
			}
			if !bytes.Contains(report, []byte("\r\nX-MS-Journal-Report:\r\n")) {
				t.Errorf("no X-MS-Journal-Report line as piler matches it")
			}
		})
	}
}

// checkCRLF: every line of the report outside the attached message ends in
// CRLF and is at most 998 bytes (RFC 5322 §2.1.1).
func checkCRLF(t *testing.T, report []byte, msgLen int) {
	t.Helper()
	i := bytes.Index(report, []byte("Content-Type: message/rfc822\r\n"))
	j := bytes.Index(report[i:], []byte("\r\n\r\n"))
	own := append(append([]byte{}, report[:i+j+4]...), report[i+j+4+msgLen:]...)
	if !bytes.HasSuffix(own, []byte("--\r\n")) {
		t.Errorf("report does not end with the close delimiter and CRLF: %q", own[max(0, len(own)-50):])
	}
	for n, l := range bytes.SplitAfter(own, []byte("\n")) {
		if len(l) == 0 {
			continue
		}
		if !bytes.HasSuffix(l, []byte("\r\n")) || bytes.Count(l, []byte("\r")) != 1 {
			t.Errorf("line %d %q: not one CRLF-ended line", n+1, l)
		}
		if len(l) > 1000 {
			t.Errorf("line %d: %d bytes", n+1, len(l))
		}
	}
}

func TestWriteReportLongHeaderSection(t *testing.T) {
	// A header section past MaxHeaderSection: the message is still attached
	// whole; a Cc past the bound is not seen, so carol is reported Bcc.
	msg := "To: bob@example.com\r\nSubject: big\r\n" +
		strings.Repeat("X-Pad: "+strings.Repeat("p", 990)+"\r\n", MaxHeaderSection/999+2) +
		"Cc: carol@example.com\r\n\r\nbody\r\n"
	h := reportHeader(msg, "bob@example.com", "carol@example.com")
	var out bytes.Buffer
	if err := WriteReport(&out, h, strings.NewReader(msg), reportOpts); err != nil {
		t.Fatal(err)
	}
	p := parseReport(t, out.Bytes())
	if !bytes.Equal(p.attached, []byte(msg)) {
		t.Errorf("attached message differs (%d bytes, want %d)", len(p.attached), len(msg))
	}
	if !strings.Contains(p.text, "To: bob@example.com\r\nBcc: carol@example.com\r\n") {
		t.Errorf("text part %q", p.text)
	}
}

func TestWriteReportBoundaryUnique(t *testing.T) {
	re := regexp.MustCompile(`boundary="(=_geomilter-journal-[0-9a-f]{32})"`)
	seen := map[string]bool{}
	for range 100 {
		var out bytes.Buffer
		if err := WriteReport(&out, reportHeader("x"), strings.NewReader("x"), reportOpts); err != nil {
			t.Fatal(err)
		}
		m := re.FindSubmatch(out.Bytes())
		if m == nil || len(m[1]) > 70 {
			t.Fatalf("boundary not found or too long (RFC 2046 §5.1.1): %q", out.String()[:400])
		}
		if seen[string(m[1])] {
			t.Fatalf("boundary %s twice", m[1])
		}
		seen[string(m[1])] = true
	}
}

func TestWriteReportBadInput(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(h *Header, o *ReportOptions)
		wantErr string
	}{
		{"id with @", func(h *Header, o *ReportOptions) { h.ID = "a@b" }, `journal id "a@b": want only`},
		{"id with ..", func(h *Header, o *ReportOptions) { h.ID = "../x" }, `journal id "../x"`},
		{"empty id", func(h *Header, o *ReportOptions) { h.ID = "" }, `journal id ""`},
		{"host with space", func(h *Header, o *ReportOptions) { o.Host = "mx1 example" }, "host"},
		{"host with colon", func(h *Header, o *ReportOptions) { o.Host = "mx1:25" }, "host"},
		{"empty literal", func(h *Header, o *ReportOptions) { o.Host = "[]" }, "host"},
		{"literal with bracket inside", func(h *Header, o *ReportOptions) { o.Host = "[a]b]" }, "host"},
		{"no host at all", func(h *Header, o *ReportOptions) { o.Host, h.Host = "", "" }, "host"},
		{"empty from", func(h *Header, o *ReportOptions) { o.From = " " }, "from address is empty"},
		{"to with CRLF", func(h *Header, o *ReportOptions) { o.To = "a@b\r\nBcc: c@d" }, "line break"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, o := reportHeader("x"), reportOpts
			tt.edit(h, &o)
			var out bytes.Buffer
			err := WriteReport(&out, h, strings.NewReader("x"), o)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err %v, want %q", err, tt.wantErr)
			}
			if out.Len() != 0 {
				t.Errorf("wrote %d bytes before refusing", out.Len())
			}
		})
	}
	// Address literals are hosts too.
	for _, host := range []string{"[192.0.2.1]", "[IPv6:2001:db8::1]"} {
		o := reportOpts
		o.Host = host
		var out bytes.Buffer
		if err := WriteReport(&out, reportHeader("x"), strings.NewReader("x"), o); err != nil {
			t.Errorf("host %s: %v", host, err)
		}
	}
	// Host falls back to the record's.
	h, o := reportHeader("x"), reportOpts
	o.Host = ""
	var out bytes.Buffer
	if err := WriteReport(&out, h, strings.NewReader("x"), o); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "Message-ID: <"+h.ID+"@"+h.Host+">\r\n") {
		t.Errorf("no Message-ID with the record's host")
	}
}

type failWriter struct{ n int }

func (f *failWriter) Write(p []byte) (int, error) {
	if len(p) > f.n {
		n := f.n
		f.n = 0
		return n, errors.New("connection reset")
	}
	f.n -= len(p)
	return len(p), nil
}

func TestWriteReportErrors(t *testing.T) {
	msg := "To: bob@example.com\r\n\r\n" + strings.Repeat("body\r\n", 100000)
	cw := &countWriter{}
	if err := WriteReport(cw, reportHeader(msg), strings.NewReader(msg), reportOpts); err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, 100, 2000, 300000, int(cw.n) - 5} {
		err := WriteReport(&failWriter{n: n}, reportHeader(msg), strings.NewReader(msg), reportOpts)
		if err == nil || !strings.Contains(err.Error(), "connection reset") {
			t.Errorf("writer failing after %d bytes: err %v", n, err)
		}
	}
	// The message reader failing (a short record) is an error too.
	rec := encodeT(t, reportHeader(msg), []byte(msg))
	_, mr, err := Decode(bytes.NewReader(rec[:len(rec)-10]))
	if err != nil {
		t.Fatal(err)
	}
	err = WriteReport(io.Discard, reportHeader(msg), mr, reportOpts)
	if !errors.Is(err, ErrBadRecord) {
		t.Errorf("short record: err %v, want ErrBadRecord", err)
	}
}

// genMsg yields a message of exactly size bytes: a header section, then
// body lines, generated on the fly (no buffer of the size).
type genMsg struct {
	head string
	size int64
	off  int64
}

func (g *genMsg) Read(p []byte) (int, error) {
	if g.off >= g.size {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) && g.off < g.size {
		if g.off < int64(len(g.head)) {
			c := copy(p[n:], g.head[g.off:])
			n += c
			g.off += int64(c)
			continue
		}
		const line = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n"
		k := (g.off - int64(len(g.head))) % int64(len(line))
		c := copy(p[n:], line[k:])
		if rest := g.size - g.off; int64(c) > rest {
			c = int(rest)
		}
		n += c
		g.off += int64(c)
	}
	return n, nil
}

// TestPipelineMemory: 50 MB through Encode → Decode → WriteReport allocates
// little (the bound is generous; a buffered message would take 50 MB).
func TestPipelineMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("50 MB")
	}
	const size = 50 << 20
	head := "From: a@example.org\r\nTo: bob@example.com\r\nSubject: big\r\n\r\n"
	h := reportHeader(strings.Repeat(" ", size), "bob@example.com", "carol@example.com")
	h.Time = time.Date(2026, 12, 7, 5, 15, 0, 0, time.UTC)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	rec, _, err := Encode(h, &genMsg{head: head, size: size})
	if err != nil {
		t.Fatal(err)
	}
	dh, mr, err := Decode(rec)
	if err != nil {
		t.Fatal(err)
	}
	cw := &countWriter{}
	if err := WriteReport(cw, dh, mr, reportOpts); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if cw.n < size {
		t.Fatalf("report of %d bytes for a message of %d", cw.n, size)
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("50 MB message: %d bytes allocated in total, report %d bytes", alloc, cw.n)
	if alloc > 8<<20 {
		t.Errorf("allocated %d bytes for a %d-byte message, want < 8 MiB", alloc, size)
	}
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }
