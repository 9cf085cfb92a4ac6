package spfcheck

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"blitiri.com.ar/go/spf"

	"github.com/geomilter/geomilter/shared/resolver"
	"github.com/geomilter/geomilter/shared/resolver/resolvertest"
)

const (
	txtNone = `TXT "not an spf record"`
	hit     = "A 127.0.0.2" // what an exists: name answers
)

func fixtures() resolvertest.Zone {
	z := resolvertest.Zone{
		// §5.1 all, with each qualifier (§4.6.2).
		"fail.example":     {`TXT "v=spf1 -all"`},
		"pass.example":     {`TXT "v=spf1 +all"`},
		"softfail.example": {`TXT "v=spf1 ~all"`},
		"neutral.example":  {`TXT "v=spf1 ?all"`},
		"empty.example":    {`TXT "v=spf1"`}, // §4.7: no match → neutral
		"upper.example":    {`TXT "V=SPF1 IP4:192.0.2.10 -ALL"`},
		// §5.6 ip4 / ip6.
		"ip4.example":      {`TXT "v=spf1 ip4:192.0.2.0/24 -all"`},
		"ip4host.example":  {`TXT "v=spf1 ip4:192.0.2.10 -all"`},
		"ip6.example":      {`TXT "v=spf1 ip6:2001:db8::/32 -all"`},
		"split.example":    {`TXT "v=spf1 ip4:198.51.100.0/24" " ip4:192.0.2.10 -all"`}, // §3.3 strings joined
		"badip4.example":   {`TXT "v=spf1 ip4:300.1.1.1 -all"`},
		"badmask.example":  {`TXT "v=spf1 ip4:192.0.2.0/33 -all"`},
		"unknown.example":  {`TXT "v=spf1 foo:bar -all"`},
		"unkmod.example":   {`TXT "v=spf1 foo=bar ip4:192.0.2.10 -all"`}, // §6: unknown modifiers ignored
		"two.example":      {`TXT "v=spf1 +all"`, `TXT "v=spf1 -all"`},
		"norecord.example": {txtNone, "A 192.0.2.10"},
		// §5.3 a.
		"a.example":          {`TXT "v=spf1 a -all"`, "A 192.0.2.10"},
		"acidr.example":      {`TXT "v=spf1 a:host.acidr.example/24 -all"`},
		"host.acidr.example": {"A 192.0.2.1"},
		"a6.example":         {`TXT "v=spf1 a -all"`, "AAAA 2001:db8::10"},
		// §5.4 mx.
		"mx.example":      {`TXT "v=spf1 mx -all"`, "MX 10 mail.mx.example."},
		"mail.mx.example": {"A 192.0.2.10"},
		// §5.5 ptr: the reverse name must resolve forward to the address.
		"ptr.example":             {`TXT "v=spf1 ptr -all"`},
		"mail.ptr.example":        {"A 192.0.2.10"},
		"10.2.0.192.in-addr.arpa": {"PTR mail.ptr.example."},
		"ptrother.example":        {`TXT "v=spf1 ptr:other.example -all"`},
		// §5.7 exists.
		"exists.example":               {`TXT "v=spf1 exists:%{i}.ex.exists.example -all"`},
		"192.0.2.10.ex.exists.example": {hit},
		"exists6only.example":          {`TXT "v=spf1 exists:six.exists.example -all"`},
		"six.exists.example":           {"AAAA 2001:db8::1"}, // §5.7: only A records count
		// §5.2 include.
		"include.example":    {`TXT "v=spf1 include:inc-target.example -all"`},
		"inc-target.example": {`TXT "v=spf1 ip4:192.0.2.10 -all"`},
		"incfail.example":    {`TXT "v=spf1 include:fail.example ip4:192.0.2.10 -all"`}, // include's fail = no match
		"incnone.example":    {`TXT "v=spf1 include:norecord.example -all"`},            // §5.2: none → permerror
		"incloop.example":    {`TXT "v=spf1 include:incloop.example -all"`},
		// §6.1 redirect, §6.2 exp.
		"redirect.example":    {`TXT "v=spf1 redirect=inc-target.example"`},
		"redirnone.example":   {`TXT "v=spf1 redirect=nowhere.example"`},
		"redirtwo.example":    {`TXT "v=spf1 redirect=a.example redirect=b.example"`},
		"redirlast.example":   {`TXT "v=spf1 redirect=fail.example ip4:192.0.2.10"`}, // redirect only if nothing matched
		"exp.example":         {`TXT "v=spf1 exp=explain.exp.example -all"`},
		"explain.exp.example": {`TXT "%{i} is not one of %{d}'s hosts"`},
		// §7 macros: each record matches only if the macro expands as §7.3 says.
		"mac-l.example":                     {`TXT "v=spf1 exists:%{l}.l.mac.example -all"`},
		"mac-lr.example":                    {`TXT "v=spf1 exists:%{lr-}.lr.mac.example -all"`},
		"mac-o.example":                     {`TXT "v=spf1 exists:%{o}.o.mac.example -all"`},
		"mac-d.example":                     {`TXT "v=spf1 exists:%{d}.d.mac.example -all"`},
		"x.y.mac-d2.example":                {`TXT "v=spf1 exists:%{d2}.d2.mac.example -all"`},
		"mac-ir.example":                    {`TXT "v=spf1 exists:%{ir}.%{v}.ir.mac.example -all"`},
		"mac-h.example":                     {`TXT "v=spf1 exists:%{h}.h.mac.example -all"`},
		"mac-s.example":                     {`TXT "v=spf1 exists:%{s1}.s.mac.example -all"`},
		"mac-bad.example":                   {`TXT "v=spf1 exists:%{z}.mac.example -all"`},
		"mac-open.example":                  {`TXT "v=spf1 exists:%{l.mac.example -all"`},
		"first-last.l.mac.example":          {hit},
		"last.first.lr.mac.example":         {hit},
		"mac-o.example.o.mac.example":       {hit},
		"mac-d.example.d.mac.example":       {hit},
		"mac-d2.example.d2.mac.example":     {hit},
		"10.2.0.192.in-addr.ir.mac.example": {hit},
		"helo.example.h.mac.example":        {hit},
		"example.s.mac.example":             {hit},
		// §4.6.4: 10 DNS-querying terms, then permerror; 2 void look-ups.
		"limit10.example":  {spfTXT(terms("a:n%d.example", 10))},
		"limit11.example":  {spfTXT(terms("a:n%d.example", 11))},
		"limitinc.example": {spfTXT("include:chain1.example")},
		"void2.example":    {spfTXT(terms("a:void%d.example", 2))},
		"void3.example":    {spfTXT(terms("a:void%d.example", 3))},
		// HELO identity.
		"helo.example":    {`TXT "v=spf1 ip4:192.0.2.10 -all"`},
		"badhelo.example": {`TXT "v=spf1 -all"`},
	}
	for i := 1; i <= 11; i++ {
		z[fmt.Sprintf("n%d.example", i)] = []string{"A 198.51.100.1"}
	}
	// An include chain: chain1 → … → chain11, each include one term.
	for i := 1; i <= 11; i++ {
		z[fmt.Sprintf("chain%d.example", i)] = []string{spfTXT(fmt.Sprintf("include:chain%d.example", i+1))}
	}
	z["chain12.example"] = []string{`TXT "v=spf1 +all"`}
	return z
}

func terms(format string, n int) string {
	var b []string
	for i := 1; i <= n; i++ {
		b = append(b, fmt.Sprintf(format, i))
	}
	return strings.Join(b, " ")
}

func spfTXT(terms string) string { return `TXT "v=spf1 ` + terms + ` -all"` }

var clientIP = net.ParseIP("192.0.2.10")

func TestCheck(t *testing.T) {
	for _, nr := range resolvertest.Serve(t, fixtures()) {
		r := nr.R
		t.Run(nr.Name, func(t *testing.T) {
			tests := []struct {
				name     string
				ip       string // default clientIP
				helo     string // default mx.helo.example
				mailFrom string
				want     string
				wantErr  error // errors.Is on Result.Err, when set
				identity string
				domain   string
			}{
				{name: "all -", mailFrom: "u@fail.example", want: Fail},
				{name: "all +", mailFrom: "u@pass.example", want: Pass},
				{name: "all ~", mailFrom: "u@softfail.example", want: SoftFail},
				{name: "all ?", mailFrom: "u@neutral.example", want: Neutral},
				{name: "empty record", mailFrom: "u@empty.example", want: Neutral},
				{name: "upper case record", mailFrom: "u@upper.example", want: Pass},
				{name: "ip4 cidr", mailFrom: "u@ip4.example", want: Pass},
				{name: "ip4 other", ip: "198.51.100.7", mailFrom: "u@ip4.example", want: Fail},
				{name: "ip4 host", mailFrom: "<u@ip4host.example>", want: Pass},
				{name: "ip6", ip: "2001:db8::10", mailFrom: "u@ip6.example", want: Pass},
				{name: "ip6 v4 client", mailFrom: "u@ip6.example", want: Fail},
				{name: "txt strings joined", mailFrom: "u@split.example", want: Pass},
				{name: "a", mailFrom: "u@a.example", want: Pass},
				{name: "a cidr", mailFrom: "u@acidr.example", want: Pass},
				{name: "a aaaa", ip: "2001:db8::10", mailFrom: "u@a6.example", want: Pass},
				{name: "mx", mailFrom: "u@mx.example", want: Pass},
				{name: "mx other", ip: "198.51.100.7", mailFrom: "u@mx.example", want: Fail},
				{name: "ptr", mailFrom: "u@ptr.example", want: Pass},
				{name: "ptr other domain", mailFrom: "u@ptrother.example", want: Fail},
				{name: "ptr no reverse", ip: "198.51.100.7", mailFrom: "u@ptr.example", want: Fail},
				{name: "exists", mailFrom: "u@exists.example", want: Pass},
				{name: "exists other", ip: "192.0.2.11", mailFrom: "u@exists.example", want: Fail},
				{name: "exists aaaa only", mailFrom: "u@exists6only.example", want: Fail},
				{name: "include pass", mailFrom: "u@include.example", want: Pass},
				{name: "include fail is no match", mailFrom: "u@incfail.example", want: Pass},
				{name: "include none", mailFrom: "u@incnone.example", want: PermError},
				{name: "include loop", mailFrom: "u@incloop.example", want: PermError, wantErr: spf.ErrLookupLimitReached},
				{name: "redirect", mailFrom: "u@redirect.example", want: Pass},
				{name: "redirect to nothing", mailFrom: "u@redirnone.example", want: PermError},
				{name: "two redirects", mailFrom: "u@redirtwo.example", want: PermError},
				{name: "redirect after mechanisms", mailFrom: "u@redirlast.example", want: Pass},
				{name: "exp does not change the result", mailFrom: "u@exp.example", want: Fail},
				{name: "macro l", mailFrom: "first-last@mac-l.example", want: Pass},
				{name: "macro l other", mailFrom: "someone@mac-l.example", want: Fail},
				{name: "macro l reversed, delimiter", mailFrom: "first-last@mac-lr.example", want: Pass},
				{name: "macro o", mailFrom: "u@mac-o.example", want: Pass},
				{name: "macro d", mailFrom: "u@mac-d.example", want: Pass},
				{name: "macro d2", mailFrom: "u@x.y.mac-d2.example", want: Pass},
				{name: "macro i reversed, v", mailFrom: "u@mac-ir.example", want: Pass},
				{name: "macro h", helo: "helo.example", mailFrom: "u@mac-h.example", want: Pass},
				{name: "macro h other", helo: "other.example", mailFrom: "u@mac-h.example", want: Fail},
				{name: "macro s", mailFrom: "u@mac-s.example", want: Pass},
				{name: "macro unknown letter", mailFrom: "u@mac-bad.example", want: PermError, wantErr: spf.ErrInvalidMacro},
				{name: "macro unterminated", mailFrom: "u@mac-open.example", want: PermError},
				{name: "no local part is postmaster", mailFrom: "<@mac-l.example>", want: Fail},
				{name: "10 lookups", mailFrom: "u@limit10.example", want: Fail},
				{name: "11 lookups", mailFrom: "u@limit11.example", want: PermError, wantErr: spf.ErrLookupLimitReached},
				{name: "include chain past 10", mailFrom: "u@limitinc.example", want: PermError, wantErr: spf.ErrLookupLimitReached},
				{name: "2 void lookups", mailFrom: "u@void2.example", want: Fail},
				{name: "3 void lookups", mailFrom: "u@void3.example", want: PermError, wantErr: spf.ErrVoidLookupLimitReached},
				{name: "no spf record", mailFrom: "u@norecord.example", want: None},
				{name: "nxdomain", mailFrom: "u@nowhere.example", want: None},
				{name: "two records", mailFrom: "u@two.example", want: PermError, wantErr: spf.ErrMultipleRecords},
				{name: "unknown mechanism", mailFrom: "u@unknown.example", want: PermError, wantErr: spf.ErrUnknownField},
				{name: "unknown modifier ignored", mailFrom: "u@unkmod.example", want: Pass},
				{name: "bad ip4", mailFrom: "u@badip4.example", want: PermError, wantErr: spf.ErrInvalidIP},
				{name: "bad mask", mailFrom: "u@badmask.example", want: PermError, wantErr: spf.ErrInvalidMask},
				{name: "null sender uses helo", helo: "helo.example", mailFrom: "<>", want: Pass, identity: IdentityHELO, domain: "helo.example"},
				{name: "null sender bad helo", helo: "badhelo.example", mailFrom: "", want: Fail, identity: IdentityHELO},
				{name: "null sender literal helo", helo: "[192.0.2.10]", mailFrom: "<>", want: None, identity: IdentityHELO},
				{name: "single label domain", mailFrom: "u@localhost", want: None},
				{name: "empty label", mailFrom: "u@a..example", want: None},
				{name: "long label", mailFrom: "u@" + strings.Repeat("x", 64) + ".example", want: None},
				{name: "no client address", ip: "-", mailFrom: "u@fail.example", want: None},
				{name: "loopback client", ip: "127.0.0.1", mailFrom: "u@fail.example", want: None},
				{name: "quoted local part with @", mailFrom: `"a@b"@ip4host.example`, want: Pass, domain: "ip4host.example"},
				{name: "at in domain", mailFrom: "a@b@ip4host.example", want: Pass, domain: "ip4host.example"},
				{name: "domain with specials", mailFrom: "u@ip4host.example%.x", want: None},
				{name: "trailing dot", mailFrom: "u@pass.example.", want: Pass, domain: "pass.example"},
			}
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					ip := clientIP
					switch tc.ip {
					case "":
					case "-":
						ip = nil
					default:
						ip = net.ParseIP(tc.ip)
					}
					helo := tc.helo
					if helo == "" {
						helo = "mx.helo.example"
					}
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					defer cancel()
					got := Check(ctx, r, ip, helo, tc.mailFrom)
					if got.Result != tc.want {
						t.Fatalf("Check(%s, %q) = %q (%s), want %q", ip, tc.mailFrom, got.Result, got.Reason, tc.want)
					}
					if tc.wantErr != nil && !errors.Is(got.Err, tc.wantErr) {
						t.Errorf("Err = %v, want %v", got.Err, tc.wantErr)
					}
					if (got.Result == TempError || got.Result == PermError) != (got.Err != nil) {
						t.Errorf("result %s with Err %v", got.Result, got.Err)
					}
					identity := tc.identity
					if identity == "" {
						identity = IdentityMailFrom
					}
					if got.Identity != identity {
						t.Errorf("Identity = %q, want %q", got.Identity, identity)
					}
					if tc.domain != "" && got.Domain != tc.domain {
						t.Errorf("Domain = %q, want %q", got.Domain, tc.domain)
					}
					if got.Reason == "" && got.Result != Pass && got.Result != Neutral {
						t.Errorf("no reason for %s", got.Result)
					}
				})
			}
		})
	}
}

// The §4.6.4 limit counts terms, and every query the library makes goes
// through the resolver given.
func TestQueriesCounted(t *testing.T) {
	for _, nr := range resolvertest.Serve(t, fixtures()) {
		r := nr.R
		t.Run(nr.Name, func(t *testing.T) {
			got := Check(context.Background(), r, clientIP, "helo.example", "u@limit10.example")
			// 1 TXT + 10 A/AAAA look-ups (Go's LookupIPAddr asks A and AAAA, but
			// it is one call here).
			if got.Result != Fail || got.Queries != 11 {
				t.Errorf("got %s after %d queries, want fail after 11", got.Result, got.Queries)
			}
			got = Check(context.Background(), r, clientIP, "helo.example", "u@limit11.example")
			if got.Queries != 11 {
				t.Errorf("limit11 made %d queries, want 11 (the 11th term is not looked up)", got.Queries)
			}
		})
	}
}

func TestCheckHELO(t *testing.T) {
	for _, nr := range resolvertest.Serve(t, fixtures()) {
		r := nr.R
		t.Run(nr.Name, func(t *testing.T) {
			tests := []struct {
				helo, want string
			}{
				{"helo.example", Pass},
				{"HELO.Example", Pass},
				{"badhelo.example", Fail},
				{"nowhere.example", None},
				{"[192.0.2.10]", None},
				{"localhost", None},
				{"", None},
				{"bad name.example", None},
			}
			for _, tc := range tests {
				got := CheckHELO(context.Background(), r, clientIP, tc.helo)
				if got.Result != tc.want || got.Identity != IdentityHELO {
					t.Errorf("CheckHELO(%q) = %s/%s (%s), want %s/helo", tc.helo, got.Result, got.Identity, got.Reason, tc.want)
				}
				if got.Sender != "postmaster@"+tc.helo {
					t.Errorf("CheckHELO(%q) sender = %q", tc.helo, got.Sender)
				}
			}
		})
	}
}

// A server that never answers: the check ends with the context, as a
// temperror (RFC 7208 §2.6.6), not a longer wait.
func TestTimeoutIsTempError(t *testing.T) {
	for _, nr := range resolvertest.Blackhole(t) {
		r := nr.R
		t.Run(nr.Name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			got := Check(ctx, r, clientIP, "helo.example", "u@fail.example")
			if got.Result != TempError || got.Err == nil {
				t.Fatalf("got %s (%v), want temperror", got.Result, got.Err)
			}
		})
	}
}

// A server failure part-way (SERVFAIL for an a: term's name) is a
// temperror (RFC 7208 §5: a DNS error other than "not found" → temperror).
func TestServerFailureMidway(t *testing.T) {
	z := fixtures()
	z["midway.example"] = []string{`TXT "v=spf1 a:servfail.example -all"`}
	z["servfail.example"] = []string{"SERVFAIL"}
	for _, nr := range resolvertest.Serve(t, z) {
		r := nr.R
		t.Run(nr.Name, func(t *testing.T) {
			got := Check(context.Background(), r, clientIP, "helo.example", "u@midway.example")
			if got.Result != TempError {
				t.Fatalf("got %s (%v), want temperror", got.Result, got.Err)
			}
		})
	}
}

func TestNilResolver(t *testing.T) {
	got := Check(context.Background(), nil, clientIP, "helo.example", "u@fail.example")
	if got.Result != TempError {
		t.Errorf("nil resolver: %s", got.Result)
	}
}

// The message's DNS budget (shared/resolver) bounds the check: a spent
// budget or a silent server ends it as temperror, and the budget says so,
// for the trail's degraded: ["dns"].
func TestBudget(t *testing.T) {
	for _, tc := range []struct {
		name   string
		rs     []resolvertest.Named
		budget time.Duration
	}{
		{"spent", resolvertest.Serve(t, fixtures()), 0},
		{"silent server", resolvertest.Blackhole(t), 200 * time.Millisecond},
	} {
		ctx := resolver.WithBudget(context.Background(), tc.budget)
		got := Check(ctx, tc.rs[0].R, clientIP, "helo.example", "u@pass.example")
		if got.Result != TempError {
			t.Errorf("%s: got %s (%v), want temperror", tc.name, got.Result, got.Err)
		}
		if _, exhausted := resolver.BudgetSpent(ctx); !exhausted {
			t.Errorf("%s: budget not exhausted", tc.name)
		}
	}
}

// FuzzIdentity: any MAIL FROM and HELO from the client pick an identity
// without a panic, and give a result keyword of RFC 7208 §2.6 (the nil
// resolver stops the check before DNS: temperror when a domain was found).
func FuzzIdentity(f *testing.F) {
	for _, s := range []string{"<>", "u@a.example", `"a@b"@c.example`, "@", "<@>", "u@[192.0.2.1]", "u@a..b", "u@é.example"} {
		f.Add(s, "helo.example")
	}
	f.Fuzz(func(t *testing.T, mailFrom, helo string) {
		got := Check(context.Background(), nil, clientIP, helo, mailFrom)
		switch got.Result {
		case None:
			if got.Reason == "" {
				t.Fatalf("none without a reason for %q %q", mailFrom, helo)
			}
		case TempError:
			if checkDomain(got.Domain) != "" {
				t.Fatalf("domain %q went to DNS", got.Domain)
			}
		default:
			t.Fatalf("result %q for %q %q", got.Result, mailFrom, helo)
		}
	})
}
