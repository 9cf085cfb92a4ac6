package config

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestDNSSection(t *testing.T) {
	const base = "site: lax\nrules_file: /r.yaml\nstate_dir: /s\nspool_dir: /q\n"
	tests := []struct {
		name string
		dns  string
		want DNSConfig
		errs []string // substrings, one per expected problem
	}{
		{"absent: defaults", "", DNSConfig{Timeout: time.Second, MessageBudget: 3 * time.Second, CacheSize: 10000, ServeStale: 24 * time.Hour}, nil},
		{"all set", "dns: {servers: [\"192.0.2.53:53\", \"[2001:db8::53]:5353\"], timeout: 500ms, message_budget: 2s, cache_size: 0, serve_stale: 0}",
			DNSConfig{Servers: []string{"192.0.2.53:53", "[2001:db8::53]:5353"}, Timeout: 500 * time.Millisecond, MessageBudget: 2 * time.Second}, nil},
		{"timeout equal to the budget", "dns: {timeout: 3s}", DNSConfig{Timeout: 3 * time.Second, MessageBudget: 3 * time.Second, CacheSize: 10000, ServeStale: 24 * time.Hour}, nil},
		{"serve stale too long", "dns: {serve_stale: 200h}", DNSConfig{}, []string{"dns.serve_stale: must be between 0 (off) and 168h"}},
		{"name as server", "dns: {servers: [\"ns.example.net:53\"]}", DNSConfig{}, []string{"dns.servers[0]: invalid address"}},
		{"no port", "dns: {servers: [\"192.0.2.53\"]}", DNSConfig{}, []string{"dns.servers[0]: invalid address"}},
		{"IPv6 without brackets", "dns: {servers: [\"::1:53\"]}", DNSConfig{}, []string{"dns.servers[0]: invalid address"}},
		{"port 0", "dns: {servers: [\"192.0.2.53:0\"]}", DNSConfig{}, []string{"the port must be 1 to 65535"}},
		{"twice", "dns: {servers: [\"192.0.2.53:53\", \"192.0.2.53:53\"]}", DNSConfig{}, []string{"dns.servers[1]: 192.0.2.53:53 is listed twice"}},
		{"too many", "dns: {servers: [" + servers(9) + "]}", DNSConfig{}, []string{"dns.servers: at most 8"}},
		{"timeout 0", "dns: {timeout: 0}", DNSConfig{}, []string{"dns.timeout: must be more than 0"}},
		{"timeout over the budget", "dns: {timeout: 4s}", DNSConfig{}, []string{"dns.timeout: must not be more than dns.message_budget (3s)"}},
		{"budget too long", "dns: {message_budget: 5m}", DNSConfig{}, []string{"dns.message_budget: must be more than 0 and at most 1m0s"}},
		{"negative cache", "dns: {cache_size: -5}", DNSConfig{}, []string{"dns.cache_size: must be between 0"}},
		{"unknown key", "dns: {server: [\"192.0.2.53:53\"]}", DNSConfig{}, []string{"dns.server: unknown key"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse("d.yaml", []byte(base+tc.dns+"\n"))
			if len(tc.errs) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(cfg.DNS, tc.want) {
					t.Errorf("dns = %+v, want %+v", cfg.DNS, tc.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted: %+v", cfg.DNS)
			}
			lines := strings.Split(strings.TrimSpace(err.Error()), "\n")
			if len(lines) != len(tc.errs) {
				t.Errorf("got %d problems, want %d:\n%v", len(lines), len(tc.errs), err)
			}
			for _, want := range tc.errs {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
		})
	}
}

// servers returns n distinct server addresses, quoted, comma-separated.
func servers(n int) string {
	var s []string
	for i := range n {
		s = append(s, fmt.Sprintf("%q", fmt.Sprintf("192.0.2.%d:53", i+1)))
	}
	return strings.Join(s, ", ")
}
