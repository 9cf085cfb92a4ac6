package rules

import "strings"

// The normalisation of names and addresses lives here once: rule values are
// normalised with it when a rule is read, message facts when a message is
// matched, and milters use it for whatever they compare with either (rate
// subjects, tenant lookups, relay checks), so a value never compares
// differently in two places.

// NormDomain lower-cases a domain name and drops surrounding white space and
// one trailing root dot ("Example.COM." → "example.com"). It does not check
// the name.
func NormDomain(d string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(d)), ".")
}

// NormName lower-cases a SASL login or an exact HELO argument and drops
// surrounding white space.
func NormName(s string) string { return strings.ToLower(strings.TrimSpace(s)) }

// SplitAddr normalises an envelope address (RFC 5321 Mailbox in a path):
// surrounding white space, angle brackets and a source route
// ("@a,@b:user@dom", RFC 5321 §4.1.2, obsolete but allowed) are dropped, the
// address is lower-cased and its domain goes through NormDomain. dom is ""
// for an address without '@' (RCPT TO:<postmaster>). null reports the null
// reverse-path "<>" (then addr and dom are "").
func SplitAddr(s string) (addr, dom string, null bool) {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "<") && strings.HasSuffix(s, ">") {
		s = s[1 : len(s)-1]
		if s == "" {
			return "", "", true
		}
	}
	if strings.HasPrefix(s, "@") {
		if i := strings.IndexByte(s, ':'); i >= 0 {
			s = s[i+1:]
		}
	}
	if s == "" {
		return "", "", false
	}
	s = strings.ToLower(s)
	at := strings.LastIndexByte(s, '@')
	if at < 0 {
		return s, "", false
	}
	dom = NormDomain(s[at+1:])
	if len(dom) != len(s)-at-1 {
		s = s[:at+1] + dom
	}
	return s, dom, false
}

// DomainOf returns an envelope address's domain as SplitAddr gives it: ""
// for the null sender and for an address without a domain.
func DomainOf(addr string) string {
	_, dom, _ := SplitAddr(addr)
	return dom
}
