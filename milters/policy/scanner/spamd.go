package scanner

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// spamd speaks SpamAssassin's spamc/spamd protocol (spamd/PROTOCOL in
// SpamAssassin's sources), version SPAMC/1.5. SYMBOLS is the one command
// whose reply carries the score, the threshold and the names of the rules
// hit (but not each rule's score) in one request; PING is the probe.
type spamd struct {
	network, addr string
}

func newSpamd(c Config) *spamd {
	if filepath.IsAbs(c.Address) {
		return &spamd{network: "unix", addr: c.Address}
	}
	return &spamd{network: "tcp", addr: c.Address}
}

// dial connects within ctx and ties the connection's deadline to ctx, so
// every later read and write returns when ctx ends.
func (s *spamd) dial(ctx context.Context) (net.Conn, func(), error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, s.network, s.addr)
	if err != nil {
		return nil, nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	return conn, func() { stop(); conn.Close() }, nil
}

// check sends m with SYMBOLS and reads the verdict.
func (s *spamd) check(ctx context.Context, m Message) (reply, error) {
	conn, done, err := s.dial(ctx)
	if err != nil {
		return reply{}, fmt.Errorf("connect: %w", err)
	}
	defer done()
	// spamd reads exactly Content-length bytes (a mismatch is a protocol
	// error, EX_PROTOCOL).
	var hdr strings.Builder
	fmt.Fprintf(&hdr, "SYMBOLS SPAMC/1.5\r\nContent-length: %d\r\n", m.Size)
	if m.User != "" && headerSafe(m.User) {
		fmt.Fprintf(&hdr, "User: %s\r\n", m.User)
	}
	hdr.WriteString("\r\n")
	w := bufio.NewWriterSize(conn, 32<<10)
	if _, err := w.WriteString(hdr.String()); err != nil {
		return reply{}, fmt.Errorf("sending: %w", err)
	}
	if m.Size > 0 {
		text, err := body(m)
		if err != nil {
			return reply{}, err
		}
		if _, err := io.Copy(w, text); err != nil {
			return reply{}, fmt.Errorf("sending: %w", err)
		}
	}
	if err := w.Flush(); err != nil {
		return reply{}, fmt.Errorf("sending: %w", err)
	}
	// As spamc does: the half-close tells spamd the request is complete.
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	b, err := readBounded(conn)
	if err != nil {
		return reply{}, fmt.Errorf("reading the reply: %w", err)
	}
	rep, err := parseSpamd(b)
	if err != nil {
		return reply{}, fmt.Errorf("reply: %w", err)
	}
	return rep, nil
}

// ping is the breaker's probe: PING answers "SPAMD/1.5 0 PONG".
func (s *spamd) ping(ctx context.Context) error {
	conn, done, err := s.dial(ctx)
	if err != nil {
		return fmt.Errorf("ping: connect: %w", err)
	}
	defer done()
	if _, err := io.WriteString(conn, "PING SPAMC/1.5\r\n\r\n"); err != nil {
		return fmt.Errorf("ping: sending: %w", err)
	}
	line, err := bufio.NewReader(io.LimitReader(conn, 256)).ReadString('\n')
	if err != nil {
		return fmt.Errorf("ping: reading: %w", err)
	}
	if _, _, msg, err := statusLine(line); err != nil || msg != "PONG" {
		return fmt.Errorf("ping: want PONG, got %q", truncate(strings.TrimSpace(line), 80))
	}
	return nil
}

// statusLine parses "SPAMD/1.1 0 EX_OK": the version, the sysexits code
// and its text.
func statusLine(line string) (version string, code int, msg string, err error) {
	line = strings.TrimRight(line, "\r\n")
	f := strings.SplitN(line, " ", 3)
	if len(f) < 3 || !strings.HasPrefix(f[0], "SPAMD/") {
		return "", 0, "", fmt.Errorf("status line %q is not SPAMD/<version> <code> <text>", truncate(line, 80))
	}
	code, err = strconv.Atoi(f[1])
	if err != nil || code < 0 || code > 255 {
		return "", 0, "", fmt.Errorf("status line %q: code is not a number from 0 to 255", truncate(line, 80))
	}
	return f[0], code, f[2], nil
}

// parseSpamd reads a reply to SYMBOLS:
//
//	SPAMD/1.1 0 EX_OK
//	Content-length: 15
//	Spam: True ; 1000.0 / 5.0
//
//	GTUBE,NO_RECEIVED
//
// A non-zero code, a missing Spam header, a score that is not a number or
// a body shorter than its Content-length is an error.
func parseSpamd(b []byte) (reply, error) {
	head, body, ok := bytes.Cut(b, []byte("\r\n\r\n"))
	if !ok {
		// A reply with an error code may end after the status line.
		if line, _, _ := bytes.Cut(b, []byte("\r\n")); len(line) > 0 {
			if _, code, msg, err := statusLine(string(line)); err == nil && code != 0 {
				return reply{}, fmt.Errorf("spamd says %d %s", code, truncate(printable(msg), 120))
			}
		}
		return reply{}, errors.New("no end of headers (CRLF CRLF)")
	}
	lines := strings.Split(string(head), "\r\n")
	_, code, msg, err := statusLine(lines[0])
	if err != nil {
		return reply{}, err
	}
	if code != 0 {
		return reply{}, fmt.Errorf("spamd says %d %s", code, truncate(printable(msg), 120))
	}
	rep := reply{}
	var haveSpam bool
	length := -1
	for _, l := range lines[1:] {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			return reply{}, fmt.Errorf("header line %q has no colon", truncate(l, 80))
		}
		v = strings.TrimSpace(v)
		switch strings.ToLower(strings.TrimSpace(k)) {
		case "spam":
			if haveSpam {
				return reply{}, errors.New("two Spam headers")
			}
			haveSpam = true
			if rep, err = spamHeader(v); err != nil {
				return reply{}, err
			}
		case "content-length":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return reply{}, fmt.Errorf("Content-length %q is not a number", truncate(v, 40))
			}
			length = n
		}
	}
	if !haveSpam {
		return reply{}, errors.New("no Spam header")
	}
	if length >= 0 {
		if len(body) < length {
			return reply{}, fmt.Errorf("body of %d bytes, Content-length says %d", len(body), length)
		}
		body = body[:length]
	}
	for _, name := range strings.Split(string(body), ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		if err := checkSymbol(name); err != nil {
			return reply{}, err
		}
		rep.symbols = append(rep.symbols, Symbol{Name: name})
	}
	sortSymbols(rep.symbols)
	return rep, nil
}

// spamHeader parses "True ; 1000.0 / 5.0" (REPORT_IFSPAM says Yes/No).
func spamHeader(v string) (reply, error) {
	verdict, scores, ok := strings.Cut(v, ";")
	if !ok {
		return reply{}, fmt.Errorf("Spam header %q is not <True|False> ; <score> / <required>", truncate(v, 80))
	}
	rep := reply{}
	switch strings.TrimSpace(verdict) {
	case "True", "Yes":
		rep.action = "spam"
	case "False", "No":
		rep.action = "ham"
	default:
		return reply{}, fmt.Errorf("Spam header %q: verdict is not True or False", truncate(v, 80))
	}
	score, required, ok := strings.Cut(scores, "/")
	if !ok {
		return reply{}, fmt.Errorf("Spam header %q has no score / required", truncate(v, 80))
	}
	var err error
	if rep.score, err = strconv.ParseFloat(strings.TrimSpace(score), 64); err != nil {
		return reply{}, fmt.Errorf("Spam header %q: score is not a number", truncate(v, 80))
	}
	if rep.required, err = strconv.ParseFloat(strings.TrimSpace(required), 64); err != nil {
		return reply{}, fmt.Errorf("Spam header %q: required score is not a number", truncate(v, 80))
	}
	if err := checkScore("score", rep.score); err != nil {
		return reply{}, err
	}
	if err := checkScore("required score", rep.required); err != nil {
		return reply{}, err
	}
	return rep, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// printable replaces control bytes of a scanner's text before it goes into
// an error (and from there a log).
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return '?'
		}
		return r
	}, s)
}
