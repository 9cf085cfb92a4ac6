package ctl

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/geomilter/geomilter/shared/redistest"
	"github.com/geomilter/geomilter/shared/rules"
)

type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}

func TestMain(m *testing.M) {
	redis.SetLogger(quietLogger{})
	os.Exit(m.Run())
}

// run runs ctl and returns exit code, stdout, stderr.
func run(args ...string) (int, string, string) {
	var out, errw bytes.Buffer
	code := Run(context.Background(), args, &out, &errw)
	return code, out.String(), errw.String()
}

func write(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// twoSites starts sites a and b (a primary each, and at each site a local
// replica of the other's primary) and writes one config per site. The
// metrics address of the access milter is metricsAddr.
func twoSites(t *testing.T, metricsAddr string) (cfgA, cfgB string, primaries map[string]*redistest.Server, replicas map[string]*redistest.Server) {
	t.Helper()
	dir := t.TempDir()
	primaries = map[string]*redistest.Server{"a": redistest.Start(t), "b": redistest.Start(t)}
	replicas = map[string]*redistest.Server{ // at a: copy of b; at b: copy of a
		"a": redistest.Start(t, redistest.WithReplicaOf(primaries["b"].Addr)),
		"b": redistest.Start(t, redistest.WithReplicaOf(primaries["a"].Addr)),
	}
	for _, r := range replicas {
		c := r.Client()
		deadline := time.Now().Add(15 * time.Second)
		for {
			info, _ := c.Info(context.Background(), "replication").Result()
			if strings.Contains(info, "master_link_status:up") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("replica link not up")
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	conf := func(site, peer string) string {
		return write(t, dir, site+".yaml", fmt.Sprintf(`site: %s
host: h
state_dir: %s/%s/state
spool_dir: %s/%s/spool
redis:
  local: {addr: %q}
  peers:
    %s: {addr: %q}
metrics: {listen: %q}
milters:
  access: {listen: "unix:%s/%s.sock"}
`, site, dir, site, dir, site, primaries[site].Addr, peer, replicas[site].Addr, metricsAddr, dir, site))
	}
	return conf("a", "b"), conf("b", "a"), primaries, replicas
}

const rulesV1 = `tenants:
  - id: acme
    domains: [acme.example]
    relay: {networks: [198.51.100.0/24], sasl_users: [acme-relay]}
rules:
  - id: block-bad-net
    milter: access
    scope: global
    match: {client_ip: [203.0.113.0/24]}
    action: reject
    reply: "550 5.7.1 Access denied by policy"
  - id: acme-rate
    milter: access
    scope: tenant:acme
    rate: {key: sender, limit: 100, per: 1m}
    action: tempfail
  - {id: null-sender, milter: access, scope: global, match: {sender: ["<>"]}, action: allow, comment: "bounces: yes"}
`

func waitSame(t *testing.T, cfgA, cfgB string) string {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		ca, la, ea := run("--config", cfgA, "rules", "list")
		cb, lb, eb := run("--config", cfgB, "rules", "list")
		if ca == 0 && cb == 0 && la == lb {
			return la
		}
		if time.Now().After(deadline) {
			t.Fatalf("rules list differs:\na (%d %s):\n%s\nb (%d %s):\n%s", ca, ea, la, cb, eb, lb)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestRulesApplyListExportDelete(t *testing.T) {
	cfgA, cfgB, _, _ := twoSites(t, "127.0.0.1:1")
	dir := t.TempDir()
	v1 := write(t, dir, "v1.yaml", rulesV1)

	// Invalid: every problem, with file and line; nothing written.
	bad := write(t, dir, "bad.yaml", "rules:\n  - {id: x, milter: access, scope: global, action: rejct}\n  - {id: y, milter: acces, scope: global, action: reject}\n")
	code, out, errs := run("--config", cfgA, "rules", "apply", "-f", bad)
	if code != ExitProblems || !strings.Contains(errs, "bad.yaml:2") || !strings.Contains(errs, "bad.yaml:3") {
		t.Fatalf("invalid file: exit %d\n%s\n%s", code, out, errs)
	}

	code, out, errs = run("--config", cfgA, "rules", "apply", "-f", v1, "--dry-run")
	if code != 0 || !strings.Contains(out, "+ block-bad-net") || !strings.Contains(out, "dry run") {
		t.Fatalf("dry run: exit %d\n%s\n%s", code, out, errs)
	}
	if _, list, _ := run("--config", cfgA, "rules", "list"); strings.Contains(list, "block-bad-net") {
		t.Fatal("dry run wrote")
	}
	code, out, errs = run("--config", cfgA, "rules", "apply", "-f", v1)
	for _, want := range []string{"+ acme-rate", "+ block-bad-net", "+ null-sender", "+ tenant:acme", "4 written"} {
		if !strings.Contains(out, want) {
			t.Errorf("apply output lacks %q:\n%s\n%s", want, out, errs)
		}
	}
	if code != 0 {
		t.Fatalf("apply: exit %d", code)
	}
	// Idempotent, from either site once replicated.
	list := waitSame(t, cfgA, cfgB)
	for _, cfg := range []string{cfgA, cfgB} {
		if code, out, errs := run("--config", cfg, "rules", "apply", "-f", v1); code != 0 || strings.TrimSpace(out) != "no changes" {
			t.Fatalf("second apply: exit %d\n%s\n%s", code, out, errs)
		}
	}
	if !strings.Contains(list, "block-bad-net  access  global       reject") || !strings.Contains(list, " a ") {
		t.Errorf("list:\n%s", list)
	}

	// Export re-applies without changes.
	code, exported, errs := run("--config", cfgB, "rules", "export")
	if code != 0 {
		t.Fatalf("export: %d %s", code, errs)
	}
	ex := write(t, dir, "export.yaml", exported)
	if _, err := rules.ParseFile(ex); err != nil {
		t.Fatalf("exported file does not parse: %v\n%s", err, exported)
	}
	if code, out, errs := run("--config", cfgA, "rules", "apply", "-f", ex); code != 0 || strings.TrimSpace(out) != "no changes" {
		t.Fatalf("apply of the export: exit %d\n%s\n%s\n%s", code, out, errs, exported)
	}

	// A change at b and a prune: ~ and -.
	v2 := write(t, dir, "v2.yaml", strings.Replace(strings.Replace(rulesV1, "limit: 100", "limit: 200", 1),
		`  - {id: null-sender, milter: access, scope: global, match: {sender: ["<>"]}, action: allow, comment: "bounces: yes"}`+"\n", "", 1))
	code, out, errs = run("--config", cfgB, "rules", "apply", "-f", v2, "--prune")
	if code != 0 || !strings.Contains(out, "~ acme-rate") || !strings.Contains(out, "- null-sender") || strings.Contains(out, "block-bad-net") {
		t.Fatalf("apply --prune: exit %d\n%s\n%s", code, out, errs)
	}
	list = waitSame(t, cfgA, cfgB)
	if strings.Contains(list, "null-sender") || !strings.Contains(list, "acme-rate") {
		t.Errorf("after prune:\n%s", list)
	}

	// Deleting a tenant rules still use is refused.
	code, _, errs = run("--config", cfgA, "rules", "delete", "tenant:acme")
	if code != ExitProblems || !strings.Contains(errs, "refused") {
		t.Fatalf("delete of a used tenant: exit %d %s", code, errs)
	}
	code, out, errs = run("--config", cfgA, "rules", "delete", "block-bad-net", "no-such-rule")
	if code != ExitProblems || !strings.Contains(out, "- block-bad-net") || !strings.Contains(errs, "no-such-rule") {
		t.Fatalf("delete: exit %d\n%s\n%s", code, out, errs)
	}
	list = waitSame(t, cfgA, cfgB)
	if strings.Contains(list, "block-bad-net") {
		t.Errorf("deleted rule still listed:\n%s", list)
	}
}

// A tenant claiming a domain another tenant in force already has is refused
// before anything is written.
func TestApplyRefusesConflictWithRulesInForce(t *testing.T) {
	cfgA, _, _, _ := twoSites(t, "127.0.0.1:1")
	dir := t.TempDir()
	if code, _, errs := run("--config", cfgA, "rules", "apply", "-f", write(t, dir, "1.yaml", "tenants:\n  - {id: acme, domains: [acme.example]}\n")); code != 0 {
		t.Fatal(errs)
	}
	code, out, errs := run("--config", cfgA, "rules", "apply", "-f", write(t, dir, "2.yaml", "tenants:\n  - {id: acme2, domains: [acme.example]}\n"))
	if code != ExitProblems || !strings.Contains(errs, "refused") || !strings.Contains(errs, "acme.example") {
		t.Fatalf("exit %d\n%s\n%s", code, out, errs)
	}
}

func TestStatus(t *testing.T) {
	metrics := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `# HELP x
geomilter_rules_snapshot_age_seconds{milter="access"} 0.4
geomilter_rules_snapshot_rules{milter="access"} 12
geomilter_rules_snapshot_source{milter="access",source="disk"} 0
geomilter_rules_snapshot_source{milter="access",source="redis"} 1
geomilter_redis_breaker_state{milter="access",role="primary",site="a"} 0
geomilter_redis_breaker_state{milter="access",role="peer-replica",site="b"} 2
geomilter_spool_records{milter="access"} 1234
geomilter_spool_oldest_unsent_age_seconds{milter="access"} 35
geomilter_spool_sink_pending_records{milter="access",sink="site"} 1234
geomilter_spool_sink_pending_records{milter="access",sink="local"} 0
`)
	}))
	defer metrics.Close()
	cfgA, _, _, replicas := twoSites(t, strings.TrimPrefix(metrics.URL, "http://"))
	code, out, errs := run("--config", cfgA, "status")
	for _, want := range []string{"a     primary", "role master", "b     peer-replica", "master_link_status up",
		"redis", "12", "a:up b:down", "degraded", "1234 events, oldest 35s (site 1234)", "access: Redis b peer-replica down"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s\n%s", want, out, errs)
		}
	}
	if code != ExitProblems { // b's breaker is open in the milter
		t.Errorf("exit %d", code)
	}

	replicas["a"].Pause()
	defer replicas["a"].Resume()
	code, out, _ = run("--config", cfgA, "--timeout", "300ms", "status")
	if code != ExitProblems || !strings.Contains(out, "b peer-replica") || !regexp.MustCompile(`b +peer-replica +\S+ +down `).MatchString(out) {
		t.Errorf("status with a frozen replica: exit %d\n%s", code, out)
	}
}

func TestStandalone(t *testing.T) {
	dir := t.TempDir()
	rulesFile := write(t, dir, "rules.yaml", rulesV1)
	cfg := write(t, dir, "c.yaml", fmt.Sprintf("site: s\nhost: h\nrules_file: %s\nstate_dir: %s/st\nspool_dir: %s/sp\nmilters:\n  access: {listen: \"unix:%s/a.sock\"}\nmetrics: {listen: \"127.0.0.1:1\"}\n", rulesFile, dir, dir, dir))
	code, out, errs := run("--config", cfg, "rules", "apply", "-f", rulesFile)
	if code != 0 || !strings.Contains(out, "1 tenants, 3 rules") || !strings.Contains(out, "SIGHUP") {
		t.Fatalf("standalone apply: %d\n%s\n%s", code, out, errs)
	}
	code, out, _ = run("--config", cfg, "rules", "list")
	if code != 0 || !strings.Contains(out, "block-bad-net") || !strings.Contains(out, "file") {
		t.Fatalf("standalone list: %d\n%s", code, out)
	}
	code, out, _ = run("--config", cfg, "status")
	if code != ExitProblems || !strings.Contains(out, "standalone mode") || !strings.Contains(out, "1 tenants, 3 rules") || !regexp.MustCompile(`access +\S+ +down `).MatchString(out) {
		t.Fatalf("standalone status: %d\n%s", code, out)
	}
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{
		{}, {"rules"}, {"rules", "frobnicate"}, {"nope"}, {"rules", "apply"}, {"rules", "delete"}, {"--bogus", "status"},
	} {
		if code, _, _ := run(args...); code != ExitUsage {
			t.Errorf("%q: exit %d, want %d", args, code, ExitUsage)
		}
	}
	if code, _, errs := run("--config", "/nonexistent.yaml", "status"); code != ExitProblems || !strings.Contains(errs, "nonexistent") {
		t.Errorf("missing config: %d %s", code, errs)
	}
}

func TestParseSample(t *testing.T) {
	tests := []struct {
		line   string
		name   string
		labels map[string]string
		value  float64
	}{
		{`up 1`, "up", map[string]string{}, 1},
		{`m{a="x",b="y \"q\" \\ z"} 2.5 1700000000`, "m", map[string]string{"a": "x", "b": `y "q" \ z`}, 2.5},
		{`m{a="1",} -Inf`, "m", map[string]string{"a": "1"}, -1},
	}
	for _, tc := range tests {
		s, err := parseSample(tc.line)
		if err != nil {
			t.Fatalf("%s: %v", tc.line, err)
		}
		if tc.value == -1 {
			if s.value > -1e300 {
				t.Errorf("%s: value %v", tc.line, s.value)
			}
		} else if s.value != tc.value {
			t.Errorf("%s: value %v", tc.line, s.value)
		}
		if s.name != tc.name || fmt.Sprint(s.labels) != fmt.Sprint(tc.labels) {
			t.Errorf("%s: got %s %v", tc.line, s.name, s.labels)
		}
	}
	for _, bad := range []string{`m{a="x"`, `m{a=x} 1`, `m`, `m{} x`} {
		if _, err := parseSample(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}
