package journal

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/mail"
	"strings"
)

// MaxHeaderSection bounds the header section of a message that Roles and
// WriteReport buffer. Fields past it are not seen: a recipient named only
// there is reported as Bcc, which over-reports Bcc rather than losing a
// recipient (every envelope recipient is always listed).
const MaxHeaderSection = 1 << 20

// Roles of an envelope recipient (the words Exchange's envelope journal
// report uses, [MS-XJRNL] §2.1).
const (
	RoleTo  = "To"
	RoleCc  = "Cc"
	RoleBcc = "Bcc"
)

// RcptRole is one envelope recipient and its role.
type RcptRole struct{ Addr, Role string }

// Roles reads a message's header section from headers (up to the empty line,
// at most MaxHeaderSection bytes; the body, if any follows, is not read
// further) and gives each envelope recipient its role: RoleTo when the
// address is in a To or Resent-To field, else RoleCc when in a Cc or
// Resent-Cc field, else RoleBcc. Resent-To/Resent-Cc count (RFC 5322
// §3.6.6) because a resent message is delivered to the resent recipients,
// who see each other there: they are not blind copies.
//
// Addresses compare case-insensitively, whole (RFC 5321 §2.4 lets a
// local part be case-sensitive; no mail system relies on it and a journal
// that misses a To over case would claim a Bcc that was not). Duplicate
// envelope recipients (same address in any case) are listed once, in their
// first spelling and position. A field that net/mail cannot parse is read by
// a tolerant scan for addr-specs: a broken To never makes Roles fail or
// turns its recipients into Bcc when their addresses are readable. The
// only error is one reading headers; the roles are then still returned,
// from what was read.
func Roles(headers io.Reader, rcpts []string) ([]RcptRole, error) {
	raw, err := readHeaderSection(bufio.NewReader(headers), MaxHeaderSection)
	if errors.Is(err, errHeaderTooLong) {
		err = nil // documented: fields past the bound are not seen
	}
	return rolesFrom(parseFields(raw), rcpts), err
}

func rolesFrom(fields []field, rcpts []string) []RcptRole {
	to, cc := map[string]bool{}, map[string]bool{}
	for _, f := range fields {
		switch strings.ToLower(f.name) {
		case "to", "resent-to":
			addAddrs(to, f.value)
		case "cc", "resent-cc":
			addAddrs(cc, f.value)
		}
	}
	roles := make([]RcptRole, 0, len(rcpts))
	seen := map[string]bool{}
	for _, r := range rcpts {
		k := envelopeKey(r)
		if seen[k] {
			continue
		}
		seen[k] = true
		role := RoleBcc
		switch {
		case to[k]:
			role = RoleTo
		case cc[k]:
			role = RoleCc
		}
		roles = append(roles, RcptRole{Addr: r, Role: role})
	}
	return roles
}

// addressParser decodes RFC 2047 words in display names without failing on
// an unknown charset: names do not matter here, only addresses.
var addressParser = mail.AddressParser{WordDecoder: &mime.WordDecoder{
	CharsetReader: func(_ string, r io.Reader) (io.Reader, error) { return r, nil },
}}

// addAddrs adds the addresses of an address-list field value (RFC 5322
// §3.4: mailboxes, name-addr with comments, groups "name: a, b;") to set,
// lower-cased. If the list does not parse as a whole, each comma-separated
// piece is tried alone, and a piece that still fails is scanned for
// addr-specs (scanAddrs).
func addAddrs(set map[string]bool, value string) {
	if strings.TrimSpace(value) == "" {
		return
	}
	if list, err := addressParser.ParseList(value); err == nil {
		for _, a := range list {
			set[strings.ToLower(a.Address)] = true
		}
		return
	}
	for _, piece := range splitTopLevel(value) {
		if a, err := addressParser.Parse(piece); err == nil {
			set[strings.ToLower(a.Address)] = true
			continue
		}
		for _, a := range scanAddrs(piece) {
			set[strings.ToLower(a)] = true
		}
	}
}

// splitTopLevel splits an address list at commas outside quotes, comments
// and angle brackets, and drops a group's "name:" and ";" (RFC 5322 §3.4
// group), so each piece is one mailbox at best.
func splitTopLevel(s string) []string {
	var out []string
	var cur strings.Builder
	depth, quoted, angle := 0, false, false
	flush := func() {
		if p := strings.TrimSpace(cur.String()); p != "" {
			out = append(out, p)
		}
		cur.Reset()
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && (quoted || depth > 0) && i+1 < len(s):
			cur.WriteByte(c)
			i++
			c = s[i]
		case quoted:
			quoted = c != '"'
		case depth > 0:
			if c == '(' {
				depth++
			} else if c == ')' {
				depth--
			}
		case c == '"':
			quoted = true
		case c == '(':
			depth++
		case c == '<':
			angle = true
		case c == '>':
			angle = false
		case !angle && (c == ',' || c == ';'):
			flush()
			continue
		case !angle && c == ':':
			cur.Reset() // "group-name:" before the group's mailboxes
			continue
		}
		cur.WriteByte(c)
	}
	flush()
	return out
}

// scanAddrs finds addr-spec-like tokens ("local@domain" without spaces,
// angle brackets, quotes, parentheses or list separators) in s: the last
// resort for a field net/mail rejects. A quoted local part with spaces is
// not found this way; it is rare in broken fields.
func scanAddrs(s string) []string {
	stop := func(c byte) bool {
		return c <= ' ' || c == 0x7f || strings.IndexByte("<>,;:\"()[]\\", c) >= 0
	}
	var out []string
	for i := 0; i < len(s); i++ {
		if s[i] != '@' {
			continue
		}
		a, b := i, i+1
		for a > 0 && !stop(s[a-1]) && s[a-1] != '@' {
			a--
		}
		for b < len(s) && !stop(s[b]) && s[b] != '@' {
			b++
		}
		if a < i && b > i+1 {
			out = append(out, s[a:b])
		}
		i = b // a second '@' right after is not the start of another address
	}
	return out
}

// envelopeKey is the comparison key of an envelope address: without angle
// brackets, a quoted local part unquoted as net/mail does for header
// addresses, lower-cased.
func envelopeKey(addr string) string {
	a := strings.TrimSpace(addr)
	a = strings.TrimSuffix(strings.TrimPrefix(a, "<"), ">")
	if strings.HasPrefix(a, `"`) {
		if p, err := mail.ParseAddress("<" + a + ">"); err == nil {
			a = p.Address
		}
	}
	return strings.ToLower(a)
}

// field is one header field, its value unfolded (RFC 5322 §2.2.3).
type field struct{ name, value string }

// readHeaderSection reads the header section from br: the lines up to and
// including the empty line that ends it (RFC 5322 §2.1), or all of br if
// there is none. It stops at max bytes; the rest of br is unread, so a
// caller streams the body (or the rest of an oversized header section) on
// from br. Past max it returns errHeaderTooLong with what it read.
func readHeaderSection(br *bufio.Reader, max int) ([]byte, error) {
	var buf []byte
	for {
		frag, err := br.ReadSlice('\n')
		// frag is appended even past max (by at most br's buffer size):
		// the bytes are consumed from br and the caller writes them on.
		buf = append(buf, frag...)
		switch {
		case err == nil:
			if len(frag) == 1 || len(frag) == 2 && frag[0] == '\r' {
				return buf, nil // the empty line
			}
		case errors.Is(err, bufio.ErrBufferFull):
		case errors.Is(err, io.EOF):
			return buf, nil
		default:
			return buf, fmt.Errorf("reading the header section after %d bytes: %w", len(buf), err)
		}
		if len(buf) >= max {
			return buf, errHeaderTooLong
		}
	}
}

// errHeaderTooLong: the header section did not end within the bound; what
// was read is used, the rest is streamed on as the body.
var errHeaderTooLong = fmt.Errorf("header section longer than %d bytes", MaxHeaderSection)

// parseFields splits a header section into fields, tolerantly: a line that
// is neither a field ("name:") nor a continuation (starts with WSP) is
// skipped, as is a continuation with no field before it.
func parseFields(raw []byte) []field {
	var fields []field
	for len(raw) > 0 {
		line := raw
		if i := bytes.IndexByte(raw, '\n'); i >= 0 {
			line, raw = raw[:i], raw[i+1:]
		} else {
			raw = nil
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) == 0 {
			break // end of the header section
		}
		if line[0] == ' ' || line[0] == '\t' {
			if n := len(fields); n > 0 {
				// RFC 5322 §2.2.3: unfolding removes the CRLF, keeps the WSP.
				fields[n-1].value += string(line)
			}
			continue
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok || len(name) == 0 || bytes.ContainsAny(name, " \t") {
			continue
		}
		fields = append(fields, field{name: string(name), value: string(value)})
	}
	for i := range fields {
		fields[i].value = strings.TrimSpace(fields[i].value)
	}
	return fields
}

// first returns the value of the first field named name (any case).
func first(fields []field, name string) (string, bool) {
	for _, f := range fields {
		if strings.EqualFold(f.name, name) {
			return f.value, true
		}
	}
	return "", false
}
