// Package content walks one message once for everything the policy milter
// looks at in a body: the decoded text lines for body rules, the attachments
// (file name and the type sniffed from their first bytes, also for each entry
// of a zip archive) for attachment rules, and the hosts of the URLs in text
// and HTML for url_domain rules and the URIBL lookups.
//
// Why one walk: decoding base64, converting charsets and reducing HTML cost
// more than matching, and a message is read from the milter's spool once;
// so every consumer is fed from the same stream through a Sink. Why bounded:
// the message is hostile input. The MIME walk (shared/mimewalk) bounds the
// nesting depth, the part count and the decoded bytes per message; this
// package bounds the rest: a text line handed to the sink (MaxLine), an HTML
// attribute value (mimewalk.MaxLinkLen), the distinct URL hosts (MaxURLs),
// the entries listed per zip and the length of their names, and never
// unpacks more than mimewalk.SniffLen bytes of an entry. Memory is a few
// fixed buffers plus the bounded host set, whatever the message; malformed
// MIME and limits reached are reported, never an error, and a panic of a
// dependency is recovered and reported as a Problem "panic".
package content

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/geomilter/geomilter/shared/mimewalk"
)

// Sink receives what the walk finds (rules.Scan implements it).
type Sink interface {
	// Text is one line of decoded UTF-8 text without its line ending, from
	// a text/plain part or a text/html part reduced to text. A line longer
	// than MaxLine is cut into pieces passed as lines (after a space where
	// one is near the cut, else at a character boundary). line is valid
	// only during the call.
	Text(line []byte)
	// Attachment is an attachment part's file name ("" if none) and the
	// mimewalk.Sniff type of its first bytes ("" when it has none or they
	// cannot be read); also each entry of a zip archive, name being the
	// entry's name (a path inside the archive).
	Attachment(name, typ string)
	// URL is the host of each distinct URL found: lower case, IDNA as
	// written, no port, no trailing dot; an IP literal as it is (IPv6
	// without brackets). At most MaxURLs per message.
	URL(host string)
	// Size is the message size in bytes: the size Walk was given, or when
	// that is negative the bytes Walk read.
	Size(n int64)
}

// MaxLine is the longest text line handed to Sink.Text.
const MaxLine = 8 << 10

// Limits bound one Walk. A zero field takes its default.
type Limits struct {
	MaxDepth      int   // nesting of multipart and message/rfc822 (mimewalk default 10)
	MaxParts      int   // parts read (mimewalk default 500)
	MaxScanBytes  int64 // decoded bytes read per message, zips included (mimewalk default 16 MiB)
	MaxURLs       int   // distinct URL hosts reported (default 200)
	MaxZipEntries int   // entries listed per zip archive (default 1,000)
}

// Defaults of Limits beyond mimewalk's.
const (
	DefaultMaxURLs       = 200
	DefaultMaxZipEntries = 1000
)

func (l Limits) withDefaults() Limits {
	if l.MaxURLs <= 0 {
		l.MaxURLs = DefaultMaxURLs
	}
	if l.MaxZipEntries <= 0 {
		l.MaxZipEntries = DefaultMaxZipEntries
	}
	return l
}

// Report sums up one Walk.
type Report struct {
	Parts       int // MIME parts read, containers included
	TextParts   int // text parts whose lines went to Sink.Text
	Attachments int // attachment parts (zip entries not counted)
	// Problems are malformed MIME and limits reached (mimewalk.Problem kinds,
	// plus "panic": a recovered panic, and "internal": an unexpected error;
	// both stop the walk), at most mimewalk.MaxProblems; the milter scores
	// them.
	Problems     []mimewalk.Problem
	MoreProblems int
	// Truncated: a limit left part of the message unscanned.
	Truncated bool
	// URLDomains are the registrable domains (public suffix plus one label,
	// in ASCII) of the URL hosts, distinct, in the order found, at most
	// MaxURLs; IP literals and hosts without one are left out. For URIBL.
	URLDomains []string
	// ZipProblems counts the zip archives whose listing was cut (entry
	// limit, end of the scanned bytes) or that were malformed.
	ZipProblems int
	Duration    time.Duration
}

// Walk reads one message (header section and body) from r and feeds sink.
// size is the message size (negative: unknown, the bytes read are used).
// It never panics on any input, and its memory is bounded whatever the
// message. The error is only that of r failing; the Report is filled as far
// as the walk went.
func Walk(r io.Reader, size int64, sink Sink, lim Limits) (rep Report, err error) {
	start := time.Now()
	lim = lim.withDefaults()
	w := &walker{sink: sink, lim: lim, hosts: make(map[string]struct{}), domains: make(map[string]struct{})}
	src := &countReader{r: r}
	defer w.release()
	defer func() {
		if v := recover(); v != nil {
			// The value is not logged: it may quote message content.
			w.problem(mimewalk.Problem{Kind: "panic", Detail: fmt.Sprintf("walk stopped by a recovered %T", v)})
			w.rep.Truncated = true
			err = nil
		}
		if size < 0 {
			sink.Size(src.n)
		}
		rep = w.rep
		rep.Duration = time.Since(start)
	}()
	if size >= 0 {
		sink.Size(size)
	}
	res, err := mimewalk.Walk(src, mimewalk.Limits{MaxDepth: lim.MaxDepth, MaxParts: lim.MaxParts, MaxDecodedBytes: lim.MaxScanBytes}, w.visit)
	w.rep.Parts = res.Parts
	w.rep.Truncated = w.rep.Truncated || res.Truncated
	// mimewalk's problems first, in message order, then ours.
	ours, oursMore := w.rep.Problems, w.rep.MoreProblems
	w.rep.Problems, w.rep.MoreProblems = res.Problems, res.MoreProblems
	for _, p := range ours {
		w.problem(p)
	}
	w.rep.MoreProblems += oursMore
	if err != nil && src.err != nil && errors.Is(err, src.err) {
		return w.rep, fmt.Errorf("content: reading message: %w", src.err)
	}
	if err != nil {
		// visit returns only read errors of the source; anything else is a
		// bug of ours, reported rather than failing the message.
		w.problem(mimewalk.Problem{Kind: "internal", Detail: fmt.Sprintf("walk stopped: %v", err)})
		w.rep.Truncated = true
	}
	return w.rep, nil
}

// countReader counts the bytes read from the message and keeps its error.
type countReader struct {
	r   io.Reader
	n   int64
	err error
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if err != nil && err != io.EOF && c.err == nil {
		c.err = err
	}
	return n, err
}

type walker struct {
	sink    Sink
	lim     Limits
	rep     Report
	hosts   map[string]struct{} // distinct URL hosts, at most lim.MaxURLs
	domains map[string]struct{}

	line  []byte      // the text line being assembled, at most MaxLine
	in    []byte      // read buffer of text parts
	tb    *textBuffer // in and line's storage, from the pool
	sniff []byte      // first bytes of an attachment
	host  []byte      // the host being normalised
	zip   *zipLister
}

func (w *walker) problem(p mimewalk.Problem) {
	if len(w.rep.Problems) >= mimewalk.MaxProblems {
		w.rep.MoreProblems++
		return
	}
	w.rep.Problems = append(w.rep.Problems, p)
}

// visit is mimewalk's visitor: text parts go to lines (and their URLs to
// the host set), attachments to Sink.Attachment and zips to the lister.
func (w *walker) visit(p *mimewalk.Part, body io.Reader) error {
	if p.Text {
		w.rep.TextParts++
		return w.lines(mimewalk.LinkReader(p, body, w.link))
	}
	w.rep.Attachments++
	if w.sniff == nil {
		w.sniff = make([]byte, mimewalk.SniffLen)
	}
	n, err := io.ReadFull(body, w.sniff)
	if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
		return err
	}
	typ := ""
	if n > 0 {
		typ = mimewalk.Sniff(w.sniff[:n])
	}
	w.sink.Attachment(p.FileName, typ)
	if typ != "zip" {
		return nil
	}
	if w.zip == nil {
		w.zip = newZipLister()
	}
	ok, err := w.zip.list(io.MultiReader(bytes.NewReader(w.sniff[:n]), body), w.lim.MaxZipEntries, w.sink.Attachment)
	if !ok {
		w.rep.ZipProblems++
	}
	return err
}

// lines cuts a text part into lines for Sink.Text and scans each for URLs.
// textBuffer is a walk's read buffer and line buffer. They are pooled:
// every message needs them, and 12 KiB per message is most of what a walk
// of a small message allocates (garbage the collector then pays for).
type textBuffer struct {
	in   [4096]byte
	line [MaxLine]byte
}

var textBuffers = sync.Pool{New: func() any { return new(textBuffer) }}

// release returns the walk's text buffers to the pool.
func (w *walker) release() {
	if w.tb != nil {
		textBuffers.Put(w.tb)
		w.tb, w.in, w.line = nil, nil, nil
	}
}

func (w *walker) lines(r io.Reader) error {
	if w.in == nil {
		w.tb = textBuffers.Get().(*textBuffer)
		w.in, w.line = w.tb.in[:], w.tb.line[:0]
	}
	buf := w.line[:0]
	for {
		n, err := r.Read(w.in)
		chunk := w.in[:n]
		for len(chunk) > 0 {
			i := bytes.IndexByte(chunk, '\n')
			if i >= 0 && len(buf)+i <= MaxLine {
				if len(buf) == 0 {
					w.emit(chunk[:i])
				} else {
					buf = append(buf, chunk[:i]...)
					w.emit(buf)
					buf = buf[:0]
				}
				chunk = chunk[i+1:]
				continue
			}
			take := len(chunk)
			if i >= 0 {
				take = i
			}
			take = min(take, MaxLine-len(buf))
			buf = append(buf, chunk[:take]...)
			chunk = chunk[take:]
			if len(buf) == MaxLine {
				cut := cutPoint(buf)
				w.emit(buf[:cut])
				buf = buf[:copy(buf, buf[cut:])]
			}
		}
		if err != nil {
			if len(buf) > 0 {
				w.emit(buf)
			}
			if err == io.EOF {
				return nil
			}
			return err
		}
	}
}

// cutPoint chooses where a full line buffer is cut: after the last space or
// tab in its last 512 bytes (so that a word or URL is rarely split), else
// before an incomplete UTF-8 sequence at its end.
func cutPoint(b []byte) int {
	if i := bytes.LastIndexAny(b[len(b)-512:], " \t"); i >= 0 {
		return len(b) - 512 + i + 1
	}
	// A UTF-8 sequence is at most 4 bytes: look for its start in the last 3.
	for i := len(b) - 1; i >= len(b)-3; i-- {
		c := b[i]
		if c < 0x80 {
			break
		}
		if c >= 0xC0 { // a start byte: cut before it if its sequence is incomplete
			need := 2
			if c >= 0xE0 {
				need = 3
			}
			if c >= 0xF0 {
				need = 4
			}
			if len(b)-i < need {
				return i
			}
			break
		}
	}
	return len(b)
}

// emit hands one line (without "\n", a trailing "\r" dropped) to the sink
// and scans it for URLs.
func (w *walker) emit(line []byte) {
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	w.sink.Text(line)
	if len(w.hosts) < w.lim.MaxURLs {
		w.scanText(line)
	}
}

// link receives an href or src value from the HTML reducer.
func (w *walker) link(v []byte) {
	if len(w.hosts) < w.lim.MaxURLs {
		w.linkHost(v)
	}
}
