package resolver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// Defaults of Options (and of the config's dns section).
const (
	// DefaultTimeout is one look-up's budget. A recursive resolver near the
	// MTA answers a cached name in about a millisecond and an uncached one
	// in tens of milliseconds; a second covers a slow authoritative server
	// and a retry on the second configured server, while a dark one costs
	// a message at most that (opendkim waits 5s, which is what this
	// project promises not to do).
	DefaultTimeout = time.Second
	// DefaultMessageBudget is the DNS waiting allowed to one message (SPF
	// up to 10 look-ups, DKIM one per signature, DMARC one or two): three
	// slow look-ups' worth. The caller applies it with WithBudget.
	DefaultMessageBudget = 3 * time.Second
	// DefaultCacheSize is the cache's bound in entries (an entry is a few
	// hundred bytes: 10000 is a few MB).
	DefaultCacheSize = 10000
	// DefaultMaxTTL caps how long a positive answer is cached whatever its
	// TTL says (a zone fixed by its owner is seen within a day).
	DefaultMaxTTL = 24 * time.Hour
	// DefaultMaxNegativeTTL caps negative caching, as RFC 2308 §5 suggests
	// (one to three hours), at the low end: a domain that publishes its
	// first SPF or DMARC record is seen within the hour.
	DefaultMaxNegativeTTL = time.Hour
	// DefaultResolvConf is where the servers come from when none are given.
	DefaultResolvConf = "/etc/resolv.conf"
)

const (
	// ednsSize is the UDP payload size advertised in EDNS0 (RFC 6891 §6.2.5):
	// 1232 bytes, the DNS flag day 2020 value, avoids IP fragmentation;
	// larger answers come truncated and are fetched over TCP.
	ednsSize = 1232
	// unhealthyFor: a server that timed out this recently is not asked
	// while another server is healthy (see ordered).
	unhealthyFor = 30 * time.Second
	// DefaultServeStale is how long past its TTL an answer may still be
	// served (RFC 8767 §5 suggests 1 to 3 days): long enough to cover the
	// outage of a DNS server at a dark site.
	DefaultServeStale = 24 * time.Hour
)

// Options configure a Client. Zero values take the defaults above.
type Options struct {
	// Servers are the recursive resolvers to ask, host:port with an IP
	// host (IPv6 in brackets), tried in order. Empty: the nameservers of
	// ResolvConf, port 53.
	Servers []string
	// ResolvConf is read when Servers is empty; "" is DefaultResolvConf.
	ResolvConf string
	// Timeout is the budget of one look-up, shared by the servers tried.
	Timeout time.Duration
	// CacheSize bounds the cache in entries; 0 is DefaultCacheSize, a
	// negative value turns the cache off.
	CacheSize int
	// MaxTTL and MaxNegativeTTL cap how long answers are cached.
	MaxTTL, MaxNegativeTTL time.Duration
	// ServeStale is how long past its TTL a cached answer is still served,
	// at once, while a fresh one is asked for in the background (RFC 8767);
	// 0 is DefaultServeStale, a negative value turns it off.
	ServeStale time.Duration
	// Clock is what cache expiry is measured by (tests move it); nil is
	// time.Now. Waits are always measured on the real clock.
	Clock func() time.Time
	// Registerer receives the metrics; nil: not registered.
	Registerer prometheus.Registerer
}

// Client is the process's DNS resolver: a stub resolver that asks the
// configured recursive servers, caches their answers, shares one query
// between concurrent identical questions and never waits past its budget.
// It is safe for concurrent use; one is meant to serve the whole process.
type Client struct {
	servers   []*server
	timeout   time.Duration
	maxTTL    time.Duration
	maxNegTTL time.Duration
	cache     *cache
	met       *clientMetrics

	mu      sync.Mutex
	flights map[cacheKey]*flight
}

var _ Resolver = (*Client)(nil)

// server is one configured server and when it last timed out.
type server struct {
	addr        string
	lastTimeout atomic.Int64 // unix nanoseconds, real clock; 0: never
}

// flight is a query in progress; every look-up of the same question waits
// for it instead of sending its own (an in-flight map in the manner of
// singleflight).
type flight struct {
	done chan struct{}
	// waiters counts the look-ups that joined (tests check sharing).
	waiters int
	ans     *answer
	err     *net.DNSError // set when ans is nil: every server failed
}

// New returns a Client. It sends nothing; errors are about the options.
func New(o Options) (*Client, error) {
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Timeout < 0 {
		return nil, fmt.Errorf("resolver: timeout must be positive, got %v", o.Timeout)
	}
	if o.CacheSize == 0 {
		o.CacheSize = DefaultCacheSize
	}
	if o.MaxTTL <= 0 {
		o.MaxTTL = DefaultMaxTTL
	}
	if o.MaxNegativeTTL <= 0 {
		o.MaxNegativeTTL = DefaultMaxNegativeTTL
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	switch {
	case o.ServeStale == 0:
		o.ServeStale = DefaultServeStale
	case o.ServeStale < 0:
		o.ServeStale = 0
	}
	addrs := o.Servers
	if len(addrs) == 0 {
		var err error
		if addrs, err = resolvConfServers(o.ResolvConf); err != nil {
			return nil, err
		}
	}
	c := &Client{timeout: o.Timeout, maxTTL: o.MaxTTL, maxNegTTL: o.MaxNegativeTTL, flights: make(map[cacheKey]*flight)}
	for _, a := range addrs {
		ap, err := netip.ParseAddrPort(a)
		if err != nil {
			return nil, fmt.Errorf("resolver: server %q: want IP:port (IPv6 in brackets): %v", a, err)
		}
		c.servers = append(c.servers, &server{addr: ap.String()})
	}
	if o.CacheSize > 0 {
		c.cache = newCache(o.CacheSize, o.ServeStale, o.Clock)
	}
	var err error
	if c.met, err = newClientMetrics(o.Registerer, c); err != nil {
		return nil, err
	}
	return c, nil
}

// resolvConfServers returns the nameservers of a resolv.conf, port 53.
func resolvConfServers(path string) ([]string, error) {
	if path == "" {
		path = DefaultResolvConf
	}
	cc, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return nil, fmt.Errorf("resolver: no servers configured (dns.servers) and %s is unusable: %w", path, err)
	}
	var out []string
	for _, s := range cc.Servers {
		// A link-local IPv6 server carries its zone (fe80::1%eth0).
		if ip, err := netip.ParseAddr(s); err == nil {
			out = append(out, netip.AddrPortFrom(ip, 53).String())
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("resolver: no servers configured (dns.servers) and %s lists no nameserver", path)
	}
	return out, nil
}

// Servers returns the servers' addresses, in configured order.
func (c *Client) Servers() []string {
	out := make([]string, len(c.servers))
	for i, s := range c.servers {
		out[i] = s.addr
	}
	return out
}

// Net errors as net.Resolver spells them.
const (
	errNoSuchHost = "no such host"
	errTimeout    = "i/o timeout"
	errServer     = "server misbehaving"
	errBudget     = "DNS budget of the message exhausted"
)

// lookup answers (name, qtype) from the cache or the servers, within the
// look-up's budget and the message's. name is as the caller gave it.
func (c *Client) lookup(ctx context.Context, name string, qtype uint16) (*answer, error) {
	qname, ok := canonicalName(name)
	if !ok {
		// As net.Resolver: a name that cannot exist is not found.
		return nil, &net.DNSError{Err: errNoSuchHost, Name: name, IsNotFound: true}
	}
	key := cacheKey{qname, qtype}
	if a, fresh := c.cache.get(key); a != nil {
		c.met.hits.Inc()
		if !fresh {
			// RFC 8767 §4, with a client response timer of zero: the
			// stale answer now, a fresh one asked for in the background
			// (one flight per question), so a dark DNS server costs the
			// mail path nothing for names it answered before.
			c.met.stale.Inc()
			c.join(key, time.Now().Add(c.timeout))
		}
		return a, nil
	}
	c.met.misses.Inc()
	if err := ctx.Err(); err != nil {
		// The caller has given up already: no query for nobody.
		return nil, &net.DNSError{Err: err.Error(), Name: name, IsTimeout: errors.Is(err, context.DeadlineExceeded), IsTemporary: true}
	}
	wait, cutBy := c.timeout, false
	b := budgetFrom(ctx)
	if b != nil {
		left := b.begin()
		if left <= 0 {
			c.met.budgetExhausted.Inc()
			return nil, &net.DNSError{Err: errBudget, Name: name, IsTimeout: true, IsTemporary: true}
		}
		if left < wait {
			wait, cutBy = left, true
		}
	}
	f := c.join(key, time.Now().Add(wait))
	timer := time.NewTimer(wait)
	defer timer.Stop()
	var a *answer
	var err *net.DNSError
	cut := false
	select {
	case <-f.done:
		a, err = f.ans, f.err
	case <-timer.C:
		// The flight goes on (bounded by c.timeout) and fills the cache
		// for the next message; this one does not wait for it.
		err, cut = &net.DNSError{Err: errTimeout, Name: name, IsTimeout: true, IsTemporary: true}, cutBy
	case <-ctx.Done():
		err = &net.DNSError{Err: ctx.Err().Error(), Name: name, IsTimeout: errors.Is(ctx.Err(), context.DeadlineExceeded), IsTemporary: true}
	}
	if b != nil {
		b.end(cut)
		if cut {
			c.met.budgetExhausted.Inc()
		}
	}
	if err != nil {
		if err.IsTimeout {
			c.met.timeouts.Inc()
		}
		e := *err // each caller gets its own error, with its own spelling of the name
		e.Name = name
		return nil, &e
	}
	return a, nil
}

// canonicalName returns name lower-cased and fully qualified, and whether
// it is a valid domain name.
func canonicalName(name string) (string, bool) {
	if name == "" || name == "." {
		return "", false
	}
	if _, ok := dns.IsDomainName(name); !ok {
		return "", false
	}
	return strings.ToLower(dns.Fqdn(name)), true
}

// join returns the flight for key, starting one if none is in the air;
// by is when the look-up that starts it stops waiting.
func (c *Client) join(key cacheKey, by time.Time) *flight {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f, ok := c.flights[key]; ok {
		f.waiters++
		return f
	}
	f := &flight{done: make(chan struct{}), waiters: 1}
	c.flights[key] = f
	go c.fly(key, f, by)
	return f
}

// fly asks the servers, bounded by c.timeout whoever waits for it, then
// caches and publishes the result.
func (c *Client) fly(key cacheKey, f *flight, by time.Time) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	f.ans, f.err = c.ask(ctx, key.name, key.qtype, by)
	if f.ans != nil {
		c.cache.put(key, f.ans)
	}
	c.mu.Lock()
	delete(c.flights, key)
	c.mu.Unlock()
	close(f.done)
}

// ask tries the servers in order, healthy ones first, each with an equal
// share of what is left of the time of the look-up that started it (by),
// and once that has passed, of ctx's: so a dark first server leaves the
// others time to answer within that look-up's budget. A server that times
// out, fails or answers SERVFAIL/REFUSED passes the question on to the
// next. SERVFAIL and time-outs are never cached: the next message asks
// again.
func (c *Client) ask(ctx context.Context, qname string, qtype uint16, by time.Time) (*answer, *net.DNSError) {
	c.met.queries.WithLabelValues(typeLabel(qtype)).Inc()
	servers := c.ordered()
	var last *net.DNSError
	for i, s := range servers {
		deadline, _ := ctx.Deadline()
		left := time.Until(deadline)
		if left <= 0 {
			break
		}
		if first := time.Until(by); first > 0 {
			left = min(left, first)
		}
		sctx, cancel := context.WithTimeout(ctx, left/time.Duration(len(servers)-i))
		r, err := c.exchange(sctx, s.addr, qname, qtype)
		cancel()
		var ne net.Error
		switch {
		case err != nil && errors.As(err, &ne) && ne.Timeout():
			s.lastTimeout.Store(time.Now().UnixNano())
			c.met.serverErrors.WithLabelValues(s.addr, "timeout").Inc()
			last = &net.DNSError{Err: errTimeout, Server: s.addr, IsTimeout: true, IsTemporary: true}
			continue
		case err != nil:
			c.met.serverErrors.WithLabelValues(s.addr, "network").Inc()
			last = &net.DNSError{Err: err.Error(), Server: s.addr, IsTemporary: true}
			continue
		}
		a := interpret(qname, qtype, r, c.maxTTL, c.maxNegTTL)
		switch a.kind {
		case kindServFail:
			c.met.serverErrors.WithLabelValues(s.addr, "servfail").Inc()
			last = &net.DNSError{Err: errServer, Server: s.addr, IsTemporary: true}
			continue
		case kindRefused:
			// Our own recursive server refusing us is our configuration's
			// fault, not the domain's: temporary, so mail is deferred and
			// not judged on it.
			c.met.serverErrors.WithLabelValues(s.addr, "refused").Inc()
			last = &net.DNSError{Err: errServer + " (" + dns.RcodeToString[r.Rcode] + ")", Server: s.addr, IsTemporary: true}
			continue
		}
		a.server = s.addr
		return a, nil
	}
	if last == nil {
		last = &net.DNSError{Err: errTimeout, IsTimeout: true, IsTemporary: true}
	}
	return nil, last
}

// ordered returns the servers to ask, in configured order, without those
// that timed out in the last unhealthyFor while another one has not: a
// dark server then costs one time-out per unhealthyFor, not one per
// look-up, also for the questions only it would answer (the others refuse
// them). When every server timed out recently, all are asked.
func (c *Client) ordered() []*server {
	if len(c.servers) == 1 {
		return c.servers
	}
	recent := time.Now().Add(-unhealthyFor).UnixNano()
	out := make([]*server, 0, len(c.servers))
	for _, s := range c.servers {
		if t := s.lastTimeout.Load(); t == 0 || t <= recent {
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return c.servers
	}
	return out
}

// err turns a negative answer into net.Resolver's error.
func (a *answer) err(name string) error {
	if a.kind == kindData {
		return nil
	}
	// NXDOMAIN and NODATA both say "no such record": a permanent answer
	// (RFC 7208 §4.3/§5: "none"; a void look-up, §4.6.4).
	return &net.DNSError{Err: errNoSuchHost, Name: name, Server: a.server, IsNotFound: true}
}

// LookupTXT returns the TXT records of name, each record's
// character-strings joined without separator (RFC 7208 §3.3, RFC 6376
// §3.6.2.2).
func (c *Client) LookupTXT(ctx context.Context, name string) ([]string, error) {
	a, err := c.lookup(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, err
	}
	if err := a.err(name); err != nil {
		return nil, err
	}
	out := make([]string, 0, len(a.rrs))
	for _, rr := range a.rrs {
		out = append(out, strings.Join(rr.(*dns.TXT).Txt, ""))
	}
	return out, nil
}

// LookupIPAddr returns the A and AAAA records of host, asked in parallel.
// As net.Resolver, an IP literal is returned as is, and one family's
// failure does not hide the other's addresses.
func (c *Client) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	if ip, err := netip.ParseAddr(host); err == nil {
		return []net.IPAddr{{IP: ip.Unmap().AsSlice(), Zone: ip.Zone()}}, nil
	}
	type res struct {
		a   *answer
		err error
	}
	ch := make(chan res, 1)
	go func() {
		a, err := c.lookup(ctx, host, dns.TypeAAAA)
		ch <- res{a, err}
	}()
	a4, err4 := c.lookup(ctx, host, dns.TypeA)
	r6 := <-ch
	var out []net.IPAddr
	var errs []error
	for _, r := range []res{{a4, err4}, r6} {
		if r.err == nil {
			r.err = r.a.err(host)
		}
		if r.err != nil {
			errs = append(errs, r.err)
			continue
		}
		for _, rr := range r.a.rrs {
			switch v := rr.(type) {
			// Copies: the cached records must not be changed through
			// what callers get.
			case *dns.A:
				out = append(out, net.IPAddr{IP: slices.Clone(v.A.To4())})
			case *dns.AAAA:
				out = append(out, net.IPAddr{IP: slices.Clone(v.AAAA.To16())})
			}
		}
	}
	if len(out) > 0 {
		return out, nil
	}
	// Both failed: a temporary failure of either wins over "not found",
	// since the missing family might have had the address.
	for _, err := range errs {
		if de := err.(*net.DNSError); de.IsTemporary || de.IsTimeout {
			return nil, de
		}
	}
	return nil, errs[0]
}

// LookupIP returns host's addresses of one family, with
// net.Resolver.LookupIP's signature: network "ip4" asks A records only,
// "ip6" AAAA only, "ip" both (as LookupIPAddr). A DNSBL answer is an A
// record (RFC 5782 §2.1), so asking AAAA too would double the queries for
// records nobody reads. An IP literal of the family is returned as is; one
// of the other family is not found.
func (c *Client) LookupIP(ctx context.Context, network, host string) ([]net.IP, error) {
	var qtype uint16
	switch network {
	case "ip":
		addrs, err := c.LookupIPAddr(ctx, host)
		if err != nil {
			return nil, err
		}
		out := make([]net.IP, len(addrs))
		for i, a := range addrs {
			out[i] = a.IP
		}
		return out, nil
	case "ip4":
		qtype = dns.TypeA
	case "ip6":
		qtype = dns.TypeAAAA
	default:
		return nil, net.UnknownNetworkError(network)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Unmap().Is4() != (qtype == dns.TypeA) {
			return nil, &net.DNSError{Err: "no suitable address found", Name: host, IsNotFound: true}
		}
		if qtype == dns.TypeA {
			ip = ip.Unmap()
		}
		return []net.IP{ip.AsSlice()}, nil
	}
	a, err := c.lookup(ctx, host, qtype)
	if err != nil {
		return nil, err
	}
	if err := a.err(host); err != nil {
		return nil, err
	}
	out := make([]net.IP, 0, len(a.rrs))
	for _, rr := range a.rrs {
		// Copies: the cached records must not be changed through what
		// callers get.
		switch v := rr.(type) {
		case *dns.A:
			out = append(out, slices.Clone(v.A.To4()))
		case *dns.AAAA:
			out = append(out, slices.Clone(v.AAAA.To16()))
		}
	}
	return out, nil
}

// LookupMX returns the MX records of name sorted by preference; hosts are
// fully qualified (trailing dot), as net.Resolver gives them.
func (c *Client) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	a, err := c.lookup(ctx, name, dns.TypeMX)
	if err != nil {
		return nil, err
	}
	if err := a.err(name); err != nil {
		return nil, err
	}
	out := make([]*net.MX, 0, len(a.rrs))
	for _, rr := range a.rrs {
		mx := rr.(*dns.MX)
		out = append(out, &net.MX{Host: mx.Mx, Pref: mx.Preference})
	}
	slices.SortStableFunc(out, func(x, y *net.MX) int { return int(x.Pref) - int(y.Pref) })
	return out, nil
}

// LookupAddr returns the PTR names of addr (RFC 1035 §3.5 in-addr.arpa,
// RFC 3596 §2.5 ip6.arpa), fully qualified.
func (c *Client) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	rev, err := dns.ReverseAddr(addr)
	if err != nil {
		return nil, &net.DNSError{Err: "unrecognized address", Name: addr}
	}
	a, err := c.lookup(ctx, rev, dns.TypePTR)
	if err != nil {
		return nil, err
	}
	if err := a.err(addr); err != nil {
		return nil, err
	}
	out := make([]string, 0, len(a.rrs))
	for _, rr := range a.rrs {
		out = append(out, rr.(*dns.PTR).Ptr)
	}
	return out, nil
}
