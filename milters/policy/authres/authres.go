// Package authres writes the Authentication-Results header field (RFC 8601)
// the policy milter adds, and reads the authserv-id of the ones a message
// arrives with, so that those claiming to be ours (forged: RFC 8601 §5) can
// be removed.
//
// go-msgauth/authres is not used: its Format escapes neither "\" in quoted
// strings nor anything in comments, leaves "/" and "=" (base64 in header.b)
// unquoted where RFC 8601 §2.2 pvalue needs a quoted-string, writes no
// comments (the DMARC "(p=… dis=…)" one), has no header.s / header.b, sorts
// properties, and does not fold; its Parse does not skip comments before the
// authserv-id. What this package needs of both is small.
package authres

import (
	"strings"
)

// Method is one resinfo of RFC 8601 §2.2: method=result, an optional
// comment, reason and properties.
type Method struct {
	// Name is the method (RFC 8601 §2.7, IANA registry): spf, dkim, dmarc.
	Name string
	// Result is the result keyword, as the method's RFC spells it (RFC 8601
	// §2.7.1 dkim, §2.7.2 spf, RFC 7489 §11.2 dmarc): pass, fail, softfail,
	// neutral, none, temperror, permerror, policy.
	Result string
	// Comment follows the result in parentheses (RFC 5322 §3.2.2 comment),
	// e.g. DMARC's "p=reject dis=none"; "" for none.
	Comment string
	// Reason is the optional reason= text (§2.2 reasonspec); "" for none.
	Reason string
	// Props are the ptype.property=value items (§2.3), in order.
	Props []Prop
	// Note is a comment after the properties, e.g. "smtp.helo=…" beside
	// an SPF result for MAIL FROM; "" for none.
	Note string
}

// Prop is one propspec (RFC 8601 §2.2, §2.3): Type.Name=Value.
type Prop struct {
	Type  string // ptype: smtp, header, body, policy
	Name  string // property: mailfrom, helo, d, s, b, from
	Value string
}

// Results are the resinfos of one header field, in order.
type Results []Method

// SPF returns the resinfo of an SPF result (RFC 8601 §2.7.2, RFC 7208
// §9.1): smtp.mailfrom is the MAIL FROM domain the check was for; when
// MAIL FROM was null the HELO identity was checked and is the property,
// otherwise the HELO name is noted in a comment.
func SPF(result, mailFromDomain, helo string) Method {
	m := Method{Name: "spf", Result: result}
	switch {
	case mailFromDomain != "":
		m.Props = []Prop{{"smtp", "mailfrom", mailFromDomain}}
		if helo != "" {
			m.Note = "smtp.helo=" + helo
		}
	case helo != "":
		m.Props = []Prop{{"smtp", "helo", helo}}
	}
	return m
}

// DKIM returns the resinfo of one DKIM signature (RFC 8601 §2.7.1):
// header.d, header.s, and header.b as the first 8 characters of the
// signature, which tells signatures of the same domain apart (RFC 6008 §4).
func DKIM(result, domain, selector, b string) Method {
	m := Method{Name: "dkim", Result: result}
	if domain != "" {
		m.Props = append(m.Props, Prop{"header", "d", domain})
	}
	if selector != "" {
		m.Props = append(m.Props, Prop{"header", "s", selector})
	}
	b = strings.Map(func(r rune) rune {
		if r == ' ' || r == '\t' || r == '\r' || r == '\n' {
			return -1 // b= may be folded (RFC 6376 §3.5)
		}
		return r
	}, b)
	if len(b) > 8 {
		// RFC 6008 §4: "at least the first eight characters"; base64 is
		// ASCII, so bytes are characters.
		b = b[:8]
	}
	if b != "" {
		m.Props = append(m.Props, Prop{"header", "b", b})
	}
	return m
}

// DMARC returns the DMARC resinfo (RFC 7489 §11.2, RFC 8601 §2.7.6) with
// the policy comment, e.g. DMARC("fail", "p=reject dis=quarantine",
// "example.com").
func DMARC(result, comment, fromDomain string) Method {
	m := Method{Name: "dmarc", Result: result, Comment: comment}
	if fromDomain != "" {
		m.Props = []Prop{{"header", "from", fromDomain}}
	}
	return m
}

const (
	// fieldName is the header field's name; the first line holds it.
	fieldName = "Authentication-Results"
	// maxLine is RFC 5322 §2.1.1's recommended line length, CRLF excluded.
	maxLine = 78
	fold    = "\r\n\t"
)

// Format returns the value of one Authentication-Results header field:
// the authserv-id and every result, folded with CRLF + TAB so that lines,
// the field name's included, stay within 78 characters where the words
// allow (RFC 5322 §2.1.1, §2.2.3). With no results it says "none" (RFC 8601
// §2.2 no-result). The value starts without the space after the colon.
func Format(authservID string, results Results) string {
	head := formatValue(authservID)
	if len(results) == 0 {
		return head + "; none"
	}
	// One line when everything fits.
	var lines [][]string
	for _, m := range results {
		lines = append(lines, m.words())
	}
	total := len(fieldName) + 2 + len(head)
	for _, words := range lines {
		total += 2 // "; "
		for i, w := range words {
			if i > 0 {
				total++
			}
			total += len(w)
		}
	}
	var b strings.Builder
	b.WriteString(head)
	if total <= maxLine {
		for _, words := range lines {
			b.WriteString("; ")
			b.WriteString(strings.Join(words, " "))
		}
		return b.String()
	}
	// Else each result starts a line ("id;" CRLF TAB "spf=pass …;" …), and a
	// result too long for one line wraps between its words.
	for i, words := range lines {
		b.WriteString(";")
		b.WriteString(fold)
		col := 1
		for j, w := range words {
			last := i == len(lines)-1 && j == len(words)-1
			need := len(w)
			if !last && j == len(words)-1 {
				need++ // the ";" that follows
			}
			if j > 0 {
				if col+1+need > maxLine {
					b.WriteString(fold)
					col = 1
				} else {
					b.WriteByte(' ')
					col++
				}
			}
			b.WriteString(w)
			col += len(w)
		}
	}
	return b.String()
}

// words returns a resinfo as the words folding may separate.
func (m Method) words() []string {
	words := []string{keyword(m.Name) + "=" + keyword(m.Result)}
	if m.Comment != "" {
		words = append(words, formatComment(m.Comment))
	}
	if m.Reason != "" {
		words = append(words, "reason="+formatValue(m.Reason))
	}
	for _, p := range m.Props {
		words = append(words, keyword(p.Type)+"."+keyword(p.Name)+"="+formatPvalue(p.Value))
	}
	if m.Note != "" {
		words = append(words, formatComment(m.Note))
	}
	return words
}

// keyword keeps what RFC 8601 §2.2 Keyword allows (RFC 5321 §4.1.2
// Ldh-str: letters, digits, "-"; we also let "_" through, as the IANA
// registry has none). Callers pass constants; this guards the grammar.
func keyword(s string) string {
	k := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			return r
		}
		return -1
	}, s)
	if k == "" {
		return "none"
	}
	return k
}

// formatComment writes text as an RFC 5322 §3.2.2 comment: "(", ")" and "\"
// become quoted-pairs, control characters (line ends included) spaces, and
// bytes that are not UTF-8 (RFC 6532 §3.2) U+FFFD. Texts from the client
// (the HELO name, a d= value) cannot end the comment or the header.
func formatComment(text string) string {
	text = strings.ToValidUTF8(text, "\uFFFD")
	var b strings.Builder
	b.WriteByte('(')
	for _, r := range text {
		switch {
		case r == '(' || r == ')' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < ' ' || r == 0x7f:
			b.WriteByte(' ')
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte(')')
	return b.String()
}

// formatValue writes an RFC 2045 §5.1 value: a token when s is one, else a
// quoted-string (RFC 5322 §3.2.4) with "\" and `"` as quoted-pairs,
// control characters as spaces and bytes that are not UTF-8 as U+FFFD.
func formatValue(s string) string {
	if isToken(s) {
		return s
	}
	s = strings.ToValidUTF8(s, "\uFFFD")
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < ' ' || r == 0x7f:
			b.WriteByte(' ')
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// formatPvalue writes an RFC 8601 §2.2 pvalue: a domain name or
// local-part@domain as is (the common case: smtp.mailfrom, header.d,
// header.from), else a value.
func formatPvalue(s string) string {
	if isDomainName(s) {
		return s
	}
	if at := strings.LastIndexByte(s, '@'); at >= 0 && isDomainName(s[at+1:]) && (at == 0 || isDotAtom(s[:at])) {
		return s
	}
	return formatValue(s)
}

// isToken: RFC 2045 §5.1 token, 1*<any (US-ASCII) CHAR except SPACE, CTLs,
// or tspecials>.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`()<>@,;:\"/[]?=`, c) >= 0 {
			return false
		}
	}
	return true
}

// isDomainName: RFC 6376 §3.5 domain-name = sub-domain 1*("." sub-domain),
// sub-domain = Let-dig [Ldh-str] (RFC 5321 §4.1.2); "_" allowed too (DKIM
// selectors and some names use it).
func isDomainName(s string) bool {
	labels := strings.Split(s, ".")
	if len(labels) < 2 {
		return false
	}
	for _, l := range labels {
		if l == "" || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// isDotAtom: RFC 5322 §3.2.3 dot-atom-text.
func isDotAtom(s string) bool {
	for _, atom := range strings.Split(s, ".") {
		if atom == "" {
			return false
		}
		for i := 0; i < len(atom); i++ {
			c := atom[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
				strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0) {
				return false
			}
		}
	}
	return true
}
