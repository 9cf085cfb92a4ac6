package encrypt_test

import (
	"slices"
	"testing"

	"github.com/geomilter/geomilter/milters/encrypt"
	"github.com/geomilter/geomilter/shared/config"
	"github.com/geomilter/geomilter/shared/config/configtest"
)

// TestBrokenSettings runs check-config on every testdata/broken file and
// compares its output with NAME.err (go test -update rewrites them).
func TestBrokenSettings(t *testing.T) {
	configtest.Broken(t, "testdata/broken", 1, configtest.CheckConfig)
}

// TestSettingsDocumented: every key of milters.encrypt has a row in
// docs/configuration.md.
func TestSettingsDocumented(t *testing.T) {
	configtest.DocumentsOptions(t, encrypt.Name, "../../docs/configuration.md")
}

const base = "site: lax\nrules_file: /r.yaml\nstate_dir: /s\nspool_dir: /q\n"

func TestSettings(t *testing.T) {
	for _, tt := range []struct {
		in   string
		tags []string
	}{
		{base + "milters: {encrypt: {listen: \"unix:/run/e.sock\"}}\n", []string{"[secure]", "[encrypt]"}},
		{base + "milters: {encrypt: {listen: \"unix:/run/e.sock\", subject_tags: [\"[vertraulich]\", \"#enc\"]}}\n", []string{"[vertraulich]", "#enc"}},
		{base + "milters: {encrypt: {listen: \"unix:/run/e.sock\", subject_tags: []}}\n", []string{}}, // the trigger off
		{base, []string{"[secure]", "[encrypt]"}},
	} {
		cfg, err := config.Parse("e.yaml", []byte(tt.in))
		if err != nil {
			t.Fatal(err)
		}
		s := encrypt.ConfigFrom(cfg)
		if !slices.Equal(s.SubjectTags, tt.tags) {
			t.Errorf("%q: subject_tags %q, want %q", tt.in, s.SubjectTags, tt.tags)
		}
		s.SubjectTags = append(s.SubjectTags[:0], "changed")
	}
	if encrypt.DefaultSubjectTags[0] != "[secure]" {
		t.Error("a config's settings share the package defaults")
	}
}

func TestSettingsDefaultsAndValues(t *testing.T) {
	cfg, err := config.Parse("e.yaml", []byte(base+"milters: {encrypt: {listen: \"unix:/run/e.sock\"}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	s := encrypt.ConfigFrom(cfg)
	if !s.Route || s.RejectText != encrypt.DefaultRejectText || s.Inline.Method != "" || s.Inline.KeysDir != "/etc/geomilter/keys" ||
		s.Inline.Cipher != "aes256-cbc" || s.Inline.MaxSize != 25<<20 || !s.Detect.Cards || !s.Detect.IBAN || s.Detect.MinConfidence != "low" {
		t.Errorf("defaults %+v", s)
	}
	if got := s.Detect.Names(); !slices.Equal(got, []string{"card", "iban"}) {
		t.Errorf("names %q", got)
	}
	cfg, err = config.Parse("e.yaml", []byte(base+`milters:
  encrypt:
    listen: "unix:/run/e.sock"
    route: false
    reject_text: "Use the portal"
    detect: {cards: false, min_confidence: high, patterns: [{name: falcon, regexp: "(?i)project falcon", min_count: 2}]}
    inline: {method: pgp, keys_dir: /k, max_size: 1MiB}
`))
	if err != nil {
		t.Fatal(err)
	}
	s = encrypt.ConfigFrom(cfg)
	if s.Route || s.RejectText != "Use the portal" || s.Inline.Method != "pgp" || s.Inline.KeysDir != "/k" || s.Inline.Cipher != "aes256-cbc" || s.Inline.MaxSize != 1<<20 {
		t.Errorf("values %+v", s)
	}
	if got := s.Detect.Names(); !slices.Equal(got, []string{"iban", "falcon"}) {
		t.Errorf("names %q", got)
	}
	dc := s.Detect.DetectConfig()
	if dc.Cards || !dc.IBAN || dc.MinConfidence.String() != "high" || len(dc.Patterns) != 1 || dc.Patterns[0].MinCount != 2 {
		t.Errorf("detect config %+v", dc)
	}
}
