package archive_test

import (
	"testing"

	"github.com/geomilter/geomilter/milters/archive"
	"github.com/geomilter/geomilter/shared/config"
	"github.com/geomilter/geomilter/shared/config/configtest"
	"github.com/geomilter/geomilter/shared/yamlconf"
)

// TestBrokenSettings runs check-config on every testdata/broken file and
// compares its output with NAME.err (go test -update rewrites them).
func TestBrokenSettings(t *testing.T) {
	configtest.Broken(t, "testdata/broken", 1, configtest.CheckConfig)
}

// TestSettingsDocumented: every key of milters.archive has a row in
// docs/configuration.md.
func TestSettingsDocumented(t *testing.T) {
	configtest.DocumentsOptions(t, archive.Name, "../../docs/configuration.md")
}

const base = "site: lax\nrules_file: /r.yaml\nstate_dir: /s\nspool_dir: /q\n"

func TestSettings(t *testing.T) {
	for _, tt := range []struct {
		in       string
		msg, all yamlconf.Size
	}{
		{base + "milters: {archive: {listen: \"unix:/run/a.sock\"}}\n", archive.DefaultMaxMessageSize, archive.DefaultMaxBytes},
		{base + "milters: {archive: {listen: \"unix:/run/a.sock\", journal: {max_message_size: 50MiB}}}\n", 50 << 20, archive.DefaultMaxBytes},
		{base + "milters: {archive: {listen: \"unix:/run/a.sock\", journal: {max_message_size: 1MiB, max_bytes: 1MiB}}}\n", 1 << 20, 1 << 20},
		{base, archive.DefaultMaxMessageSize, archive.DefaultMaxBytes},
	} {
		cfg, err := config.Parse("a.yaml", []byte(tt.in))
		if err != nil {
			t.Fatal(err)
		}
		j := archive.ConfigFrom(cfg).Journal
		if j.MaxMessageSize != tt.msg || j.MaxBytes != tt.all {
			t.Errorf("%q: journal %+v", tt.in, j)
		}
	}
}
