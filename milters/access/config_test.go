package access_test

import (
	"testing"

	"github.com/geomilter/geomilter/milters/access"
	"github.com/geomilter/geomilter/shared/config"
	"github.com/geomilter/geomilter/shared/config/configtest"
)

// TestBrokenSettings runs check-config on every testdata/broken file and
// compares its output with NAME.err (go test -update rewrites them).
func TestBrokenSettings(t *testing.T) {
	configtest.Broken(t, "testdata/broken", 1, configtest.CheckConfig)
}

// TestSettingsDocumented: every key of milters.access has a row in
// docs/configuration.md.
func TestSettingsDocumented(t *testing.T) {
	configtest.DocumentsOptions(t, access.Name, "../../docs/configuration.md")
}

func TestSettings(t *testing.T) {
	cfg, err := config.Parse("a.yaml", []byte("site: lax\nrules_file: /r.yaml\nstate_dir: /s\nspool_dir: /q\nmilters: {access: {listen: \"unix:/run/a.sock\"}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if access.ConfigFrom(cfg) == nil {
		t.Error("no settings")
	}
}
