package rules

import (
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"testing"
)

func mustSnapshot(t testing.TB, src string) *Snapshot {
	t.Helper()
	set, err := Parse("test.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	s, err := Compile(set)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func ids(rs []*Rule) []string {
	out := []string{}
	for _, r := range rs {
		out = append(out, r.ID)
	}
	return out
}

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

const tenantsYAML = `
tenants:
  - id: acme
    domains: [acme.example, acme-mail.example]
    relay: {networks: [198.51.100.0/24, "2001:db8:ac::/48"], sasl_users: [acme-relay]}
  - id: globex
    domains: [globex.example]
    relay: {networks: [198.51.100.128/25], sasl_users: [globex-smtp]}
`

// TestMatchConditions checks each condition key on its own: the values a
// user writes and which facts they do and do not match.
func TestMatchConditions(t *testing.T) {
	rule := func(id, match string) string {
		return fmt.Sprintf("  - {id: %s, milter: access, scope: global, action: reject, match: %s}\n", id, match)
	}
	src := "rules:\n" +
		rule("net4", "{client_ip: [203.0.113.0/24]}") +
		rule("host4", "{client_ip: [192.0.2.7]}") +
		rule("net6", `{client_ip: ["2001:db8:bad::/48"]}`) +
		rule("name-exact", "{client_name: [mx.bad.example]}") +
		rule("name-sub", "{client_name: [.dyn.example]}") +
		rule("helo-exact", "{helo: [localhost]}") +
		rule("helo-sub", "{helo: [.helo.example]}") +
		rule("sender-addr", "{sender: [spam@shop.example]}") +
		rule("sender-dom", "{sender: [junk.example]}") +
		rule("sender-at", "{sender: [\"@at.example\"]}") +
		rule("sender-sub", "{sender: [.sub.example]}") +
		rule("sender-null", "{sender: [\"<>\"]}") +
		rule("sdom", "{sender_domain: [sd.example]}") +
		rule("sdom-sub", "{sender_domain: [.sds.example]}") +
		rule("rcpt-addr", "{rcpt: [abuse@victim.example]}") +
		rule("rdom", "{rcpt_domain: [rd.example]}") +
		rule("rdom-sub", "{rcpt_domain: [.rds.example]}") +
		rule("sasl", "{sasl_user: [Leaked]}")
	s := mustSnapshot(t, src)

	tests := []struct {
		name string
		f    Facts
		want []string
	}{
		{"v4 in network", Facts{ClientIP: ip("203.0.113.200")}, []string{"net4"}},
		{"v4 outside network", Facts{ClientIP: ip("203.0.114.1")}, nil},
		{"v4 single host", Facts{ClientIP: ip("192.0.2.7")}, []string{"host4"}},
		{"v4 neighbour of host", Facts{ClientIP: ip("192.0.2.8")}, nil},
		{"v4-mapped v6 client", Facts{ClientIP: ip("::ffff:203.0.113.9")}, []string{"net4"}},
		{"v6 in network", Facts{ClientIP: ip("2001:db8:bad:1::25")}, []string{"net6"}},
		{"v6 outside network", Facts{ClientIP: ip("2001:db8:bae::25")}, nil},
		{"no client ip", Facts{}, nil},

		{"client name exact", Facts{ClientName: "MX.Bad.Example."}, []string{"name-exact"}},
		{"client name exact does not cover subdomains", Facts{ClientName: "a.mx.bad.example"}, nil},
		{"client name suffix", Facts{ClientName: "host-1.pool.dyn.example"}, []string{"name-sub"}},
		{"client name suffix excludes the domain itself", Facts{ClientName: "dyn.example"}, nil},
		{"client name suffix needs a label boundary", Facts{ClientName: "xdyn.example"}, nil},

		{"helo exact", Facts{Helo: "LOCALHOST"}, []string{"helo-exact"}},
		{"helo suffix", Facts{Helo: "a.b.helo.example"}, []string{"helo-sub"}},

		{"sender address, brackets and case", Facts{Sender: "<Spam@Shop.Example>"}, []string{"sender-addr"}},
		{"other address at that domain", Facts{Sender: "info@shop.example"}, nil},
		{"sender domain form", Facts{Sender: "a@junk.example"}, []string{"sender-dom"}},
		{"sender domain form is exact", Facts{Sender: "a@x.junk.example"}, nil},
		{"sender @domain form", Facts{Sender: "a@at.example"}, []string{"sender-at"}},
		{"sender .domain form matches subdomains", Facts{Sender: "a@deep.x.sub.example"}, []string{"sender-sub"}},
		{"sender .domain form excludes the domain", Facts{Sender: "a@sub.example"}, nil},
		{"null sender", Facts{Sender: "<>"}, []string{"sender-null"}},
		{"unknown sender is not the null sender", Facts{Sender: ""}, nil},
		{"source route is dropped", Facts{Sender: "<@relay.example:spam@shop.example>"}, []string{"sender-addr"}},
		{"trailing dot on domain", Facts{Sender: "spam@shop.example."}, []string{"sender-addr"}},

		{"sender_domain exact", Facts{Sender: "x@SD.example"}, []string{"sdom"}},
		{"sender_domain suffix", Facts{Sender: "x@a.sds.example"}, []string{"sdom-sub"}},
		{"null sender has no domain", Facts{Sender: "<>"}, []string{"sender-null"}},

		{"rcpt address", Facts{Rcpt: "<ABUSE@victim.example>"}, []string{"rcpt-addr"}},
		{"rcpt_domain exact", Facts{Rcpt: "x@rd.example"}, []string{"rdom"}},
		{"rcpt_domain suffix", Facts{Rcpt: "x@mail.rds.example"}, []string{"rdom-sub"}},
		{"rcpt_domain suffix excludes the domain", Facts{Rcpt: "x@rds.example"}, nil},

		{"sasl user, case-insensitive", Facts{SASLUser: "leaked"}, []string{"sasl"}},
		{"other sasl user", Facts{SASLUser: "fine"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ids(s.Match("access", tt.f))
			if tt.want == nil {
				tt.want = []string{}
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Match = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestMatchAndOr: keys are ANDed, values of one key ORed.
func TestMatchAndOr(t *testing.T) {
	s := mustSnapshot(t, `
rules:
  - id: both
    milter: access
    scope: global
    match:
      client_ip: [203.0.113.0/24, 198.18.0.0/15]
      sender: [a@x.example, .y.example]
      direction: inbound
    action: reject
`)
	tests := []struct {
		f    Facts
		want bool
	}{
		{Facts{ClientIP: ip("203.0.113.1"), Sender: "a@x.example"}, true},
		{Facts{ClientIP: ip("198.19.255.1"), Sender: "b@m.y.example"}, true},
		{Facts{ClientIP: ip("203.0.113.1"), Sender: "b@x.example"}, false},
		{Facts{ClientIP: ip("192.0.2.1"), Sender: "a@x.example"}, false},
		{Facts{ClientIP: ip("203.0.113.1")}, false},
		{Facts{ClientIP: ip("203.0.113.1"), Sender: "a@x.example", Direction: Outbound}, false},
	}
	for _, tt := range tests {
		if got := len(s.Match("access", tt.f)) == 1; got != tt.want {
			t.Errorf("%+v: matched=%v, want %v", tt.f, got, tt.want)
		}
	}
}

// TestScopes: which message a tenant:/domain:/global rule applies to, for
// inbound (recipient side) and outbound (relay side) mail.
func TestScopes(t *testing.T) {
	s := mustSnapshot(t, tenantsYAML+`
rules:
  - {id: g, milter: access, scope: global, action: allow}
  - {id: t-acme, milter: access, scope: "tenant:acme", action: allow}
  - {id: t-globex, milter: access, scope: "tenant:globex", action: allow}
  - {id: d-acme, milter: access, scope: "domain:acme.example", action: allow}
  - {id: d-mail, milter: access, scope: "domain:acme-mail.example", action: allow}
  - {id: in-only, milter: access, scope: global, match: {direction: inbound}, action: allow}
  - {id: out-only, milter: access, scope: global, match: {direction: outbound}, action: allow}
`)
	tests := []struct {
		name string
		f    Facts
		want []string
	}{
		{"inbound to a tenant domain", Facts{ClientIP: ip("192.0.2.1"), Sender: "x@ext.example", Rcpt: "u@acme.example"},
			[]string{"d-acme", "t-acme", "g", "in-only"}},
		{"inbound to the tenant's other domain", Facts{ClientIP: ip("192.0.2.1"), Rcpt: "u@ACME-mail.example"},
			[]string{"d-mail", "t-acme", "g", "in-only"}},
		{"inbound to a subdomain is not the tenant", Facts{ClientIP: ip("192.0.2.1"), Rcpt: "u@sub.acme.example"},
			[]string{"g", "in-only"}},
		{"inbound to a stranger", Facts{ClientIP: ip("192.0.2.1"), Rcpt: "u@else.example"},
			[]string{"g", "in-only"}},
		{"outbound from acme's relay network (inferred)", Facts{ClientIP: ip("198.51.100.5"), Sender: "a@acme.example", Rcpt: "u@globex.example"},
			[]string{"d-acme", "t-acme", "g", "out-only"}},
		{"longest relay network wins", Facts{ClientIP: ip("198.51.100.200"), Sender: "a@globex.example", Rcpt: "u@else.example"},
			[]string{"t-globex", "g", "out-only"}},
		{"sasl login beats network", Facts{ClientIP: ip("198.51.100.200"), SASLUser: "ACME-relay", Sender: "a@else.example", Rcpt: "u@globex.example"},
			[]string{"t-acme", "g", "out-only"}},
		{"outbound v6 relay", Facts{ClientIP: ip("2001:db8:ac::9"), Sender: "a@acme-mail.example", Rcpt: "u@x.example"},
			[]string{"d-mail", "t-acme", "g", "out-only"}},
		{"explicit outbound without a relay tenant", Facts{ClientIP: ip("192.0.2.1"), Sender: "a@acme.example", Rcpt: "u@x.example", Direction: Outbound},
			[]string{"d-acme", "g", "out-only"}},
		{"explicit inbound from a relay network uses the recipient", Facts{ClientIP: ip("198.51.100.5"), Rcpt: "u@globex.example", Direction: Inbound},
			[]string{"t-globex", "g", "in-only"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ids(s.Match("access", tt.f))
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Match = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestPrecedence: domain > tenant > global; then priority; then
// restrictive before permissive; then id.
func TestPrecedence(t *testing.T) {
	s := mustSnapshot(t, tenantsYAML+`
rules:
  - {id: a-global-allow, milter: access, scope: global, action: allow}
  - {id: b-global-reject, milter: access, scope: global, action: reject}
  - {id: c-global-early-allow, milter: access, scope: global, action: allow, priority: -1}
  - {id: d-tenant-allow, milter: access, scope: "tenant:acme", action: allow, priority: 50}
  - {id: e-domain-allow, milter: access, scope: "domain:acme.example", action: allow, priority: 99}
  - {id: f-global-tempfail, milter: access, scope: global, action: tempfail}
  - {id: g-global-late-reject, milter: access, scope: global, action: reject, priority: 10}
  - {id: h-global-relay-permit, milter: access, scope: global, action: relay_permit}
  - {id: i-global-quarantine, milter: access, scope: global, action: quarantine}
  - {id: j-disabled, milter: access, scope: "domain:acme.example", action: reject, enabled: false}
  - {id: k-other-milter, milter: policy, scope: global, action: reject}
  - {id: l-rate, milter: access, scope: "tenant:acme", action: tempfail, rate: {key: sender, limit: 5, per: 1m}}
`)
	got := ids(s.Match("access", Facts{ClientIP: ip("192.0.2.1"), Sender: "x@y.example", Rcpt: "u@acme.example"}))
	want := []string{
		"e-domain-allow",        // domain scope first, whatever its priority
		"l-rate",                // tenant scope, priority 0
		"d-tenant-allow",        // tenant scope, priority 50
		"c-global-early-allow",  // global, priority -1
		"b-global-reject",       // global, priority 0, restrictive, by id
		"f-global-tempfail",     //
		"i-global-quarantine",   //
		"a-global-allow",        // global, priority 0, permissive, by id
		"h-global-relay-permit", //
		"g-global-late-reject",  // global, priority 10
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("order\n got %v\nwant %v", got, want)
	}
	if got := ids(s.Match("policy", Facts{})); !reflect.DeepEqual(got, []string{"k-other-milter"}) {
		t.Errorf("policy rules: %v", got)
	}
	if got := s.Match("encrypt", Facts{}); got != nil {
		t.Errorf("milter without rules: %v", ids(got))
	}
	if s.Len() != 12 {
		t.Errorf("Len = %d, want 12 (disabled rules count)", s.Len())
	}
}

func TestTenantLookups(t *testing.T) {
	s := mustSnapshot(t, tenantsYAML)
	tid := func(tn *Tenant) string {
		if tn == nil {
			return ""
		}
		return tn.ID
	}
	for _, tt := range []struct{ domain, want string }{
		{"acme.example", "acme"}, {"ACME-Mail.Example.", "acme"}, {"globex.example", "globex"},
		{"sub.acme.example", ""}, {"example", ""}, {"", ""},
	} {
		if got := tid(s.TenantOf(tt.domain)); got != tt.want {
			t.Errorf("TenantOf(%q) = %q, want %q", tt.domain, got, tt.want)
		}
	}
	for _, tt := range []struct {
		ip   string
		sasl string
		want string
	}{
		{"198.51.100.1", "", "acme"},
		{"198.51.100.129", "", "globex"},
		{"::ffff:198.51.100.1", "", "acme"},
		{"2001:db8:ac:ff::1", "", "acme"},
		{"192.0.2.1", "", ""},
		{"192.0.2.1", "Globex-SMTP", "globex"},
		{"198.51.100.1", "globex-smtp", "globex"},
		{"198.51.100.1", "unknown-login", "acme"},
	} {
		var a netip.Addr
		if tt.ip != "" {
			a = ip(tt.ip)
		}
		if got := tid(s.TenantForRelay(a, tt.sasl)); got != tt.want {
			t.Errorf("TenantForRelay(%s, %q) = %q, want %q", tt.ip, tt.sasl, got, tt.want)
		}
	}
	if tid(s.TenantForRelay(netip.Addr{}, "")) != "" {
		t.Errorf("zero address found a tenant")
	}
}

// TestSnapshotOwnsItsCopy: changing the Set after Compile must not change
// what the Snapshot answers.
func TestSnapshotOwnsItsCopy(t *testing.T) {
	set, err := Parse("t.yaml", []byte(`
rules:
  - {id: r, milter: access, scope: global, match: {sender: [a@x.example]}, action: reject}
`))
	if err != nil {
		t.Fatal(err)
	}
	s, err := Compile(set)
	if err != nil {
		t.Fatal(err)
	}
	set.Rules[0].Match.Sender[0] = "b@x.example"
	set.Rules[0].Action = ActionAllow
	got := s.Match("access", Facts{Sender: "a@x.example"})
	if len(got) != 1 || got[0].Action != ActionReject {
		t.Errorf("snapshot changed with its source set: %v", ids(got))
	}
	out := s.Set()
	out.Rules[0].Match.Sender[0] = "c@x.example"
	if len(s.Match("access", Facts{Sender: "a@x.example"})) != 1 {
		t.Errorf("snapshot changed through Set()")
	}
}

// TestCompileValidates: hand-built sets get the same checks as files.
func TestCompileValidates(t *testing.T) {
	tests := []struct {
		name string
		set  Set
		want string
	}{
		{"unknown tenant", Set{Rules: []Rule{{ID: "r", Milter: "access", Scope: Scope{ScopeTenant, "ghost"}, Action: ActionAllow, Enabled: true}}}, `unknown tenant "ghost"`},
		{"duplicate id", Set{Rules: []Rule{{ID: "r", Milter: "access", Action: ActionAllow}, {ID: "r", Milter: "access", Action: ActionAllow}}}, `duplicate rule id "r"`},
		{"unmasked prefix", Set{Rules: []Rule{{ID: "r", Milter: "access", Action: ActionAllow, Match: Match{ClientIP: []netip.Prefix{netip.MustParsePrefix("10.1.2.3/8")}}}}}, "host bits set"},
		{"reply class", Set{Rules: []Rule{{ID: "r", Milter: "access", Action: ActionTempfail, Reply: Reply{Code: 550}}}}, "needs 4xx"},
		{"bad action", Set{Rules: []Rule{{ID: "r", Milter: "access", Action: "archive"}}}, `unknown action "archive" for milter access`},
		{"tenant domain twice", Set{Tenants: []Tenant{{ID: "a", Domains: []string{"x.example"}}, {ID: "b", Domains: []string{"X.example"}}}}, `already belongs to tenant "a"`},
	}
	for _, tt := range tests {
		_, err := Compile(&tt.set)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: Compile error = %v, want containing %q", tt.name, err, tt.want)
		}
	}
}

// TestConcurrentMatch is meant for -race: readers share one snapshot.
func TestConcurrentMatch(t *testing.T) {
	s := mustSnapshot(t, tenantsYAML+`
rules:
  - {id: r1, milter: access, scope: global, match: {client_ip: [203.0.113.0/24]}, action: reject}
  - {id: r2, milter: access, scope: "tenant:acme", action: allow}
`)
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if s.Checksum() == "" || s.Version() == "" {
				errs <- "empty checksum or version"
				return
			}
			for i := 0; i < 2000; i++ {
				got := s.Match("access", Facts{ClientIP: ip("203.0.113.9"), Rcpt: "u@acme.example"})
				if len(got) != 2 || got[0].ID != "r2" {
					errs <- fmt.Sprint(ids(got))
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Errorf("concurrent Match got %s", e)
	}
}

// TestManyValuesUseMaps covers the large-set path of value matching (more
// values than the linear-scan threshold) and a rule filed under several
// values that all match (returned once).
func TestManyValuesUseMaps(t *testing.T) {
	var senders []string
	for i := 0; i < 50; i++ {
		senders = append(senders, fmt.Sprintf("u%d@big.example", i))
	}
	set := &Set{Rules: []Rule{{
		ID: "big", Milter: "access", Action: ActionReject, Enabled: true,
		Match: Match{
			Sender:   senders,
			ClientIP: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("10.1.0.0/16")},
			Helo:     []string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", ".helo.example"},
		},
	}}}
	s, err := Compile(set)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Match("access", Facts{ClientIP: ip("10.1.1.1"), Sender: "u42@big.example", Helo: "m"}); len(got) != 1 {
		t.Errorf("got %v, want exactly [big]", ids(got))
	}
	if got := s.Match("access", Facts{ClientIP: ip("10.1.1.1"), Sender: "u42@big.example", Helo: "x.helo.example"}); len(got) != 1 {
		t.Errorf("suffix in large set: got %v", ids(got))
	}
	if got := s.Match("access", Facts{ClientIP: ip("10.1.1.1"), Sender: "u50@big.example", Helo: "m"}); len(got) != 0 {
		t.Errorf("got %v, want none", ids(got))
	}
}

// TestPrecedenceDocExample is the example of docs/rules.md, "Precedence".
func TestPrecedenceDocExample(t *testing.T) {
	s := mustSnapshot(t, `
tenants:
  - {id: acme, domains: [acme.example]}
rules:
- {id: block-net,   milter: access, scope: global,                match: {client_ip: [203.0.113.0/24]},     action: reject}
- {id: acme-allow,  milter: access, scope: "tenant:acme",         match: {client_ip: [203.0.113.5]},        action: allow}
- {id: dom-quar,    milter: access, scope: "domain:acme.example", match: {sender: [.lookalike.example]},   action: quarantine}
- {id: late-allow,  milter: access, scope: global,                action: allow, priority: 10}
- {id: early-allow, milter: access, scope: global,                action: allow, priority: -1}
`)
	tests := []struct {
		ip, sender string
		want       []string
	}{
		{"203.0.113.5", "x@a.lookalike.example", []string{"dom-quar", "acme-allow", "early-allow", "block-net", "late-allow"}},
		{"203.0.113.5", "x@other.example", []string{"acme-allow", "early-allow", "block-net", "late-allow"}},
		{"203.0.113.9", "x@other.example", []string{"early-allow", "block-net", "late-allow"}},
	}
	for _, tt := range tests {
		got := ids(s.Match("access", Facts{ClientIP: ip(tt.ip), Sender: tt.sender, Rcpt: "u@acme.example"}))
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s %s: got %v, want %v", tt.ip, tt.sender, got, tt.want)
		}
	}
}
