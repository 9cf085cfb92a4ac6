package policy

import (
	"math"
	"strings"

	"github.com/geomilter/geomilter/milters/policy/dnsbl"
	"github.com/geomilter/geomilter/milters/policy/greylist"
	"github.com/geomilter/geomilter/milters/policy/scanner"
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

	// DNSBL and DNSWL are lists the client IP is looked up in; URIBL lists
	// the domains of URLs in the message (docs/policy.md "Lists").
	DNSBL []dnsbl.List `yaml:"dnsbl"`
	DNSWL []dnsbl.List `yaml:"dnswl"`
	URIBL []dnsbl.List `yaml:"uribl"`
	// Greylist is greylisting over the state shared by the sites.
	Greylist greylist.Settings `yaml:"greylist"`
	// Scoring turns the message's score into an action, per tenant.
	Scoring ScoringSettings `yaml:"scoring"`
	// Content bounds the MIME walk the content rules and URIBL run on.
	Content ContentSettings `yaml:"content"`
	// Scanners are rspamd or spamd instances whose scores join ours.
	Scanners []scanner.Config `yaml:"scanners"`
}

// ScoringSettings are the score thresholds (global, and per tenant where a
// tenant overrides one) and the built-in scores.
type ScoringSettings struct {
	Thresholds `yaml:",inline"`
	// Tenants override thresholds for the recipients of one tenant; a key
	// a tenant does not set is the global one.
	Tenants map[string]Thresholds `yaml:"tenants"`
	// DefaultRules turns on the built-in content rules (GTUBE).
	DefaultRules bool `yaml:"default_rules"`
	// MIMEProblem is added once per kind of malformed MIME or limit
	// reached (depth, parts, boundary, encoding, header, …).
	MIMEProblem float64 `yaml:"mime_problem"`
}

// Thresholds are the scores from which a message is tagged, quarantined,
// rejected. 0 turns that action off. A nil field is not set (a tenant's
// inherits the global value).
type Thresholds struct {
	Tag        *float64 `yaml:"tag"`
	Quarantine *float64 `yaml:"quarantine"`
	Reject     *float64 `yaml:"reject"`
	// SubjectPrefix is put before the Subject of a tagged message
	// ("[SPAM] "); empty: the subject is left alone.
	SubjectPrefix *string `yaml:"subject_prefix"`
}

// Limits are the thresholds in force for one tenant.
type Limits struct {
	Tag, Quarantine, Reject float64
	SubjectPrefix           string
}

// For returns the thresholds of a tenant ("" for recipients of no tenant).
func (s *ScoringSettings) For(tenant string) Limits {
	l := Limits{}
	apply := func(t Thresholds) {
		if t.Tag != nil {
			l.Tag = *t.Tag
		}
		if t.Quarantine != nil {
			l.Quarantine = *t.Quarantine
		}
		if t.Reject != nil {
			l.Reject = *t.Reject
		}
		if t.SubjectPrefix != nil {
			l.SubjectPrefix = *t.SubjectPrefix
		}
	}
	apply(s.Thresholds)
	if t, ok := s.Tenants[tenant]; ok && tenant != "" {
		apply(t)
	}
	return l
}

// ContentSettings bound the walk of one message (shared/mimewalk limits).
type ContentSettings struct {
	MaxDepth     int           `yaml:"max_depth"`
	MaxParts     int           `yaml:"max_parts"`
	MaxScanBytes yamlconf.Size `yaml:"max_scan_bytes"`
	MaxURLs      int           `yaml:"max_urls"`
	// URIBLQueries bounds the URIBL look-ups of one message.
	URIBLQueries int `yaml:"uribl_queries"`
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

	// SpamAssassin's required_score is 5; rspamd rejects from 15.
	DefaultTagScore    = 5.0
	DefaultRejectScore = 15.0
	DefaultMIMEProblem = 1.0

	DefaultContentDepth = 20
	DefaultContentParts = 1000
	DefaultScanBytes    = 16 << 20
	DefaultMaxURLs      = 200
	DefaultURIBLQueries = 20
)

func init() { config.RegisterMilterOptions(Name, DefaultSettings, checkSettings) }

// DefaultSettings returns the options of a milters.policy section without
// own keys: authserv_id is the config's host (by default the system's host
// name).
func DefaultSettings(cfg *config.Config) *Settings {
	tag, reject, quarantine, prefix := DefaultTagScore, DefaultRejectScore, 0.0, ""
	return &Settings{
		AuthservID: cfg.Host, DKIM: DKIMSettings{MaxSignatures: DefaultMaxSignatures},
		Greylist: greylist.DefaultSettings(),
		Scoring: ScoringSettings{
			Thresholds:   Thresholds{Tag: &tag, Quarantine: &quarantine, Reject: &reject, SubjectPrefix: &prefix},
			DefaultRules: true, MIMEProblem: DefaultMIMEProblem,
		},
		Content: ContentSettings{
			MaxDepth: DefaultContentDepth, MaxParts: DefaultContentParts, MaxScanBytes: DefaultScanBytes,
			MaxURLs: DefaultMaxURLs, URIBLQueries: DefaultURIBLQueries,
		},
	}
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
	dnsbl.Validate(doc, path+".dnsbl", o.DNSBL, dnsbl.IP)
	dnsbl.Validate(doc, path+".dnswl", o.DNSWL, dnsbl.Allow)
	dnsbl.Validate(doc, path+".uribl", o.URIBL, dnsbl.URI)
	greylist.Validate(doc, path+".greylist", &o.Greylist)
	scanner.Validate(doc, path+".scanners", o.Scanners)
	checkThresholds(doc, path+".scoring", o.Scoring.Thresholds)
	for id, t := range o.Scoring.Tenants {
		checkThresholds(doc, path+".scoring.tenants."+id, t)
	}
	if v := o.Scoring.MIMEProblem; v < 0 || v > maxScore || math.IsNaN(v) {
		doc.Problemf(path+".scoring.mime_problem", "must be between 0 and %v, got %v", maxScore, v)
	}
	c := o.Content
	for _, k := range []struct {
		key    string
		v, max int
	}{{"max_depth", c.MaxDepth, 1000}, {"max_parts", c.MaxParts, 1_000_000}, {"max_urls", c.MaxURLs, 10_000}, {"uribl_queries", c.URIBLQueries, 1000}} {
		if k.v < 1 || k.v > k.max {
			doc.Problemf(path+".content."+k.key, "must be between 1 and %d, got %d", k.max, k.v)
		}
	}
	if c.MaxScanBytes < 1<<10 {
		doc.Problemf(path+".content.max_scan_bytes", "must be at least 1KiB, got %d", int64(c.MaxScanBytes))
	}
}

// maxScore bounds thresholds and built-in scores (a rule's score is
// bounded alike, shared/rules).
const maxScore = 1000

// checkThresholds checks one set of thresholds: finite, not negative, and
// in order where set (tag ≤ quarantine ≤ reject, ignoring those off).
func checkThresholds(doc *yamlconf.Doc, path string, t Thresholds) {
	for _, k := range []struct {
		key string
		v   *float64
	}{{"tag", t.Tag}, {"quarantine", t.Quarantine}, {"reject", t.Reject}} {
		if k.v != nil && (*k.v < 0 || *k.v > maxScore || math.IsNaN(*k.v)) {
			doc.Problemf(path+"."+k.key, "must be between 0 (off) and %d, got %v", maxScore, *k.v)
		}
	}
	if t.SubjectPrefix != nil {
		for _, r := range *t.SubjectPrefix {
			if r < 0x20 || r == 0x7f {
				doc.Problemf(path+".subject_prefix", "must be printable text on one line")
				break
			}
		}
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
