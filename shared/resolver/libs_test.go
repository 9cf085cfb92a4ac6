package resolver

import (
	"context"
	"net"
	"testing"

	"blitiri.com.ar/go/spf"
	"github.com/emersion/go-msgauth/dmarc"

	"github.com/geomilter/geomilter/shared/dnstest"
)

// TestWithSPFLibrary: blitiri's SPF library, given a Client, tells
// pass/fail/none/temperror apart by our errors as it does with
// net.Resolver's (the reason the errors are bare *net.DNSError).
func TestWithSPFLibrary(t *testing.T) {
	srv := dnstest.Start(t, `
$ORIGIN example.com.
@        3600 IN SOA ns.example.com. hostmaster.example.com. 1 7200 3600 1209600 300
@         300 IN TXT "v=spf1 " "ip4:192.0.2.0/24 " "-all"
inc       300 IN TXT "v=spf1 include:broken.example.com -all"
broken    300 IN TXT "v=spf1 -all"
mx        300 IN TXT "v=spf1 mx:example.com -all"
@         300 IN MX  10 mail.example.com.
mail      300 IN A   192.0.2.25
`)
	srv.ServFail("broken.example.com")
	c := newClient(t, Options{Servers: []string{srv.Addr()}})
	tests := []struct {
		ip, domain string
		want       spf.Result
	}{
		{"192.0.2.10", "example.com", spf.Pass},
		{"198.51.100.1", "example.com", spf.Fail},
		{"198.51.100.1", "nope.example.com", spf.None},
		{"192.0.2.25", "mx.example.com", spf.Pass},
		{"198.51.100.1", "inc.example.com", spf.TempError},
	}
	for _, tc := range tests {
		got, err := spf.CheckHostWithSender(net.ParseIP(tc.ip), "helo.example.org", "user@"+tc.domain,
			spf.WithResolver(c), spf.WithContext(context.Background()))
		if got != tc.want {
			t.Errorf("%s from %s: %v (%v), want %v", tc.domain, tc.ip, got, err, tc.want)
		}
	}
}

// TestWithDMARCLibrary: go-msgauth's DMARC look-up, through TXTFunc, reads
// a record, "no policy" and a temporary failure from our answers.
func TestWithDMARCLibrary(t *testing.T) {
	srv := dnstest.Start(t, `
$ORIGIN example.com.
@        3600 IN SOA ns.example.com. hostmaster.example.com. 1 7200 3600 1209600 300
_dmarc    300 IN TXT "v=DMARC1; " "p=reject"
_dmarc.broken 300 IN TXT "v=DMARC1; p=none"
`)
	srv.ServFail("_dmarc.broken.example.com")
	c := newClient(t, Options{Servers: []string{srv.Addr()}})
	opts := &dmarc.LookupOptions{LookupTXT: TXTFunc(context.Background(), c)}
	if rec, err := dmarc.LookupWithOptions("example.com", opts); err != nil || rec.Policy != dmarc.PolicyReject {
		t.Errorf("example.com: %+v, %v; want p=reject", rec, err)
	}
	if _, err := dmarc.LookupWithOptions("sub.example.com", opts); err != dmarc.ErrNoPolicy {
		t.Errorf("sub.example.com: %v, want ErrNoPolicy", err)
	}
	if _, err := dmarc.LookupWithOptions("broken.example.com", opts); !dmarc.IsTempFail(err) {
		t.Errorf("broken.example.com: %v, want a temporary failure", err)
	}
}
