// Package dnstest runs DNS servers inside a test process, the way
// net/http/httptest runs HTTP servers: a real server (github.com/miekg/dns)
// on 127.0.0.1, UDP and TCP on one port, serving fixture zones given as
// zone-file text (RFC 1035 §5), and a dark server that reads every query
// and answers none. Tests of anything that looks names up use them instead
// of fakes, so the resolver's wire code is exercised too.
//
// Start's server answers authoritatively, as a recursive resolver would
// relay: records that match, CNAME chains followed inside its data,
// NXDOMAIN or NODATA with the zone's SOA in the authority section
// (RFC 2308 §3), REFUSED for names outside its zones. A test can also make
// it truncate the UDP answer for a name (to force TCP), answer SERVFAIL,
// or send a spoofed reply (wrong ID) first, and count the queries per name.
package dnstest

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// Server is an in-process authoritative DNS server.
type Server struct {
	t     testing.TB
	addr  string
	udp   *dns.Server
	tcp   *dns.Server
	zones map[string]*dns.SOA // zone origin -> its SOA
	// rrs holds the records by lower-case owner name.
	rrs map[string][]dns.RR

	mu       sync.Mutex
	queries  map[string]int
	truncate map[string]bool
	servfail map[string]bool
	spoof    map[string]bool
	hold     map[string]chan struct{}
}

// Start parses zones (zone-file text; names must be fully qualified or
// follow an $ORIGIN line, and several zones may follow one another, each
// with its SOA record), serves them on 127.0.0.1 (UDP and TCP, one port)
// and stops the server when the test ends. A zone-file error fails the
// test at once.
func Start(t testing.TB, zones string) *Server {
	t.Helper()
	pc, ln := listenPair(t)
	return StartOn(t, zones, pc, ln)
}

// StartOn is Start on sockets the caller opened (UDP and TCP of one
// address): a server on another address than 127.0.0.1, or in another
// network namespace (the outage drill serves a zone from the dark site's
// namespace). The server closes them when the test ends.
func StartOn(t testing.TB, zones string, pc net.PacketConn, ln net.Listener) *Server {
	t.Helper()
	s := &Server{
		t:     t,
		zones: make(map[string]*dns.SOA), rrs: make(map[string][]dns.RR),
		queries: make(map[string]int), truncate: make(map[string]bool),
		servfail: make(map[string]bool), spoof: make(map[string]bool),
		hold: make(map[string]chan struct{}),
	}
	zp := dns.NewZoneParser(strings.NewReader(zones), "", "zones")
	zp.SetDefaultTTL(3600)
	for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
		name := strings.ToLower(rr.Header().Name)
		if soa, isSOA := rr.(*dns.SOA); isSOA {
			s.zones[name] = soa
		}
		s.rrs[name] = append(s.rrs[name], rr)
	}
	if err := zp.Err(); err != nil {
		pc.Close()
		ln.Close()
		t.Fatalf("dnstest: zones: %v", err)
	}
	if len(s.zones) == 0 {
		pc.Close()
		ln.Close()
		t.Fatalf("dnstest: zones: no SOA record, so no zone to serve")
	}
	s.addr = pc.LocalAddr().String()
	s.udp = serve(t, &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(s.handle)})
	s.tcp = serve(t, &dns.Server{Listener: ln, Handler: dns.HandlerFunc(s.handle)})
	return s
}

// listenPair opens UDP and TCP on the same free port of 127.0.0.1 (a
// resolver uses one address for both), retrying when the TCP port is taken.
func listenPair(t testing.TB) (net.PacketConn, net.Listener) {
	t.Helper()
	var lastErr error
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("dnstest: %v", err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln
		}
		lastErr = err
		pc.Close()
	}
	t.Fatalf("dnstest: no free port for UDP and TCP: %v", lastErr)
	return nil, nil
}

// serve runs srv until the test ends.
func serve(t testing.TB, srv *dns.Server) *dns.Server {
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	errc := make(chan error, 1)
	go func() { errc <- srv.ActivateAndServe() }()
	select {
	case <-started:
	case err := <-errc:
		t.Fatalf("dnstest: serve: %v", err)
	}
	t.Cleanup(func() { _ = srv.Shutdown() })
	return srv
}

// Addr is the server's address, 127.0.0.1:port, for UDP and TCP.
func (s *Server) Addr() string { return s.addr }

// Truncate makes UDP answers for name come empty with the TC bit set, so a
// resolver must ask again over TCP (which gets the full answer).
func (s *Server) Truncate(name string) { s.set(s.truncate, name) }

// ServFail makes every answer for name a SERVFAIL.
func (s *Server) ServFail(name string) { s.set(s.servfail, name) }

// Spoof makes the server send, before each UDP answer for name, a reply
// with another query ID claiming that name has no TXT or address records
// (NXDOMAIN) — what an off-path spoofer would send. A resolver must ignore
// it and take the real answer that follows.
func (s *Server) Spoof(name string) { s.set(s.spoof, name) }

// Hold makes answers for name wait until release is called (or the test
// ends), so a test can have several look-ups in flight at once.
func (s *Server) Hold(name string) (release func()) {
	ch := make(chan struct{})
	s.mu.Lock()
	s.hold[strings.ToLower(dns.Fqdn(name))] = ch
	s.mu.Unlock()
	var once sync.Once
	release = func() {
		once.Do(func() {
			s.mu.Lock()
			delete(s.hold, strings.ToLower(dns.Fqdn(name)))
			s.mu.Unlock()
			close(ch)
		})
	}
	// Released at the end of the test too, so no handler stays blocked
	// (cleanups run last-in first-out: before the server's Shutdown).
	s.t.Cleanup(release)
	return release
}

func (s *Server) set(m map[string]bool, name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m[strings.ToLower(dns.Fqdn(name))] = true
}

// Queries returns how many queries for name (any type, UDP and TCP) the
// server has received.
func (s *Server) Queries(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queries[strings.ToLower(dns.Fqdn(name))]
}

// TotalQueries returns how many queries the server has received.
func (s *Server) TotalQueries() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, v := range s.queries {
		n += v
	}
	return n
}

func (s *Server) handle(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	if len(req.Question) != 1 {
		m.SetRcode(req, dns.RcodeFormatError)
		_ = w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	_, isUDP := w.RemoteAddr().(*net.UDPAddr)
	s.mu.Lock()
	s.queries[name]++
	trunc, fail, spoof := s.truncate[name] && isUDP, s.servfail[name], s.spoof[name] && isUDP
	hold := s.hold[name]
	s.mu.Unlock()
	if hold != nil {
		<-hold
	}

	if spoof {
		fake := new(dns.Msg)
		fake.SetRcode(req, dns.RcodeNameError)
		fake.Id = req.Id ^ 0x5a5a
		_ = w.WriteMsg(fake)
	}
	m.SetReply(req)
	m.Authoritative = true
	if o := req.IsEdns0(); o != nil {
		m.SetEdns0(o.UDPSize(), false)
	}
	switch {
	case fail:
		m.Rcode = dns.RcodeServerFailure
	case trunc:
		m.Truncated = true
	default:
		s.answer(m, name, q.Qtype)
	}
	_ = w.WriteMsg(m)
}

// answer fills m for (name, qtype): RFC 1034 §4.3.2's algorithm for the
// data this server holds, CNAMEs followed (at most 8).
func (s *Server) answer(m *dns.Msg, name string, qtype uint16) {
	zone := s.zoneOf(name)
	if zone == "" {
		m.Rcode = dns.RcodeRefused
		m.Authoritative = false
		return
	}
	for range 8 {
		rrs, exists := s.rrs[name], s.exists(name)
		var match []dns.RR
		var cname dns.RR
		for _, rr := range rrs {
			switch {
			case rr.Header().Rrtype == qtype:
				match = append(match, dns.Copy(rr))
			case rr.Header().Rrtype == dns.TypeCNAME:
				cname = rr
			}
		}
		switch {
		case len(match) > 0:
			m.Answer = append(m.Answer, match...)
			return
		case cname != nil:
			m.Answer = append(m.Answer, dns.Copy(cname))
			name = strings.ToLower(cname.(*dns.CNAME).Target)
			if z := s.zoneOf(name); z != "" {
				zone = z
				continue
			}
			return // the chain leaves our zones: the client goes on
		case !exists:
			m.Rcode = dns.RcodeNameError
		}
		m.Ns = append(m.Ns, dns.Copy(s.zones[zone]))
		return
	}
}

// zoneOf returns the closest enclosing zone of name, or "".
func (s *Server) zoneOf(name string) string {
	for n := name; ; {
		if _, ok := s.zones[n]; ok {
			return n
		}
		i := strings.IndexByte(n, '.')
		if i < 0 || i == len(n)-1 {
			return ""
		}
		n = n[i+1:]
	}
}

// exists says whether name has records or is an empty non-terminal (a
// name with records below it exists too, RFC 8020).
func (s *Server) exists(name string) bool {
	if len(s.rrs[name]) > 0 {
		return true
	}
	for owner := range s.rrs {
		if strings.HasSuffix(owner, "."+name) {
			return true
		}
	}
	return false
}

// String describes the server for test logs.
func (s *Server) String() string {
	return fmt.Sprintf("dnstest server %s (%d zones)", s.addr, len(s.zones))
}
