package encrypt

import (
	"mime"
	"strings"
	"testing"
)

// FuzzStripSubject: whatever the subject, stripping never panics, says
// found only when a tag was there, and gives a value that fits in a
// header field: one line, a leading space, decodable encoded words, and
// (for the default tags, which hold no space) no tag left in it.
func FuzzStripSubject(f *testing.F) {
	for _, s := range []string{"[secure] hi", "=?UTF-8?B?W3NlY3VyZV0gR3LDvMOfZQ==?=", "=?utf-8?q?=5Bsecure=5D_x?=", "[SECURE][encrypt]", "=?bad?x?y?=", "a\tb [Secure]", "=?UTF-8?B?Wz?= [secure]"} {
		f.Add(s)
	}
	m := newTagMatcher(DefaultSubjectTags)
	dec := mime.WordDecoder{}
	f.Fuzz(func(t *testing.T, subject string) {
		if strings.ContainsAny(subject, "\r\n") {
			return // the runtime unfolds values
		}
		e := m.strip(subject)
		if e.found == 0 {
			if e.raw != "" {
				t.Fatalf("%q: no tag but a new value %q", subject, e.raw)
			}
			return
		}
		if e.raw == "" {
			return // deleted
		}
		if e.raw[0] != ' ' || strings.ContainsAny(e.raw, "\r\n") {
			t.Fatalf("%q: value %q", subject, e.raw)
		}
		text, err := dec.DecodeHeader(e.raw[1:])
		if err != nil {
			text = e.raw[1:]
		}
		if loc := m.re.FindStringIndex(text); loc != nil && !strings.Contains(subject, "=?") {
			t.Fatalf("%q: tag left in %q", subject, text)
		}
	})
}
