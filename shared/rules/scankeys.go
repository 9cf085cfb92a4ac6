package rules

import (
	"errors"
	"fmt"
	"path"
	"strconv"
	"strings"
)

// Values of the scan keys attachment, size and url_domain: parsing and
// checking them lives here, matching them in scan.go.

// sizeCond is one parsed size value: the message size compared with n.
type sizeCond struct {
	op string // ">", ">=", "<", "<="
	n  int64  // bytes
}

func (c sizeCond) holds(size int64) bool {
	switch c.op {
	case ">":
		return size > c.n
	case ">=":
		return size >= c.n
	case "<":
		return size < c.n
	}
	return size <= c.n
}

// sizeUnits are the size suffixes, all 1024-based (a "5MB" limit means what
// mail servers' message_size_limit-style settings mean).
var sizeUnits = map[string]int64{
	"": 1, "b": 1,
	"k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
	"m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
	"g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
}

// normSize is the canonical form of a size value: lower case, no spaces.
func normSize(v string) string {
	return strings.ToLower(strings.Join(strings.Fields(v), ""))
}

// parseSize parses ">5MB", "<= 100k", ">=1024".
func parseSize(v string) (sizeCond, error) {
	s := normSize(v)
	var c sizeCond
	for _, op := range []string{">=", "<=", ">", "<"} {
		if rest, ok := strings.CutPrefix(s, op); ok {
			c.op, s = op, rest
			break
		}
	}
	if c.op == "" {
		return c, fmt.Errorf("size %q must start with >, >=, < or <= (e.g. \">5MB\")", v)
	}
	i := 0
	for i < len(s) && (s[i] >= '0' && s[i] <= '9' || s[i] == '.') {
		i++
	}
	unit, ok := sizeUnits[s[i:]]
	if !ok {
		return c, fmt.Errorf("size %q has unknown unit %q (known: b, k, kb, kib, m, mb, mib, g, gb, gib; all 1024-based)", v, s[i:])
	}
	num, err := strconv.ParseFloat(s[:i], 64)
	if err != nil || s[:i] == "" {
		return c, fmt.Errorf("size %q needs a number after %s", v, c.op)
	}
	const maxSize = 1 << 50 // a petabyte: beyond any message
	if num*float64(unit) > maxSize {
		return c, fmt.Errorf("size %q is larger than any message could be", v)
	}
	c.n = int64(num * float64(unit))
	return c, nil
}

// hasGlob reports whether an attachment value is a file name glob.
func hasGlob(v string) bool { return strings.ContainsAny(v, "*?[") }

// checkAttachment validates an attachment value: a path.Match glob, or a
// name extension / sniffed type ("exe", ".exe", "text/html").
func checkAttachment(v string) error {
	v = strings.TrimSpace(v)
	switch {
	case v == "" || v == ".":
		return errors.New("attachment value is empty (want e.g. exe, \"*.js\" or \"invoice*.pdf\")")
	case len(v) > MaxPatternLen:
		return fmt.Errorf("attachment value is %d bytes long; at most %d are allowed", len(v), MaxPatternLen)
	case hasGlob(v):
		if _, err := path.Match(v, ""); err != nil {
			return fmt.Errorf("attachment glob %q: %v", v, err)
		}
		if strings.ContainsAny(v, `/\`) {
			return fmt.Errorf("attachment glob %q matches the file name only; remove the directory part", v)
		}
	case strings.ContainsAny(v, " \t"):
		return fmt.Errorf("attachment value %q contains white space (want an extension such as exe, a type such as zip, or a glob such as \"*.exe\")", v)
	}
	return nil
}

// checkURLDomain validates a url_domain value: a domain, which also covers
// every name below it.
func checkURLDomain(v string) error {
	if strings.HasPrefix(v, ".") {
		return fmt.Errorf("url_domain %q: write %q, which already covers every name below it", v, v[1:])
	}
	return checkDomain(v)
}

// attachCond is one compiled attachment value.
type attachCond struct {
	glob bool
	v    string // lower-case glob, or extension/type without a leading dot
}

func compileAttach(vs []string) []attachCond {
	out := make([]attachCond, 0, len(vs))
	for _, v := range vs {
		if hasGlob(v) {
			out = append(out, attachCond{glob: true, v: v})
		} else {
			out = append(out, attachCond{v: strings.TrimPrefix(v, ".")})
		}
	}
	return out
}

// baseName is the last element of a file name as a mail client may write
// it (either slash).
func baseName(name string) string {
	if i := strings.LastIndexAny(name, `/\`); i >= 0 {
		return name[i+1:]
	}
	return name
}

// holds reports whether an attachment with this lower-case base name and
// sniffed type satisfies the value.
func (a *attachCond) holds(lowerBase, typ string) bool {
	if a.glob {
		ok, _ := path.Match(a.v, lowerBase)
		return ok
	}
	if typ != "" && strings.EqualFold(typ, a.v) {
		return true
	}
	return len(lowerBase) > len(a.v) && strings.HasSuffix(lowerBase, a.v) && lowerBase[len(lowerBase)-len(a.v)-1] == '.'
}
