// Package spfcheck runs SPF (RFC 7208) for the policy milter: the
// MAIL FROM identity (§2.4), or postmaster@HELO when MAIL FROM is empty, and
// the HELO identity on its own (§2.3) for the Authentication-Results
// smtp.helo property.
//
// The evaluation itself is blitiri.com.ar/go/spf's: every mechanism and
// modifier of §5 and §6, the macros of §7, the limit of 10 DNS-querying terms
// and of 2 void look-ups (§4.6.4). This package chooses the identity, checks
// it is a domain at all (§4.3), sends every look-up through the resolver it
// is given (so the message's DNS budget applies), counts the queries and
// times the check for the trail.
//
// The exp= modifier (§6.2) is accepted and not expanded: the library skips
// it, and the milter never shows a domain's explanation to the SMTP client
// (the client gets a short generic text, the details go to the trail), so
// fetching it would only cost a look-up. Its presence changes no result,
// as §6.2 requires.
package spfcheck

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"blitiri.com.ar/go/spf"

	"github.com/geomilter/geomilter/shared/resolver"
	"github.com/geomilter/geomilter/shared/trail"
)

// Result keywords, spelt as RFC 7208 §2.6 and RFC 8601 §2.7.2 spell them.
const (
	None      = string(spf.None)
	Neutral   = string(spf.Neutral)
	Pass      = string(spf.Pass)
	Fail      = string(spf.Fail)
	SoftFail  = string(spf.SoftFail)
	TempError = string(spf.TempError)
	PermError = string(spf.PermError)
)

// Identities checked (RFC 7208 §2.3, §2.4), as the trail names them.
const (
	IdentityMailFrom = "mailfrom"
	IdentityHELO     = "helo"
)

// Result is one SPF check.
type Result struct {
	// Identity is IdentityMailFrom or IdentityHELO: which identity was
	// checked. A null MAIL FROM is checked as postmaster@HELO, which is
	// the HELO identity (§2.4).
	Identity string
	// Domain is the domain whose policy was evaluated (the MAIL FROM
	// domain or the HELO name); empty when there was none to check.
	Domain string
	// Sender is the <sender> of check_host() (§4.1): the MAIL FROM address,
	// or postmaster@HELO.
	Sender string
	// Result is one of the RFC 7208 §2.6 keywords above.
	Result string
	// Reason says why, for the trail: the term that matched, the error
	// that made the result, or why nothing was checked. Never shown to the
	// SMTP client (the library's texts may name DNS details).
	Reason string
	// Err is the error behind a temperror or permerror, nil otherwise.
	Err error
	// Queries counts the look-ups made through the resolver (TXT, MX, PTR,
	// and address look-ups, A and AAAA together counting one). The §4.6.4
	// limit counts DNS-querying terms, which are at most this many.
	Queries int
	// Duration is how long the check took, DNS included.
	Duration time.Duration
}

// Trail returns the result as the trail records it.
func (r Result) Trail() trail.SPFResult {
	return trail.SPFResult{Identity: r.Identity, Domain: r.Domain, Result: r.Result, Detail: r.Reason}
}

// Check evaluates SPF for the MAIL FROM identity of a transaction from ip.
// mailFrom is the reverse-path with or without angle brackets; an empty
// one ("", "<>") makes the identity postmaster@helo (RFC 7208 §2.4). A nil,
// unspecified or loopback ip (a local submission) gives none without any
// look-up: SPF authorises hosts on the network, and there is none.
//
// Every look-up goes through r and ends when ctx does (a temperror then).
func Check(ctx context.Context, r resolver.Resolver, ip net.IP, helo, mailFrom string) Result {
	mailFrom = strings.TrimSpace(mailFrom)
	mailFrom = strings.TrimSuffix(strings.TrimPrefix(mailFrom, "<"), ">")
	if mailFrom == "" {
		// §2.4: "If the reverse-path is null, ... the 'MAIL FROM' identity
		// is the mailbox composed of the local-part "postmaster" and the
		// 'HELO' identity".
		res := check(ctx, r, ip, helo, "postmaster@"+helo, helo)
		res.Identity = IdentityHELO
		return res
	}
	// The domain follows the last "@": a quoted local-part may hold one
	// (RFC 5321 §4.1.2).
	at := strings.LastIndexByte(mailFrom, '@')
	local, domain := mailFrom, ""
	if at >= 0 {
		local, domain = mailFrom[:at], mailFrom[at+1:]
	} else {
		// §4.3: a sender without a domain has no policy to look up; the
		// HELO domain stands in (blitiri's rule too) — but only if it is one.
		local, domain = mailFrom, helo
	}
	if local == "" {
		// §4.3: "If the <sender> has no local-part, substitute the string
		// "postmaster" for the local-part."
		local = "postmaster"
	}
	if strings.ContainsRune(local, '@') {
		// The library splits the sender at its first "@"; a local-part
		// holding one would give it the wrong domain. The domain is what
		// SPF authorises; only the %{l} and %{s} macros see the
		// substitute.
		local = "postmaster"
	}
	res := check(ctx, r, ip, helo, local+"@"+domain, domain)
	res.Identity = IdentityMailFrom
	return res
}

// CheckHELO evaluates SPF for the HELO identity alone (RFC 7208 §2.3), the
// result Authentication-Results reports as smtp.helo. An address literal or
// a name that is not a domain gives none (§2.3: "... fully qualified domain
// name ... If it is not, ... none").
func CheckHELO(ctx context.Context, r resolver.Resolver, ip net.IP, helo string) Result {
	res := check(ctx, r, ip, helo, "postmaster@"+helo, helo)
	res.Identity = IdentityHELO
	return res
}

func check(ctx context.Context, r resolver.Resolver, ip net.IP, helo, sender, domain string) Result {
	start := time.Now()
	res := Result{Domain: strings.TrimSuffix(domain, "."), Sender: sender}
	switch {
	case ip == nil || ip.To16() == nil || ip.IsUnspecified():
		res.Result, res.Reason = None, "no client address"
		return res
	case ip.IsLoopback():
		res.Result, res.Reason = None, "local submission"
		return res
	}
	if why := checkDomain(res.Domain); why != "" {
		// §4.3: "If the <domain> is malformed (e.g., label longer than 63
		// characters, zero-length label not at the end, etc.) or is not a
		// multi-label domain name, ... check_host() immediately returns the
		// result "none"."
		res.Result, res.Reason = None, why
		res.Duration = time.Since(start)
		return res
	}
	if r == nil {
		res.Result, res.Err = TempError, errors.New("spf: no DNS resolver")
		res.Reason = res.Err.Error()
		res.Duration = time.Since(start)
		return res
	}
	counter := &countingResolver{r: r}
	verdict, err := spf.CheckHostWithSender(ip, helo, sender,
		spf.WithContext(ctx), spf.WithResolver(counter))
	res.Result = string(verdict)
	res.Queries = int(counter.n.Load())
	res.Duration = time.Since(start)
	if err != nil {
		res.Reason = err.Error()
	}
	switch verdict {
	case spf.TempError, spf.PermError:
		res.Err = err
	case spf.None:
		if err == nil || errors.Is(err, spf.ErrNoResult) {
			res.Reason = "no SPF record"
		}
	}
	return res
}

// checkDomain returns why name cannot be an SPF domain, "" when it can
// (RFC 7208 §4.3, RFC 1035 §2.3.4 lengths).
func checkDomain(name string) string {
	switch {
	case name == "":
		return "no domain"
	case strings.HasPrefix(name, "["):
		return "address literal, not a domain"
	case len(name) > 253:
		return "domain longer than 253 octets"
	case !strings.Contains(name, "."):
		return "not a multi-label domain"
	}
	for _, label := range strings.Split(name, ".") {
		switch {
		case label == "":
			return "empty label in domain"
		case len(label) > 63:
			return "label longer than 63 octets"
		}
		for i := 0; i < len(label); i++ {
			// Letters, digits, "-", "_" (RFC 1123 §2.1 host names, and the
			// underscore of service names); 8-bit bytes pass, for UTF-8
			// names (RFC 6531), which simply have no record if unknown.
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c >= 0x80) {
				return "not a domain name"
			}
		}
	}
	return ""
}

// countingResolver counts the queries the SPF library makes.
type countingResolver struct {
	r resolver.Resolver
	n atomic.Int32
}

func (c *countingResolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	c.n.Add(1)
	return c.r.LookupTXT(ctx, name)
}

func (c *countingResolver) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	c.n.Add(1)
	return c.r.LookupIPAddr(ctx, host)
}

func (c *countingResolver) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	c.n.Add(1)
	return c.r.LookupMX(ctx, name)
}

func (c *countingResolver) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	c.n.Add(1)
	return c.r.LookupAddr(ctx, addr)
}

var _ spf.DNSResolver = (*countingResolver)(nil)
