package policy_test

import (
	"testing"

	"github.com/geomilter/geomilter/milters/policy"
	"github.com/geomilter/geomilter/shared/config"
	"github.com/geomilter/geomilter/shared/config/configtest"
)

// TestBrokenSettings runs check-config on every testdata/broken file and
// compares its output with NAME.err (go test -update rewrites them).
func TestBrokenSettings(t *testing.T) {
	configtest.Broken(t, "testdata/broken", 1, configtest.CheckConfig)
}

// TestSettingsDocumented: every key of milters.policy has a row in
// docs/configuration.md.
func TestSettingsDocumented(t *testing.T) {
	configtest.DocumentsOptions(t, policy.Name, "../../docs/configuration.md")
}

const base = "site: lax\nhost: mx1.lax.example.net\nrules_file: /r.yaml\nstate_dir: /s\nspool_dir: /q\n"

func TestSettings(t *testing.T) {
	for _, tt := range []struct {
		in      string
		authsrv string
		maxSigs int
	}{
		{base + "milters: {policy: {listen: \"unix:/run/p.sock\"}}\n", "mx1.lax.example.net", policy.DefaultMaxSignatures},
		{base + "milters: {policy: {listen: \"unix:/run/p.sock\", authserv_id: mx.example, dkim: {max_signatures: 16}}}\n", "mx.example", 16},
		{base, "mx1.lax.example.net", policy.DefaultMaxSignatures}, // no section: defaults
	} {
		cfg, err := config.Parse("p.yaml", []byte(tt.in))
		if err != nil {
			t.Fatal(err)
		}
		s := policy.ConfigFrom(cfg)
		if s.AuthservID != tt.authsrv || s.DKIM.MaxSignatures != tt.maxSigs {
			t.Errorf("%q: settings %+v", tt.in, s)
		}
	}
}
