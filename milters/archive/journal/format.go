// Package journal is the archive milter's journal: the record one journaled
// message becomes in the journal spool (Encode, Decode), and what the targets
// make of it — the role of each envelope recipient (Roles) and an
// Exchange-style envelope journal report (WriteReport).
//
// A record is the magic "GMJ1 ", one line of JSON (Header), "\n", then the
// message exactly as received. Everything streams: memory does not depend on
// the message size.
package journal

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/rules"
)

// Magic starts every record; the digit is the format version.
const Magic = "GMJ1 "

// Version is the Header.Version this package writes and reads.
const Version = 1

// MaxHeaderLine bounds the JSON header line Decode reads (magic and "\n"
// included), so a corrupt record cannot make it buffer without end.
const MaxHeaderLine = 1 << 20

// ErrBadRecord is wrapped by every error about a malformed record: bad
// magic, version or JSON, a header line too long, or message bytes that do
// not match Header.Size.
var ErrBadRecord = errors.New("bad journal record")

// Header is the JSON line of a record: who, when and where, and the whole
// envelope (Bcc recipients are only there).
type Header struct {
	Version   int               `json:"v"`                   // Version
	ID        string            `json:"id"`                  // journal id, stable, unique (NewID)
	Site      string            `json:"site"`                // site name of the journaling host
	Host      string            `json:"host"`                // host name of the journaling host
	Time      time.Time         `json:"time"`                // when journaled (end of message)
	Direction string            `json:"direction,omitempty"` // inbound | outbound
	Tenant    string            `json:"tenant,omitempty"`
	Targets   []string          `json:"targets,omitempty"` // empty: every configured target
	RuleIDs   []string          `json:"rule_ids,omitempty"`
	Size      int64             `json:"size"`                 // message bytes after the header line
	MessageID string            `json:"message_id,omitempty"` // Message-ID field value, as found
	Envelope  milterrt.Envelope `json:"envelope"`
}

// NewID returns a new journal id: "<site>-<UTC time>-<16 hex random>", e.g.
// "lax-20261207T051500Z-9f86d081884c7d65". Site and time come first so ids
// sort by site then time for a human; 64 random bits make it unique. Bytes
// of site other than [A-Za-z0-9._] become "_", so the id is safe as a file
// name, in a URL and as the local part of a Message-ID (RFC 5322 §3.6.4
// dot-atom-text); a site of "" becomes "x".
func NewID(site string, t time.Time) string {
	var b strings.Builder
	for i := 0; i < len(site) && i < 64; i++ {
		c := site[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' {
			b.WriteByte(c)
		} else {
			b.WriteByte('_')
		}
	}
	if b.Len() == 0 {
		b.WriteByte('x')
	}
	var rnd [8]byte
	_, _ = rand.Read(rnd[:]) // crypto/rand.Read never fails (Go ≥ 1.24)
	b.WriteByte('-')
	b.WriteString(t.UTC().Format("20060102T150405Z"))
	b.WriteByte('-')
	b.WriteString(hex.EncodeToString(rnd[:]))
	return b.String()
}

// MaxIDLen bounds a journal id (NewID makes ids of well under 100 bytes).
const MaxIDLen = 200

// CheckID tells whether id can be a journal id: 1 to MaxIDLen bytes of
// A-Z a-z 0-9 . _ -, not starting with '.'. Every id NewID makes passes;
// Encode and Decode refuse others, so a target can use an id as a file name
// or the local part of a Message-ID as it is, whatever a spool file holds.
func CheckID(id string) error {
	if id == "" || len(id) > MaxIDLen || id[0] == '.' {
		return fmt.Errorf("journal id %q: want 1 to %d bytes, not starting with '.'", id, MaxIDLen)
	}
	if !rules.IsName(id, MaxIDLen) {
		return fmt.Errorf("journal id %q: want only A-Z a-z 0-9 . _ -", id)
	}
	return nil
}

// WantsTarget tells whether the record goes to the target named name: every
// target when Targets is empty, else only those listed.
func (h *Header) WantsTarget(name string) bool {
	return len(h.Targets) == 0 || slices.Contains(h.Targets, name)
}

// Encode returns the record of h and msg as a reader, and its size in bytes
// (the header line plus h.Size), to pass to spool.AppendFrom. h.Size must be
// the exact length of msg: the reader fails with an error wrapping
// ErrBadRecord if msg ends sooner, or has more when read to its end (a
// reader of exactly size bytes, as spool.AppendFrom is, stores the first
// h.Size bytes), so a wrong size never becomes a record whose message runs
// into the next. h.Version 0 is written as Version; h is not changed.
func Encode(h *Header, msg io.Reader) (io.Reader, int64, error) {
	if err := CheckID(h.ID); err != nil {
		return nil, 0, fmt.Errorf("journal encode: %w: %v", ErrBadRecord, err)
	}
	if h.Size < 0 {
		return nil, 0, fmt.Errorf("journal encode %s: %w: negative size %d", h.ID, ErrBadRecord, h.Size)
	}
	hh := *h
	if hh.Version == 0 {
		hh.Version = Version
	}
	if hh.Version != Version {
		return nil, 0, fmt.Errorf("journal encode %s: %w: version %d, this code writes %d", h.ID, ErrBadRecord, hh.Version, Version)
	}
	js, err := json.Marshal(&hh)
	if err != nil {
		return nil, 0, fmt.Errorf("journal encode %s: header: %w", h.ID, err)
	}
	// json.Marshal escapes control characters, so js holds no "\n".
	line := make([]byte, 0, len(Magic)+len(js)+1)
	line = append(append(append(line, Magic...), js...), '\n')
	if len(line) > MaxHeaderLine {
		return nil, 0, fmt.Errorf("journal encode %s: %w: header line of %d bytes, more than %d", h.ID, ErrBadRecord, len(line), MaxHeaderLine)
	}
	body := &exactReader{r: msg, left: h.Size, what: "journal encode " + h.ID + ": message"}
	return io.MultiReader(bytes.NewReader(line), body), int64(len(line)) + h.Size, nil
}

// Decode reads a record's header line from r and returns the header and the
// message as a reader of exactly h.Size bytes. That reader fails with an
// error wrapping ErrBadRecord when r ends before h.Size bytes or has bytes
// after them (checked when the message has been read to its end). A read
// error of r is returned wrapped, not as ErrBadRecord: the record may be
// good. Decode reads r ahead through an 8 KiB buffer, so r belongs to the
// returned reader.
func Decode(r io.Reader) (*Header, io.Reader, error) {
	br := bufio.NewReaderSize(r, 8<<10)
	// Magic first: garbage is rejected before reading up to a whole line.
	magic := make([]byte, len(Magic))
	if n, err := io.ReadFull(br, magic); err != nil {
		if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, nil, fmt.Errorf("journal decode: reading the magic: %w", err) // I/O, not a bad record
		}
		return nil, nil, fmt.Errorf("journal decode: %w: %d bytes, want the %q magic", ErrBadRecord, n, Magic)
	}
	if string(magic) != Magic {
		if strings.HasPrefix(string(magic), "GMJ") {
			return nil, nil, fmt.Errorf("journal decode: %w: magic %q: unknown format version, this code reads %q", ErrBadRecord, magic, Magic)
		}
		return nil, nil, fmt.Errorf("journal decode: %w: starts with %q, want the %q magic", ErrBadRecord, magic, Magic)
	}
	line, err := readLine(br, MaxHeaderLine-len(Magic))
	if err != nil {
		return nil, nil, fmt.Errorf("journal decode: header line: %w", err)
	}
	h := new(Header)
	dec := json.NewDecoder(bytes.NewReader(line))
	if err := dec.Decode(h); err != nil {
		return nil, nil, fmt.Errorf("journal decode: %w: header JSON: %v", ErrBadRecord, err)
	}
	if dec.More() {
		return nil, nil, fmt.Errorf("journal decode: %w: header JSON: data after the object", ErrBadRecord)
	}
	if h.Version != Version {
		return nil, nil, fmt.Errorf("journal decode %s: %w: version %d, this code reads %d", h.ID, ErrBadRecord, h.Version, Version)
	}
	if err := CheckID(h.ID); err != nil {
		return nil, nil, fmt.Errorf("journal decode: %w: %v", ErrBadRecord, err)
	}
	if h.Size < 0 {
		return nil, nil, fmt.Errorf("journal decode %s: %w: negative size %d", h.ID, ErrBadRecord, h.Size)
	}
	return h, &exactReader{r: br, left: h.Size, what: "journal decode " + h.ID + ": message"}, nil
}

// readLine returns the bytes before the next "\n" of br (not included), at
// most max bytes with the "\n", without buffering more than br's buffer
// per step.
func readLine(br *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		frag, err := br.ReadSlice('\n')
		if len(line)+len(frag) > max {
			return nil, fmt.Errorf("%w: longer than %d bytes", ErrBadRecord, max+len(Magic))
		}
		line = append(line, frag...)
		switch {
		case err == nil:
			return line[:len(line)-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF):
			return nil, fmt.Errorf("%w: ends after %d bytes without \"\\n\"", ErrBadRecord, len(line)+len(Magic))
		default:
			return nil, fmt.Errorf("after %d bytes: %w", len(line)+len(Magic), err) // I/O, not a bad record
		}
	}
}

// exactReader yields exactly left bytes of r and fails when r has fewer or
// more.
type exactReader struct {
	r    io.Reader
	left int64
	what string
	read int64
	err  error // sticky
}

func (e *exactReader) Read(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	if e.left == 0 {
		// Is there more than promised? One byte says.
		var one [1]byte
		n, err := io.ReadFull(e.r, one[:])
		switch {
		case n > 0:
			e.err = fmt.Errorf("%s: %w: more than the %d bytes of its size", e.what, ErrBadRecord, e.read)
		case errors.Is(err, io.EOF):
			e.err = io.EOF
		default:
			e.err = fmt.Errorf("%s: after %d bytes: %w", e.what, e.read, err)
		}
		return 0, e.err
	}
	if int64(len(p)) > e.left {
		p = p[:e.left]
	}
	n, err := e.r.Read(p)
	e.left -= int64(n)
	e.read += int64(n)
	if err != nil {
		if errors.Is(err, io.EOF) {
			if e.left > 0 {
				e.err = fmt.Errorf("%s: %w: ends after %d bytes, size says %d", e.what, ErrBadRecord, e.read, e.read+e.left)
				return n, e.err
			}
			return n, nil // the check for more comes with the next Read
		}
		e.err = fmt.Errorf("%s: after %d bytes: %w", e.what, e.read, err)
		return n, e.err
	}
	return n, nil
}
