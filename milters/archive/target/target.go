// Package target delivers journal records (package journal) from the
// archive milter's journal spool to the archives: an SMTP journal mailbox
// (an envelope journal report), a directory (.eml and .json), or an HTTP
// endpoint. Each target is a drain.Sink; the drainer owns retries and
// backoff. A record a target refuses for good — or one that no longer
// decodes — goes to the dead letters (DeadLetters) and counts as delivered,
// so one bad record never holds back the rest and none is dropped silently.
//
// Error classes, the same for every target: a permanent refusal (SMTP 5xx,
// HTTP 4xx other than 408 and 429) or a corrupt record is dead-lettered;
// everything else (network, timeouts, 4xx SMTP, HTTP 5xx, disk errors) is
// temporary, and Send returns it — as a *drain.PartialError when the
// records before it were delivered, so they are not sent again.
package target

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/milters/archive/journal"
	"github.com/geomilter/geomilter/shared/drain"
	"github.com/geomilter/geomilter/shared/rules"
	"github.com/geomilter/geomilter/shared/spool"
)

// Config is one entry of milters.archive.journal.targets; the yaml tags are
// the config keys. Which keys apply depends on Type.
type Config struct {
	Name string `yaml:"name"` // cursor, metric label and dead-letter folder name
	Type string `yaml:"type"` // smtp | dir | http

	// smtp
	Hosts          []string      `yaml:"hosts"`           // tried in order: "[10.0.0.2]:25", "mx.example:2525", "mx.example" (port 25); no MX lookup
	To             string        `yaml:"to"`              // the journal mailbox (RCPT TO)
	From           string        `yaml:"from"`            // MAIL FROM; "" is the null sender <>
	Helo           string        `yaml:"helo"`            // EHLO name; default the host name
	StartTLS       string        `yaml:"starttls"`        // may (default) | require | off
	TLSCAFile      string        `yaml:"tls_ca_file"`     // CA bundle for require; default the system roots
	TLSServerName  string        `yaml:"tls_server_name"` // name checked in the certificate; default the host of each hosts entry
	ConnectTimeout time.Duration `yaml:"connect_timeout"` // TCP connect plus greeting, per host; default 10s

	// smtp and http
	Timeout time.Duration `yaml:"timeout"` // smtp: each command or data write; http: each request; default 60s / 30s

	// dir
	Path string `yaml:"path"`

	// http
	URL     string            `yaml:"url"`
	Headers map[string]string `yaml:"headers"`
}

// Target types.
const (
	TypeSMTP = "smtp"
	TypeDir  = "dir"
	TypeHTTP = "http"
)

// StartTLS modes.
const (
	StartTLSMay     = "may"     // use STARTTLS when offered, without checking the certificate
	StartTLSRequire = "require" // fail (temporarily) unless STARTTLS succeeds with a verified certificate
	StartTLSOff     = "off"
)

// Defaults for zero values.
const (
	DefaultSMTPTimeout    = 60 * time.Second
	DefaultConnectTimeout = 10 * time.Second
	DefaultHTTPTimeout    = 30 * time.Second
)

// Problem is one thing wrong in a Config: the key (as in the YAML, e.g.
// "hosts[1]") and what is wrong with it.
type Problem struct {
	Key, Msg string
}

func (p Problem) String() string { return p.Key + ": " + p.Msg }

// Check returns every problem of c at once (nil if none), for the config
// loader to report at its file position.
func (c *Config) Check() []Problem {
	var ps []Problem
	add := func(key, format string, args ...any) {
		ps = append(ps, Problem{key, fmt.Sprintf(format, args...)})
	}
	if err := checkName(c.Name); err != nil {
		add("name", "%v", err)
	}
	unused := func(key string, set bool) {
		if set {
			add(key, "not used by a target of type %q", c.Type)
		}
	}
	smtpKeys := func() {
		unused("hosts", len(c.Hosts) > 0)
		unused("to", c.To != "")
		unused("from", c.From != "")
		unused("helo", c.Helo != "")
		unused("starttls", c.StartTLS != "")
		unused("tls_ca_file", c.TLSCAFile != "")
		unused("tls_server_name", c.TLSServerName != "")
		unused("connect_timeout", c.ConnectTimeout != 0)
	}
	if c.Timeout < 0 {
		add("timeout", "must not be negative, got %v", c.Timeout)
	}
	switch c.Type {
	case TypeSMTP:
		unused("path", c.Path != "")
		unused("url", c.URL != "")
		unused("headers", len(c.Headers) > 0)
		if len(c.Hosts) == 0 {
			add("hosts", "at least one host is needed")
		}
		for i, h := range c.Hosts {
			if _, _, err := splitHost(h); err != nil {
				add(fmt.Sprintf("hosts[%d]", i), "%v", err)
			}
		}
		if c.To == "" {
			add("to", "the journal mailbox address is needed")
		} else if err := checkMailbox(c.To); err != nil {
			add("to", "%v", err)
		}
		if c.From != "" {
			if err := checkMailbox(c.From); err != nil {
				add("from", "%v", err)
			}
		}
		if p := c.heloProblem(); p != "" {
			add("helo", "%s", p)
		}
		switch c.StartTLS {
		case "", StartTLSMay, StartTLSRequire, StartTLSOff:
		default:
			add("starttls", "must be may, require or off, got %q", c.StartTLS)
		}
		if c.TLSCAFile != "" && c.StartTLS != StartTLSRequire {
			add("tls_ca_file", "only used with starttls: require (may does not check certificates)")
		}
		if c.ConnectTimeout < 0 {
			add("connect_timeout", "must not be negative, got %v", c.ConnectTimeout)
		}
	case TypeDir:
		smtpKeys()
		unused("url", c.URL != "")
		unused("headers", len(c.Headers) > 0)
		unused("timeout", c.Timeout != 0)
		if c.Path == "" {
			add("path", "the directory is needed")
		} else if !filepath.IsAbs(c.Path) {
			add("path", "must be an absolute path, got %q", c.Path)
		}
	case TypeHTTP:
		smtpKeys()
		unused("path", c.Path != "")
		u, err := url.Parse(c.URL)
		switch {
		case c.URL == "":
			add("url", "the URL to POST to is needed")
		case err != nil:
			add("url", "%v", err)
		case u.Scheme != "http" && u.Scheme != "https" || u.Host == "":
			add("url", "must be an absolute http:// or https:// URL, got %q", c.URL)
		}
		for k, v := range c.Headers {
			if !validHeaderName(k) {
				add("headers", "%q is not a valid header name", k)
			}
			if strings.ContainsAny(v, "\r\n\x00") {
				add("headers."+k, "value holds a line break or NUL")
			}
		}
	case "":
		add("type", "is needed: smtp, dir or http")
	default:
		add("type", "must be smtp, dir or http, got %q", c.Type)
	}
	return ps
}

// New returns the target c describes, dead-lettering through dead. log gets
// one line per dead letter and per failed host; never message content.
func New(c Config, dead *DeadLetters, log zerolog.Logger) (drain.Sink, error) {
	if ps := c.Check(); len(ps) > 0 {
		errs := make([]error, len(ps))
		for i, p := range ps {
			errs[i] = fmt.Errorf("archive target %q: %s", c.Name, p)
		}
		return nil, errors.Join(errs...)
	}
	if dead == nil {
		return nil, fmt.Errorf("archive target %q: no dead-letter store", c.Name)
	}
	log = log.With().Str("target", c.Name).Logger()
	switch c.Type {
	case TypeSMTP:
		return newSMTP(c, dead, log)
	case TypeDir:
		return newDir(c, dead, log), nil
	default:
		return newHTTP(c, dead, log), nil
	}
}

// heloProblem: the EHLO name is also the right side of the report's
// Message-ID (journal.WriteReport), so it must be a plain domain.
func (c *Config) heloProblem() string {
	if strings.ContainsAny(c.Helo, " \t\r\n<>@\"()[],;:\\") {
		return fmt.Sprintf("%q is not a host name", c.Helo)
	}
	return ""
}

// checkName: the name is a directory name under the dead-letter folder and a
// metric label value.
func checkName(name string) error {
	if name == "" {
		return errors.New("is needed")
	}
	if len(name) > 64 || !safeName(name) {
		return fmt.Errorf("%q: use at most 64 of A-Z a-z 0-9 . _ -, not starting with '.'", name)
	}
	return nil
}

// safeName tells whether s can be used as a file name as it is: journal ids
// (journal.NewID makes only such) and target names.
func safeName(s string) bool { return s != "" && s[0] != '.' && rules.IsName(s, journal.MaxIDLen) }

// checkMailbox accepts what is sent in MAIL FROM:<…> / RCPT TO:<…>: an
// addr-spec without brackets, spaces or line breaks (RFC 5321 §4.1.2
// Mailbox; not checked further — the server says what it accepts).
func checkMailbox(a string) error {
	at := strings.LastIndexByte(a, '@')
	if at <= 0 || at == len(a)-1 || strings.ContainsAny(a, " \t\r\n<>\x00") {
		return fmt.Errorf("%q is not a mailbox (local@domain)", a)
	}
	return nil
}

// validHeaderName: RFC 9110 §5.1 field-name, a token.
func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

// splitHost parses a hosts entry: "[addr-or-name]:port", "name:port",
// "name" or "[addr]" (port 25). Brackets only say "no MX lookup" in Postfix
// syntax; we never look up MX records, so both forms mean the same.
func splitHost(h string) (host, addr string, err error) {
	if h == "" {
		return "", "", errors.New("empty host")
	}
	host, port, err := net.SplitHostPort(h)
	if err != nil {
		// No port.
		host, port = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]"), "25"
		if strings.HasPrefix(h, "[") != strings.HasSuffix(h, "]") || strings.ContainsAny(host, "[]") || strings.Contains(host, ":") && net.ParseIP(host) == nil {
			return "", "", fmt.Errorf("%q: want host, host:port or [host]:port", h)
		}
	}
	if host == "" || strings.ContainsAny(host, " \t\r\n/") {
		return "", "", fmt.Errorf("%q: bad host name", h)
	}
	if n, perr := parsePort(port); perr != nil || n == 0 {
		return "", "", fmt.Errorf("%q: bad port %q", h, port)
	}
	return host, net.JoinHostPort(host, port), nil
}

func parsePort(p string) (int, error) {
	n := 0
	if p == "" || len(p) > 5 {
		return 0, errors.New("bad port")
	}
	for i := 0; i < len(p); i++ {
		if p[i] < '0' || p[i] > '9' {
			return 0, errors.New("bad port")
		}
		n = n*10 + int(p[i]-'0')
	}
	if n > 65535 {
		return 0, errors.New("bad port")
	}
	return n, nil
}

// corrupt tells whether err says the record itself is unusable (its bytes
// on disk fail their checksum, its body file is gone, or it does not decode
// as a journal record): retrying would read the same bytes forever.
func corrupt(err error) bool {
	return errors.Is(err, spool.ErrCorrupt) || errors.Is(err, journal.ErrBadRecord) || errors.Is(err, errBadID)
}

var errBadID = errors.New("journal id not usable as a file name")

// forTarget opens rec and, when its header wants the named target, calls
// deliver with the header and the message; a record meant for other
// targets only is done at once.
func forTarget(name string, rec spool.Record, deliver func(h *journal.Header, msg io.Reader) error) error {
	h, msg, rc, err := openRecord(rec)
	if err != nil {
		return err
	}
	defer rc.Close()
	if !h.WantsTarget(name) {
		return nil
	}
	return deliver(h, msg)
}

// openRecord opens rec and decodes its header. The caller closes rc after
// reading msg.
func openRecord(rec spool.Record) (h *journal.Header, msg io.Reader, rc io.ReadCloser, err error) {
	rc, err = rec.Open()
	if err != nil {
		return nil, nil, nil, err
	}
	h, msg, err = journal.Decode(rc)
	if err == nil && !safeName(h.ID) {
		err = fmt.Errorf("journal record %d: %w: %q", rec.Seq, errBadID, h.ID)
	}
	if err != nil {
		rc.Close()
		return nil, nil, nil, fmt.Errorf("spool record %d: %w", rec.Seq, err)
	}
	return h, msg, rc, nil
}

// srcReader remembers the error its reader returned, so that a failed copy
// can be blamed on the record (source) or on the destination.
type srcReader struct {
	r   io.Reader
	err error
}

func (s *srcReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		s.err = err
	}
	return n, err
}

// permanentError is a target's refusal of one record for good.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

func permanent(err error) error { return &permanentError{err} }

func isPermanent(err error) bool {
	var pe *permanentError
	return errors.As(err, &pe)
}

// partial wraps the temporary error that stopped a batch after done
// delivered records.
func partial(done int, err error) error {
	if done == 0 {
		return err
	}
	return &drain.PartialError{Done: done, Err: err}
}

// sendEach delivers a batch one record at a time with one(ctx, rec), which
// returns nil, a permanent or corrupt-record error (then the record is
// dead-lettered and counts as done) or a temporary error (then the batch
// stops there).
func sendEach(ctx context.Context, name string, batch []spool.Record, dead *DeadLetters,
	one func(context.Context, spool.Record) error) error {
	for i, rec := range batch {
		if err := ctx.Err(); err != nil {
			return partial(i, fmt.Errorf("archive target %s: %w", name, err))
		}
		err := one(ctx, rec)
		if err == nil {
			continue
		}
		if !isPermanent(err) && !corrupt(err) {
			return partial(i, fmt.Errorf("archive target %s: %w", name, err))
		}
		if derr := dead.Put(name, rec, err); derr != nil {
			return partial(i, derr)
		}
	}
	return nil
}

// hostname is the default EHLO name and report host.
func hostname() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "localhost"
	}
	return h
}
