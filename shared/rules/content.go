package rules

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// Content conditions (match keys subject and header) look at the message's
// header section, which only the content milters (policy, archive, encrypt)
// see. The pattern language is one for both keys:
//
//   - "/re/" is a regular expression in Go's RE2 syntax, matched anywhere in
//     the value (anchor it with ^ and $ to match the whole value) and
//     case-insensitive like every other match key ((?-i) turns that off).
//     RE2 runs in time linear in the input, with no backtracking, so no rule
//     can make a message expensive to match;
//   - anything else is a case-insensitive substring.
//
// A pattern is at most MaxPatternLen bytes long. Header conditions are
// written "Name: pattern"; the name is compared case-insensitively and the
// condition holds when any field of that name matches ("X-Flag: //" holds
// when the field is present at all).

// MaxPatternLen bounds one subject or header condition, so a rule set cannot
// grow the compiled matchers without bound.
const MaxPatternLen = 1024

// Header is one header field as a content milter passes it in Facts: the
// name as written, the value unfolded (CRLF before white space removed) and
// without the white space after the colon, not decoded.
type Header struct {
	Name, Value string
}

var headerName = regexp.MustCompile(`^[!-9;-~]+$`) // RFC 5322 §3.6.8 ftext

// pattern is one compiled subject or header pattern.
type pattern struct {
	re  *regexp.Regexp // nil: a substring
	sub string         // lower-case substring
}

// parsePattern compiles a pattern; the error says what is wrong with it.
func parsePattern(v string) (pattern, error) {
	if len(v) > MaxPatternLen {
		return pattern{}, fmt.Errorf("pattern is %d bytes long; at most %d are allowed", len(v), MaxPatternLen)
	}
	if len(v) >= 2 && v[0] == '/' && v[len(v)-1] == '/' {
		// Compiled as written first, so an error quotes what the author
		// wrote, then with the case-insensitive flag (which cannot make a
		// valid expression invalid).
		body := v[1 : len(v)-1]
		if _, err := regexp.Compile(body); err != nil {
			return pattern{}, fmt.Errorf("invalid regular expression %q: %v", v, err)
		}
		re, err := regexp.Compile("(?i)" + body)
		if err != nil {
			return pattern{}, fmt.Errorf("invalid regular expression %q: %v", v, err)
		}
		return pattern{re: re}, nil
	}
	if strings.TrimSpace(v) == "" {
		return pattern{}, errors.New("pattern is empty")
	}
	return pattern{sub: strings.ToLower(v)}, nil
}

// splitHeaderCond splits "Name: pattern" into the name and the pattern.
func splitHeaderCond(v string) (name, pat string, err error) {
	name, pat, ok := strings.Cut(v, ":")
	if !ok || !headerName.MatchString(name) {
		return "", "", fmt.Errorf("header condition %q must be \"Name: pattern\"", v)
	}
	return name, strings.TrimSpace(pat), nil
}

// checkContentPattern validates a subject pattern.
func checkContentPattern(v string) error {
	_, err := parsePattern(v)
	return err
}

// checkHeaderPattern validates a header condition.
func checkHeaderPattern(v string) error {
	_, pat, err := splitHeaderCond(v)
	if err != nil {
		return err
	}
	if _, err := parsePattern(pat); err != nil {
		return fmt.Errorf("header condition %q: %w", v, err)
	}
	return nil
}

// match reports whether the pattern matches v; lower is v lower-cased
// (computed once per message by the caller).
func (p *pattern) match(v, lower string) bool {
	if p.re != nil {
		return p.re.MatchString(v)
	}
	return strings.Contains(lower, p.sub)
}

type headerPattern struct {
	name string // as written; compared with strings.EqualFold
	pattern
}

// contentConds are a rule's compiled subject and header conditions.
type contentConds struct {
	subject []pattern
	header  []headerPattern
}

func compileContent(m *Match) *contentConds {
	if !m.HasContent() {
		return nil
	}
	c := &contentConds{}
	for _, v := range m.Subject {
		if p, err := parsePattern(v); err == nil { // validated already
			c.subject = append(c.subject, p)
		}
	}
	for _, v := range m.Header {
		name, pat, err := splitHeaderCond(v)
		if err != nil {
			continue
		}
		if p, err := parsePattern(pat); err == nil {
			c.header = append(c.header, headerPattern{name, p})
		}
	}
	return c
}

// contentFacts is the content part of a query, lower-cased on first use.
type contentFacts struct {
	known        bool
	subject      string
	headers      []Header
	lowerDone    bool
	subjectLower string
	headerLower  []string
}

func (f *contentFacts) lower() {
	if f.lowerDone {
		return
	}
	f.lowerDone = true
	f.subjectLower = strings.ToLower(f.subject)
	f.headerLower = make([]string, len(f.headers))
	for i, h := range f.headers {
		f.headerLower[i] = strings.ToLower(h.Value)
	}
}

// match reports whether the message satisfies every content key of the rule
// (any value within a key). Unknown content satisfies none.
func (c *contentConds) match(f *contentFacts) bool {
	if !f.known {
		return false
	}
	f.lower()
	if len(c.subject) > 0 {
		ok := false
		for i := range c.subject {
			if c.subject[i].match(f.subject, f.subjectLower) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if len(c.header) > 0 {
		ok := false
	scan:
		for i := range c.header {
			hp := &c.header[i]
			for j, h := range f.headers {
				if strings.EqualFold(h.Name, hp.name) && hp.match(h.Value, f.headerLower[j]) {
					ok = true
					break scan
				}
			}
		}
		if !ok {
			return false
		}
	}
	return true
}
