package resolver

import (
	"context"
	"net"
	"reflect"
	"testing"

	"github.com/geomilter/geomilter/shared/dnstest"
)

// ipLookuper is what milters/policy/dnsbl asks of a resolver; Client and
// *net.Resolver must both have it.
type ipLookuper interface {
	LookupIP(ctx context.Context, network, host string) ([]net.IP, error)
}

var (
	_ ipLookuper = (*Client)(nil)
	_ ipLookuper = (*net.Resolver)(nil)
)

// TestLookupIP: each network asks its family only, and Client agrees with
// net.Resolver on records, literals and errors.
func TestLookupIP(t *testing.T) {
	srv := dnstest.Start(t, zones)
	c := newClient(t, Options{Servers: []string{srv.Addr()}, CacheSize: -1})
	stub := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, srv.Addr())
	}}
	ips := func(ss ...string) []net.IP {
		var out []net.IP
		for _, s := range ss {
			ip := net.ParseIP(s)
			if ip4 := ip.To4(); ip4 != nil {
				ip = ip4
			}
			out = append(out, ip)
		}
		return out
	}
	tests := []struct {
		name, network, host string
		want                []net.IP
		kind                string
		// queries the Client sends for host (0: not checked)
		queries int
	}{
		{"A only", "ip4", "mx1.example.com", ips("192.0.2.1"), "ok", 1},
		{"AAAA only", "ip6", "mx1.example.com", ips("2001:db8::1"), "ok", 1},
		{"both", "ip", "mx1.example.com", ips("192.0.2.1", "2001:db8::1"), "ok", 2},
		{"A NODATA", "ip4", "v6only.example.com", nil, "notfound", 1},
		{"AAAA NODATA", "ip6", "mx2.example.com", nil, "notfound", 1},
		{"NXDOMAIN", "ip4", "nope.example.com", nil, "notfound", 1},
		{"IPv4 literal", "ip4", "192.0.2.9", ips("192.0.2.9"), "ok", 0},
		{"IPv6 literal", "ip6", "2001:db8::9", ips("2001:db8::9"), "ok", 0},
		{"IPv6 literal, ip4 asked", "ip4", "2001:db8::9", nil, "notfound", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := srv.Queries(tc.host)
			got, err := c.LookupIP(context.Background(), tc.network, tc.host)
			if k := errKind(err); k != tc.kind {
				t.Fatalf("error %v (%s), want %s", err, k, tc.kind)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
			if n := srv.Queries(tc.host) - before; tc.queries > 0 && n != tc.queries {
				t.Errorf("sent %d queries, want %d", n, tc.queries)
			}
			sgot, serr := stub.LookupIP(context.Background(), tc.network, tc.host)
			if tc.kind == "ok" && (serr != nil || len(sgot) != len(got)) {
				t.Errorf("net.Resolver gives %v, %v; Client %v", sgot, serr, got)
			}
			if tc.kind != "ok" && serr == nil {
				t.Errorf("net.Resolver gives %v, no error; Client %v", sgot, err)
			}
		})
	}
	if _, err := c.LookupIP(context.Background(), "tcp", "mx1.example.com"); err == nil {
		t.Error("network tcp: no error")
	}
}
