package encrypt

import (
	"mime"
	"regexp"
	"strings"
)

// tagMatcher finds and removes the configured subject tags.
type tagMatcher struct {
	re *regexp.Regexp // nil: the subject trigger is off
}

func newTagMatcher(tags []string) tagMatcher {
	if len(tags) == 0 {
		return tagMatcher{}
	}
	alts := make([]string, len(tags))
	for i, t := range tags {
		alts[i] = regexp.QuoteMeta(t)
	}
	// (?i): tags match case-insensitively (Unicode simple folding).
	return tagMatcher{re: regexp.MustCompile(`(?i)` + strings.Join(alts, "|"))}
}

// subjectEdit is what stripping the tags does to a Subject field.
type subjectEdit struct {
	found int    // tags found (and removed)
	raw   string // the new raw value, leading space included; "" deletes the field
}

// strip looks for tags in a Subject field's value (unfolded, as the runtime
// gives it) and returns the value without them. An encoded subject (RFC
// 2047 encoded words) is decoded, stripped and encoded again as UTF-8, in B
// or Q as the original's first word was; a plain one stays plain. White
// space left where a tag was is closed up. A subject that was nothing but
// tags becomes empty, which deletes the field (a milter cannot set an empty
// value: that is the delete request).
func (t tagMatcher) strip(value string) subjectEdit {
	if t.re == nil {
		return subjectEdit{}
	}
	encoded := strings.Contains(value, "=?")
	text := value
	if encoded {
		dec := mime.WordDecoder{}
		if d, err := dec.DecodeHeader(value); err == nil {
			text = d
		} else {
			encoded = false // not decodable: treated, and kept, as plain text
		}
	}
	locs := t.re.FindAllStringIndex(text, -1)
	if len(locs) == 0 {
		return subjectEdit{}
	}
	out := closeUp(t.re.ReplaceAllString(text, " "))
	if out == "" {
		return subjectEdit{found: len(locs)}
	}
	if encoded && needsEncoding(out) {
		enc := mime.BEncoding
		if w := strings.Index(value, "=?"); w >= 0 && strings.Contains(strings.ToUpper(value[w:]), "?Q?") {
			enc = mime.QEncoding
		}
		out = enc.Encode("UTF-8", out)
	}
	return subjectEdit{found: len(locs), raw: " " + out}
}

// closeUp joins runs of white space into one space and trims the ends.
func closeUp(s string) string { return strings.Join(strings.Fields(s), " ") }

// needsEncoding reports whether s cannot stand in a header as plain text
// (RFC 5322 §2.2: printable US-ASCII and white space), or would be read as
// an encoded word.
func needsEncoding(s string) bool {
	if strings.Contains(s, "=?") {
		return true
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e {
			return true
		}
	}
	return false
}
