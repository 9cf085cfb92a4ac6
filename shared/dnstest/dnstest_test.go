package dnstest

import (
	"testing"
	"time"

	"github.com/miekg/dns"
)

const zones = `
$ORIGIN example.com.
@     300 IN SOA ns.example.com. h.example.com. 1 7200 3600 1209600 60
@     300 IN TXT "a" "b"
www   300 IN CNAME web
web   300 IN A 192.0.2.1
x.y   300 IN TXT "deep"
$ORIGIN example.net.
@     300 IN SOA ns.example.net. h.example.net. 1 7200 3600 1209600 60
`

func ask(t *testing.T, net, addr, name string, qtype uint16) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: net, Timeout: 5 * time.Second}
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s %s: %v", net, name, err)
	}
	return r
}

func TestServer(t *testing.T) {
	s := Start(t, zones)
	s.Truncate("trunc.example.com")
	s.ServFail("fail.example.com")
	tests := []struct {
		net, name  string
		qtype      uint16
		rcode      int
		answers    int
		soa, trunc bool
	}{
		{"udp", "example.com.", dns.TypeTXT, dns.RcodeSuccess, 1, false, false},
		{"tcp", "EXAMPLE.com.", dns.TypeTXT, dns.RcodeSuccess, 1, false, false},
		{"udp", "www.example.com.", dns.TypeA, dns.RcodeSuccess, 2, false, false},
		{"udp", "web.example.com.", dns.TypeTXT, dns.RcodeSuccess, 0, true, false},
		{"udp", "nope.example.com.", dns.TypeTXT, dns.RcodeNameError, 0, true, false},
		{"udp", "y.example.com.", dns.TypeTXT, dns.RcodeSuccess, 0, true, false},
		{"udp", "x.example.net.", dns.TypeTXT, dns.RcodeNameError, 0, true, false},
		{"udp", "example.org.", dns.TypeTXT, dns.RcodeRefused, 0, false, false},
		{"udp", "trunc.example.com.", dns.TypeTXT, dns.RcodeSuccess, 0, false, true},
		{"tcp", "trunc.example.com.", dns.TypeTXT, dns.RcodeNameError, 0, true, false},
		{"udp", "fail.example.com.", dns.TypeTXT, dns.RcodeServerFailure, 0, false, false},
	}
	for _, tc := range tests {
		r := ask(t, tc.net, s.Addr(), tc.name, tc.qtype)
		_, soa := firstNS(r).(*dns.SOA)
		if r.Rcode != tc.rcode || len(r.Answer) != tc.answers || soa != tc.soa || r.Truncated != tc.trunc {
			t.Errorf("%s %s: rcode %s, %d answers, soa %v, tc %v; want %s, %d, %v, %v", tc.net, tc.name,
				dns.RcodeToString[r.Rcode], len(r.Answer), soa, r.Truncated, dns.RcodeToString[tc.rcode], tc.answers, tc.soa, tc.trunc)
		}
	}
	if txt := ask(t, "udp", s.Addr(), "example.com.", dns.TypeTXT).Answer[0].(*dns.TXT).Txt; len(txt) != 2 {
		t.Errorf("TXT strings %q, want two", txt)
	}
	if n := s.Queries("Example.COM"); n != 3 {
		t.Errorf("Queries(example.com) = %d, want 3", n)
	}
}

func firstNS(r *dns.Msg) dns.RR {
	if len(r.Ns) == 0 {
		return nil
	}
	return r.Ns[0]
}

func TestBlackhole(t *testing.T) {
	b := StartBlackhole(t)
	for _, n := range []string{"udp", "tcp"} {
		c := &dns.Client{Net: n, Timeout: 100 * time.Millisecond}
		m := new(dns.Msg)
		m.SetQuestion("example.com.", dns.TypeA)
		if r, _, err := c.Exchange(m, b.Addr()); err == nil {
			t.Errorf("%s: the blackhole answered: %v", n, r)
		}
	}
	for end := time.Now().Add(5 * time.Second); b.Received() < 2 && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond) // the reader may lag on a loaded machine
	}
	if b.Received() < 2 {
		t.Errorf("received %d, want the UDP query and the TCP connection", b.Received())
	}
}
