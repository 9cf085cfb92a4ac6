package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestExampleConfigsPassCheckConfig: each host config in deploy/examples (the
// standalone geomilter.yaml, the one-socket suite.yaml, the two-site pair) passes `geomilter check-config`
// on a host that has what it names: the paths are moved under a temporary
// directory holding the rules example, a Redis password file and the socket
// directory, as an installation would provide them.
func TestExampleConfigsPassCheckConfig(t *testing.T) {
	examples, err := filepath.Glob("../deploy/examples/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	more, _ := filepath.Glob("../deploy/examples/*/*.yaml")
	examples = append(examples, more...)
	rulesExample, err := os.ReadFile("../deploy/examples/rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, ex := range examples {
		if filepath.Base(ex) == "rules.yaml" {
			continue // a rules file, not a host config (its own check: rules_file below)
		}
		n++
		t.Run(strings.TrimPrefix(ex, "../deploy/examples/"), func(t *testing.T) {
			data, err := os.ReadFile(ex)
			if err != nil {
				t.Fatal(err)
			}
			root := t.TempDir()
			host := func(p string) string { return filepath.Join(root, p) }
			// What an installation provides: the rules file, the Redis
			// password, the socket directory (systemd's RuntimeDirectory), the
			// log directory. state_dir and spool_dir are created at start.
			for _, d := range []string{"/etc/geomilter", "/run/geomilter", "/var/log/geomilter"} {
				if err := os.MkdirAll(host(d), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			files := map[string][]byte{"/etc/geomilter/rules.yaml": rulesExample, "/etc/geomilter/redis.pass": []byte("secret\n")}
			for p, b := range files {
				if err := os.WriteFile(host(p), b, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			cfg := string(data)
			for _, dir := range []string{"/etc/geomilter", "/run/geomilter", "/var/lib/geomilter", "/var/spool/geomilter", "/var/log/geomilter"} {
				for _, before := range []string{" ", "unix:"} {
					cfg = strings.ReplaceAll(cfg, before+dir, before+host(dir))
				}
			}
			if strings.Contains(cfg, " /etc/") || strings.Contains(cfg, " /var/") || strings.Contains(cfg, ":/run/") {
				t.Fatalf("a path the test does not move under its host dir:\n%s", cfg)
			}
			path := filepath.Join(root, filepath.Base(ex))
			if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
				t.Fatal(err)
			}
			var out, errw bytes.Buffer
			if code := run([]string{"check-config", "--config", path}, &out, &errw); code != 0 || out.String() != path+": ok\n" {
				t.Errorf("check-config: exit %d\n%s%s\nthe config as checked:\n%s", code, out.String(), errw.String(), cfg)
			}
		})
	}
	if n < 4 {
		t.Errorf("found %d host configs in deploy/examples; want geomilter.yaml, suite.yaml and two-site/lax.yaml, dal.yaml", n)
	}
}
