package spfcheck

// The tests' DNS: a real server (shared/dnstest) serving the fixtures, asked
// through two real resolvers — the project's (shared/resolver.Client, what
// production uses) and Go's stub resolver (*net.Resolver, what the
// Resolver interface mirrors) — so every look-up crosses the wire and both
// resolvers' error semantics meet the SPF library's.

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/geomilter/geomilter/shared/dnstest"
	"github.com/geomilter/geomilter/shared/resolver"
)

// zone maps owner names to their records in zone-file syntax ("TXT \"…\"",
// "A 192.0.2.1"); a name listed with no records of the asked type answers
// NODATA, an unlisted one NXDOMAIN, and one whose only record is "SERVFAIL"
// answers SERVFAIL. Every name must be under example. or in-addr.arpa.
type zone map[string][]string

const soas = `example. 300 IN SOA ns.example. hostmaster.example. 1 3600 600 86400 300
in-addr.arpa. 300 IN SOA ns.example. hostmaster.example. 1 3600 600 86400 300
`

func (z zone) text() string {
	names := make([]string, 0, len(z))
	for name := range z {
		names = append(names, name)
	}
	sort.Strings(names)
	var b strings.Builder
	b.WriteString(soas)
	for _, name := range names {
		for _, rr := range z[name] {
			if rr != "SERVFAIL" {
				fmt.Fprintf(&b, "%s 300 IN %s\n", dns.Fqdn(name), rr)
			}
		}
	}
	return b.String()
}

type namedResolver struct {
	name string
	r    resolver.Resolver
}

// serveZone starts a dnstest server for z and returns the two resolvers
// that ask it.
func serveZone(t testing.TB, z zone) []namedResolver {
	t.Helper()
	srv := dnstest.Start(t, z.text())
	for name, rrs := range z {
		if len(rrs) == 1 && rrs[0] == "SERVFAIL" {
			srv.ServFail(name)
		}
	}
	return resolversAt(t, srv.Addr())
}

// blackhole returns resolvers asking a server that never answers.
func blackhole(t testing.TB) []namedResolver {
	t.Helper()
	return resolversAt(t, dnstest.StartBlackhole(t).Addr())
}

func resolversAt(t testing.TB, addr string) []namedResolver {
	t.Helper()
	client, err := resolver.New(resolver.Options{Servers: []string{addr}, Timeout: 5 * time.Second, CacheSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	stub := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
	return []namedResolver{{"resolver", client}, {"net", stub}}
}
