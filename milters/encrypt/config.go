package encrypt

import (
	"net/mail"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode"

	"github.com/geomilter/geomilter/milters/encrypt/detect"
	"github.com/geomilter/geomilter/milters/encrypt/inline"
	"github.com/geomilter/geomilter/shared/config"
	"github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/rules"
	"github.com/geomilter/geomilter/shared/yamlconf"
)

// Settings are the encrypt milter's own keys in milters.encrypt, beside the
// common ones (docs/configuration.md, docs/encrypt.md). Parse decodes and
// checks them; the milter takes them with ConfigFrom.
type Settings struct {
	// SubjectTags are the subject markers by which a sender asks for
	// encryption, matched case-insensitively and removed from the subject
	// before the message leaves (subjects travel unencrypted). An empty
	// list turns the subject trigger off.
	SubjectTags []string `yaml:"subject_tags"`
	// Route marks a message that must be encrypted with
	// X-Geomilter-Encrypt, which postfix/milter_header_checks sends to the
	// encryption gateway. Off (no gateway on this host), such a message is
	// encrypted inline or, failing that, rejected: never sent in clear.
	Route bool `yaml:"route"`
	// RejectText is the text of the 550 5.7.1 reply when a message must be
	// encrypted and can be neither routed nor encrypted inline (an encrypt
	// rule's own reply wins).
	RejectText string `yaml:"reject_text"`
	// Detect configures the content detectors that rules name in
	// match.detect.
	Detect DetectSettings `yaml:"detect"`
	// Inline configures encryption by the milter itself; Method "" is off.
	Inline InlineSettings `yaml:"inline"`
}

// DetectSettings mirror detect.Config.
type DetectSettings struct {
	Cards    bool              `yaml:"cards"`
	IBAN     bool              `yaml:"iban"`
	Patterns []PatternSettings `yaml:"patterns"`
	// MinConfidence is "low" (the default: every valid card number unless
	// only a non-card keyword is near it) or "high" (a card keyword or an
	// expiry date near it).
	MinConfidence string `yaml:"min_confidence"`
	MinCards      int    `yaml:"min_cards"`
	MinIBANs      int    `yaml:"min_ibans"`
}

// PatternSettings is one configured content pattern (detect.Pattern).
type PatternSettings struct {
	Name     string `yaml:"name"`
	Regexp   string `yaml:"regexp"`
	MinCount int    `yaml:"min_count"`
}

// InlineSettings configure inline S/MIME or PGP/MIME encryption.
type InlineSettings struct {
	// Method is smime or pgp; "" turns inline encryption off.
	Method string `yaml:"method"`
	// KeysDir is the key store (inline.KeyStore): one directory per tenant.
	KeysDir string `yaml:"keys_dir"`
	// Cipher is the S/MIME content encryption: aes256-cbc or aes256-gcm.
	Cipher string `yaml:"cipher"`
	// OAEP selects RSAES-OAEP for the S/MIME key transport.
	OAEP bool `yaml:"oaep"`
	// MaxSize bounds the message encrypted inline (S/MIME is built in
	// memory); a larger one is routed.
	MaxSize yamlconf.Size `yaml:"max_size"`
	// Escrow lists addresses whose keys (in the key store, under the
	// message's tenant or at its root) every inline-encrypted message is
	// also encrypted to: the archive journals the message as delivered,
	// so this is how the archive (or a compliance officer) can read it.
	// A message is encrypted inline only when every escrow key is found.
	Escrow []string `yaml:"escrow"`
}

// Defaults.
var DefaultSubjectTags = []string{"[secure]", "[encrypt]"}

const (
	// DefaultRejectText is what a client sees when its message must be
	// encrypted and this host cannot encrypt it.
	DefaultRejectText = "Message must be sent encrypted and cannot be encrypted here"
	// DefaultKeysDir is the key store of inline encryption.
	DefaultKeysDir = "/etc/geomilter/keys"
	// DefaultInlineMaxSize: S/MIME takes five to six times the message in
	// memory (package inline).
	DefaultInlineMaxSize = yamlconf.Size(inline.DefaultMaxSize)
	maxInlineMaxSize     = yamlconf.Size(1 << 30)
	maxSubjectTag        = 64
	maxPatterns          = 100
)

func init() { config.RegisterMilterOptions(Name, DefaultSettings, checkSettings) }

// DefaultSettings returns the options of a milters.encrypt section without
// own keys.
func DefaultSettings(*config.Config) *Settings {
	return &Settings{
		SubjectTags: slices.Clone(DefaultSubjectTags),
		Route:       true,
		RejectText:  DefaultRejectText,
		Detect:      DetectSettings{Cards: true, IBAN: true, MinConfidence: "low"},
		Inline:      InlineSettings{KeysDir: DefaultKeysDir, Cipher: string(inline.AES256CBC), MaxSize: DefaultInlineMaxSize},
	}
}

// ConfigFrom returns the encrypt options of a loaded config (the defaults
// when the config has no milters.encrypt section).
func ConfigFrom(cfg *config.Config) *Settings {
	if o, ok := cfg.MilterOptions(Name).(*Settings); ok {
		return o
	}
	return DefaultSettings(cfg)
}

// DetectConfig is the detect.Config the settings stand for (checked by
// Parse: it compiles).
func (d *DetectSettings) DetectConfig() detect.Config {
	c := detect.Config{Cards: d.Cards, IBAN: d.IBAN, MinCards: d.MinCards, MinIBANs: d.MinIBANs}
	c.MinConfidence, _ = detect.ParseConfidence(d.MinConfidence)
	for _, p := range d.Patterns {
		c.Patterns = append(c.Patterns, detect.Pattern{Name: p.Name, Regexp: p.Regexp, MinCount: p.MinCount})
	}
	return c
}

// Names lists the detectors rules can name: card and iban when enabled,
// then the patterns.
func (d *DetectSettings) Names() []string {
	var out []string
	if d.Cards {
		out = append(out, DetectorCard)
	}
	if d.IBAN {
		out = append(out, DetectorIBAN)
	}
	for _, p := range d.Patterns {
		out = append(out, p.Name)
	}
	return out
}

// Detector names in rules (match.detect).
const (
	DetectorCard = "card"
	DetectorIBAN = "iban"
)

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
	if t := o.RejectText; t == "" || len(t) > milterrt.MaxReplyText || strings.IndexFunc(t, func(r rune) bool { return r < 0x20 || r > 0x7e }) >= 0 {
		doc.Problemf(path+".reject_text", "must be 1 to %d printable ASCII characters (one SMTP reply line), got %q", milterrt.MaxReplyText, t)
	}
	checkDetect(doc, path+".detect", &o.Detect)
	checkInline(doc, path+".inline", &o.Inline)
}

func checkDetect(doc *yamlconf.Doc, path string, d *DetectSettings) {
	if _, err := detect.ParseConfidence(d.MinConfidence); err != nil {
		doc.Problemf(path+".min_confidence", "must be low or high, got %q", d.MinConfidence)
	}
	if d.MinCards < 0 {
		doc.Problemf(path+".min_cards", "must not be negative (0 means 1), got %d", d.MinCards)
	}
	if d.MinIBANs < 0 {
		doc.Problemf(path+".min_ibans", "must not be negative (0 means 1), got %d", d.MinIBANs)
	}
	if len(d.Patterns) > maxPatterns {
		doc.Problemf(path+".patterns", "at most %d patterns, got %d", maxPatterns, len(d.Patterns))
	}
	seen := map[string]int{}
	for i, p := range d.Patterns {
		pp := path + ".patterns[" + strconv.Itoa(i) + "]"
		switch {
		case p.Name == "":
			doc.Problemf(pp+".name", "required (the name rules use in match.detect)")
		case !rules.IsName(p.Name, 64):
			doc.Problemf(pp+".name", "%q may contain only letters, digits, '.', '_' and '-' (at most 64)", p.Name)
		case p.Name == DetectorCard || p.Name == DetectorIBAN:
			doc.Problemf(pp+".name", "%q is the name of a built-in detector", p.Name)
		default:
			if j, dup := seen[p.Name]; dup {
				doc.Problemf(pp+".name", "pattern %q is already patterns[%d]", p.Name, j)
			}
			seen[p.Name] = i
		}
		if p.MinCount < 0 {
			doc.Problemf(pp+".min_count", "must not be negative (0 means 1), got %d", p.MinCount)
		}
		switch re, err := regexp.Compile(p.Regexp); {
		case p.Regexp == "":
			doc.Problemf(pp+".regexp", "required (an RE2 regular expression, matched line by line)")
		case err != nil:
			doc.Problemf(pp+".regexp", "invalid regular expression: %v", err)
		case re.MatchString(""):
			doc.Problemf(pp+".regexp", "%q matches the empty string, so it would fire on every message", p.Regexp)
		}
	}
}

func checkInline(doc *yamlconf.Doc, path string, in *InlineSettings) {
	switch inline.Method(in.Method) {
	case "", inline.SMIME, inline.PGP:
	default:
		doc.Problemf(path+".method", "must be smime or pgp (or absent: no inline encryption), got %q", in.Method)
	}
	if !filepath.IsAbs(in.KeysDir) {
		doc.Problemf(path+".keys_dir", "must be an absolute path, got %q", in.KeysDir)
	}
	switch inline.Cipher(in.Cipher) {
	case inline.AES256CBC, inline.AES256GCM:
	default:
		doc.Problemf(path+".cipher", "must be %s or %s, got %q", inline.AES256CBC, inline.AES256GCM, in.Cipher)
	}
	for i, a := range in.Escrow {
		if _, err := mail.ParseAddress(a); err != nil || strings.ContainsAny(a, "<> ") {
			doc.Problemf(path+".escrow["+strconv.Itoa(i)+"]", "want an address (local@domain), got %q", a)
		}
	}
	if in.MaxSize <= 0 || in.MaxSize > maxInlineMaxSize {
		doc.Problemf(path+".max_size", "must be more than 0 and at most %s, got %s", maxInlineMaxSize, in.MaxSize)
	}
}
