package encrypt

import (
	"slices"
	"strconv"
	"strings"
	"unicode"

	"github.com/geomilter/geomilter/shared/config"
	"github.com/geomilter/geomilter/shared/yamlconf"
)

// Settings are the encrypt milter's own keys in milters.encrypt, beside the
// common ones (docs/configuration.md). Parse decodes and checks them; the
// milter takes them with ConfigFrom.
type Settings struct {
	// SubjectTags are the subject markers by which a sender asks for
	// encryption, matched case-insensitively and removed from the subject
	// before the message leaves (subjects travel unencrypted). An empty
	// list turns the subject trigger off.
	SubjectTags []string `yaml:"subject_tags"`
}

// DefaultSubjectTags are the tags of common gateways' conventions.
var DefaultSubjectTags = []string{"[secure]", "[encrypt]"}

const maxSubjectTag = 64

func init() { config.RegisterMilterOptions(Name, DefaultSettings, checkSettings) }

// DefaultSettings returns the options of a milters.encrypt section without
// own keys.
func DefaultSettings(*config.Config) *Settings {
	return &Settings{SubjectTags: slices.Clone(DefaultSubjectTags)}
}

// ConfigFrom returns the encrypt options of a loaded config (the defaults
// when the config has no milters.encrypt section).
func ConfigFrom(cfg *config.Config) *Settings {
	if o, ok := cfg.MilterOptions(Name).(*Settings); ok {
		return o
	}
	return DefaultSettings(cfg)
}

func checkSettings(doc *yamlconf.Doc, path string, o *Settings) {
	seen := make(map[string]int)
	for i, tag := range o.SubjectTags {
		p := path + ".subject_tags[" + strconv.Itoa(i) + "]"
		switch {
		case strings.TrimSpace(tag) == "":
			doc.Problemf(p, "must not be empty")
		case tag != strings.TrimSpace(tag):
			doc.Problemf(p, "must not start or end with white space, got %q", tag)
		case len(tag) > maxSubjectTag:
			doc.Problemf(p, "longer than %d bytes", maxSubjectTag)
		case strings.IndexFunc(tag, unicode.IsControl) >= 0:
			doc.Problemf(p, "must not contain control characters (CR, LF, tab), got %q", tag)
		default:
			key := strings.ToLower(tag)
			if first, dup := seen[key]; dup {
				doc.Problemf(p, "duplicate tag %q (also subject_tags[%d]; tags match case-insensitively)", tag, first)
			} else {
				seen[key] = i
			}
		}
	}
}
