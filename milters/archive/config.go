package archive

import (
	"path/filepath"
	"strconv"
	"time"

	"github.com/geomilter/geomilter/milters/archive/target"
	"github.com/geomilter/geomilter/shared/config"
	"github.com/geomilter/geomilter/shared/rules"
	"github.com/geomilter/geomilter/shared/yamlconf"
)

// Settings are the archive milter's own keys in milters.archive, beside the
// common ones (docs/configuration.md). Parse decodes and checks them; the
// milter takes them with ConfigFrom.
type Settings struct {
	Journal JournalSettings `yaml:"journal"`
}

// JournalSettings bound the journal: one record per accepted message, on
// disk before Postfix is answered, and say where the records go.
type JournalSettings struct {
	// MaxMessageSize is the largest message journaled. A larger one is
	// answered with a temporary failure, never accepted without its
	// record; keep it at or above Postfix's message_size_limit.
	MaxMessageSize yamlconf.Size `yaml:"max_message_size"`
	// MaxBytes bounds the undelivered journal records on disk. When full,
	// new messages are answered with a temporary failure (and counted),
	// rather than accepted without a record.
	MaxBytes yamlconf.Size `yaml:"max_bytes"`
	// Dir is the journal spool; "" means <spool_dir>/archive/journal.
	Dir string `yaml:"dir"`
	// Retain keeps records every target has received this long, within
	// RetainBytes, so that `ctl archive replay` can send a window again.
	Retain      time.Duration `yaml:"retain"`
	RetainBytes yamlconf.Size `yaml:"retain_bytes"`
	// Batch is how many records one send to a target carries.
	Batch   int                  `yaml:"batch"`
	Backoff config.BackoffConfig `yaml:"backoff"`
	// DeadLetterDir takes the records a target refused for good; ""
	// means <dir>/dead.
	DeadLetterDir string `yaml:"dead_letter_dir"`
	// Targets are where the records go (package target: smtp, dir,
	// http); none configured means the default directory target.
	Targets []target.Config `yaml:"targets"`
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
	// DefaultRetain: a day of delivered records can be sent again (an
	// archive restored from yesterday's backup).
	DefaultRetain      = 24 * time.Hour
	DefaultRetainBytes = yamlconf.Size(1 << 30)
	DefaultBatch       = 10
	maxBatch           = 1000
	// Journal targets are retried less eagerly than trail sinks: a dark
	// archive is retried every few minutes at most, with jitter.
	DefaultMinBackoff = time.Second
	DefaultMaxBackoff = 5 * time.Minute
)

func init() { config.RegisterMilterOptions(Name, DefaultSettings, checkSettings) }

// DefaultSettings returns the options of a milters.archive section without
// own keys.
func DefaultSettings(cfg *config.Config) *Settings {
	return &Settings{Journal: JournalSettings{
		MaxMessageSize: DefaultMaxMessageSize, MaxBytes: DefaultMaxBytes,
		Retain: DefaultRetain, RetainBytes: DefaultRetainBytes, Batch: DefaultBatch,
		Backoff: config.BackoffConfig{Min: DefaultMinBackoff, Max: DefaultMaxBackoff},
	}}
}

// ConfigFrom returns the archive options of a loaded config (the defaults
// when the config has no milters.archive section).
func ConfigFrom(cfg *config.Config) *Settings {
	o, ok := cfg.MilterOptions(Name).(*Settings)
	if !ok {
		o = DefaultSettings(cfg)
	}
	return o
}

// JournalDir is where the journal spool lives.
func (j *JournalSettings) JournalDir(cfg *config.Config) string {
	if j.Dir != "" {
		return j.Dir
	}
	return filepath.Join(cfg.SpoolDir, Name, "journal")
}

// DeadDir is where refused records go.
func (j *JournalSettings) DeadDir(cfg *config.Config) string {
	if j.DeadLetterDir != "" {
		return j.DeadLetterDir
	}
	return filepath.Join(j.JournalDir(cfg), "dead")
}

// DefaultTargetName is the target a journal without configured targets
// writes to: a directory beside the journal, so that every accepted
// message is journaled somewhere even before an archive is set up.
const DefaultTargetName = "local"

// TargetList returns the targets in force: the configured ones, or the
// default directory target <spool_dir>/archive/files when none is
// configured.
func (j *JournalSettings) TargetList(cfg *config.Config) []target.Config {
	if len(j.Targets) == 0 {
		return []target.Config{{Name: DefaultTargetName, Type: target.TypeDir,
			Path: filepath.Join(cfg.SpoolDir, Name, "files")}}
	}
	return j.Targets
}

func checkSettings(doc *yamlconf.Doc, path string, o *Settings) {
	j := &o.Journal
	jp := path + ".journal"
	if j.MaxMessageSize <= 0 || j.MaxMessageSize > maxMaxMessageSize {
		doc.Problemf(jp+".max_message_size", "must be more than 0 and at most %s, got %s", maxMaxMessageSize, j.MaxMessageSize)
	}
	switch {
	case j.MaxBytes <= 0:
		doc.Problemf(jp+".max_bytes", "must be more than 0, got %s", j.MaxBytes)
	case j.MaxMessageSize > 0 && j.MaxBytes < j.MaxMessageSize:
		// Else the largest message allowed could never be journaled.
		doc.Problemf(jp+".max_bytes", "must be at least journal.max_message_size (%s), got %s", j.MaxMessageSize, j.MaxBytes)
	}
	if j.Dir != "" && !filepath.IsAbs(j.Dir) {
		doc.Problemf(jp+".dir", "must be an absolute path, got %q", j.Dir)
	}
	if j.DeadLetterDir != "" && !filepath.IsAbs(j.DeadLetterDir) {
		doc.Problemf(jp+".dead_letter_dir", "must be an absolute path, got %q", j.DeadLetterDir)
	}
	if j.Retain < 0 {
		doc.Problemf(jp+".retain", "must not be negative (0 keeps nothing once delivered), got %s", j.Retain)
	}
	if j.RetainBytes < 0 {
		doc.Problemf(jp+".retain_bytes", "must not be negative, got %s", j.RetainBytes)
	}
	if j.Batch < 1 || j.Batch > maxBatch {
		doc.Problemf(jp+".batch", "must be between 1 and %d, got %d", maxBatch, j.Batch)
	}
	if j.Backoff.Min <= 0 {
		doc.Problemf(jp+".backoff.min", "must be more than 0, got %s", j.Backoff.Min)
	}
	if j.Backoff.Max < j.Backoff.Min {
		doc.Problemf(jp+".backoff.max", "must be at least backoff.min (%s), got %s", j.Backoff.Min, j.Backoff.Max)
	}
	seen := map[string]bool{}
	for i := range j.Targets {
		tp := jp + ".targets[" + strconv.Itoa(i) + "]"
		t := &j.Targets[i]
		switch {
		case t.Name == "":
			doc.Problemf(tp+".name", "required (it names the target's cursor, metrics and rules' targets)")
		case !rules.IsName(t.Name, 64):
			doc.Problemf(tp+".name", "%q may contain only letters, digits, '.', '_' and '-' (at most 64)", t.Name)
		case seen[t.Name]:
			doc.Problemf(tp+".name", "target %q is listed twice", t.Name)
		}
		seen[t.Name] = true
		for _, p := range t.Check() {
			if p.Key == "name" {
				continue // said above, with the config's words
			}
			doc.Problemf(tp+"."+p.Key, "%s", p.Msg)
		}
	}
}
