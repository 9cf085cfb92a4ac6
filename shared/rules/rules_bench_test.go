package rules

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"
)

const benchRules = 100_000

// benchSet generates a realistic large rule set: tenants with domains and
// relay networks, many v4 and v6 network blocks, sender addresses, sender
// and recipient domains, SASL logins, tenant rate limits and domain-scoped
// allows. Deterministic (fixed seed).
func benchSet(n int) *Set {
	rng := rand.New(rand.NewPCG(1, 2))
	set := &Set{Rules: make([]Rule, 0, n)}
	const tenants = 2000
	for i := 0; i < tenants; i++ {
		set.Tenants = append(set.Tenants, Tenant{
			ID:      fmt.Sprintf("t%d", i),
			Domains: []string{fmt.Sprintf("cust%d.example", i), fmt.Sprintf("mail.cust%d.example", i)},
			Relay: Relay{
				Networks:  []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64 + byte(i>>8), byte(i), 0}), 24)},
				SASLUsers: []string{fmt.Sprintf("relay-%d", i)},
			},
		})
	}
	add := func(r Rule) {
		r.ID = fmt.Sprintf("r%06d", len(set.Rules))
		r.Milter = "access"
		r.Enabled = true
		set.Rules = append(set.Rules, r)
	}
	v4 := func() netip.Addr {
		return netip.AddrFrom4([4]byte{byte(1 + rng.IntN(220)), byte(rng.IntN(256)), byte(rng.IntN(256)), byte(rng.IntN(256))})
	}
	v6 := func() netip.Addr {
		var a [16]byte
		a[0], a[1], a[2], a[3] = 0x20, 0x01, 0x0d, 0xb8
		for i := 4; i < 16; i++ {
			a[i] = byte(rng.IntN(256))
		}
		return netip.AddrFrom16(a)
	}
	bits4 := []int{32, 32, 32, 24, 24, 16, 28, 20}
	bits6 := []int{128, 64, 64, 48, 56}
	for len(set.Rules) < n {
		switch k := len(set.Rules) % 20; {
		case k < 7: // 35%: v4 blocks
			p, _ := v4().Prefix(bits4[rng.IntN(len(bits4))])
			add(Rule{Match: Match{ClientIP: []netip.Prefix{p}}, Action: ActionReject})
		case k < 9: // 10%: v6 blocks
			p, _ := v6().Prefix(bits6[rng.IntN(len(bits6))])
			add(Rule{Match: Match{ClientIP: []netip.Prefix{p}}, Action: ActionReject})
		case k < 13: // 20%: sender addresses, some per recipient domain
			r := Rule{Match: Match{Sender: []string{fmt.Sprintf("user%d@sender%d.example", rng.IntN(50000), rng.IntN(5000))}}, Action: ActionReject}
			if k == 12 {
				r.Scope = Scope{ScopeDomain, fmt.Sprintf("cust%d.example", rng.IntN(tenants))}
			}
			add(r)
		case k < 15: // 10%: sender domains and subdomain patterns
			d := fmt.Sprintf("sender%d.example", rng.IntN(20000))
			if k == 14 {
				d = "." + d
			}
			add(Rule{Match: Match{SenderDomain: []string{d}}, Action: ActionQuarantine})
		case k < 17: // 10%: recipient domains in tenant scope
			t := rng.IntN(tenants)
			add(Rule{Scope: Scope{ScopeTenant, fmt.Sprintf("t%d", t)}, Match: Match{RcptDomain: []string{fmt.Sprintf("cust%d.example", t)}, Direction: Inbound}, Action: ActionAllow})
		case k == 17: // 5%: tenant rate limits
			add(Rule{Scope: Scope{ScopeTenant, fmt.Sprintf("t%d", rng.IntN(tenants))}, Rate: &Rate{Key: RateSender, Limit: 100, Per: time.Minute}, Action: ActionTempfail})
		case k == 18: // 5%: SASL logins
			add(Rule{Match: Match{SASLUser: []string{fmt.Sprintf("login%d", rng.IntN(50000))}}, Rate: &Rate{Key: RateSASLUser, Limit: 500, Per: time.Hour}, Action: ActionTempfail})
		default: // 5%: domain-scoped allows
			add(Rule{Scope: Scope{ScopeDomain, fmt.Sprintf("mail.cust%d.example", rng.IntN(tenants))}, Match: Match{Sender: []string{fmt.Sprintf(".partner%d.example", rng.IntN(1000))}}, Action: ActionAllow, Priority: -1})
		}
	}
	return set
}

// benchFacts is a mix of lookups: inbound from random and listed networks,
// outbound from tenant relays, known and unknown senders.
func benchFacts(n int) []Facts {
	rng := rand.New(rand.NewPCG(3, 4))
	out := make([]Facts, n)
	for i := range out {
		f := Facts{
			ClientIP:   netip.AddrFrom4([4]byte{byte(1 + rng.IntN(220)), byte(rng.IntN(256)), byte(rng.IntN(256)), byte(rng.IntN(256))}),
			ClientName: fmt.Sprintf("host%d.isp%d.example", rng.IntN(1000), rng.IntN(100)),
			Helo:       fmt.Sprintf("mx%d.example", rng.IntN(1000)),
			Sender:     fmt.Sprintf("<user%d@sender%d.example>", rng.IntN(50000), rng.IntN(20000)),
			Rcpt:       fmt.Sprintf("<someone@cust%d.example>", rng.IntN(2000)),
		}
		switch i % 8 {
		case 0: // outbound from a tenant relay
			t := rng.IntN(2000)
			f.ClientIP = netip.AddrFrom4([4]byte{100, 64 + byte(t>>8), byte(t), 9})
			f.Sender = fmt.Sprintf("<a@mail.cust%d.example>", t)
			f.Rcpt = "<x@gmail.example>"
		case 1: // authenticated submission
			f.SASLUser = fmt.Sprintf("login%d", rng.IntN(50000))
		case 2: // IPv6 client
			var a [16]byte
			a[0], a[1], a[2], a[3] = 0x20, 0x01, 0x0d, 0xb8
			for j := 4; j < 16; j++ {
				a[j] = byte(rng.IntN(256))
			}
			f.ClientIP = netip.AddrFrom16(a)
		case 3:
			f.Sender = "<>"
		case 4: // to a tenant's second domain from a partner subdomain
			f.Rcpt = fmt.Sprintf("<x@mail.cust%d.example>", rng.IntN(2000))
			f.Sender = fmt.Sprintf("<b@mx.partner%d.example>", rng.IntN(1000))
		}
		out[i] = f
	}
	return out
}

func BenchmarkMatch(b *testing.B) {
	s, err := Compile(benchSet(benchRules))
	if err != nil {
		b.Fatal(err)
	}
	facts := benchFacts(4096)
	matched := 0
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	for i := 0; b.Loop(); i++ {
		matched += len(s.Match("access", facts[i%len(facts)]))
	}
	b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(b.N)/1000, "cpu-µs/lookup")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/1000, "µs/lookup")
	b.ReportMetric(float64(matched)/float64(b.N), "rules/lookup")
	b.ReportMetric(float64(s.Len()), "rules")
}

func BenchmarkMatchParallel(b *testing.B) {
	s, err := Compile(benchSet(benchRules))
	if err != nil {
		b.Fatal(err)
	}
	facts := benchFacts(4096)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			s.Match("access", facts[i%len(facts)])
			i++
		}
	})
}

func BenchmarkCompile100k(b *testing.B) {
	set := benchSet(benchRules)
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	for b.Loop() {
		if _, err := Compile(set); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64((cpuTime()-cpu0).Milliseconds())/float64(b.N), "cpu-ms/compile")
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/compile")
}

// BenchmarkParse10k measures reading a 10,000-rule YAML file (what
// `ctl rules apply` and standalone mode do). 10k, not 100k: yamlconf bounds
// the number of YAML values per file.
func BenchmarkParse10k(b *testing.B) {
	set := benchSet(10_000)
	var y strings.Builder
	y.WriteString("tenants:\n")
	for _, t := range set.Tenants {
		fmt.Fprintf(&y, "  - {id: %s, domains: [%s], relay: {networks: [%s], sasl_users: [%s]}}\n",
			t.ID, strings.Join(t.Domains, ", "), t.Relay.Networks[0], t.Relay.SASLUsers[0])
	}
	y.WriteString("rules:\n")
	for _, r := range set.Rules {
		doc, err := r.MarshalDoc() // JSON is YAML
		if err != nil {
			b.Fatal(err)
		}
		y.WriteString("  - ")
		y.Write(doc)
		y.WriteByte('\n')
	}
	data := []byte(y.String())
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for b.Loop() {
		if _, err := Parse("bench.yaml", data); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSave100k(b *testing.B) {
	s, err := Compile(benchSet(benchRules))
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	b.ResetTimer()
	for b.Loop() {
		if err := s.Save(dir); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLoadSaved100k(b *testing.B) {
	s, err := Compile(benchSet(benchRules))
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	if err := s.Save(dir); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		if _, _, err := LoadSaved(dir); err != nil {
			b.Fatal(err)
		}
	}
}
