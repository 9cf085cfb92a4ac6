package resolver

import (
	"errors"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func mustRR(t testing.TB, s string) dns.RR {
	t.Helper()
	rr, err := dns.NewRR(s)
	if err != nil {
		t.Fatal(err)
	}
	return rr
}

// reply builds a reply to q as a server would, then lets edit change it.
func reply(t testing.TB, q *dns.Msg, edit func(r *dns.Msg)) []byte {
	t.Helper()
	r := new(dns.Msg)
	r.SetReply(q)
	if edit != nil {
		edit(r)
	}
	b, err := r.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCheckReply(t *testing.T) {
	q := newQuery("example.com.", dns.TypeTXT)
	tests := []struct {
		name string
		b    []byte
		want error
	}{
		{"matching", reply(t, q, nil), nil},
		{"name in other case", reply(t, q, func(r *dns.Msg) { r.Question[0].Name = "EXAMPLE.com." }), nil},
		{"other ID", reply(t, q, func(r *dns.Msg) { r.Id++ }), errMismatch},
		{"not a response", reply(t, q, func(r *dns.Msg) { r.Response = false }), errMismatch},
		{"other name", reply(t, q, func(r *dns.Msg) { r.Question[0].Name = "example.net." }), errMismatch},
		{"other type", reply(t, q, func(r *dns.Msg) { r.Question[0].Qtype = dns.TypeA }), errMismatch},
		{"other class", reply(t, q, func(r *dns.Msg) { r.Question[0].Qclass = dns.ClassCHAOS }), errMismatch},
		{"no question", reply(t, q, func(r *dns.Msg) { r.Question = nil }), errMismatch},
		{"no question, FORMERR", reply(t, q, func(r *dns.Msg) { r.Question = nil; r.Rcode = dns.RcodeFormatError }), nil},
		{"two questions", reply(t, q, func(r *dns.Msg) { r.Question = append(r.Question, r.Question[0]) }), errMismatch},
		{"garbage", []byte{1, 2, 3}, errMalformed},
		{"empty", nil, errMalformed},
	}
	for _, tc := range tests {
		if _, err := checkReply(q, tc.b); !errors.Is(err, tc.want) && err != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestInterpret(t *testing.T) {
	soa := func(ttl, minimum string) string {
		return "example.com. " + ttl + " IN SOA ns.example.com. h.example.com. 1 7200 3600 1209600 " + minimum
	}
	tests := []struct {
		name   string
		rcode  int
		answer []string
		ns     []string
		kind   answerKind
		n      int
		ttl    time.Duration
	}{
		{"data", dns.RcodeSuccess, []string{`example.com. 300 IN TXT "a"`, `example.com. 200 IN TXT "b"`}, nil, kindData, 2, 200 * time.Second},
		{"other names ignored", dns.RcodeSuccess, []string{`other.com. 300 IN TXT "a"`}, nil, kindNoData, 0, 0},
		{"CNAME then data", dns.RcodeSuccess, []string{"example.com. 30 IN CNAME t.example.net.", `t.example.net. 300 IN TXT "a"`}, nil, kindData, 1, 30 * time.Second},
		{"CNAME then nothing, SOA", dns.RcodeSuccess, []string{"example.com. 30 IN CNAME t.example.net."}, []string{soa("600", "600")}, kindNoData, 0, 30 * time.Second},
		{"CNAME to NXDOMAIN", dns.RcodeNameError, []string{"example.com. 300 IN CNAME t.example.net."}, []string{soa("600", "60")}, kindNXDomain, 0, 60 * time.Second},
		{"NXDOMAIN, SOA TTL smaller", dns.RcodeNameError, nil, []string{soa("100", "600")}, kindNXDomain, 0, 100 * time.Second},
		{"NXDOMAIN, MINIMUM smaller", dns.RcodeNameError, nil, []string{soa("600", "100")}, kindNXDomain, 0, 100 * time.Second},
		{"NXDOMAIN capped", dns.RcodeNameError, nil, []string{soa("86400", "86400")}, kindNXDomain, 0, time.Hour},
		{"NXDOMAIN without SOA: not cached", dns.RcodeNameError, nil, nil, kindNXDomain, 0, 0},
		{"NODATA", dns.RcodeSuccess, nil, []string{soa("600", "300")}, kindNoData, 0, 300 * time.Second},
		{"positive capped", dns.RcodeSuccess, []string{`example.com. 604800 IN TXT "a"`}, nil, kindData, 1, 24 * time.Hour},
		{"TTL with top bit", dns.RcodeSuccess, []string{`example.com. 2147483648 IN TXT "a"`}, nil, kindData, 1, 0},
		{"SERVFAIL", dns.RcodeServerFailure, nil, nil, kindServFail, 0, 0},
		{"REFUSED", dns.RcodeRefused, nil, nil, kindRefused, 0, 0},
	}
	for _, tc := range tests {
		r := new(dns.Msg)
		r.Rcode = tc.rcode
		for _, s := range tc.answer {
			r.Answer = append(r.Answer, mustRR(t, s))
		}
		for _, s := range tc.ns {
			r.Ns = append(r.Ns, mustRR(t, s))
		}
		a := interpret("example.com.", dns.TypeTXT, r, DefaultMaxTTL, DefaultMaxNegativeTTL)
		if a.kind != tc.kind || len(a.rrs) != tc.n || a.ttl != tc.ttl {
			t.Errorf("%s: kind %d, %d records, ttl %v; want %d, %d, %v", tc.name, a.kind, len(a.rrs), a.ttl, tc.kind, tc.n, tc.ttl)
		}
	}
}

// FuzzAnswer feeds arbitrary bytes to the path every reply from the
// network takes (checkReply, then interpret): it must never panic. The ID
// is forced to match so the fuzzer gets past the ID check.
func FuzzAnswer(f *testing.F) {
	q := newQuery("example.com.", dns.TypeTXT)
	for _, edit := range []func(r *dns.Msg){
		nil,
		func(r *dns.Msg) {
			r.Answer = []dns.RR{mustRR(f, `example.com. 300 IN TXT "v=spf1 " "-all"`)}
		},
		func(r *dns.Msg) {
			r.Answer = []dns.RR{mustRR(f, "example.com. 30 IN CNAME a.example.com."), mustRR(f, "a.example.com. 30 IN CNAME example.com.")}
		},
		func(r *dns.Msg) {
			r.Rcode = dns.RcodeNameError
			r.Ns = []dns.RR{mustRR(f, "example.com. 600 IN SOA ns.example.com. h.example.com. 1 7200 3600 1209600 300")}
		},
		func(r *dns.Msg) { r.Rcode = dns.RcodeServerFailure; r.Truncated = true },
	} {
		f.Add(reply(f, q, edit))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) >= 2 {
			b[0], b[1] = byte(q.Id>>8), byte(q.Id)
		}
		r, err := checkReply(q, b)
		if err != nil {
			return
		}
		for _, qtype := range []uint16{dns.TypeTXT, dns.TypeA, dns.TypeCNAME} {
			a := interpret("example.com.", qtype, r, DefaultMaxTTL, DefaultMaxNegativeTTL)
			if a.ttl < 0 || a.ttl > DefaultMaxTTL {
				t.Fatalf("ttl %v out of bounds", a.ttl)
			}
			for _, rr := range a.rrs {
				if rr.Header().Rrtype != qtype {
					t.Fatalf("answer of type %d for a question of type %d", rr.Header().Rrtype, qtype)
				}
			}
		}
	})
}

func TestNewQuery(t *testing.T) {
	q := newQuery("example.com.", dns.TypeTXT)
	o := q.IsEdns0()
	if !q.RecursionDesired || o == nil || o.UDPSize() != 1232 || len(q.Question) != 1 {
		t.Errorf("query %v: want RD and EDNS0 with 1232 bytes", q)
	}
	ids := map[uint16]bool{}
	for range 8 {
		ids[newQuery("example.com.", dns.TypeTXT).Id] = true
	}
	if len(ids) < 2 {
		t.Error("query IDs are not random")
	}
}
