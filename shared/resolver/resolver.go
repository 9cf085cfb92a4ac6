// Package resolver is the DNS of a milter process: the Resolver interface
// the milters look names up through, and Client, its implementation (one
// per process, built by shared/service from the config's dns section; see
// docs/dns.md). Tests pass a Client pointed at an in-process server
// (shared/dnstest); *net.Resolver satisfies the interface too.
//
// Client is a stub resolver on github.com/miekg/dns: it asks the configured
// recursive servers over UDP (TCP when truncated), with EDNS0; checks the
// ID and question of every reply; caches answers by their TTL, negative
// ones by RFC 2308; shares one query between concurrent identical
// questions; and never waits past its budgets: dns.timeout per look-up, and
// a per-message budget carried by the context (WithBudget, BudgetSpent).
//
// The method set is *net.Resolver's, which is what the mail-authentication
// libraries take: blitiri.com.ar/go/spf's DNSResolver option is exactly
// these four methods, and go-msgauth's dkim.VerifyOptions.LookupTXT and
// dmarc.LookupOptions.LookupTXT take a func(name string) ([]string, error),
// which TXTFunc binds.
//
// Failures are *net.DNSError, returned as is (not wrapped), because those
// libraries tell a temporary failure from a permanent one by asserting that
// type: IsNotFound for a name or record type that does not exist (NXDOMAIN,
// NODATA: permanent, RFC 7208 §5 "none"), IsTemporary or IsTimeout for a
// server failure or a timeout (SERVFAIL, no answer: try again later,
// RFC 7208 §2.6.6 temperror). Classify reads that for the milters.
package resolver

import (
	"context"
	"errors"
	"net"
)

// Resolver looks names up. Every method honours ctx's deadline and returns
// either results or a *net.DNSError.
type Resolver interface {
	// LookupTXT returns the TXT records of name, each record's strings
	// joined (RFC 7208 §3.3).
	LookupTXT(ctx context.Context, name string) ([]string, error)
	// LookupIPAddr returns the A and AAAA records of host.
	LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error)
	// LookupMX returns the MX records of name, sorted by preference.
	LookupMX(ctx context.Context, name string) ([]*net.MX, error)
	// LookupAddr returns the PTR names of an address (reverse lookup).
	LookupAddr(ctx context.Context, addr string) ([]string, error)
}

var _ Resolver = (*net.Resolver)(nil)

// Outcome classifies a lookup's result.
type Outcome uint8

const (
	// Found: the lookup returned records.
	Found Outcome = iota
	// NotFound: the name or the record type does not exist — an answer,
	// not a failure (NXDOMAIN, NODATA).
	NotFound
	// Temporary: no answer now (timeout, SERVFAIL, network); the same
	// lookup may succeed later, so a check that needs it defers (4xx).
	Temporary
	// Permanent: the lookup failed in a way retrying will not fix (an
	// address LookupAddr cannot reverse). Client reports a REFUSED from
	// its own servers as Temporary: that is its configuration's fault,
	// not the domain's.
	Permanent
)

func (o Outcome) String() string {
	switch o {
	case Found:
		return "found"
	case NotFound:
		return "not_found"
	case Temporary:
		return "temporary"
	}
	return "permanent"
}

// Classify tells what a lookup's error means. A nil error is Found; a
// context that ended (the caller's budget) is Temporary; any other error
// that is not a *net.DNSError is Permanent, as the libraries treat it.
func Classify(err error) Outcome {
	if err == nil {
		return Found
	}
	var dnsErr *net.DNSError
	switch {
	case errors.As(err, &dnsErr):
		switch {
		case dnsErr.IsNotFound:
			return NotFound
		case dnsErr.IsTimeout || dnsErr.IsTemporary:
			return Temporary
		}
		return Permanent
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return Temporary
	}
	return Permanent
}

// TXTFunc binds r and ctx into the lookup function go-msgauth's dkim and
// dmarc options take. Nil r gives nil, so the library's default applies
// only where the caller lets it.
func TXTFunc(ctx context.Context, r Resolver) func(name string) ([]string, error) {
	if r == nil {
		return nil
	}
	return func(name string) ([]string, error) { return r.LookupTXT(ctx, name) }
}
