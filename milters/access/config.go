package access

import (
	"github.com/geomilter/geomilter/shared/config"
	"github.com/geomilter/geomilter/shared/yamlconf"
)

// Settings are the access milter's own keys in milters.access, beside the
// common ones. It has none yet (its decisions come from the rules); the
// empty type is registered so that a misplaced or misspelt key in
// milters.access is reported with the keys that do exist, as in every
// other section.
type Settings struct{}

func init() {
	config.RegisterMilterOptions(Name, DefaultSettings, func(*yamlconf.Doc, string, *Settings) {})
}

// DefaultSettings returns the options of a milters.access section.
func DefaultSettings(*config.Config) *Settings { return &Settings{} }

// ConfigFrom returns the access options of a loaded config.
func ConfigFrom(cfg *config.Config) *Settings {
	if o, ok := cfg.MilterOptions(Name).(*Settings); ok {
		return o
	}
	return DefaultSettings(cfg)
}
