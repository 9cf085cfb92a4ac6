package rules

import (
	"errors"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/geomilter/geomilter/shared/yamlconf"
)

var update = flag.Bool("update", false, "rewrite testdata/broken/*.err from the current output")

// TestBrokenFiles parses every testdata/broken/*.yaml and compares the
// complete error text with the .err file next to it: what an operator sees
// is part of the contract.
func TestBrokenFiles(t *testing.T) {
	files, err := filepath.Glob("testdata/broken/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 10 {
		t.Fatalf("want at least 10 broken cases, have %d", len(files))
	}
	for _, f := range files {
		name := filepath.Base(f)
		t.Run(strings.TrimSuffix(name, ".yaml"), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			set, err := Parse(name, data)
			if err == nil {
				t.Fatalf("parsed without error: %d rules", len(set.Rules))
			}
			if set != nil {
				t.Errorf("a Set was returned together with the error")
			}
			var ps yamlconf.Problems
			if !errors.As(err, &ps) {
				t.Errorf("error is %T, want yamlconf.Problems", err)
			}
			got := err.Error() + "\n"
			errFile := strings.TrimSuffix(f, ".yaml") + ".err"
			if *update {
				if err := os.WriteFile(errFile, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(errFile)
			if err != nil {
				t.Fatalf("%v (run go test -run TestBrokenFiles -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("errors differ\n--- got\n%s--- want\n%s", got, want)
			}
		})
	}
}

func TestExampleFileParses(t *testing.T) {
	set, err := ParseFile("../../deploy/examples/rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(set.Tenants) != 2 {
		t.Errorf("tenants: got %d, want 2", len(set.Tenants))
	}
	var rate, quarantine, domainAllow, relayPermit int
	for _, r := range set.Rules {
		switch {
		case r.IsRate():
			rate++
		case r.Action == ActionQuarantine:
			quarantine++
		case r.Action == ActionAllow && r.Scope.Kind == ScopeDomain:
			domainAllow++
		case r.Action == ActionRelayPermit:
			relayPermit++
		}
	}
	if rate < 2 || quarantine < 1 || domainAllow < 1 || relayPermit < 1 {
		t.Errorf("example lacks a promised case: rate=%d quarantine=%d domain allow=%d relay_permit=%d", rate, quarantine, domainAllow, relayPermit)
	}
	if _, err := Compile(set); err != nil {
		t.Fatal(err)
	}
}

func TestParseValues(t *testing.T) {
	src := `
tenants:
  - id: acme
    domains: [ACME.Example., acme-mail.example]
    relay: {networks: ["::ffff:198.51.100.0/120", 2001:db8::/32], sasl_users: [Acme-Relay]}
rules:
  - id: r1
    milter: access
    scope: domain:Acme.Example
    match:
      client_ip: [192.0.2.1, "2001:db8::1"]
      sender: ["<>", User@Example.COM, "@Example.org", .Sub.Example]
      direction: Inbound
    action: reject
    reply: "550 5.7.1 Go away"
    priority: -5
    enabled: false
  - id: r2
    milter: access
    scope: tenant:acme
    rate: {key: sasl_user, limit: 10, per: 90s}
    action: tempfail
`
	set, err := Parse("t.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	wantTenant := Tenant{
		ID:      "acme",
		Domains: []string{"acme.example", "acme-mail.example"},
		Relay: Relay{
			Networks:  []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("2001:db8::/32")},
			SASLUsers: []string{"acme-relay"},
		},
	}
	if !reflect.DeepEqual(set.Tenants[0], wantTenant) {
		t.Errorf("tenant\n got %+v\nwant %+v", set.Tenants[0], wantTenant)
	}
	want1 := Rule{
		ID:     "r1",
		Milter: "access",
		Scope:  Scope{Kind: ScopeDomain, Name: "acme.example"},
		Match: Match{
			ClientIP:  []netip.Prefix{netip.MustParsePrefix("192.0.2.1/32"), netip.MustParsePrefix("2001:db8::1/128")},
			Sender:    []string{"<>", "user@example.com", "@example.org", ".sub.example"},
			Direction: Inbound,
		},
		Action:   ActionReject,
		Reply:    Reply{Code: 550, Enhanced: "5.7.1", Text: "Go away"},
		Priority: -5,
		Enabled:  false,
	}
	if !reflect.DeepEqual(set.Rules[0], want1) {
		t.Errorf("rule r1\n got %+v\nwant %+v", set.Rules[0], want1)
	}
	r2 := set.Rules[1]
	if !r2.Enabled || r2.Rate == nil || *r2.Rate != (Rate{Key: RateSASLUser, Limit: 10, Per: 90 * time.Second}) {
		t.Errorf("rule r2: enabled=%v rate=%+v", r2.Enabled, r2.Rate)
	}
}

func TestParseEmptyFile(t *testing.T) {
	for _, src := range []string{"", "# nothing yet\n", "tenants: []\nrules: []\n"} {
		set, err := Parse("empty.yaml", []byte(src))
		if err != nil {
			t.Errorf("%q: %v", src, err)
			continue
		}
		if len(set.Rules) != 0 || len(set.Tenants) != 0 {
			t.Errorf("%q: got %d rules", src, len(set.Rules))
		}
	}
}

func TestParseFileMissing(t *testing.T) {
	_, err := ParseFile(filepath.Join(t.TempDir(), "nope.yaml"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("got %v, want a not-exist error", err)
	}
}

func TestParseReply(t *testing.T) {
	tests := []struct {
		in      string
		want    Reply
		wantErr string
	}{
		{in: "550 5.7.1 Access denied", want: Reply{550, "5.7.1", "Access denied"}},
		{in: "451 4.7.1", want: Reply{451, "4.7.1", ""}},
		{in: "554 Denied by policy", want: Reply{554, "", "Denied by policy"}},
		{in: "421", want: Reply{421, "", ""}},
		{in: "550 5.100.999 odd but valid", want: Reply{550, "5.100.999", "odd but valid"}},
		{in: "250 2.0.0 Ok", wantErr: "4xx or 5xx"},
		{in: "5500 5.7.1 x", wantErr: "4xx or 5xx"},
		{in: "570 5.7.1 x", wantErr: "4xx or 5xx"},
		{in: "550 4.7.1 x", wantErr: "does not match"},
		{in: "450 5.7.1 x", wantErr: "does not match"},
		{in: "550 5.7 x", wantErr: "class.subject.detail"},
		{in: "550 5.7.1.2 x", wantErr: "class.subject.detail"},
		{in: "550 5.7.1 two\nlines", wantErr: "one line"},
		{in: "", wantErr: "4xx or 5xx"},
	}
	for _, tt := range tests {
		got, err := ParseReply(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseReply(%q) error = %v, want containing %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseReply(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
		if back := got.String(); back != strings.TrimSpace(tt.in) {
			t.Errorf("Reply.String() = %q, want %q", back, tt.in)
		}
	}
}

func TestActionTable(t *testing.T) {
	access := Actions("access")
	want := []Action{ActionAllow, ActionReject, ActionTempfail, ActionDiscard, ActionQuarantine, ActionRelayPermit, ActionRelayDeny}
	if !reflect.DeepEqual(access, want) {
		t.Errorf("access actions %v, want %v", access, want)
	}
	for _, a := range []Action{ActionReject, ActionTempfail, ActionDiscard, ActionQuarantine, ActionRelayDeny} {
		r := Rule{Milter: "access", Action: a}
		if !r.Restrictive() {
			t.Errorf("%s should be restrictive", a)
		}
	}
	for _, a := range []Action{ActionAllow, ActionRelayPermit} {
		r := Rule{Milter: "access", Action: a}
		if r.Restrictive() {
			t.Errorf("%s should not be restrictive", a)
		}
	}
	if Actions("nope") != nil {
		t.Errorf("unknown milter has actions")
	}
}
