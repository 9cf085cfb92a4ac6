package dnsbl

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/geomilter/geomilter/shared/resolver"
)

// Hit is a list that listed its target.
type Hit struct {
	// Zone is the list's zone; Query the name asked.
	Zone, Query string
	// Answer is the answers that counted, comma-separated (127.0.0.2).
	Answer string
	// Weight, Action and Reply are the list's.
	Weight float64
	Action string
	Reply  string
	Kind   Kind
	// Target is the client IP or the domain looked up.
	Target string
}

// Failure is a list that gave no usable answer for a target. Temporary:
// no answer now (timeout, SERVFAIL, the message's DNS budget spent); not
// temporary: the list or the resolver answered with something that is not
// a listing (an error code, 127.0.0.1, an address outside 127.0.0.0/8).
// Either way the target counts as not listed.
type Failure struct {
	Zone, Target string
	Err          error
	Temporary    bool
}

// Result is what the lists said about a client or a message's domains.
type Result struct {
	Hits     []Hit
	Failures []Failure
	// Duration is the wall time of the whole check.
	Duration time.Duration
	// Skipped counts the look-ups CheckDomains did not make because of
	// its maxQueries.
	Skipped int
}

// ipLookuper is the A-only look-up of resolver.Client and *net.Resolver.
type ipLookuper interface {
	LookupIP(ctx context.Context, network, host string) ([]net.IP, error)
}

// Both resolvers the project uses ask A records only through it.
var (
	_ ipLookuper = (*resolver.Client)(nil)
	_ ipLookuper = (*net.Resolver)(nil)
)

// maxInFlight bounds the URIBL look-ups of one message in flight at once:
// a message with many URLs must not burst dozens of queries at the
// recursive server; with 8, n look-ups take about n/8 round trips.
const maxInFlight = 8

// CheckIP looks ip up in every list of kind IP or Allow (lists of kind URI
// are skipped), all at once, each through r with ctx, which carries the
// message's DNS budget (resolver.WithBudget). An IPv4-mapped IPv6 address
// is looked up as IPv4. Hits and failures come in the order of lists.
func CheckIP(ctx context.Context, r resolver.Resolver, ip netip.Addr, lists []List) Result {
	start := time.Now()
	ip = ip.Unmap()
	rev := ReverseName(ip)
	if rev == "" || r == nil {
		return Result{}
	}
	var jobs []job
	for i := range lists {
		if l := &lists[i]; l.kind != URI && l.Zone != "" {
			jobs = append(jobs, job{l, ip.String(), rev + "." + l.Zone})
		}
	}
	res := run(ctx, r, jobs, len(jobs))
	res.Duration = time.Since(start)
	return res
}

// CheckDomains looks each domain up in every list of kind URI (lists of
// kind IP or Allow are skipped) as domain.zone (RFC 5782 §2.3), making at
// most maxQueries look-ups in all: the first domains first, each in every
// list, the rest counted in Result.Skipped. Domains are compared without
// case and a final dot, asked once each; an IPv4 literal is asked in
// reversed form, as SURBL lists addresses; names that cannot be asked
// (not ASCII — the caller passes A-labels —, malformed, too long) are
// skipped. At most a few look-ups are in flight at once.
func CheckDomains(ctx context.Context, r resolver.Resolver, domains []string, lists []List, maxQueries int) Result {
	start := time.Now()
	if r == nil {
		return Result{}
	}
	var uri []*List
	for i := range lists {
		if l := &lists[i]; l.kind != IP && l.kind != Allow && l.Zone != "" {
			uri = append(uri, l)
		}
	}
	if len(uri) == 0 {
		return Result{}
	}
	var jobs []job
	skipped := 0
	seen := make(map[string]bool)
	for _, d := range domains {
		target, name, ok := domainQuery(d)
		if !ok || seen[name] {
			continue
		}
		seen[name] = true
		for _, l := range uri {
			q := name + "." + l.Zone
			switch {
			case len(q) > 253: // RFC 1035 §2.3.4
			case len(jobs) >= maxQueries:
				skipped++
			default:
				jobs = append(jobs, job{l, target, q})
			}
		}
	}
	res := run(ctx, r, jobs, maxInFlight)
	res.Skipped = skipped
	res.Duration = time.Since(start)
	return res
}

// domainQuery returns the target (as reported) and the name to look up
// for one domain of a message, or false when it cannot be asked.
func domainQuery(d string) (target, name string, ok bool) {
	d = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(d), "."))
	if a, err := netip.ParseAddr(d); err == nil {
		if a = a.Unmap(); a.Is4() {
			return a.String(), ReverseName(a), true
		}
		return "", "", false
	}
	if d == "" || len(d) > 253 {
		return "", "", false
	}
	for label := range strings.SplitSeq(d, ".") {
		if !validLabel(label) {
			return "", "", false
		}
	}
	return d, d, true
}

// job is one look-up: target in l, asked as query.
type job struct {
	l             *List
	target, query string
}

// outcome is a job's result: a hit, a failure, or neither (not listed).
type outcome struct {
	hit  *Hit
	fail *Failure
}

// run does the jobs, at most inFlight at once, and collects the outcomes
// in job order.
func run(ctx context.Context, r resolver.Resolver, jobs []job, inFlight int) Result {
	if ctx == nil {
		ctx = context.Background()
	}
	outs := make([]outcome, len(jobs))
	sem := make(chan struct{}, max(inFlight, 1))
	var wg sync.WaitGroup
	for i, j := range jobs {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			outs[i] = ask(ctx, r, j)
		})
	}
	wg.Wait()
	var res Result
	for _, o := range outs {
		if o.hit != nil {
			res.Hits = append(res.Hits, *o.hit)
		}
		if o.fail != nil {
			res.Failures = append(res.Failures, *o.fail)
		}
	}
	return res
}

// ask makes one look-up and judges its answer.
func ask(ctx context.Context, r resolver.Resolver, j job) outcome {
	addrs, err := lookupA(ctx, r, j.query)
	switch resolver.Classify(err) {
	case resolver.Found:
	case resolver.NotFound:
		// NXDOMAIN: not listed (RFC 5782 §2.1).
		return outcome{}
	case resolver.Temporary:
		return outcome{fail: &Failure{Zone: j.l.Zone, Target: j.target, Err: err, Temporary: true}}
	default:
		return outcome{fail: &Failure{Zone: j.l.Zone, Target: j.target, Err: err}}
	}
	matched, problem := judge(j.l, addrs)
	if problem != "" {
		return outcome{fail: &Failure{Zone: j.l.Zone, Target: j.target, Err: fmt.Errorf("%s: %s", j.query, problem)}}
	}
	if len(matched) == 0 {
		return outcome{}
	}
	return outcome{hit: &Hit{
		Zone: j.l.Zone, Query: j.query, Answer: strings.Join(matched, ","),
		Weight: j.l.Weight, Action: j.l.Action, Reply: j.l.Reply, Kind: j.l.kind, Target: j.target,
	}}
}

// lookupA asks the A records of name: A only where r can (LookupIP "ip4"),
// else A and AAAA with the IPv6 ones dropped.
func lookupA(ctx context.Context, r resolver.Resolver, name string) ([]netip.Addr, error) {
	var ips []net.IP
	if l, ok := r.(ipLookuper); ok {
		var err error
		if ips, err = l.LookupIP(ctx, "ip4", name); err != nil {
			return nil, err
		}
	} else {
		addrs, err := r.LookupIPAddr(ctx, name)
		if err != nil {
			return nil, err
		}
		for _, a := range addrs {
			ips = append(ips, a.IP)
		}
	}
	out := make([]netip.Addr, 0, len(ips))
	for _, ip := range ips {
		if a, ok := netip.AddrFromSlice(ip); ok && a.Unmap().Is4() {
			out = append(out, a.Unmap())
		}
	}
	return out, nil
}

// judge returns the answers that count as a listing for l, or why the
// answer is not a listing but a problem worth reporting.
func judge(l *List, addrs []netip.Addr) (matched []string, problem string) {
	outside := ""
	for _, a := range addrs {
		switch {
		case l.explicit(a):
			// A list's own exact code wins over the conventions below.
			matched = append(matched, a.String())
		case errorCodes.Contains(a):
			return nil, "error answer " + a.String() + " (the list refuses this resolver, key or query rate), not a listing"
		case a == refused:
			return nil, "answer 127.0.0.1: the list refused the query, not a listing (RFC 5782 §5)"
		case a == allowRefused && l.kind == Allow:
			return nil, "answer 127.0.0.255: the allow list refused the query (dnswl.org: excessive usage), not a listing"
		case !loopback.Contains(a):
			outside = a.String()
		case l.counts(a):
			matched = append(matched, a.String())
		}
	}
	if len(matched) == 0 && outside != "" {
		return nil, "answer " + outside + " is outside 127.0.0.0/8: not a listing (a resolver rewriting NXDOMAIN?)"
	}
	return matched, ""
}

const hexDigits = "0123456789abcdef"

// ReverseName returns the name ip is looked up as, without the zone:
// IPv4 octets reversed (RFC 5782 §2.1: 127.0.0.2 → "2.0.0.127"), IPv6
// nibbles reversed, one label each (§2.4: 2001:db8::1 →
// "1.0.0.0.….8.b.d.0.1.0.0.2"). An IPv4-mapped IPv6 address gives the
// IPv4 form; an invalid address gives "".
func ReverseName(ip netip.Addr) string {
	ip = ip.Unmap()
	switch {
	case ip.Is4():
		b := ip.As4()
		buf := make([]byte, 0, 15)
		for i := 3; i >= 0; i-- {
			buf = strconv.AppendUint(buf, uint64(b[i]), 10)
			buf = append(buf, '.')
		}
		return string(buf[:len(buf)-1])
	case ip.Is6():
		b := ip.As16()
		buf := make([]byte, 0, 63)
		for i := 15; i >= 0; i-- {
			buf = append(buf, hexDigits[b[i]&0xf], '.', hexDigits[b[i]>>4], '.')
		}
		return string(buf[:len(buf)-1])
	}
	return ""
}
