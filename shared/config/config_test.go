package config

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/geomilter/geomilter/shared/yamlconf"
)

func TestLoadTwoSite(t *testing.T) {
	cfg, err := Load("testdata/good/two-site.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Standalone() || cfg.Site != "lax" || cfg.Host != "mta1.lax.example.net" {
		t.Errorf("site/host/mode wrong: %+v", cfg)
	}
	r := cfg.Redis
	wantLocal := InstanceConfig{
		Username: "geomilter", PasswordFile: "/etc/geomilter/redis.pass",
		TLS:      &TLSConfig{CAFile: "/etc/geomilter/ca.pem", CertFile: "/etc/geomilter/client.pem", KeyFile: "/etc/geomilter/client.key", ServerName: "redis.lax.example.net"},
		Sentinel: &SentinelConfig{MasterName: "gm-lax", Addrs: []string{"10.1.0.11:26379", "10.1.0.12:26379"}, PasswordFile: "/etc/geomilter/sentinel.pass"},
	}
	if !reflect.DeepEqual(r.Local, wantLocal) {
		t.Errorf("redis.local = %+v", r.Local)
	}
	if r.Peers["dal"].Addr != "127.0.0.1:6380" || r.Timeout != 20*time.Millisecond || r.DialTimeout != 200*time.Millisecond ||
		r.Breaker != (BreakerConfig{Failures: 5, OpenFor: 3 * time.Second}) {
		t.Errorf("redis = %+v", r)
	}
	tr := cfg.Trail
	if tr.SyncEvery != 50*time.Millisecond || tr.MaxBytes != 2<<30 || tr.SegmentBytes != 32<<20 || tr.Batch != 1000 ||
		tr.Backoff != (BackoffConfig{Min: 200 * time.Millisecond, Max: time.Minute}) {
		t.Errorf("trail = %+v", tr)
	}
	wantSinks := []SinkConfig{
		{Name: "site", Type: "redis", MaxLen: 500000},
		{Name: "loki", Type: "http", URL: "http://127.0.0.1:3100/loki/api/v1/push", Timeout: 10 * time.Second, Headers: map[string]string{"X-Scope-OrgID": "t1"}},
		{Name: "local", Type: "file", Path: "/var/log/geomilter/trail.ndjson", MaxBytes: 100 << 20, Keep: 3},
	}
	if !reflect.DeepEqual(tr.Sinks, wantSinks) {
		t.Errorf("sinks = %+v", tr.Sinks)
	}
	acc, ok := cfg.Milter("access")
	if !ok || !reflect.DeepEqual(*acc, MilterConfig{Listen: "unix:/run/geomilter/access.sock", MaxSessions: 1024, IdleTimeout: 5 * time.Minute, ShutdownTimeout: time.Minute, MaxProcs: 1, MessageDir: "/var/spool/geomilter/access/messages", MessageMemory: DefaultMessageMemory}) {
		t.Errorf("milters.access = %+v", acc)
	}
	for milter, want := range map[string]string{"access": "[::1]:9464", "policy": "[::1]:9465", "archive": "127.0.0.1:9600", "encrypt": "[::1]:9467"} {
		if got, err := cfg.MetricsListen(milter); err != nil || got != want {
			t.Errorf("MetricsListen(%s) = %q, %v; want %q", milter, got, err, want)
		}
	}
}

func TestDefaults(t *testing.T) {
	in := `
site: lax
redis:
  local: {addr: "127.0.0.1:6379"}
state_dir: /var/lib/geomilter
spool_dir: /var/spool/geomilter
trail:
  sinks:
    - {name: site, type: redis}
    - {name: loki, type: http, url: "http://127.0.0.1:3100/ingest"}
    - {name: local, type: file, path: /var/log/geomilter/trail.ndjson}
milters:
  policy: {listen: "unix:/run/geomilter/policy.sock"}
`
	cfg, err := Parse("d.yaml", []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	want := &Config{
		Site: "lax", Host: host, File: "d.yaml",
		Redis: &RedisConfig{
			Local:   InstanceConfig{Addr: "127.0.0.1:6379"},
			Timeout: 25 * time.Millisecond, DialTimeout: 100 * time.Millisecond,
			Breaker: BreakerConfig{Failures: 3, OpenFor: 2 * time.Second},
		},
		StateDir: "/var/lib/geomilter", SpoolDir: "/var/spool/geomilter",
		Log: LogConfig{Level: "info", Format: "json"},
		Trail: TrailConfig{
			SyncEvery: 100 * time.Millisecond, MaxBytes: 1 << 30, SegmentBytes: 64 << 20, Batch: 500,
			Backoff: BackoffConfig{Min: 100 * time.Millisecond, Max: 30 * time.Second},
			Sinks: []SinkConfig{
				{Name: "site", Type: "redis", MaxLen: 1000000},
				{Name: "loki", Type: "http", URL: "http://127.0.0.1:3100/ingest", Timeout: 5 * time.Second},
				{Name: "local", Type: "file", Path: "/var/log/geomilter/trail.ndjson", MaxBytes: 100 << 20, Keep: 5},
			},
		},
		Metrics: MetricsConfig{Listen: "127.0.0.1:9464"},
		DNS:     DNSConfig{Timeout: time.Second, MessageBudget: 3 * time.Second, CacheSize: 10000, ServeStale: 24 * time.Hour},
		Milters: MiltersConfig{Policy: &MilterConfig{Listen: "unix:/run/geomilter/policy.sock", MaxSessions: 512, IdleTimeout: 10 * time.Minute, ShutdownTimeout: 30 * time.Second, MaxProcs: DefaultMaxProcs, MessageDir: "/var/spool/geomilter/policy/messages", MessageMemory: DefaultMessageMemory}},
	}
	if cfg.doc == nil {
		t.Error("Parse did not keep the key positions (for the host checks)")
	}
	cfg.doc = nil
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("got\n%+v\nwant\n%+v", cfg, want)
	}
	if got, _ := cfg.MetricsListen("policy"); got != "127.0.0.1:9465" {
		t.Errorf("MetricsListen(policy) = %q, want 127.0.0.1:9465", got)
	}
	if _, ok := cfg.Milter("access"); ok {
		t.Error("Milter(access) present though the file has no milters.access")
	}
}

// An explicit zero must be reported, not silently replaced by the default.
func TestExplicitZeroIsNotDefaulted(t *testing.T) {
	in := "site: lax\nrules_file: /r.yaml\nstate_dir: /s\nspool_dir: /q\ntrail: {batch: 0}\n"
	_, err := Parse("z.yaml", []byte(in))
	if err == nil || err.Error() != "z.yaml:5:9: trail.batch: must be between 1 and 100000, got 0" {
		t.Errorf("err = %v", err)
	}
}

func TestHostnameUnknown(t *testing.T) {
	cfg := &Config{}
	doc, _ := yamlconf.Decode("h.yaml", []byte("site: lax\n"), cfg)
	applyDefaults(cfg, doc, func() (string, error) { return "", errors.New("no uts") })
	if got := doc.Problems().Error(); got != "h.yaml:1:1: host: not set, and the system hostname is unknown (no uts); set host" {
		t.Errorf("problems = %q", got)
	}
}

func TestLoadErrors(t *testing.T) {
	_, err := Load("testdata/does-not-exist.yaml")
	var ps yamlconf.Problems
	if !errors.As(err, &ps) || err.Error() != "testdata/does-not-exist.yaml: cannot read config: no such file or directory" {
		t.Errorf("err = %v", err)
	}
	var out bytes.Buffer
	if code := CheckConfig("testdata/does-not-exist.yaml", &out); code != 1 || !strings.Contains(out.String(), "cannot read config") {
		t.Errorf("CheckConfig = %d, %q", code, out.String())
	}
}

func TestParseListen(t *testing.T) {
	long := "unix:/" + strings.Repeat("a", 107)
	tests := []struct {
		in, network, addr, err string
	}{
		{"unix:/run/geomilter/access.sock", "unix", "/run/geomilter/access.sock", ""},
		{"inet:127.0.0.1:8891", "tcp", "127.0.0.1:8891", ""},
		{"inet:localhost:8891", "tcp", "localhost:8891", ""},
		{"inet:[::1]:8891", "tcp", "[::1]:8891", ""},
		{"inet:[2001:db8::1]:0", "tcp", "[2001:db8::1]:0", ""},
		{"inet:127.0.0.1:08891", "tcp", "127.0.0.1:8891", ""},
		{"unix:run/x.sock", "", "", `invalid socket "unix:run/x.sock": the unix socket path must be absolute`},
		{long, "", "", "the unix socket path is longer than 107 bytes"},
		{"inet:8891", "", "", `invalid socket "inet:8891": not host:port: missing port in address (want inet:host:port, IPv6 as inet:[::1]:port)`},
		{"inet::8891", "", "", "the host is missing"},
		{"inet:::1:8891", "", "", "too many colons"},
		{"inet:127.0.0.1:65536", "", "", `invalid port "65536"`},
		{"inet:127.0.0.1:smtp", "", "", `invalid port "smtp"`},
		{"inet:bad_host!:1", "", "", `invalid host "bad_host!"`},
		{"tcp:127.0.0.1:1", "", "", `unknown type "tcp"`},
		{"/run/x.sock", "", "", "want unix:/path or inet:host:port"},
		{"", "", "", "want unix:/path or inet:host:port"},
	}
	for _, tt := range tests {
		n, a, err := ParseListen(tt.in)
		if tt.err == "" {
			if err != nil || n != tt.network || a != tt.addr {
				t.Errorf("ParseListen(%q) = %q, %q, %v; want %q, %q", tt.in, n, a, err, tt.network, tt.addr)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.err) {
			t.Errorf("ParseListen(%q) error = %v, want containing %q", tt.in, err, tt.err)
		}
	}
}

func TestMetricsListen(t *testing.T) {
	cfg := &Config{Metrics: MetricsConfig{Listen: "127.0.0.1:9464"}}
	cfg.Milters.Encrypt = &MilterConfig{}
	cfg.Milters.Archive = &MilterConfig{MetricsListen: "0.0.0.0:9999"}
	for _, tt := range []struct{ milter, want, err string }{
		{"access", "127.0.0.1:9464", ""}, // offsets apply whether or not the milter is configured
		{"policy", "127.0.0.1:9465", ""},
		{"archive", "0.0.0.0:9999", ""},
		{"encrypt", "127.0.0.1:9467", ""},
		{"suite", "127.0.0.1:9468", ""},
		{"spam", "", `unknown milter "spam"`},
	} {
		got, err := cfg.MetricsListen(tt.milter)
		if got != tt.want || (err == nil) != (tt.err == "") || (err != nil && !strings.Contains(err.Error(), tt.err)) {
			t.Errorf("MetricsListen(%s) = %q, %v; want %q, %q", tt.milter, got, err, tt.want, tt.err)
		}
	}
	cfg.Metrics.Listen = "127.0.0.1:0"
	if got, _ := cfg.MetricsListen("encrypt"); got != "127.0.0.1:0" {
		t.Errorf("port 0 base: got %q, want 127.0.0.1:0", got)
	}
	cfg.Metrics.Listen = "127.0.0.1:65535"
	if _, err := cfg.MetricsListen("policy"); err == nil || !strings.Contains(err.Error(), "past 65535") {
		t.Errorf("overflow: err = %v", err)
	}
}

// TestSuite: milters.suite hosts its members; a member's own section keeps
// its settings and may leave listen out; the suite's process keys get the
// defaults of a milter section; the ops tools find a member's endpoints at
// the suite's metrics address.
func TestSuite(t *testing.T) {
	cfg, err := Load("testdata/good/suite.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s, ok := cfg.Suite()
	if !ok || !reflect.DeepEqual(s.Members, []string{"access", "policy", "encrypt", "archive"}) {
		t.Fatalf("suite = %+v, %v", s, ok)
	}
	mc, ok := cfg.Milter(SuiteName)
	want := MilterConfig{Listen: "unix:/run/geomilter/suite.sock", MaxSessions: 1024, IdleTimeout: DefaultIdleTimeout,
		ShutdownTimeout: DefaultShutdownTimeout, MaxProcs: DefaultMaxProcs, MessageDir: "/var/spool/geomilter/suite/messages", MessageMemory: DefaultMessageMemory}
	if !ok || mc != &s.MilterConfig || !reflect.DeepEqual(*mc, want) {
		t.Errorf("Milter(suite) = %+v, want %+v", mc, want)
	}
	for _, tt := range []struct {
		milter, process, metrics string
		inSuite                  bool
	}{
		{"access", "suite", "127.0.0.1:9464", true},
		{"policy", "suite", "127.0.0.1:9465", true},
		{"archive", "suite", "127.0.0.1:9466", true},
		{"encrypt", "suite", "127.0.0.1:9467", true},
		{"suite", "suite", "127.0.0.1:9468", false},
	} {
		addr, err := cfg.MetricsListen(tt.milter)
		if cfg.InSuite(tt.milter) != tt.inSuite || cfg.ProcessOf(tt.milter) != tt.process || err != nil || addr != tt.metrics {
			t.Errorf("%s: InSuite %v, ProcessOf %q, MetricsListen %q, %v", tt.milter, cfg.InSuite(tt.milter), cfg.ProcessOf(tt.milter), addr, err)
		}
	}
	if pol, _ := cfg.Milter("policy"); pol.Listen != "" {
		t.Errorf("milters.policy.listen = %q, want none (a suite member)", pol.Listen)
	}
	// Without a suite every milter is its own process.
	alone, err := Load("testdata/good/standalone.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := alone.Suite(); ok || alone.InSuite("access") || alone.ProcessOf("access") != "access" {
		t.Errorf("standalone.yaml: suite %v, InSuite(access) %v, ProcessOf(access) %q", ok, alone.InSuite("access"), alone.ProcessOf("access"))
	}
}

func FuzzLoad(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/*/*.yaml")
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("site: a\nrules_file: /r\nstate_dir: /s\nspool_dir: /q\nmilters: {policy: {listen: \"unix:/p\", dkim: {max_signatures: 2}, tags: [a]}}\n"))
	reg := testRegistry() // milter options too (DecodeRest)
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := parse("f.yaml", data, reg)
		if (cfg == nil) == (err == nil) {
			t.Fatalf("Parse returned cfg %v and err %v", cfg != nil, err)
		}
		if err != nil {
			var ps yamlconf.Problems
			if !errors.As(err, &ps) || len(ps) == 0 {
				t.Fatalf("error is not a non-empty Problems: %v", err)
			}
			return
		}
		for _, m := range ProcessNames() {
			// A suite member without a listen has no metrics of its own.
			if mc, ok := cfg.Milter(m); ok && (mc.Listen != "" || !cfg.InSuite(m)) {
				if _, err := cfg.MetricsListen(m); err != nil {
					t.Fatalf("valid config but MetricsListen(%s): %v", m, err)
				}
			}
		}
	})
}

func BenchmarkParse(b *testing.B) {
	data, err := os.ReadFile("testdata/good/two-site.yaml")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse("two-site.yaml", data); err != nil {
			b.Fatal(err)
		}
	}
}
