package policy

import (
	"strings"

	"github.com/geomilter/geomilter/shared/config"
	"github.com/geomilter/geomilter/shared/yamlconf"
)

// Settings are the policy milter's own keys in milters.policy, beside the
// common ones (docs/configuration.md). Parse decodes and checks them; the
// milter takes them with ConfigFrom.
type Settings struct {
	// AuthservID names this host in the Authentication-Results header the
	// milter adds, and tells which incoming ones claim to be ours (forged,
	// so removed). RFC 8601 §2.5: the name of the host doing the checks.
	AuthservID string       `yaml:"authserv_id"`
	DKIM       DKIMSettings `yaml:"dkim"`
}

// DKIMSettings bound DKIM verification.
type DKIMSettings struct {
	// MaxSignatures is how many DKIM-Signature headers of one message are
	// verified; the rest are not (each costs a DNS query and a hash of the
	// body). RFC 6376 §6.1: verifiers MAY limit the signatures they try.
	MaxSignatures int `yaml:"max_signatures"`
}

// Defaults for keys absent from milters.policy.
const (
	DefaultMaxSignatures = 8
	maxMaxSignatures     = 64
	maxAuthservID        = 255
)

func init() { config.RegisterMilterOptions(Name, DefaultSettings, checkSettings) }

// DefaultSettings returns the options of a milters.policy section without
// own keys: authserv_id is the config's host (by default the system's host
// name).
func DefaultSettings(cfg *config.Config) *Settings {
	return &Settings{AuthservID: cfg.Host, DKIM: DKIMSettings{MaxSignatures: DefaultMaxSignatures}}
}

// ConfigFrom returns the policy options of a loaded config (the defaults
// when the config has no milters.policy section).
func ConfigFrom(cfg *config.Config) *Settings {
	if o, ok := cfg.MilterOptions(Name).(*Settings); ok {
		return o
	}
	return DefaultSettings(cfg)
}

func checkSettings(doc *yamlconf.Doc, path string, o *Settings) {
	if err := checkAuthservID(o.AuthservID); err != "" {
		if !doc.Has(path + ".authserv_id") {
			// The default, from host: say where it came from.
			err = "not set, and the default (host " + quote(o.AuthservID) + ") cannot be used: " + err + "; set authserv_id"
		}
		doc.Problemf(path+".authserv_id", "%s", err)
	}
	if n := o.DKIM.MaxSignatures; n < 1 || n > maxMaxSignatures {
		doc.Problemf(path+".dkim.max_signatures", "must be between 1 and %d, got %d", maxMaxSignatures, n)
	}
}

// checkAuthservID returns what is wrong with id, or "". RFC 8601 §2.2: an
// authserv-id is a "value" (RFC 2045 §5.1: a token or a quoted-string); we
// accept tokens only, which every host name is, so the header we write
// needs no quoting and a forged one is recognised by a plain comparison.
func checkAuthservID(id string) string {
	switch {
	case id == "":
		return "must not be empty (the host name of this MTA, e.g. mx1.example.net)"
	case len(id) > maxAuthservID:
		return "longer than 255 characters"
	}
	for _, r := range id {
		if r <= ' ' || r >= 0x7f || strings.ContainsRune(`()<>@,;:\"/[]?=`, r) {
			return "invalid authserv-id " + quote(id) + ": use a host name (letters, digits, '.', '-'; RFC 8601 §2.2)"
		}
	}
	return ""
}

func quote(s string) string { return `"` + strings.ReplaceAll(s, `"`, `\"`) + `"` }
