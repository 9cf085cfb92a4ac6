package target

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/milters/archive/journal"
	"github.com/geomilter/geomilter/shared/spool"
)

// SMTPTarget sends each record as an envelope journal report
// (journal.WriteReport) to one journal mailbox, over one SMTP session per
// batch and one transaction per record, on the first of its hosts that
// works.
//
// The client is our own, on net/textproto (the same line reader and
// dot-stuffing DATA writer net/smtp uses), rather than net/smtp: net/smtp is
// frozen, declares BODY=8BITMIME whenever the server offers it (we declare
// it only for 8-bit messages, RFC 6152 §3), has no context or per-command
// deadlines, and hides which command a reply answered, which decides
// between dead letter and retry here.
//
// Failover: a host that cannot be reached within connect_timeout, greets
// with anything but 220, fails EHLO or STARTTLS, answers 4xx or drops the
// connection is given up for the rest of the Send, and the record is tried
// on the next host; when every host failed, Send returns a temporary error.
// A 5xx to MAIL, RCPT, DATA or the end of data refuses that record for good:
// it is dead-lettered and the session goes on with the next record.
type SMTPTarget struct {
	name           string
	hosts          []string // "host:port" to dial
	names          []string // host part of each, for TLS
	to, from       string
	helo           string
	startTLS       string
	tlsServerName  string
	roots          *x509.CertPool // nil: system roots
	timeout        time.Duration
	connectTimeout time.Duration
	reportFrom     string
	dead           *DeadLetters
	log            zerolog.Logger
	warned8bit     atomic.Bool

	// A session is kept open between sends for idleTimeout: at a steady
	// trickle of mail the drainer sends small batches, and a connection,
	// greeting, EHLO (and TLS) per batch would cost more than the reports.
	mu        sync.Mutex
	idle      *smtpConn
	idleHost  int
	idleTimer *time.Timer
}

// idleTimeout is how long a session to a journal host stays open without a
// report: short, so a host that fails over is left soon, and far below
// what servers allow (Postfix's smtpd_timeout is 300 s).
const idleTimeout = 5 * time.Second

func newSMTP(c Config, dead *DeadLetters, log zerolog.Logger) (*SMTPTarget, error) {
	t := &SMTPTarget{name: c.Name, to: c.To, from: c.From, helo: c.Helo, startTLS: c.StartTLS,
		tlsServerName: c.TLSServerName, timeout: c.Timeout, connectTimeout: c.ConnectTimeout,
		dead: dead, log: log}
	for _, h := range c.Hosts {
		name, addr, _ := splitHost(h) // checked by Check
		t.hosts = append(t.hosts, addr)
		t.names = append(t.names, name)
	}
	if t.helo == "" {
		t.helo = hostname()
		if (&Config{Type: TypeSMTP, Helo: t.helo}).heloProblem() != "" {
			t.helo = "localhost" // an odd host name must not spoil every report's Message-ID
		}
	}
	if t.startTLS == "" {
		t.startTLS = StartTLSMay
	}
	if t.timeout == 0 {
		t.timeout = DefaultSMTPTimeout
	}
	if t.connectTimeout == 0 {
		t.connectTimeout = DefaultConnectTimeout
	}
	// The null sender is the default envelope sender: a journal report is
	// an automatic notification like a DSN, and a report the archive later
	// bounces must not go anywhere (RFC 5321 §4.5.5); our own failures are
	// seen in the SMTP replies, and dead-lettered. The From field still
	// needs an address (RFC 5322 §3.6.2).
	t.reportFrom = c.From
	if t.reportFrom == "" {
		t.reportFrom = "postmaster@" + t.helo
	}
	if c.TLSCAFile != "" {
		pem, err := os.ReadFile(c.TLSCAFile)
		if err != nil {
			return nil, fmt.Errorf("archive target %q: tls_ca_file: %w", c.Name, err)
		}
		t.roots = x509.NewCertPool()
		if !t.roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("archive target %q: tls_ca_file %s: no PEM certificate in it", c.Name, c.TLSCAFile)
		}
	}
	return t, nil
}

// Name implements drain.Sink.
func (t *SMTPTarget) Name() string { return t.name }

// Close implements drain.Sink: it ends the session kept open, if any.
func (t *SMTPTarget) Close() error {
	t.mu.Lock()
	c := t.idle
	t.idle = nil
	if t.idleTimer != nil {
		t.idleTimer.Stop()
	}
	t.mu.Unlock()
	if c != nil {
		c.dc.rebind(context.Background())
		c.quit()
	}
	return nil
}

// take returns the session kept open by the last send, bound to ctx, and
// the index of its host; nil if there is none.
func (t *SMTPTarget) take(ctx context.Context) (*smtpConn, int) {
	t.mu.Lock()
	c, host := t.idle, t.idleHost
	t.idle = nil
	if t.idleTimer != nil {
		t.idleTimer.Stop()
	}
	t.mu.Unlock()
	if c != nil {
		c.bind(ctx)
	}
	return c, host
}

// park keeps a sound session open for the next send, for idleTimeout.
func (t *SMTPTarget) park(c *smtpConn, host int) {
	c.stop()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.idle != nil { // cannot happen: one drainer per target; be safe
		go t.idle.quit()
	}
	t.idle, t.idleHost = c, host
	t.idleTimer = time.AfterFunc(idleTimeout, func() {
		t.mu.Lock()
		if t.idle != c {
			t.mu.Unlock()
			return
		}
		t.idle = nil
		t.mu.Unlock()
		c.dc.rebind(context.Background())
		c.quit()
	})
}

// Send implements drain.Sink.
func (t *SMTPTarget) Send(ctx context.Context, batch []spool.Record) error {
	var (
		lastErr error // why the last host was given up
		// reused: c was kept open from an earlier send; the server may
		// have closed it meanwhile, which is not the host failing.
		reused bool
	)
	c, host := t.take(ctx) // host: index of the host in use or to try next
	reused = c != nil
	defer func() {
		if c != nil {
			t.park(c, host)
		}
	}()
	for i := 0; i < len(batch); {
		rec := batch[i]
		if err := ctx.Err(); err != nil {
			return partial(i, fmt.Errorf("archive target %s: %w", t.name, err))
		}
		// A first read of the record checks it whole (a corrupt record is
		// dead-lettered before any SMTP) and tells 7bit from 8bit.
		h, eightBit, size, body, err := t.scanRecord(rec)
		if err != nil {
			if !corrupt(err) && !isPermanent(err) {
				return partial(i, fmt.Errorf("archive target %s: %w", t.name, err))
			}
			if err := t.dead.Put(t.name, rec, err); err != nil {
				return partial(i, err)
			}
			i++
			continue
		}
		if !h.WantsTarget(t.name) {
			i++
			continue
		}
		for c == nil {
			if host >= len(t.hosts) {
				return partial(i, fmt.Errorf("archive target %s: every host failed; last: %w", t.name, lastErr))
			}
			c, err = t.dial(ctx, host)
			if err != nil {
				if cerr := ctxDone(ctx); cerr != nil {
					return partial(i, fmt.Errorf("archive target %s: %w (%v)", t.name, cerr, err))
				}
				t.log.Warn().Str("host", t.hosts[host]).Err(err).Msg("archive: journal host failed; trying the next")
				lastErr = err
				host++
			}
		}
		err = t.transaction(c, rec, h, eightBit, size, body)
		var re *replyError
		if err != nil && reused && (!errors.As(err, &re) || re.code == 421) && ctxDone(ctx) == nil {
			// The kept session was closed under us (the server's idle
			// timeout, or its 421): open a new one to the same host,
			// blame nobody.
			c.close()
			c, reused = nil, false
			continue
		}
		reused = false
		switch {
		case err == nil:
			i++
		case isPermanent(err):
			if derr := t.dead.Put(t.name, rec, err); derr != nil {
				return partial(i, derr)
			}
			i++
		default:
			var (
				se *sourceError
				re *replyError
			)
			if errors.As(err, &re) {
				c.quit() // a 4xx: the session itself is sound
			} else {
				c.close() // mid-transaction: the session is in an unknown state
			}
			c = nil
			if errors.As(err, &se) {
				// Our record, not the host: the record changed on disk
				// since scanRecord read it.
				if !corrupt(se.err) {
					return partial(i, fmt.Errorf("archive target %s: %w", t.name, err))
				}
				if derr := t.dead.Put(t.name, rec, se.err); derr != nil {
					return partial(i, derr)
				}
				i++
				continue
			}
			if cerr := ctxDone(ctx); cerr != nil {
				return partial(i, fmt.Errorf("archive target %s: %w (%v)", t.name, cerr, err))
			}
			t.log.Warn().Str("host", t.hosts[host]).Err(err).Msg("archive: journal host failed; trying the next")
			lastErr = err
			host++
		}
	}
	return nil
}

// ctxDone is ctx.Err(), also at the instant the deadline passes: the
// connection's deadline (the same instant) may fire before the context's
// timer, and a host must not be blamed for our own deadline.
func ctxDone(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
		return context.DeadlineExceeded
	}
	return nil
}

// scanRecord checks rec before any SMTP: a record that does not decode is
// dead-lettered, and one whose report cannot be made is permanent, here and
// not in the middle of DATA, where the only way out is to drop the
// connection. It also tells whether the message has any byte above 127
// (then it is sent as 8bit) and the report's approximate size (for SIZE=,
// RFC 1870 §6.1).
//
// A record in the segment (up to 256 KiB; nearly all mail) was checked
// whole by its CRC when read and is in memory: its message bytes are
// returned as body, and transaction sends from them without reading the
// record again. A record in a body file is read once to the end here (its
// CRC is checked only at the end of the file), with its report written to
// nowhere.
func (t *SMTPTarget) scanRecord(rec spool.Record) (h *journal.Header, eightBit bool, size int64, body []byte, err error) {
	h, msg, rc, err := openRecord(rec)
	if err != nil {
		return nil, false, 0, nil, err
	}
	defer rc.Close()
	if !h.WantsTarget(t.name) {
		return h, false, 0, nil, nil
	}
	if !rec.InFile() {
		if nl := bytes.IndexByte(rec.Data, '\n'); nl >= 0 && int64(len(rec.Data)-nl-1) == h.Size {
			if err := journal.CheckReport(h, t.reportOptions(true)); err != nil {
				return nil, false, 0, nil, permanent(fmt.Errorf("spool record %d: %w", rec.Seq, err))
			}
			body = rec.Data[nl+1:]
			return h, has8bit(body), int64(len(body)) + reportOverhead, body, nil
		}
		// Sizes that do not add up: the full read below says what is wrong.
	}
	scan := &scan8bit{r: msg}
	src := &srcReader{r: scan}
	var n countWriter
	err = journal.WriteReport(&n, h, src, t.reportOptions(true))
	switch {
	case src.err != nil:
		return nil, false, 0, nil, fmt.Errorf("spool record %d: %w", rec.Seq, src.err)
	case err != nil:
		return nil, false, 0, nil, permanent(fmt.Errorf("spool record %d: %w", rec.Seq, err))
	}
	return h, scan.eightBit, int64(n), nil, nil
}

// reportOverhead estimates what a journal report adds to the message (its
// header fields, the envelope lines, the MIME framing), for SIZE=.
const reportOverhead = 2048

func has8bit(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return true
		}
	}
	return false
}

func (t *SMTPTarget) reportOptions(eightBit bool) journal.ReportOptions {
	return journal.ReportOptions{From: t.reportFrom, To: t.to, Host: t.helo, EightBit: eightBit}
}

// scan8bit notes whether any byte read is above 127.
type scan8bit struct {
	r        io.Reader
	eightBit bool
}

func (s *scan8bit) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if !s.eightBit {
		for _, b := range p[:n] {
			if b >= 0x80 {
				s.eightBit = true
				break
			}
		}
	}
	return n, err
}

type countWriter int64

func (c *countWriter) Write(p []byte) (int, error) {
	*c += countWriter(len(p))
	return len(p), nil
}

// sourceError is a failure to read the record while sending it.
type sourceError struct{ err error }

func (e *sourceError) Error() string { return "reading the journal record: " + e.err.Error() }
func (e *sourceError) Unwrap() error { return e.err }

// transaction sends one report: MAIL, RCPT, DATA, then the report from
// body (a record in memory) or read again from the record. A completed
// transaction leaves the session clean (RFC 5321 §4.1.4), so there is no
// RSET between reports; a failed one ends the session. Where the host
// offers PIPELINING (RFC 2920) MAIL, RCPT and DATA go in one write: one
// round trip instead of three.
func (t *SMTPTarget) transaction(c *smtpConn, rec spool.Record, h *journal.Header, eightBit bool, size int64, body []byte) error {
	if c.dirty {
		// The last transaction on this session did not complete (a
		// refusal dead-lettered its record): RFC 5321 §4.1.1.5, a clean
		// state first. A completed one leaves it clean (§4.1.4).
		if _, err := c.cmd("RSET", 2, "RSET"); err != nil {
			return err
		}
		c.dirty = false
	}
	c.txns++
	c.dirty = true // until the reply to the end of data says otherwise
	mail := "MAIL FROM:<" + t.from + ">"
	if eightBit {
		if _, ok := c.ext["8BITMIME"]; ok {
			mail += " BODY=8BITMIME" // RFC 6152 §2
		} else if !t.warned8bit.Swap(true) {
			// The attached original may not be re-encoded (RFC 2046
			// §5.2.1: message/rfc822 is 7bit, 8bit or binary), so like
			// Postfix without a way to convert, send it as it is.
			t.log.Warn().Str("host", c.host).Str("journal_id", h.ID).
				Msg("archive: journal host does not offer 8BITMIME; sending an 8-bit report anyway")
		}
	}
	if _, ok := c.ext["SIZE"]; ok {
		// RFC 1870 §6.1: an estimate; a server that would refuse the size
		// says so now rather than after the data.
		mail += " SIZE=" + strconv.FormatInt(size, 10)
	}
	if _, ok := c.ext["SMTPUTF8"]; ok && needsUTF8(t.from, t.to, h) {
		mail += " SMTPUTF8" // RFC 6531 §3.4
	}
	if _, ok := c.ext["PIPELINING"]; ok {
		if err := c.pipeline(mail, "RCPT TO:<"+t.to+">", "DATA"); err != nil {
			return err
		}
	} else {
		if code, err := c.cmd("MAIL", 2, "%s", mail); err != nil {
			return permanentIf(code, err)
		}
		if code, err := c.cmd("RCPT", 2, "RCPT TO:<%s>", t.to); err != nil {
			return rcptError(code, err)
		}
		if code, err := c.cmd("DATA", 3, "DATA"); err != nil {
			return permanentIf(code, err)
		}
	}
	var msg io.Reader
	if body != nil {
		msg = bytes.NewReader(body)
	} else {
		rc, err := rec.Open()
		if err != nil {
			return &sourceError{err}
		}
		defer rc.Close()
		if _, msg, err = journal.Decode(rc); err != nil {
			return &sourceError{err}
		}
	}
	src := &srcReader{r: msg}
	c.dc.setStep(t.timeout)
	// The DotWriter does the RFC 5321 §4.5.2 dot-stuffing, makes every line
	// end CRLF and sends the final ".".
	w := c.tp.DotWriter()
	err := journal.WriteReport(w, h, src, t.reportOptions(eightBit))
	if src.err != nil {
		return &sourceError{src.err}
	}
	if err != nil {
		return fmt.Errorf("host %s: sending the report: %w", c.host, err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("host %s: end of data: %w", c.host, err)
	}
	code, msgText, err := c.tp.ReadResponse(0)
	if err != nil {
		return fmt.Errorf("host %s: reply to end of data: %w", c.host, err)
	}
	if code/100 != 2 {
		return permanentIf(code, &replyError{host: c.host, cmd: "end of data", code: code, msg: msgText})
	}
	c.dirty = false
	return nil
}

// needsUTF8: a non-ASCII address, or a message that came in with SMTPUTF8.
func needsUTF8(from, to string, h *journal.Header) bool {
	if _, ok := h.Envelope.MailParams.Get("SMTPUTF8"); ok {
		return true
	}
	for _, s := range []string{from, to} {
		for i := 0; i < len(s); i++ {
			if s[i] >= 0x80 {
				return true
			}
		}
	}
	return false
}

// replyError is an SMTP reply other than the one wanted.
type replyError struct {
	host, cmd string
	code      int
	msg       string
}

func (e *replyError) Error() string {
	return fmt.Sprintf("host %s: %s: %d %s", e.host, e.cmd, e.code, strings.ReplaceAll(e.msg, "\n", " / "))
}

// permanentIf marks err permanent for a 5xx reply (RFC 5321 §4.2.1).
func permanentIf(code int, err error) error {
	if code/100 == 5 {
		return permanent(err)
	}
	return err
}

// smtpConn is one session with one host.
type smtpConn struct {
	host    string
	dc      *deadlineConn
	conn    net.Conn // dc, or a TLS connection over it
	tp      *textproto.Conn
	ext     map[string]string // EHLO keywords (upper case) -> parameters
	txns    int
	dirty   bool        // a transaction was started and did not complete
	lastMsg string      // text of the last reply
	stop    func() bool // stops the context watch
}

// dial connects to t.hosts[i] and gets the session ready for MAIL: greeting,
// EHLO, STARTTLS as configured. Connecting and the greeting together take
// at most connect_timeout, so a dark host (packets dropped) or one that
// accepts and never speaks costs that and no more.
func (t *SMTPTarget) dial(ctx context.Context, i int) (*smtpConn, error) {
	addr := t.hosts[i]
	start := time.Now()
	d := net.Dialer{Timeout: t.connectTimeout}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("host %s: connect: %w", addr, err)
	}
	dc := newDeadlineConn(raw, ctx, max(time.Until(start.Add(t.connectTimeout)), time.Millisecond))
	c := &smtpConn{host: addr, dc: dc, conn: dc, tp: textproto.NewConn(dc)}
	c.stop = context.AfterFunc(ctx, dc.cancel)
	ok := false
	defer func() {
		if !ok {
			c.close()
		}
	}()
	// RFC 5321 §3.1: the server speaks first, 220 or 554.
	code, msg, err := c.tp.ReadResponse(0)
	if err != nil {
		return nil, fmt.Errorf("host %s: greeting: %w", addr, err)
	}
	if code != 220 {
		return nil, &replyError{host: addr, cmd: "greeting", code: code, msg: msg}
	}
	dc.setStep(t.timeout)
	if err := c.hello(t.helo); err != nil {
		return nil, err
	}
	if t.startTLS != StartTLSOff {
		if _, offered := c.ext["STARTTLS"]; offered {
			if err := t.starttls(ctx, c, i); err != nil {
				return nil, err
			}
		} else if t.startTLS == StartTLSRequire {
			return nil, fmt.Errorf("host %s: STARTTLS required but not offered", addr)
		}
	}
	ok = true
	return c, nil
}

// hello sends EHLO, or HELO to a server that does not know EHLO (RFC 5321
// §4.1.1.1), and keeps the extensions offered.
func (c *smtpConn) hello(name string) error {
	code, err := c.cmd("EHLO", 2, "EHLO %s", name)
	if err != nil {
		if code != 500 && code != 502 {
			return err
		}
		if _, err := c.cmd("HELO", 2, "HELO %s", name); err != nil {
			return err
		}
		c.ext = map[string]string{}
		return nil
	}
	c.ext = map[string]string{}
	for _, line := range strings.Split(c.lastMsg, "\n")[1:] {
		k, v, _ := strings.Cut(strings.TrimSpace(line), " ")
		c.ext[strings.ToUpper(k)] = v
	}
	return nil
}

// starttls upgrades the session (RFC 3207) and says EHLO again, as §4.2
// requires. With "may" the certificate is not checked: opportunistic TLS
// only guards against passive listening, as Postfix's "may" level.
func (t *SMTPTarget) starttls(ctx context.Context, c *smtpConn, i int) error {
	if _, err := c.cmd("STARTTLS", 2, "STARTTLS"); err != nil {
		return err
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.tlsServerName, RootCAs: t.roots}
	if cfg.ServerName == "" {
		cfg.ServerName = t.names[i]
	}
	if t.startTLS == StartTLSMay {
		cfg.InsecureSkipVerify = true
	}
	tc := tls.Client(c.dc, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("host %s: TLS handshake: %w", c.host, err)
	}
	c.conn = tc
	c.tp = textproto.NewConn(tc)
	return c.hello(t.helo)
}

// cmd sends one command line and reads the reply; a reply not in class
// want (2 or 3) is a *replyError. It returns the reply code (0 if none).
func (c *smtpConn) cmd(name string, want int, format string, args ...any) (int, error) {
	if err := c.tp.PrintfLine(format, args...); err != nil {
		return 0, fmt.Errorf("host %s: %s: %w", c.host, name, err)
	}
	code, msg, err := c.tp.ReadResponse(0)
	if err != nil {
		return code, fmt.Errorf("host %s: reply to %s: %w", c.host, name, err)
	}
	c.lastMsg = msg
	if code/100 != want {
		return code, &replyError{host: c.host, cmd: name, code: code, msg: msg}
	}
	return code, nil
}

// pipeline sends MAIL, RCPT and DATA in one write and reads their three
// replies in order (RFC 2920 §3.1: DATA is last in a group). The first
// reply that refuses decides the error; the rest are still read so the
// session stays in step.
func (c *smtpConn) pipeline(mail, rcpt, data string) error {
	w := c.tp.W
	for _, line := range []string{mail, rcpt, data} {
		w.WriteString(line)
		w.WriteString("\r\n")
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("host %s: MAIL, RCPT, DATA: %w", c.host, err)
	}
	var first error
	for i, step := range []struct {
		name string
		want int
	}{{"MAIL", 2}, {"RCPT", 2}, {"DATA", 3}} {
		code, msg, err := c.tp.ReadResponse(0)
		if err != nil {
			return fmt.Errorf("host %s: reply to %s: %w", c.host, step.name, err)
		}
		if i == 2 && code/100 == 3 && first != nil {
			// A server that opened DATA although MAIL or RCPT failed:
			// end the empty message so the session stays in step.
			if _, err := c.cmd("end of data", 5, "."); err != nil {
				var re *replyError
				if !errors.As(err, &re) {
					return err
				}
			}
		}
		if code/100 == step.want || first != nil {
			continue
		}
		re := &replyError{host: c.host, cmd: step.name, code: code, msg: msg}
		if i == 1 {
			first = rcptError(code, re)
		} else {
			first = permanentIf(code, re)
		}
	}
	return first
}

// rcptError: RFC 5321 §4.5.3.1.10 treats 552 to RCPT as temporary.
func rcptError(code int, err error) error {
	if code == 552 {
		return err
	}
	return permanentIf(code, err)
}

// bind ties a kept session to the context of the send that takes it.
func (c *smtpConn) bind(ctx context.Context) {
	c.dc.rebind(ctx)
	c.stop = context.AfterFunc(ctx, c.dc.cancel)
}

func (c *smtpConn) quit() {
	c.dc.setStep(5 * time.Second)
	_, _ = c.cmd("QUIT", 2, "QUIT")
	c.close()
}

func (c *smtpConn) close() {
	c.stop()
	_ = c.conn.Close()
}

// deadlineConn gives every Read and Write a deadline: the step timeout from
// now, never past the context's deadline; once the context is done, every
// call fails at once.
type deadlineConn struct {
	net.Conn
	limit     time.Time // the context's deadline; zero: none
	step      atomic.Int64
	cancelled atomic.Bool
}

func newDeadlineConn(c net.Conn, ctx context.Context, step time.Duration) *deadlineConn {
	dc := &deadlineConn{Conn: c}
	dc.limit, _ = ctx.Deadline()
	dc.step.Store(int64(step))
	return dc
}

func (dc *deadlineConn) setStep(d time.Duration) { dc.step.Store(int64(d)) }

// rebind gives a session kept open between sends the deadline of the next
// send's context.
func (dc *deadlineConn) rebind(ctx context.Context) {
	dc.limit, _ = ctx.Deadline()
	dc.cancelled.Store(false)
}

func (dc *deadlineConn) cancel() {
	dc.cancelled.Store(true)
	_ = dc.Conn.SetDeadline(time.Unix(1, 0))
}

func (dc *deadlineConn) arm() error {
	dl := time.Now().Add(time.Duration(dc.step.Load()))
	if !dc.limit.IsZero() && dc.limit.Before(dl) {
		dl = dc.limit
	}
	if err := dc.Conn.SetDeadline(dl); err != nil {
		return err
	}
	// After setting it: a cancel racing with us has either been
	// overwritten and is seen here, or comes after and wins.
	if dc.cancelled.Load() {
		_ = dc.Conn.SetDeadline(time.Unix(1, 0))
		return context.Canceled
	}
	return nil
}

func (dc *deadlineConn) Read(p []byte) (int, error) {
	if err := dc.arm(); err != nil {
		return 0, err
	}
	return dc.Conn.Read(p)
}

func (dc *deadlineConn) Write(p []byte) (int, error) {
	if err := dc.arm(); err != nil {
		return 0, err
	}
	return dc.Conn.Write(p)
}
