package journal

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/quotedprintable"
	"strings"
	"unicode/utf8"
)

// ReportOptions are a target's settings for WriteReport.
type ReportOptions struct {
	From string // report's From: address, e.g. postmaster@mx1.example
	To   string // report's To: address, the journal mailbox
	Host string // right side of the report's Message-ID; "" uses Header.Host
	// EightBit marks the attached message 8bit rather than 7bit (RFC 6152):
	// set it when the message may hold 8-bit bytes and the next hop
	// accepts BODY=8BITMIME.
	EightBit bool
}

// maxSubject bounds the original subject copied into the report, so that a
// pathological header cannot make the report's lines unbounded.
const maxSubject = 2000

// WriteReport streams an Exchange-style envelope journal report of the
// record (h, msg) to w ([MS-XJRNL] §2.1; RESEARCH-ARCHIVE-ENCRYPT-PACKAGING
// §A1). msg is the message of the record (Decode's reader). Its header
// section is buffered (at most MaxHeaderSection bytes; fields past that are
// not seen, their recipients are listed as Bcc) for the roles and the
// subject; the rest is copied through, so memory does not depend on the
// message size. The message is attached unaltered: the message/rfc822 part
// holds exactly the bytes of msg.
//
// The report: header fields From, To, Date (h.Time), Subject (the original
// subject, as Exchange does, none when the message has none; piler and
// MailStore take only the attached message and the body lines),
// Message-ID <h.ID@host>, MIME-Version,
// X-MS-Journal-Report (empty value: the marker piler and Exchange-fed
// archives look for), X-Geomilter-Journal-Id; then multipart/mixed (RFC 2046
// §5.1) with a text/plain part of lines "Sender: ", "Subject: ",
// "Message-ID: " and one "To: ", "Cc: " or "Bcc: " line per envelope
// recipient (Roles), and a message/rfc822 part (RFC 2046 §5.2.1).
// Recipients with a reject or tempfail verdict in h.Envelope were not
// accepted and are not listed.
func WriteReport(w io.Writer, h *Header, msg io.Reader, o ReportOptions) error {
	host := o.Host
	if host == "" {
		host = h.Host
	}
	if err := checkReportInput(h, host, o); err != nil {
		return fmt.Errorf("journal report %s: %w", h.ID, err)
	}
	br := bufio.NewReaderSize(msg, 8<<10)
	raw, err := readHeaderSection(br, MaxHeaderSection)
	if err != nil && !errors.Is(err, errHeaderTooLong) {
		return fmt.Errorf("journal report %s: message: %w", h.ID, err)
	}
	fields := parseFields(raw)

	var rcpts []string
	for _, r := range h.Envelope.Rcpts {
		if r.Action == "reject" || r.Action == "tempfail" {
			continue
		}
		rcpts = append(rcpts, r.Addr)
	}
	roles := rolesFrom(fields, rcpts)

	rawSubject, _ := first(fields, "Subject")
	rawSubject = truncUTF8(rawSubject, maxSubject)
	subject := decodeSubject(rawSubject)
	msgID, ok := first(fields, "Message-ID")
	if !ok {
		msgID = h.MessageID
	}
	msgID = truncUTF8(msgID, maxSubject)

	boundary, err := newBoundary()
	if err != nil {
		return fmt.Errorf("journal report %s: %w", h.ID, err)
	}

	// Body part 1: the envelope, Exchange's lines ([MS-XJRNL] §2.1.1).
	var text bytes.Buffer
	sender := h.Envelope.Sender
	if sender == "" {
		sender = "<>" // the null reverse-path (RFC 5321 §4.5.5)
	}
	line := func(name, value string) {
		text.WriteString(name)
		text.WriteString(": ")
		text.WriteString(oneLine(value))
		text.WriteString("\r\n")
	}
	line("Sender", sender)
	line("Subject", subject)
	line("Message-ID", msgID)
	for _, r := range roles {
		line(r.Role, strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(r.Addr), "<"), ">"))
	}

	var hb bytes.Buffer
	writeField(&hb, "From", o.From)
	writeField(&hb, "To", o.To)
	writeField(&hb, "Date", h.Time.Format("Mon, 02 Jan 2006 15:04:05 -0700")) // RFC 5322 §3.3
	if rawSubject != "" {
		writeField(&hb, "Subject", reportSubject(rawSubject, subject))
	}
	writeField(&hb, "Message-ID", "<"+h.ID+"@"+host+">")
	writeField(&hb, "MIME-Version", "1.0")
	hb.WriteString("X-MS-Journal-Report:\r\n")
	writeField(&hb, "X-Geomilter-Journal-Id", h.ID)
	// RFC 2046 §5.1.1: the boundary holds "=" so it must be quoted.
	writeField(&hb, "Content-Type", `multipart/mixed; boundary="`+boundary+`"`)
	hb.WriteString("\r\n")
	hb.WriteString("This is an envelope journal report in MIME format.\r\n") // preamble, for non-MIME readers
	hb.WriteString("\r\n--" + boundary + "\r\n")
	if isPlain7bit(text.Bytes()) {
		hb.WriteString("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n")
		hb.Write(text.Bytes())
	} else {
		// RFC 2045 §6.7: quoted-printable keeps the lines short and 7-bit.
		hb.WriteString("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n")
		qp := quotedprintable.NewWriter(&hb)
		qp.Write(text.Bytes())
		qp.Close()
	}
	cte := "7bit"
	if o.EightBit {
		cte = "8bit"
	}
	// RFC 2046 §5.1.1: the CRLF before a delimiter belongs to it, so the
	// part bodies end where the delimiter's CRLF starts.
	hb.WriteString("\r\n--" + boundary + "\r\n")
	hb.WriteString("Content-Type: message/rfc822\r\n")
	hb.WriteString("Content-Transfer-Encoding: " + cte + "\r\n\r\n")
	if _, err := w.Write(hb.Bytes()); err != nil {
		return fmt.Errorf("journal report %s: writing: %w", h.ID, err)
	}
	// Body part 2: the original, unaltered — the header section already
	// read, then the rest streamed.
	if _, err := w.Write(raw); err != nil {
		return fmt.Errorf("journal report %s: writing: %w", h.ID, err)
	}
	if _, err := io.Copy(w, br); err != nil {
		return fmt.Errorf("journal report %s: copying the message: %w", h.ID, err)
	}
	if _, err := io.WriteString(w, "\r\n--"+boundary+"--\r\n"); err != nil {
		return fmt.Errorf("journal report %s: writing: %w", h.ID, err)
	}
	return nil
}

// checkReportInput refuses what would make a broken report or let a
// configured or recorded value inject header lines.
// CheckReport says whether WriteReport can make a report of a record with
// header h, before any of it is written: the errors WriteReport returns
// before writing come from here (the others are the message's reader or
// w failing).
func CheckReport(h *Header, o ReportOptions) error {
	host := o.Host
	if host == "" {
		host = h.Host
	}
	if err := checkReportInput(h, host, o); err != nil {
		return fmt.Errorf("journal report %s: %w", h.ID, err)
	}
	return nil
}

func checkReportInput(h *Header, host string, o ReportOptions) error {
	if err := CheckID(h.ID); err != nil {
		return err
	}
	// RFC 5322 §3.6.4 id-right: dot-atom-text or a no-fold-literal
	// ("[192.0.2.1]", as an EHLO name may be).
	hostPart, bad := host, "<>@ \t\r\n\"()[],;:\\"
	if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		hostPart, bad = host[1:len(host)-1], "<>@ \t\r\n\"()[],;\\" // "[IPv6:2001:db8::1]"
	}
	if hostPart == "" || strings.ContainsAny(hostPart, bad) {
		return fmt.Errorf("host %q for the report's Message-ID: want a domain name or [address]", host)
	}
	for _, v := range []struct{ name, value string }{{"from", o.From}, {"to", o.To}} {
		if strings.TrimSpace(v.value) == "" {
			return fmt.Errorf("report %s address is empty", v.name)
		}
		if strings.ContainsAny(v.value, "\r\n") {
			return fmt.Errorf("report %s address %q holds a line break", v.name, v.value)
		}
	}
	return nil
}

// newBoundary returns a multipart boundary (RFC 2046 §5.1.1, at most 70
// characters). "=_" cannot occur in base64 or quoted-printable text and 128
// random bits make a collision with the attached message's own bytes
// practically impossible.
func newBoundary() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("boundary: %w", err)
	}
	return "=_geomilter-journal-" + hex.EncodeToString(b[:]), nil
}

// subjectDecoder decodes RFC 2047 words in unknown charsets as their
// raw bytes (made valid UTF-8 later) rather than failing.
var subjectDecoder = mime.WordDecoder{
	CharsetReader: func(_ string, r io.Reader) (io.Reader, error) { return r, nil },
}

// decodeSubject decodes RFC 2047 encoded-words of a subject to valid UTF-8;
// undecodable text stays as found.
func decodeSubject(raw string) string {
	s, err := subjectDecoder.DecodeHeader(raw)
	if err != nil {
		s = raw
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

// reportSubject is the report's Subject field: the original field value when
// it is printable ASCII (encoded-words kept as they were), else the decoded
// subject as RFC 2047 Q encoded-words (raw 8-bit in a header needs
// SMTPUTF8, RFC 6532).
func reportSubject(raw, decoded string) string {
	if isPrintableASCII(raw) {
		return raw
	}
	return mime.QEncoding.Encode("utf-8", decoded)
}

// writeField writes "name: value" CRLF, folded at spaces so that lines stay
// under 78 characters where the value allows (RFC 5322 §2.1.1, §2.2.3).
func writeField(b *bytes.Buffer, name, value string) {
	b.WriteString(name)
	b.WriteString(":")
	n := len(name) + 1
	for i, word := range strings.Split(value, " ") {
		if i > 0 && n+1+len(word) > 78 {
			b.WriteString("\r\n")
			n = 0
		}
		b.WriteString(" ")
		b.WriteString(word)
		n += 1 + len(word)
	}
	b.WriteString("\r\n")
}

// oneLine makes a value safe for one text line: controls (CR and LF among
// them) become spaces.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}

// truncUTF8 cuts s to at most n bytes, not inside a UTF-8 sequence.
func truncUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func isPrintableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' && c != '\t' || c > '~' {
			return false
		}
	}
	return true
}

// isPlain7bit: all ASCII and every line at most 998 bytes (RFC 5322 §2.1.1).
func isPlain7bit(b []byte) bool {
	for _, l := range bytes.Split(b, []byte("\r\n")) {
		if len(l) > 998 || !isPrintableASCII(string(l)) {
			return false
		}
	}
	return true
}
