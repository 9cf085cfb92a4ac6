package dmarc

import (
	"net/mail"
	"slices"
	"strings"
)

// FromProblem values: what was wrong with the message's From fields, for
// the milter's local policy (RFC 7489 §6.6.1 leaves these cases to it).
const (
	FromNoField        = "no_from"               // no From field at all
	FromSeveralFields  = "several_from_fields"   // more than one From field (RFC 5322 §3.6: exactly one)
	FromSeveralAuthors = "several_authors"       // one or more fields naming several mailboxes
	FromUnparseable    = "unparseable_from"      // From present but no author domain could be read
	FromLenient        = "from_parsed_leniently" // not RFC 5322, domains read by the fallback scan
)

// authorDomains extracts the author domains of the From field values
// (RFC 7489 §6.6.1), deduplicated in order, each lower case A-labels, and
// what was wrong with them.
func authorDomains(fields []string) (domains []string, problems []string) {
	switch len(fields) {
	case 0:
		return nil, []string{FromNoField}
	case 1:
	default:
		problems = append(problems, FromSeveralFields)
	}
	seen := map[string]bool{}
	severalAuthors := false
	for _, f := range fields {
		addrs, lenient := parseFrom(f)
		if lenient && !slices.Contains(problems, FromLenient) {
			problems = append(problems, FromLenient)
		}
		if len(addrs) > 1 {
			severalAuthors = true
		}
		for _, a := range addrs {
			d, ok := domainOf(a)
			if !ok || seen[d] {
				continue
			}
			seen[d] = true
			domains = append(domains, d)
		}
	}
	if severalAuthors {
		problems = append(problems, FromSeveralAuthors)
	}
	if len(domains) == 0 {
		problems = append(problems, FromUnparseable)
	}
	return domains, problems
}

// parseFrom returns the addr-specs of one From field value. It reads the
// value as RFC 5322 §3.4 mailbox-list (with obsolete forms and encoded
// words as net/mail does); when that fails it scans leniently, because a
// From that the parser rejects but a mail reader still shows must not
// escape DMARC by being unparseable.
func parseFrom(value string) (addrs []string, lenient bool) {
	value = strings.TrimSpace(strings.NewReplacer("\r\n", "", "\n", "").Replace(value))
	if list, err := mail.ParseAddressList(value); err == nil {
		for _, a := range list {
			addrs = append(addrs, a.Address)
		}
		return addrs, false
	}
	return scanAddresses(value), true
}

// scanAddresses finds the addresses of a value net/mail rejected: the
// contents of each <...>, or, without angle brackets, each word holding an
// "@".
func scanAddresses(v string) []string {
	var out []string
	if strings.Contains(v, "<") {
		rest := v
		for {
			_, after, ok := strings.Cut(rest, "<")
			if !ok {
				break
			}
			inner, tail, ok := strings.Cut(after, ">")
			if !ok {
				inner, tail = after, ""
			}
			if strings.Contains(inner, "@") {
				out = append(out, strings.TrimSpace(inner))
			}
			rest = tail
		}
		return out
	}
	for _, w := range strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' }) {
		if strings.Contains(w, "@") {
			out = append(out, w)
		}
	}
	return out
}

// domainOf returns the domain of an addr-spec as DMARC looks it up: lower
// case, A-labels (§6.6.1: "If the domain is a U-label, the domain name MUST
// be converted to an A-label"), no trailing dot; ok false when it is not a
// domain name.
func domainOf(addr string) (string, bool) {
	i := strings.LastIndexByte(addr, '@')
	if i < 0 {
		return "", false
	}
	d := strings.TrimSuffix(strings.TrimSpace(addr[i+1:]), ".")
	d = strings.Trim(d, "<>\"'()[] ")
	if d == "" || len(d) > 253 {
		return "", false
	}
	if a, err := toASCII(d); err == nil {
		d = a
	} else {
		return "", false
	}
	d = strings.ToLower(d)
	if !strings.Contains(d, ".") {
		return "", false
	}
	for _, label := range strings.Split(d, ".") {
		if label == "" || len(label) > 63 {
			return "", false
		}
		for j := 0; j < len(label); j++ {
			c := label[j]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return "", false
			}
		}
	}
	return d, true
}
