package content

import (
	"bytes"
	"net/netip"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/net/idna"
	"golang.org/x/net/publicsuffix"
)

// scanText finds URLs in a line of text: "http://" and "https://"
// (letters in any case, backslashes taken as slashes as browsers do) and
// "www." at the start of a word. It is a tolerant scanner, not an RFC 3986
// parser: the host is what a reader's mail client would link.
func (w *walker) scanText(line []byte) {
	for i := 0; i < len(line); i++ {
		switch line[i] | 0x20 {
		case 'h':
			if i > 0 && isWordByte(line[i-1]) {
				continue
			}
			if n := schemeLen(line[i:]); n > 0 {
				end := w.authority(line, i+n)
				i = end - 1
			}
		case 'w':
			if i > 0 && (isWordByte(line[i-1]) || line[i-1] == '.') {
				continue
			}
			if hasPrefixFold(line[i:], "www.") {
				end := w.authority(line, i)
				i = end - 1
			}
		}
	}
}

// linkHost records the host of an href or src value: an absolute http or
// https URL, or a network-path reference ("//host/...", RFC 3986 §4.2).
// Other schemes (mailto:, cid:) and relative paths have none.
func (w *walker) linkHost(v []byte) {
	n := schemeLen(v)
	if n == 0 {
		if len(v) < 2 || !isSlash(v[0]) || !isSlash(v[1]) {
			return
		}
		n = 2
		for n < len(v) && isSlash(v[n]) {
			n++
		}
	}
	w.authority(v, n)
}

// schemeLen returns the length of "http:" or "https:" and the slashes after
// it at the start of b, or 0. At least one slash must follow.
func schemeLen(b []byte) int {
	var n int
	switch {
	case hasPrefixFold(b, "http:"):
		n = 5
	case hasPrefixFold(b, "https:"):
		n = 6
	default:
		return 0
	}
	s := n
	for n < len(b) && isSlash(b[n]) {
		n++
	}
	if n == s {
		return 0
	}
	return n
}

func isSlash(c byte) bool { return c == '/' || c == '\\' }

func hasPrefixFold(b []byte, prefix string) bool {
	if len(b) < len(prefix) {
		return false
	}
	for i := 0; i < len(prefix); i++ {
		c := b[i]
		if c >= 'A' && c <= 'Z' {
			c |= 0x20
		}
		if c != prefix[i] {
			return false
		}
	}
	return true
}

func isWordByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// authority reads the authority of a URL starting at b[i] (user
// information, host, port; RFC 3986 §3.2), records its host when it is
// one, and returns where it ends.
func (w *walker) authority(b []byte, i int) int {
	start, at := i, -1
	// No length bound: each byte is looked at once, and a line is at most
	// MaxLine; spam pads the user information to push the host away.
	for i < len(b) {
		c := b[i]
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRune(b[i:])
			if !unicode.IsLetter(r) && !unicode.IsDigit(r) && !unicode.IsMark(r) {
				break
			}
			i += size
			continue
		}
		if c == '@' {
			at = i
		} else if !isAuthorityByte(c) {
			break
		}
		i++
	}
	hostPart := b[start:i]
	if at >= 0 {
		hostPart = b[at+1 : i]
	}
	var ok bool
	if w.host, ok = normHost(w.host[:0], hostPart); ok {
		w.addHost(w.host)
	}
	return i
}

// isAuthorityByte: the ASCII bytes of user information, host and port
// (RFC 3986 §3.2: unreserved, pct-encoded, sub-delims, ":"), less those
// that end a URL in running text more often than they belong to it
// ("(", ")", ",", ";", "'", "*").
func isAuthorityByte(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	switch c {
	case '-', '.', '_', '~', '%', '!', '$', '&', '+', '=', ':', '[', ']':
		return true
	}
	return false
}

// normHost appends to dst the host of an authority's host and port, as
// Sink.URL receives it: percent-encoding undone (browsers do), port and
// trailing dots dropped, lower case; an IPv6 literal loses its brackets. ok
// is false when nothing usable is left.
func normHost(dst, hp []byte) (_ []byte, ok bool) {
	if len(hp) > 0 && hp[0] == '[' {
		end := bytes.IndexByte(hp, ']')
		if end < 0 {
			return dst, false
		}
		a, err := netip.ParseAddr(string(hp[1:end]))
		if err != nil || !a.Is6() {
			return dst, false
		}
		return a.AppendTo(dst), true
	}
	if i := bytes.IndexByte(hp, ':'); i >= 0 {
		hp = hp[:i] // a port, or garbage: the host is before it
	}
	for i := 0; i < len(hp); i++ {
		c := hp[i]
		if c == '%' && i+2 < len(hp) && isHex(hp[i+1]) && isHex(hp[i+2]) {
			c = unhex(hp[i+1])<<4 | unhex(hp[i+2])
			i += 2
		}
		dst = append(dst, c)
	}
	for len(dst) > 0 && dst[len(dst)-1] == '.' {
		dst = dst[:len(dst)-1]
	}
	if len(dst) == 0 || len(dst) > 253 || dst[0] == '.' || bytes.Contains(dst, []byte("..")) {
		return dst, false
	}
	ascii := true
	for i, c := range dst {
		switch {
		case c >= utf8.RuneSelf:
			ascii = false
		case c >= 'A' && c <= 'Z':
			dst[i] = c | 0x20
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '.', c == '_':
		default:
			return dst, false
		}
	}
	if !ascii {
		if !utf8.Valid(dst) {
			return dst, false
		}
		return append(dst[:0], bytes.ToLower(dst)...), true
	}
	return dst, true
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c|0x20 >= 'a' && c|0x20 <= 'f'
}

func unhex(c byte) byte {
	if c <= '9' {
		return c - '0'
	}
	return (c | 0x20) - 'a' + 10
}

// addHost records a distinct host: to the sink, and its registrable domain
// to the report.
func (w *walker) addHost(b []byte) {
	if len(w.hosts) >= w.lim.MaxURLs {
		return
	}
	if _, seen := w.hosts[string(b)]; seen {
		return
	}
	h := string(b)
	w.hosts[h] = struct{}{}
	w.sink.URL(h)
	if d, ok := registrable(h); ok {
		if _, seen := w.domains[d]; !seen {
			w.domains[d] = struct{}{}
			w.rep.URLDomains = append(w.rep.URLDomains, d)
		}
	}
}

// registrable returns the domain a URIBL is asked about: the public suffix
// plus one label (golang.org/x/net/publicsuffix), in ASCII (IDNA, RFC 5891;
// the suffix list and DNS are in ASCII). IP literals, names whose last label
// is numeric (IPv4 written in decimal or hex) and names that are a public
// suffix have none.
func registrable(h string) (string, bool) {
	if _, err := netip.ParseAddr(h); err == nil {
		return "", false
	}
	last := h[strings.LastIndexByte(h, '.')+1:]
	if last == "" || strings.Trim(last, "0123456789") == "" || strings.HasPrefix(last, "0x") {
		return "", false
	}
	a := h
	for i := 0; i < len(h); i++ {
		if h[i] >= utf8.RuneSelf {
			var err error
			if a, err = idna.Lookup.ToASCII(h); err != nil {
				return "", false
			}
			break
		}
	}
	d, err := publicsuffix.EffectiveTLDPlusOne(a)
	if err != nil {
		return "", false
	}
	return d, true
}
