package dnsbl

import (
	"context"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/geomilter/geomilter/shared/dnstest"
	"github.com/geomilter/geomilter/shared/resolver"
	"github.com/geomilter/geomilter/shared/resolver/resolvertest"
	"github.com/geomilter/geomilter/shared/yamlconf"
)

// zones: an IP block list, an allow list and two URI lists, with the
// answers real lists give (RFC 5782 §5 test entry 127.0.0.2, several
// codes, a Spamhaus error code, 127.0.0.1, a rewritten NXDOMAIN).
const zones = `
$ORIGIN bl.test.
@ 3600 IN SOA ns.bl.test. hostmaster.bl.test. 1 3600 600 86400 300
2.0.0.127 A 127.0.0.2
10.2.0.192 A 127.0.0.4
10.2.0.192 A 127.0.0.10
11.2.0.192 A 127.255.255.254
12.2.0.192 A 10.0.0.1
13.2.0.192 A 127.0.0.1
15.2.0.192 AAAA ::1
16.2.0.192 A 127.0.0.2
1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2 A 127.0.0.2
$ORIGIN wl.test.
@ 3600 IN SOA ns.wl.test. hostmaster.wl.test. 1 3600 600 86400 300
10.2.0.192 A 127.0.15.0
11.2.0.192 A 127.0.0.255
$ORIGIN uri.test.
@ 3600 IN SOA ns.uri.test. hostmaster.uri.test. 1 3600 600 86400 300
bad.example A 127.0.0.2
grey.example A 127.0.0.4
both.example A 127.0.0.6
5.2.0.192 A 127.0.0.2
$ORIGIN uri2.test.
@ 3600 IN SOA ns.uri2.test. hostmaster.uri2.test. 1 3600 600 86400 300
grey.example A 127.0.0.2
`

// servfailName answers SERVFAIL.
const servfailName = "16.2.0.192.bl.test"

// addrOnly hides Client's LookupIP, so the LookupIPAddr fallback is used.
type addrOnly struct{ resolver.Resolver }

// resolvers starts the fixture server and returns the resolvers every
// case runs through: the project's Client (A only), Go's stub resolver
// (A only) and a resolver without LookupIP (A and AAAA, AAAA dropped).
func resolvers(t testing.TB) (*dnstest.Server, []resolvertest.Named) {
	t.Helper()
	srv := dnstest.Start(t, zones)
	srv.ServFail(servfailName)
	rs := resolvertest.At(t, srv.Addr())
	return srv, append(rs, resolvertest.Named{Name: "no-LookupIP", R: addrOnly{rs[0].R}})
}

// compile decodes "lists:" YAML for kind and validates it, failing the
// test on any problem.
func compile(t testing.TB, kind Kind, text string) []List {
	t.Helper()
	var c struct {
		Lists []List `yaml:"lists"`
	}
	doc, ps := yamlconf.Decode("t.yaml", []byte("lists:\n"+text), &c)
	if len(ps) > 0 {
		t.Fatalf("decode: %v", ps)
	}
	Validate(doc, "lists", c.Lists, kind)
	if ps := doc.Problems(); len(ps) > 0 {
		t.Fatalf("validate: %v", ps)
	}
	return c.Lists
}

// summary writes a result compactly for comparison.
func summary(r Result) []string {
	var out []string
	for _, h := range r.Hits {
		s := fmt.Sprintf("hit %s %s %s=%s w=%v", h.Kind, h.Zone, h.Target, h.Answer, h.Weight)
		if h.Action != "" {
			s += " " + h.Action + " " + h.Reply
		}
		out = append(out, s)
	}
	for _, f := range r.Failures {
		out = append(out, fmt.Sprintf("fail %s %s temporary=%v", f.Zone, f.Target, f.Temporary))
	}
	return out
}

func TestCheckIP(t *testing.T) {
	tests := []struct {
		name         string
		block, allow string // YAML list items
		ip           string
		want         []string
	}{
		{"IPv4 listed, default codes", "- {zone: bl.test}", "", "127.0.0.2",
			[]string{"hit dnsbl bl.test 127.0.0.2=127.0.0.2 w=1"}},
		{"IPv4 not listed (NXDOMAIN)", "- {zone: bl.test}", "", "192.0.2.99", nil},
		{"IPv6 listed (nibbles)", "- {zone: bl.test}", "", "2001:db8::1",
			[]string{"hit dnsbl bl.test 2001:db8::1=127.0.0.2 w=1"}},
		{"IPv6 not listed", "- {zone: bl.test}", "", "2001:db8::2", nil},
		{"IPv4-mapped IPv6 asked as IPv4", "- {zone: bl.test}", "", "::ffff:127.0.0.2",
			[]string{"hit dnsbl bl.test 127.0.0.2=127.0.0.2 w=1"}},
		{"several answers, default codes", "- {zone: BL.test., weight: 2.5}", "", "192.0.2.10",
			[]string{"hit dnsbl bl.test 192.0.2.10=127.0.0.4,127.0.0.10 w=2.5"}},
		{"exact code", `- {zone: bl.test, codes: ["127.0.0.10"]}`, "", "192.0.2.10",
			[]string{"hit dnsbl bl.test 192.0.2.10=127.0.0.10 w=1"}},
		{"exact code not answered", `- {zone: bl.test, codes: ["127.0.0.2"]}`, "", "192.0.2.10", nil},
		{"CIDR code", `- {zone: bl.test, codes: ["127.0.0.4/30"]}`, "", "192.0.2.10",
			[]string{"hit dnsbl bl.test 192.0.2.10=127.0.0.4 w=1"}},
		{"bitmask", `- {zone: bl.test, codes: ["bitmask:0x02"]}`, "", "192.0.2.10",
			[]string{"hit dnsbl bl.test 192.0.2.10=127.0.0.10 w=1"}},
		{"bitmask not set", `- {zone: bl.test, codes: ["bitmask:0x01", "bitmask:0x10"]}`, "", "192.0.2.10", nil},
		{"error answer is a failure", "- {zone: bl.test}", "", "192.0.2.11",
			[]string{"fail bl.test 192.0.2.11 temporary=false"}},
		{"answer outside 127/8 is a failure", "- {zone: bl.test}", "", "192.0.2.12",
			[]string{"fail bl.test 192.0.2.12 temporary=false"}},
		{"127.0.0.1 is a failure", "- {zone: bl.test}", "", "192.0.2.13",
			[]string{"fail bl.test 192.0.2.13 temporary=false"}},
		{"127.0.0.1 as an exact code counts", `- {zone: bl.test, codes: ["127.0.0.1"]}`, "", "192.0.2.13",
			[]string{"hit dnsbl bl.test 192.0.2.13=127.0.0.1 w=1"}},
		{"SERVFAIL is a temporary failure", "- {zone: bl.test}", "", "192.0.2.16",
			[]string{"fail bl.test 192.0.2.16 temporary=true"}},
		{"NODATA is not listed", "- {zone: bl.test}", "", "192.0.2.15", nil},
		{"action and reply", `- {zone: bl.test, action: Reject, reply: "550 5.7.1 Listed"}`, "", "127.0.0.2",
			[]string{"hit dnsbl bl.test 127.0.0.2=127.0.0.2 w=1 reject 550 5.7.1 Listed"}},
		{"allow list", "", "- {zone: wl.test}", "192.0.2.10",
			[]string{"hit dnswl wl.test 192.0.2.10=127.0.15.0 w=-5"}},
		{"allow list refusing the query", "", "- {zone: wl.test}", "192.0.2.11",
			[]string{"fail wl.test 192.0.2.11 temporary=false"}},
		{"block and allow lists at once", "- {zone: bl.test, weight: 3}\n- {zone: uri.test}", "- {zone: wl.test, weight: -1}", "192.0.2.10",
			[]string{"hit dnsbl bl.test 192.0.2.10=127.0.0.4,127.0.0.10 w=3", "hit dnswl wl.test 192.0.2.10=127.0.15.0 w=-1"}},
	}
	_, rs := resolvers(t)
	for _, tc := range tests {
		var lists []List
		if tc.block != "" {
			lists = append(lists, compile(t, IP, tc.block)...)
		}
		if tc.allow != "" {
			lists = append(lists, compile(t, Allow, tc.allow)...)
		}
		for _, r := range rs {
			t.Run(tc.name+"/"+r.Name, func(t *testing.T) {
				res := CheckIP(context.Background(), r.R, netip.MustParseAddr(tc.ip), lists)
				if got := summary(res); !reflect.DeepEqual(got, tc.want) {
					t.Errorf("got %q\nwant %q\nfailures: %v", got, tc.want, res.Failures)
				}
				for _, f := range res.Failures {
					if f.Err == nil {
						t.Errorf("failure without error: %+v", f)
					}
				}
				for _, h := range res.Hits {
					if want := ReverseName(netip.MustParseAddr(tc.ip)) + "." + h.Zone; h.Query != want {
						t.Errorf("query %q, want %q", h.Query, want)
					}
				}
			})
		}
	}
}

// TestKindsKeptApart: CheckIP asks no URI list, CheckDomains no IP
// list.
func TestKindsKeptApart(t *testing.T) {
	srv, rs := resolvers(t)
	uri := compile(t, URI, "- {zone: uri.test}")
	ip := compile(t, IP, "- {zone: bl.test}")
	if res := CheckIP(context.Background(), rs[0].R, netip.MustParseAddr("192.0.2.5"), uri); len(summary(res)) > 0 {
		t.Errorf("CheckIP used a URI list: %v", summary(res))
	}
	if res := CheckDomains(context.Background(), rs[0].R, []string{"127.0.0.2"}, ip, 10); len(summary(res)) > 0 {
		t.Errorf("CheckDomains used an IP list: %v", summary(res))
	}
	if n := srv.TotalQueries(); n != 0 {
		t.Errorf("%d queries sent, want 0", n)
	}
}

// TestCheckIPAsksAOnly: with Client, one A query per list and client.
func TestCheckIPAsksAOnly(t *testing.T) {
	srv, rs := resolvers(t)
	lists := compile(t, IP, "- {zone: bl.test}")
	CheckIP(context.Background(), rs[0].R, netip.MustParseAddr("127.0.0.2"), lists)
	if n := srv.Queries("2.0.0.127.bl.test"); n != 1 {
		t.Errorf("%d queries, want 1 (A only)", n)
	}
}

func TestCheckDomains(t *testing.T) {
	tests := []struct {
		name    string
		lists   string
		domains []string
		max     int
		want    []string
		skipped int
		// asked are names that must have been queried once, notAsked
		// names that must not have been.
		asked, notAsked []string
	}{
		{"listed, unlisted, duplicates, an IP, unaskable names", "- {zone: uri.test, weight: 4}",
			[]string{"bad.example", "BAD.example.", "clean.example", "grey.example", "192.0.2.5", "bad..example", "münchen.example", ""}, 20,
			[]string{"hit uribl uri.test bad.example=127.0.0.2 w=4", "hit uribl uri.test grey.example=127.0.0.4 w=4", "hit uribl uri.test 192.0.2.5=127.0.0.2 w=4"}, 0,
			[]string{"bad.example.uri.test", "clean.example.uri.test", "5.2.0.192.uri.test"}, nil},
		{"bitmask", `- {zone: uri.test, codes: ["bitmask:0x02"]}`,
			[]string{"bad.example", "grey.example", "both.example"}, 20,
			[]string{"hit uribl uri.test bad.example=127.0.0.2 w=1", "hit uribl uri.test both.example=127.0.0.6 w=1"}, 0, nil, nil},
		{"maxQueries: first domains first", "- {zone: uri.test}",
			[]string{"clean.example", "bad.example", "grey.example"}, 2,
			[]string{"hit uribl uri.test bad.example=127.0.0.2 w=1"}, 1,
			[]string{"clean.example.uri.test", "bad.example.uri.test"}, []string{"grey.example.uri.test"}},
		{"maxQueries over two lists", "- {zone: uri.test}\n- {zone: uri2.test, action: quarantine}",
			[]string{"bad.example", "grey.example"}, 3,
			[]string{"hit uribl uri.test bad.example=127.0.0.2 w=1", "hit uribl uri.test grey.example=127.0.0.4 w=1"}, 1,
			[]string{"bad.example.uri2.test", "grey.example.uri.test"}, []string{"grey.example.uri2.test"}},
		{"both lists", "- {zone: uri.test}\n- {zone: uri2.test, action: quarantine}",
			[]string{"grey.example"}, 20,
			[]string{"hit uribl uri.test grey.example=127.0.0.4 w=1", "hit uribl uri2.test grey.example=127.0.0.2 w=1 quarantine "}, 0, nil, nil},
		{"no queries allowed", "- {zone: uri.test}", []string{"bad.example"}, 0, nil, 1, nil, []string{"bad.example.uri.test"}},
	}
	for _, tc := range tests {
		lists := compile(t, URI, tc.lists)
		for _, name := range []string{"resolver", "net"} {
			t.Run(tc.name+"/"+name, func(t *testing.T) {
				srv, rs := resolvers(t) // a server per run, so query counts are this run's
				r := rs[0].R
				if name == "net" {
					r = rs[1].R
				}
				res := CheckDomains(context.Background(), r, tc.domains, lists, tc.max)
				if got := summary(res); !reflect.DeepEqual(got, tc.want) {
					t.Errorf("got %q\nwant %q", got, tc.want)
				}
				if res.Skipped != tc.skipped {
					t.Errorf("skipped %d, want %d", res.Skipped, tc.skipped)
				}
				for _, q := range tc.asked {
					if n := srv.Queries(q); n == 0 {
						t.Errorf("%s not asked", q)
					}
				}
				for _, q := range tc.notAsked {
					if n := srv.Queries(q); n != 0 {
						t.Errorf("%s asked %d times", q, n)
					}
				}
				if name == "resolver" && srv.Queries("bad.example.uri.test") > 1 {
					t.Errorf("bad.example asked %d times", srv.Queries("bad.example.uri.test"))
				}
			})
		}
	}
}

// TestCheckDomainsBoundsInFlight: with every answer held, no more than
// maxInFlight queries reach the server; released, all complete.
func TestCheckDomainsBoundsInFlight(t *testing.T) {
	srv, rs := resolvers(t)
	lists := compile(t, URI, "- {zone: uri.test}")
	var domains []string
	var releases []func()
	for i := range 3 * maxInFlight {
		d := fmt.Sprintf("d%d.example", i)
		domains = append(domains, d)
		releases = append(releases, srv.Hold(d+".uri.test"))
	}
	done := make(chan Result, 1)
	go func() { done <- CheckDomains(context.Background(), rs[0].R, domains, lists, 100) }()
	for end := time.Now().Add(20 * time.Second); srv.TotalQueries() < maxInFlight; time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("only %d queries arrived", srv.TotalQueries())
		}
	}
	// Give a look-up over the bound the time to show up (it cannot make
	// the test fail when the code is right).
	time.Sleep(50 * time.Millisecond)
	if n := srv.TotalQueries(); n != maxInFlight {
		t.Errorf("%d queries in flight, want %d", n, maxInFlight)
	}
	for _, r := range releases {
		r()
	}
	select {
	case res := <-done:
		if len(res.Hits) != 0 || len(res.Failures) != 0 {
			t.Errorf("got %v", summary(res))
		}
	case <-time.After(30 * time.Second):
		t.Fatal("CheckDomains did not return")
	}
	if n := srv.TotalQueries(); n != len(domains) {
		t.Errorf("%d queries, want %d", n, len(domains))
	}
}

// TestDarkListCostsAtMostTheBudget: lists whose server never answers cost
// the message its DNS budget, not the resolver's (much longer) timeout,
// and are reported as temporary failures.
func TestDarkListCostsAtMostTheBudget(t *testing.T) {
	bh := dnstest.StartBlackhole(t)
	c, err := resolver.New(resolver.Options{Servers: []string{bh.Addr()}, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	lists := compile(t, IP, "- {zone: bl.test}\n- {zone: zen.test}\n- {zone: dark.test}")
	ctx := resolver.WithBudget(context.Background(), 200*time.Millisecond)
	done := make(chan Result, 1)
	go func() { done <- CheckIP(ctx, c, netip.MustParseAddr("192.0.2.1"), lists) }()
	var res Result
	select {
	case res = <-done:
	case <-time.After(30 * time.Second): // the resolver alone would wait a minute
		t.Fatal("CheckIP waited past the message's budget")
	}
	want := []string{"fail bl.test 192.0.2.1 temporary=true", "fail zen.test 192.0.2.1 temporary=true", "fail dark.test 192.0.2.1 temporary=true"}
	if got := summary(res); !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	if _, exhausted := resolver.BudgetSpent(ctx); !exhausted {
		t.Error("budget not marked exhausted")
	}
	if bh.Received() == 0 {
		t.Error("no query reached the dark server")
	}
	// A later look-up with the same message's context sends nothing.
	before := bh.Received()
	res = CheckDomains(ctx, c, []string{"bad.example"}, compile(t, URI, "- {zone: uri.test}"), 5)
	if len(res.Failures) != 1 || !res.Failures[0].Temporary || bh.Received() != before {
		t.Errorf("after the budget: %v, %d queries more", summary(res), bh.Received()-before)
	}
}

func TestReverseName(t *testing.T) {
	tests := []struct{ ip, want string }{
		{"127.0.0.2", "2.0.0.127"},
		{"192.0.2.99", "99.2.0.192"},
		{"::ffff:192.0.2.1", "1.2.0.192"},
		{"2001:db8::1", "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"},
		{"2001:DB8:abcd:12::ff", "f.f.0.0.0.0.0.0.0.0.0.0.0.0.0.0.2.1.0.0.d.c.b.a.8.b.d.0.1.0.0.2"},
		{"::1", "1" + strings.Repeat(".0", 31)},
	}
	for _, tc := range tests {
		if got := ReverseName(netip.MustParseAddr(tc.ip)); got != tc.want {
			t.Errorf("ReverseName(%s) = %q, want %q", tc.ip, got, tc.want)
		}
	}
	if got := ReverseName(netip.Addr{}); got != "" {
		t.Errorf("ReverseName(invalid) = %q", got)
	}
}

func TestAppliesTo(t *testing.T) {
	tests := []struct {
		tenants []string
		tenant  string
		want    bool
	}{
		{nil, "acme", true},
		{nil, "", true},
		{[]string{"acme"}, "acme", true},
		{[]string{"acme", "globex"}, "globex", true},
		{[]string{"acme"}, "globex", false},
		{[]string{"acme"}, "", false},
	}
	for _, tc := range tests {
		l := List{Tenants: tc.tenants}
		if got := l.AppliesTo(tc.tenant); got != tc.want {
			t.Errorf("tenants %q, AppliesTo(%q) = %v, want %v", tc.tenants, tc.tenant, got, tc.want)
		}
	}
}

func TestValidateDefaults(t *testing.T) {
	for _, tc := range []struct {
		kind   Kind
		text   string
		weight float64
	}{
		{IP, "- {zone: Zen.Example.}", DefaultWeight},
		{Allow, "- {zone: zen.example}", DefaultAllowWeight},
		{URI, "- {zone: zen.example}", DefaultWeight},
		{IP, "- {zone: zen.example, weight: 0}", 0},
		{Allow, "- {zone: zen.example, weight: -0.5}", -0.5},
	} {
		l := compile(t, tc.kind, tc.text)[0]
		if l.Zone != "zen.example" || l.Weight != tc.weight || l.Kind() != tc.kind {
			t.Errorf("%s %s: zone %q weight %v kind %v, want zen.example %v %v", tc.kind, tc.text, l.Zone, l.Weight, l.Kind(), tc.weight, tc.kind)
		}
	}
}

func TestValidateProblems(t *testing.T) {
	tests := []struct {
		name string
		kind Kind
		text string
		want []string // "path: message" prefixes, in file order
	}{
		{"zone missing", IP, "- {weight: 2}", []string{"lists[0].zone: required"}},
		{"zone malformed", IP, "- {zone: zen..example}", []string{`lists[0].zone: "zen..example" is not a DNS zone name`}},
		{"zone with a space", URI, "- {zone: 'zen example'}", []string{`lists[0].zone: "zen example" is not a DNS zone name`}},
		{"zone twice", IP, "- {zone: zen.example}\n- {zone: ZEN.example.}", []string{`lists[1].zone: "zen.example" is listed already at lists[0]`}},
		{"codes", IP, `- {zone: z.example, codes: ["127.0.0.300", "10.0.0.2", "bitmask:0x100", "bitmask:0", "127.0.0.1/24", "::1", "127.0.0.0/4", "127.0.0.2"]}`,
			[]string{"lists[0].codes[0]: \"127.0.0.300\" is not", "lists[0].codes[1]:", "lists[0].codes[2]:", "lists[0].codes[3]:", "lists[0].codes[4]:", "lists[0].codes[5]:", "lists[0].codes[6]:"}},
		{"unknown action on an allow list", Allow, "- {zone: z.example, action: drop}", []string{`lists[0].action: unknown action "drop"`}},
		{"unknown action", IP, "- {zone: z.example, action: rejct}", []string{`lists[0].action: unknown action "rejct"`}},
		{"action on an allow list", Allow, "- {zone: z.example, action: reject}", []string{"lists[0].action: an allow list takes no action"}},
		{"reply without action", IP, "- {zone: z.example, reply: '550 5.7.1 no'}", []string{"lists[0].reply: only with action reject or tempfail"}},
		{"reply with quarantine", URI, "- {zone: z.example, action: quarantine, reply: '550 5.7.1 no'}", []string{"lists[0].reply: only with action reject or tempfail"}},
		{"reply of the wrong class", IP, "- {zone: z.example, action: tempfail, reply: '550 5.7.1 no'}", []string{"lists[0].reply: action tempfail needs a 4xx reply, got 550"}},
		{"reply malformed", IP, "- {zone: z.example, action: reject, reply: 'go away'}", []string{"lists[0].reply: reply \"go away\" must start with a 4xx or 5xx"}},
		{"weight out of range", IP, "- {zone: z.example, weight: 5000}", []string{"lists[0].weight: must be between -1000 and 1000, got 5000"}},
		{"weight NaN", URI, "- {zone: z.example, weight: .nan}", []string{"lists[0].weight: must be between"}},
		{"negative weight on a block list", IP, "- {zone: z.example, weight: -1}", []string{"lists[0].weight: must not be negative on a block list"}},
		{"positive weight on an allow list", Allow, "- {zone: z.example, weight: 1}", []string{"lists[0].weight: must not be positive on an allow list"}},
		{"empty tenant", URI, "- {zone: z.example, tenants: [acme, '']}", []string{"lists[0].tenants[1]: empty tenant id"}},
		{"all at once", IP, "- {zone: z.example, action: drop}\n- {weight: -2}",
			[]string{"lists[0].action: unknown action", "lists[1].zone: required", "lists[1].weight: must not be negative"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var c struct {
				Lists []List `yaml:"lists"`
			}
			doc, ps := yamlconf.Decode("t.yaml", []byte("lists:\n"+tc.text), &c)
			if len(ps) > 0 {
				t.Fatalf("decode: %v", ps)
			}
			Validate(doc, "lists", c.Lists, tc.kind)
			ps = doc.Problems()
			if len(ps) != len(tc.want) {
				t.Fatalf("got %d problems, want %d:\n%v", len(ps), len(tc.want), ps)
			}
			for i, p := range ps {
				if got := p.Path + ": " + p.Msg; !strings.HasPrefix(got, tc.want[i]) {
					t.Errorf("problem %d: %q, want it to start with %q", i, got, tc.want[i])
				}
				if p.File != "t.yaml" || p.Line < 2 {
					t.Errorf("problem %d not placed in the file: %v", i, p)
				}
			}
		})
	}
}

// BenchmarkCheckIPCached: a listed client and an allow list, answers from
// the Client's cache (the steady state of a busy MTA).
func BenchmarkCheckIPCached(b *testing.B) {
	srv := dnstest.Start(b, zones)
	c, err := resolver.New(resolver.Options{Servers: []string{srv.Addr()}})
	if err != nil {
		b.Fatal(err)
	}
	lists := append(compile(b, IP, "- {zone: bl.test}"), compile(b, Allow, "- {zone: wl.test}")...)
	ip := netip.MustParseAddr("192.0.2.10")
	ctx := context.Background()
	if res := CheckIP(ctx, c, ip, lists); len(res.Hits) != 2 {
		b.Fatalf("warm-up: %v", summary(res))
	}
	b.ReportAllocs()
	for b.Loop() {
		CheckIP(ctx, c, ip, lists)
	}
}

// BenchmarkCheckIPDarkList: what three dark lists cost a message with a
// 100ms DNS budget (ns/op should be about the budget, whatever the
// resolver's timeout).
func BenchmarkCheckIPDarkList(b *testing.B) {
	bh := dnstest.StartBlackhole(b)
	c, err := resolver.New(resolver.Options{Servers: []string{bh.Addr()}, Timeout: time.Minute, CacheSize: -1})
	if err != nil {
		b.Fatal(err)
	}
	lists := compile(b, IP, "- {zone: a.test}\n- {zone: b.test}\n- {zone: c.test}")
	ip := netip.MustParseAddr("192.0.2.1")
	for b.Loop() {
		ctx := resolver.WithBudget(context.Background(), 100*time.Millisecond)
		if res := CheckIP(ctx, c, ip, lists); len(res.Failures) != 3 {
			b.Fatalf("got %v", summary(res))
		}
	}
}

// FuzzDomainQuery: whatever a message's URL gives, the name asked is a
// valid DNS name of bounded length, and parsing codes never panics.
func FuzzDomainQuery(f *testing.F) {
	for _, s := range []string{"bad.example", "BAD.example.", "192.0.2.5", "::1", "a..b", "münchen.example", "", "-a.example", "bitmask:0x04", "127.0.0.4/30"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		parseCode(s)
		target, name, ok := domainQuery(s)
		if !ok {
			return
		}
		if target == "" || len(name) > 253 {
			t.Fatalf("%q gives target %q name %q", s, target, name)
		}
		for label := range strings.SplitSeq(name, ".") {
			if !validLabel(label) {
				t.Fatalf("%q gives name %q with label %q", s, name, label)
			}
		}
	})
}
