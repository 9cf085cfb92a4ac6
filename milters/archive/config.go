package archive

import (
	"github.com/geomilter/geomilter/shared/config"
	"github.com/geomilter/geomilter/shared/yamlconf"
)

// Settings are the archive milter's own keys in milters.archive, beside the
// common ones (docs/configuration.md). Parse decodes and checks them; the
// milter takes them with ConfigFrom.
type Settings struct {
	Journal JournalSettings `yaml:"journal"`
}

// JournalSettings bound the journal: one record per accepted message, on
// disk before Postfix is answered.
type JournalSettings struct {
	// MaxMessageSize is the largest message journaled. A larger one is
	// answered with a temporary failure, never accepted without its
	// record; keep it at or above Postfix's message_size_limit.
	MaxMessageSize yamlconf.Size `yaml:"max_message_size"`
	// MaxBytes bounds the undelivered journal records on disk. When full,
	// new messages are answered with a temporary failure (and counted),
	// rather than accepted without a record.
	MaxBytes yamlconf.Size `yaml:"max_bytes"`
}

// Defaults for keys absent from milters.archive.
const (
	// DefaultMaxMessageSize is well above Postfix's default
	// message_size_limit (10240000 bytes).
	DefaultMaxMessageSize = yamlconf.Size(100 << 20)
	// DefaultMaxBytes holds about a day of a busy host's mail while every
	// archive target is dark.
	DefaultMaxBytes   = yamlconf.Size(10 << 30)
	maxMaxMessageSize = yamlconf.Size(4 << 30)
)

func init() { config.RegisterMilterOptions(Name, DefaultSettings, checkSettings) }

// DefaultSettings returns the options of a milters.archive section without
// own keys.
func DefaultSettings(*config.Config) *Settings {
	return &Settings{Journal: JournalSettings{MaxMessageSize: DefaultMaxMessageSize, MaxBytes: DefaultMaxBytes}}
}

// ConfigFrom returns the archive options of a loaded config (the defaults
// when the config has no milters.archive section).
func ConfigFrom(cfg *config.Config) *Settings {
	if o, ok := cfg.MilterOptions(Name).(*Settings); ok {
		return o
	}
	return DefaultSettings(cfg)
}

func checkSettings(doc *yamlconf.Doc, path string, o *Settings) {
	j := o.Journal
	if j.MaxMessageSize <= 0 || j.MaxMessageSize > maxMaxMessageSize {
		doc.Problemf(path+".journal.max_message_size", "must be more than 0 and at most %s, got %s", maxMaxMessageSize, j.MaxMessageSize)
	}
	switch {
	case j.MaxBytes <= 0:
		doc.Problemf(path+".journal.max_bytes", "must be more than 0, got %s", j.MaxBytes)
	case j.MaxMessageSize > 0 && j.MaxBytes < j.MaxMessageSize:
		// Else the largest message allowed could never be journaled.
		doc.Problemf(path+".journal.max_bytes", "must be at least journal.max_message_size (%s), got %s", j.MaxMessageSize, j.MaxBytes)
	}
}
