package authres

import (
	"errors"
	"strings"
)

// ParseAuthservID returns the authserv-id of an Authentication-Results
// field value (RFC 8601 §2.2: authres-payload = [CFWS] authserv-id
// [ CFWS authres-version ] ( no-result / 1*resinfo ) [CFWS]), raw as it
// arrived: folded or not, with comments anywhere CFWS may be. A quoted
// authserv-id is returned unquoted. What follows the id (a version, the
// results, "none") is not read beyond checking it starts as the grammar
// says.
func ParseAuthservID(raw string) (string, error) {
	p := parser{s: raw}
	if err := p.cfws(); err != nil {
		return "", err
	}
	var id string
	if p.peek() == '"' {
		var err error
		if id, err = p.quoted(); err != nil {
			return "", err
		}
	} else {
		id = p.token()
	}
	if id == "" {
		return "", errors.New("authres: no authserv-id")
	}
	// The id ends at CFWS, ";" or the end (a version or the results come
	// next); anything else means the id was not a token.
	switch c := p.peek(); {
	case c == 0, c == ';', c == '(', c == ' ', c == '\t', c == '\r', c == '\n':
	default:
		return "", errors.New("authres: authserv-id is not a token or quoted-string")
	}
	return id, nil
}

// ClaimsAuthservID tells whether an incoming Authentication-Results field
// value names authservID as its authserv-id. The comparison ignores ASCII
// case and a final dot, as for domain names (RFC 4343; RFC 8601 §2.5: the
// authserv-id is usually the host's name). A value that cannot be read
// claims nothing. RFC 8601 §5: a field claiming our id that reaches us
// from outside was not added by us, and is to be removed.
func ClaimsAuthservID(raw, authservID string) bool {
	want := strings.TrimSuffix(authservID, ".")
	if want == "" {
		return false
	}
	id, err := ParseAuthservID(raw)
	if err != nil {
		return false
	}
	return asciiEqualFold(strings.TrimSuffix(id, "."), want)
}

func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// maxCommentDepth bounds nested comments, so hostile input costs little.
const maxCommentDepth = 64

type parser struct {
	s string
	i int
}

func (p *parser) peek() byte {
	if p.i < len(p.s) {
		return p.s[p.i]
	}
	return 0
}

// cfws skips RFC 5322 §3.2.2 CFWS: spaces, tabs, line ends of folding, and
// comments (nested, with quoted-pairs).
func (p *parser) cfws() error {
	for p.i < len(p.s) {
		switch p.s[p.i] {
		case ' ', '\t', '\r', '\n':
			p.i++
		case '(':
			if err := p.comment(); err != nil {
				return err
			}
		default:
			return nil
		}
	}
	return nil
}

func (p *parser) comment() error {
	depth := 0
	for p.i < len(p.s) {
		c := p.s[p.i]
		p.i++
		switch c {
		case '\\':
			p.i++ // quoted-pair: the next character is literal
		case '(':
			depth++
			if depth > maxCommentDepth {
				return errors.New("authres: comments nested too deep")
			}
		case ')':
			depth--
			if depth == 0 {
				return nil
			}
		}
	}
	return errors.New("authres: unterminated comment")
}

// quoted reads an RFC 5322 §3.2.4 quoted-string, returning its content
// with quoted-pairs resolved and folding removed.
func (p *parser) quoted() (string, error) {
	var b strings.Builder
	p.i++ // opening quote
	for p.i < len(p.s) {
		c := p.s[p.i]
		p.i++
		switch c {
		case '"':
			return b.String(), nil
		case '\\':
			if p.i < len(p.s) {
				b.WriteByte(p.s[p.i])
				p.i++
			}
		case '\r', '\n':
			// FWS inside the string: the line end goes, the WSP stays.
		default:
			b.WriteByte(c)
		}
	}
	return "", errors.New("authres: unterminated quoted-string")
}

// token reads an RFC 2045 token (any CHAR but SPACE, CTLs, tspecials);
// bytes of 0x80 and above are let through, for UTF-8 host names (RFC 8601
// §2.2 allows them under RFC 6532).
func (p *parser) token() string {
	start := p.i
	for p.i < len(p.s) {
		c := p.s[p.i]
		if c <= ' ' || c == 0x7f || strings.IndexByte(`()<>@,;:\"/[]?=`, c) >= 0 {
			break
		}
		p.i++
	}
	return p.s[start:p.i]
}
