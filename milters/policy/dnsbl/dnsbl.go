// Package dnsbl looks clients and URL domains up in DNS-based lists
// (RFC 5782): block lists of client IPs (DNSBL), allow lists of client IPs
// (DNSWL) and block lists of domains found in a message (URIBL).
//
// A look-up is an A query for the reversed address (RFC 5782 §2.1 IPv4,
// reversed octets; §2.4 IPv6, reversed nibbles) or the domain (§2.3)
// followed by the list's zone. NXDOMAIN means "not listed" (§2.1); an A
// record in 127.0.0.0/8 means "listed", and which values count is the
// list's codes: exact addresses, CIDR prefixes, or a bitmask on the last
// octet (the way SURBL and URIBL encode sub-lists in one zone). Answers
// that are not listings are told apart: Spamhaus-style error codes
// (127.255.255.0/24: the list refuses this resolver or key), 127.0.0.1
// (URIBL and SURBL refusing a query; §5: never a listing), and anything
// outside 127.0.0.0/8 (a resolver that rewrites NXDOMAIN; §6) are
// Failures, not hits, so a misconfigured resolver never blocks mail.
//
// Every look-up goes through the shared resolver with the message's
// context, so its cache, single-flight and the message's DNS budget
// (resolver.WithBudget) apply: a list that never answers costs a message
// at most the budget, and is reported as a temporary Failure.
package dnsbl

import (
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/geomilter/geomilter/shared/rules"
	"github.com/geomilter/geomilter/shared/yamlconf"
)

// Kind is what a list holds and what a hit means.
type Kind uint8

const (
	// IP lists block client addresses (config key dnsbl): a hit adds
	// the list's weight, or takes its action.
	IP Kind = iota + 1
	// Allow lists vouch for client addresses (dnswl): a hit lowers the
	// score and exempts the client from greylisting.
	Allow
	// URI lists block domains of URLs in the message (uribl).
	URI
)

// String is the config key of the kind's lists.
func (k Kind) String() string {
	switch k {
	case IP:
		return "dnsbl"
	case Allow:
		return "dnswl"
	case URI:
		return "uribl"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Default weights, what a hit adds to the score when the list sets none.
const (
	DefaultWeight      = 1.0
	DefaultAllowWeight = -5.0
	// maxWeight bounds a weight either way (as the policy milter bounds
	// thresholds and rule scores).
	maxWeight = 1000
)

// List is one configured list. Validate compiles it; a List that was not
// validated counts any 127.0.0.0/8 answer and weighs 0.
type List struct {
	// Zone is the list's DNS zone, such as zen.spamhaus.org.
	Zone string `yaml:"zone"`
	// Weight is added to the message's score on a hit.
	Weight float64 `yaml:"weight"`
	// Codes are the answers that count as listed: "127.0.0.2",
	// "127.0.0.4/30" or "bitmask:0x04"; empty: any in 127.0.0.0/8.
	Codes []string `yaml:"codes"`
	// Action is a direct action on a hit: reject, tempfail or
	// quarantine; empty: the weight only.
	Action string `yaml:"action"`
	// Reply is the SMTP reply of a reject or tempfail.
	Reply string `yaml:"reply"`
	// Tenants limits the list to these tenants' recipients; empty: all.
	Tenants []string `yaml:"tenants"`

	kind  Kind
	codes []code
}

// Kind is what the list was validated as (0 if it was not).
func (l *List) Kind() Kind { return l.kind }

// AppliesTo reports whether the list is used for recipients of tenant:
// the list names no tenants, or names this one.
func (l *List) AppliesTo(tenant string) bool {
	return len(l.Tenants) == 0 || slices.Contains(l.Tenants, tenant)
}

// code is one compiled entry of List.Codes: an address range, or a bitmask
// on the last octet of an answer in 127.0.0.0/8.
type code struct {
	prefix netip.Prefix // valid for an address or a CIDR prefix
	mask   uint8        // non-zero for a bitmask
}

func (c code) match(a netip.Addr) bool {
	if c.mask != 0 {
		return loopback.Contains(a) && a.As4()[3]&c.mask != 0
	}
	return c.prefix.Contains(a)
}

var (
	// loopback is where listings live (RFC 5782 §2.1, §6).
	loopback = netip.MustParsePrefix("127.0.0.0/8")
	// errorCodes are Spamhaus's answers for a refused query (public
	// resolver, bad key, too many queries): not listings.
	errorCodes = netip.MustParsePrefix("127.255.255.0/24")
	// refused is URIBL's and SURBL's answer to a refused query (and the
	// address RFC 5782 §5 says a list never contains).
	refused = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	// allowRefused is dnswl.org's answer to a refused query ("excessive
	// usage"): on an allow list, counting it would allow every client.
	allowRefused = netip.AddrFrom4([4]byte{127, 0, 0, 255})
)

// parseCode reads one entry of List.Codes.
func parseCode(s string) (code, bool) {
	s = strings.TrimSpace(s)
	if m, ok := strings.CutPrefix(strings.ToLower(s), "bitmask:"); ok {
		v, err := strconv.ParseUint(strings.TrimSpace(m), 0, 8)
		if err != nil || v == 0 {
			return code{}, false
		}
		return code{mask: uint8(v)}, true
	}
	var p netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil || p != p.Masked() {
			return code{}, false
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return code{}, false
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	// A listing is an IPv4 address in 127.0.0.0/8: a code elsewhere could
	// only ever match a rewritten NXDOMAIN.
	if !p.Addr().Is4() || p.Bits() < loopback.Bits() || !loopback.Contains(p.Addr()) {
		return code{}, false
	}
	return code{prefix: p}, true
}

// explicit reports whether a compiled code names a as an exact address or
// inside a prefix narrower than 127.0.0.0/8 (so an address that is normally not a listing, such as
// 127.0.0.1, counts when a list says it does).
func (l *List) explicit(a netip.Addr) bool {
	for _, c := range l.codes {
		if c.mask == 0 && c.prefix.Bits() > loopback.Bits() && c.prefix.Contains(a) {
			return true
		}
	}
	return false
}

// counts reports whether answer a is a listing for l.
func (l *List) counts(a netip.Addr) bool {
	if len(l.codes) == 0 {
		return loopback.Contains(a)
	}
	for _, c := range l.codes {
		if c.match(a) {
			return true
		}
	}
	return false
}

// Validate checks lists (the sequence at path, of the given kind) and
// compiles them in place: zones lower-cased without the final dot, codes
// compiled, weights defaulted (DefaultWeight, or DefaultAllowWeight for
// Allow lists) where the file sets none. Each problem is reported with
// doc.Problemf at path[i].key (doc must not be nil).
func Validate(doc *yamlconf.Doc, path string, lists []List, kind Kind) {
	seen := map[string]int{}
	for i := range lists {
		l := &lists[i]
		at := path + "[" + strconv.Itoa(i) + "]"
		l.kind = kind
		l.Zone = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(l.Zone), "."))
		switch {
		case l.Zone == "":
			doc.Problemf(at+".zone", "required (the list's DNS zone, such as zen.spamhaus.org)")
		case !validZone(l.Zone):
			doc.Problemf(at+".zone", "%q is not a DNS zone name (letters, digits, '-' and '_' in labels of 1-63, at most %d characters)", l.Zone, maxZoneLen)
		default:
			if j, dup := seen[l.Zone]; dup {
				doc.Problemf(at+".zone", "%q is listed already at %s[%d]", l.Zone, path, j)
			}
			seen[l.Zone] = i
		}

		if !doc.Has(at + ".weight") {
			l.Weight = DefaultWeight
			if kind == Allow {
				l.Weight = DefaultAllowWeight
			}
		}
		switch w := l.Weight; {
		case math.IsNaN(w) || w < -maxWeight || w > maxWeight:
			doc.Problemf(at+".weight", "must be between %d and %d, got %v", -maxWeight, maxWeight, w)
		case kind == Allow && w > 0:
			doc.Problemf(at+".weight", "must not be positive on an allow list (a hit lowers the score), got %v", w)
		case kind != Allow && w < 0:
			doc.Problemf(at+".weight", "must not be negative on a block list (a hit raises the score; use dnswl to lower it), got %v", w)
		}

		l.codes = nil // a fresh slice: callers copy Lists by value
		for j, s := range l.Codes {
			c, ok := parseCode(s)
			if !ok {
				doc.Problemf(at+".codes["+strconv.Itoa(j)+"]", "%q is not an address or CIDR prefix inside 127.0.0.0/8, nor bitmask:N with N from 1 to 0xff", s)
				continue
			}
			l.codes = append(l.codes, c)
		}

		l.Action = strings.ToLower(strings.TrimSpace(l.Action))
		replyClass := byte(0)
		switch rules.Action(l.Action) {
		case "":
		case rules.ActionReject, rules.ActionTempfail, rules.ActionQuarantine:
			if kind == Allow {
				doc.Problemf(at+".action", "an allow list takes no action: a hit lowers the score and exempts from greylisting")
				break
			}
			switch rules.Action(l.Action) {
			case rules.ActionReject:
				replyClass = '5'
			case rules.ActionTempfail:
				replyClass = '4'
			}
		default:
			doc.Problemf(at+".action", "unknown action %q (want reject, tempfail or quarantine; leave it out to score only)", l.Action)
		}
		if strings.TrimSpace(l.Reply) != "" {
			switch rp, err := rules.ParseReply(l.Reply); {
			case replyClass == 0:
				doc.Problemf(at+".reply", "only with action reject or tempfail")
			case err != nil:
				doc.Problemf(at+".reply", "%v", err)
			case strconv.Itoa(rp.Code)[0] != replyClass:
				doc.Problemf(at+".reply", "action %s needs a %cxx reply, got %d", l.Action, replyClass, rp.Code)
			}
		}

		for j, t := range l.Tenants {
			if strings.TrimSpace(t) == "" {
				doc.Problemf(at+".tenants["+strconv.Itoa(j)+"]", "empty tenant id")
			}
		}
	}
}

// maxZoneLen leaves room in a 253-character name for the longest query
// prefix: an IPv6 address's 32 nibbles and their dots, 64 characters.
const maxZoneLen = 253 - 64

// validZone reports whether z (lower case, no final dot) is a host-style
// DNS name short enough to be queried under.
func validZone(z string) bool {
	if len(z) > maxZoneLen {
		return false
	}
	for label := range strings.SplitSeq(z, ".") {
		if !validLabel(label) {
			return false
		}
	}
	return true
}

// validLabel: 1 to 63 letters, digits, '-' or '_' (RFC 1035 §2.3.4 limits;
// '_' appears in real list names), not starting or ending with '-'.
func validLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}
