// Package resolvertest gives tests of DNS-using checks (SPF, DMARC, …) a
// real DNS path: a shared/dnstest server serving fixture records, asked
// through two real resolvers — the project's (resolver.Client, what
// production uses) and Go's stub resolver (*net.Resolver, whose method set
// resolver.Resolver mirrors) — so every look-up crosses the wire and both
// resolvers' error semantics meet the check under test.
package resolvertest

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

// Zone maps owner names to their records in zone-file syntax ("TXT \"…\"",
// "A 192.0.2.1"); a name listed with no records of the asked type answers
// NODATA, an unlisted one NXDOMAIN, and one whose only record is "SERVFAIL"
// answers SERVFAIL. Every name must be under example. or in-addr.arpa.
type Zone map[string][]string

const soas = `example. 300 IN SOA ns.example. hostmaster.example. 1 3600 600 86400 300
in-addr.arpa. 300 IN SOA ns.example. hostmaster.example. 1 3600 600 86400 300
`

// Text is z in zone-file syntax, with the SOAs that make negative answers
// authoritative.
func (z Zone) Text() string {
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

// Named is a resolver with a name for subtests.
type Named struct {
	Name string
	R    resolver.Resolver
}

// Serve starts a dnstest server for z and returns the two resolvers that
// ask it.
func Serve(t testing.TB, z Zone) []Named {
	t.Helper()
	srv := dnstest.Start(t, z.Text())
	for name, rrs := range z {
		if len(rrs) == 1 && rrs[0] == "SERVFAIL" {
			srv.ServFail(name)
		}
	}
	return At(t, srv.Addr())
}

// Blackhole returns the two resolvers asking a server that never answers.
func Blackhole(t testing.TB) []Named {
	t.Helper()
	return At(t, dnstest.StartBlackhole(t).Addr())
}

// At returns the two resolvers asking the server at addr (host:port).
func At(t testing.TB, addr string) []Named {
	t.Helper()
	client, err := resolver.New(resolver.Options{Servers: []string{addr}, Timeout: 5 * time.Second, CacheSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	stub := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
	return []Named{{"resolver", client}, {"net", stub}}
}
