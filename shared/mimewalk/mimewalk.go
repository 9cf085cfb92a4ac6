// Package mimewalk walks the MIME structure of one message as a stream and
// hands each leaf part, decoded, to a visitor: the content milters (encrypt,
// policy) scan text and attachments through it.
//
// Why a package of our own around go-message: a milter sees hostile input, and
// a scanner must neither panic, nor stall, nor buffer a part whole. So Walk
//
//   - decodes the Content-Transfer-Encoding (RFC 2045 §6: base64,
//     quoted-printable, 7bit/8bit/binary) and converts text parts to UTF-8
//     (RFC 2046 §4.1.2 charset parameter), as a stream;
//   - walks into multipart (RFC 2046 §5.1) and message/rfc822 (RFC 2046
//     §5.2.1) parts, numbering them as IMAP does ("1", "1.2", RFC 3501 §6.4.5);
//   - keeps to Limits: nesting depth, part count, decoded bytes handed to the
//     visitor per message, header bytes per part. Beyond a limit the rest is
//     skipped and the fact recorded, so the cost of a walk is linear in the
//     message size and its memory is bounded (a few buffers of 4–8 KiB per
//     nesting level) whatever the message;
//   - records malformed MIME (missing close delimiter, bad base64, broken
//     header fields, unknown charsets, nesting too deep) as a Problem and goes
//     on as far as it safely can: a scanner scores problems, it never fails
//     on them.
//
// What comes from github.com/emersion/go-message: the header parser
// (textproto.ReadHeader, fed one bounded header block at a time) and the
// header view. What is ours and why: the multipart splitter (go-message's
// reads part headers without a size bound and gives up on a preamble line
// longer than its 4 KiB buffer), the base64 and quoted-printable decoders
// (mime/quotedprintable stops on a line longer than 4 KiB or a control byte;
// both of ours skip the bad bytes and say so), the RFC 2231 parameter
// fallback for charsets other than UTF-8 (mime.ParseMediaType drops those),
// and the HTML-to-text reducer (golang.org/x/net/html's tokenizer holds a
// whole token — a text run, a comment, a script — in memory; ours holds at
// most a tag name and an entity).
package mimewalk

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Limits bound the work and memory of one Walk. A zero field takes its
// default.
type Limits struct {
	// MaxDepth bounds the nesting of multipart and message/rfc822 parts; a
	// container deeper than this is skipped (Problem "depth"). Default 10.
	MaxDepth int
	// MaxParts bounds the parts read (containers and leaves); the walk stops at
	// the first part beyond it (Problem "parts"). Default 500.
	MaxParts int
	// MaxDecodedBytes bounds the decoded bytes handed to the visitor per
	// message. Beyond it bodies are cut short and later parts are visited with
	// an empty body (Part.Truncated, Result.Truncated, Problem "bytes").
	// Default 16 MiB.
	MaxDecodedBytes int64
	// MaxHeaderBytes bounds one part's header block; fields beyond it are
	// dropped (Problem "header"). Default 64 KiB.
	MaxHeaderBytes int
}

// Defaults of Limits.
const (
	DefaultMaxDepth        = 10
	DefaultMaxParts        = 500
	DefaultMaxDecodedBytes = 16 << 20
	DefaultMaxHeaderBytes  = 64 << 10
)

// MaxProblems bounds Result.Problems; later problems are counted in
// Result.MoreProblems only.
const MaxProblems = 100

func (l Limits) withDefaults() Limits {
	if l.MaxDepth <= 0 {
		l.MaxDepth = DefaultMaxDepth
	}
	if l.MaxParts <= 0 {
		l.MaxParts = DefaultMaxParts
	}
	if l.MaxDecodedBytes <= 0 {
		l.MaxDecodedBytes = DefaultMaxDecodedBytes
	}
	if l.MaxHeaderBytes <= 0 {
		l.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	return l
}

// Part describes one leaf part handed to the visitor.
type Part struct {
	// Path is the part's IMAP section number (RFC 3501 §6.4.5): "1", "1.2",
	// "2.1.1"; "" for the body of a single-part message.
	Path string
	// Depth is the number of multipart and message/rfc822 containers above
	// the part (0 for the body of a single-part message).
	Depth int
	// MediaType is lower case, e.g. "text/plain"; "text/plain" when the
	// Content-Type field is absent or invalid (RFC 2045 §5.2), and
	// "message/rfc822" when absent in a multipart/digest (RFC 2046 §5.1.5).
	MediaType string
	// Params are the Content-Type parameters, names in lower case.
	Params map[string]string
	// Disposition is the Content-Disposition type in lower case (RFC 2183):
	// "inline", "attachment" or "".
	Disposition string
	// FileName is the Content-Disposition filename parameter, else the
	// Content-Type name parameter (RFC 2231 continuations and charsets, RFC
	// 2047 encoded words decoded), in UTF-8; "" when none.
	FileName string
	// Charset is the declared charset parameter, lower case ("" when none).
	Charset string
	// Text: a text/* part that is not an attachment; its body is UTF-8.
	Text bool
	// Attachment: a part with a file name or disposition "attachment", or a
	// leaf that is not text/*.
	Attachment bool
	// Truncated: the body handed to visit stopped at Limits.MaxDecodedBytes.
	// It is set when that happens (check it after reading), and is set from
	// the start, with an empty body, for every part after that.
	Truncated bool
	// Header holds the part's header fields.
	Header Header
}

// Problem is one piece of malformed MIME, or a limit reached.
type Problem struct {
	Path string // the part's section number ("" for the top level)
	// Kind is one of "depth", "parts", "bytes", "boundary", "encoding",
	// "charset", "header".
	Kind   string
	Detail string // for people: what was wrong, never message content
}

// Result sums up a walk.
type Result struct {
	Parts        int   // parts read (containers and leaves), counted against Limits.MaxParts
	Visited      int   // leaf parts handed to visit
	DecodedBytes int64 // decoded bytes handed to visit
	Truncated    bool  // Limits.MaxDecodedBytes cut a body short or left parts unread
	Problems     []Problem
	MoreProblems int // problems beyond MaxProblems, not listed
}

// Has reports whether a problem of the kind was recorded.
func (r *Result) Has(kind string) bool {
	for _, p := range r.Problems {
		if p.Kind == kind {
			return true
		}
	}
	return false
}

// errStop ends a walk early without an error for the caller (part limit).
var errStop = errors.New("mimewalk: stop")

// Walk reads one message (header section and body, RFC 5322 §2.1) from r and
// calls visit for every leaf part, in order, with the part's content decoded
// from its Content-Transfer-Encoding and, for text/* parts, converted to UTF-8
// (an unknown charset is passed as is and recorded). HTML parts are visited as
// HTML; TextReader reduces them to text.
//
// visit may read body partly or not at all; the rest is skipped. body is valid
// only during the call. An error from visit stops the walk and is returned.
// Otherwise Walk returns an error only when reading r fails; malformed MIME is
// a Problem in the Result. Walk may stop reading before the end of r (after a
// final close delimiter, or at the part limit).
func Walk(r io.Reader, lim Limits, visit func(p *Part, body io.Reader) error) (Result, error) {
	w := &walker{lim: lim.withDefaults(), visit: visit, src: &srcReader{r: r}}
	err := w.entity(w.src, "", 0, false, false)
	if errors.Is(err, errStop) {
		err = nil
	}
	if err == nil && w.src.err != nil {
		err = w.src.err
	}
	if err != nil && w.src.err != nil && errors.Is(err, w.src.err) {
		return w.res, fmt.Errorf("mimewalk: reading message: %w", w.src.err)
	}
	return w.res, err
}

// srcReader remembers the first read error of the message source, so that a
// decoder's complaint can be told apart from a failing source.
type srcReader struct {
	r   io.Reader
	err error
}

func (s *srcReader) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF {
		s.err = err
	}
	return n, err
}

type walker struct {
	lim   Limits
	visit func(*Part, io.Reader) error
	src   *srcReader
	res   Result
}

func (w *walker) problem(path, kind, format string, args ...any) {
	if len(w.res.Problems) >= MaxProblems {
		w.res.MoreProblems++
		return
	}
	w.res.Problems = append(w.res.Problems, Problem{Path: path, Kind: kind, Detail: fmt.Sprintf(format, args...)})
}

// ioErr returns the source's read error, if reading failed, else nil: errors
// met while reading a part are malformed MIME unless the source failed.
func (w *walker) ioErr() error {
	if w.src.err != nil {
		return w.src.err
	}
	return nil
}

func childPath(prefix string, i int) string {
	if prefix == "" {
		return strconv.Itoa(i)
	}
	return prefix + "." + strconv.Itoa(i)
}

// entity reads one entity (header block and body) from r. path is its section
// number; depth the containers above it; inDigest says the parent is a
// multipart/digest (default type message/rfc822, RFC 2046 §5.1.5). encap says
// the entity is the content of the message/rfc822 part numbered path (an
// encapsulated single-part body is section path.1, RFC 3501 §6.4.5).
func (w *walker) entity(r io.Reader, path string, depth int, inDigest, encap bool) error {
	if err := w.count(path); err != nil {
		return err
	}
	br := bufio.NewReaderSize(r, 4096)
	h, rest, err := w.readHeader(br, path)
	if err != nil {
		return err
	}
	var body io.Reader = br
	if rest != nil {
		body = io.MultiReader(rest, br)
	}
	p := w.describe(h, path, depth, inDigest)

	switch {
	case strings.HasPrefix(p.MediaType, "multipart/"):
		boundary := p.Params["boundary"]
		if boundary == "" || len(boundary) > 200 {
			// RFC 2046 §5.1.1: boundary is required (1-70 characters);
			// without one, the body is scanned as text (RFC 2045 §5.2).
			w.problem(path, "boundary", "%s without a usable boundary parameter", p.MediaType)
			p.MediaType, p.Params, p.Charset = "text/plain", map[string]string{}, ""
			p.Text, p.Attachment = p.Disposition != "attachment" && p.FileName == "", p.Disposition == "attachment" || p.FileName != ""
			return w.leaf(p, body)
		}
		if depth >= w.lim.MaxDepth {
			w.problem(path, "depth", "nesting deeper than %d: part skipped", w.lim.MaxDepth)
			return w.ioErr()
		}
		body = w.containerEncoding(h, path, body)
		return w.multipart(body, boundary, path, depth, p.MediaType == "multipart/digest")
	case p.MediaType == "message/rfc822" || p.MediaType == "message/global":
		// RFC 2046 §5.2.1; message/global is its UTF-8 form (RFC 6532 §3.7).
		if depth >= w.lim.MaxDepth {
			w.problem(path, "depth", "nesting deeper than %d: part skipped", w.lim.MaxDepth)
			return w.ioErr()
		}
		body = w.containerEncoding(h, path, body)
		return w.entity(body, path, depth+1, false, true)
	}
	if encap {
		// The single-part body of an encapsulated message: IMAP numbers it
		// path.1 ("1" under a top-level message/rfc822).
		p.Path = childPath(path, 1)
	}
	return w.leaf(p, body)
}

// count counts one part against Limits.MaxParts.
func (w *walker) count(path string) error {
	if w.res.Parts >= w.lim.MaxParts {
		w.problem(path, "parts", "more than %d parts: rest of the message skipped", w.lim.MaxParts)
		w.res.Truncated = true
		return errStop
	}
	w.res.Parts++
	return nil
}

// containerEncoding decodes a multipart or message/rfc822 body. RFC 2045
// §6.4 allows only 7bit, 8bit and binary there; a container encoded anyway is
// decoded (so that its parts are still scanned) and recorded.
func (w *walker) containerEncoding(h Header, path string, body io.Reader) io.Reader {
	cte := strings.ToLower(strings.TrimSpace(h.Get("Content-Transfer-Encoding")))
	switch cte {
	case "", "7bit", "8bit", "binary":
		return body
	case "base64", "quoted-printable":
		w.problem(path, "encoding", "container with Content-Transfer-Encoding %s (RFC 2045 §6.4)", cte)
		return w.transferDecoder(cte, path, body)
	}
	w.problem(path, "encoding", "unknown Content-Transfer-Encoding %q", clip(cte))
	return body
}

// multipart walks the body parts of a multipart entity (RFC 2046 §5.1.1).
func (w *walker) multipart(body io.Reader, boundary, path string, depth int, digest bool) error {
	s := newSplitter(body, boundary)
	for i := 1; ; i++ {
		ok, err := s.next()
		if err != nil {
			return w.readErr(path, err)
		}
		if !ok {
			break
		}
		if err := w.entity(s, childPath(path, i), depth+1, digest, false); err != nil {
			return err
		}
	}
	if !s.sawDelimiter {
		w.problem(path, "boundary", "no boundary delimiter line found")
	} else if !s.closed {
		w.problem(path, "boundary", "close delimiter missing")
	}
	return nil
}

// readErr turns an error met while reading inside the message into the
// source's error (when the source failed) or nil (anything else is a problem
// already recorded, or malformed MIME).
func (w *walker) readErr(path string, err error) error {
	if w.src.err != nil {
		return w.src.err
	}
	if errors.Is(err, errStop) {
		return err
	}
	w.problem(path, "encoding", "reading part: %v", err)
	return nil
}

// leaf hands one leaf part to the visitor and skips what it leaves unread.
func (w *walker) leaf(p *Part, raw io.Reader) error {
	w.res.Visited++
	var dec io.Reader
	if w.res.DecodedBytes >= w.lim.MaxDecodedBytes {
		p.Truncated = true
		w.res.Truncated = true
		if !w.res.Has("bytes") {
			w.problem(p.Path, "bytes", "decoded bytes beyond %d: rest of the message not scanned", w.lim.MaxDecodedBytes)
		}
		dec = strings.NewReader("")
	} else {
		cte := strings.ToLower(strings.TrimSpace(p.Header.Get("Content-Transfer-Encoding")))
		dec = w.transferDecoder(cte, p.Path, raw)
		if strings.HasPrefix(p.MediaType, "text/") {
			dec = w.charsetDecoder(p.Charset, p.Path, dec)
		}
	}
	b := &budgetReader{r: dec, w: w, p: p}
	if err := w.visit(p, b); err != nil {
		if src := w.ioErr(); src != nil && errors.Is(err, src) {
			return src
		}
		return fmt.Errorf("mimewalk: visiting part %q: %w", p.Path, err)
	}
	b.done = true
	return w.ioErr()
}

// budgetReader hands a part's decoded body to the visitor within the
// message's MaxDecodedBytes, and turns decoding errors into the end of the
// body plus a Problem.
type budgetReader struct {
	r    io.Reader
	w    *walker
	p    *Part
	eof  bool
	done bool
}

func (b *budgetReader) Read(p []byte) (int, error) {
	if b.eof || b.done {
		return 0, io.EOF
	}
	w := b.w
	left := w.lim.MaxDecodedBytes - w.res.DecodedBytes
	if left <= 0 {
		// Is there more? One byte tells.
		var one [1]byte
		n, _ := io.ReadFull(b.r, one[:])
		if n > 0 && !b.p.Truncated {
			b.p.Truncated = true
			w.res.Truncated = true
			w.problem(b.p.Path, "bytes", "decoded bytes beyond %d: rest of the message not scanned", w.lim.MaxDecodedBytes)
		}
		b.eof = true
		return 0, io.EOF
	}
	if int64(len(p)) > left {
		p = p[:left]
	}
	n, err := b.r.Read(p)
	w.res.DecodedBytes += int64(n)
	if err != nil {
		b.eof = true
		if err != io.EOF {
			if src := w.ioErr(); src != nil {
				return n, src
			}
			w.problem(b.p.Path, "encoding", "decoding body: %v", err)
			err = io.EOF
		}
	}
	return n, err
}

// clip shortens a value from the message for a Problem's Detail.
func clip(s string) string {
	const max = 40
	if len(s) > max {
		return s[:max] + "…"
	}
	return s
}
