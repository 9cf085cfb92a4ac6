package greylist

import (
	"fmt"
	"time"

	"github.com/geomilter/geomilter/shared/rules"
	"github.com/geomilter/geomilter/shared/yamlconf"
)

// Settings are the keys of milters.policy.greylist (docs/policy.md
// "Greylisting, shared by every site").
type Settings struct {
	// Enabled greylists every inbound recipient; false (the default)
	// greylists only where a policy rule says "greylist".
	Enabled bool `yaml:"enabled"`
	// Delay is how long a new triplet is deferred: a retry before it is
	// deferred again.
	Delay time.Duration `yaml:"delay"`
	// RetryWindow is how long after the delay a retry still passes; a
	// retry later than Delay+RetryWindow after the first sighting starts
	// over.
	RetryWindow time.Duration `yaml:"retry_window"`
	// Lifetime is how long a passed triplet is kept since it was last
	// seen (and an auto-allowlisted network since its last message).
	Lifetime time.Duration `yaml:"lifetime"`
	// IPv4Prefix and IPv6Prefix group client addresses into networks: a
	// sender's pool of outbound servers retries from another address of
	// the same network.
	IPv4Prefix int `yaml:"ipv4_prefix"`
	IPv6Prefix int `yaml:"ipv6_prefix"`
	// AutoAllowlist: a client network that passed this many triplets
	// within Lifetime is not greylisted any more; 0 turns it off.
	AutoAllowlist int `yaml:"auto_allowlist"`
	// Reply is the SMTP reply of a deferred recipient.
	Reply string `yaml:"reply"`
}

// Defaults of DefaultSettings.
const (
	DefaultDelay         = 5 * time.Minute
	DefaultRetryWindow   = 24 * time.Hour
	DefaultLifetime      = 864 * time.Hour // 36 days: a monthly sender stays known
	DefaultIPv4Prefix    = 24
	DefaultIPv6Prefix    = 64
	DefaultAutoAllowlist = 5
	// DefaultReply: RFC 3463 §3.8, X.7.1 "delivery not authorized,
	// message refused"; a 4xx code so the client retries (RFC 5321 §4.2.1).
	DefaultReply = "451 4.7.1 Greylisted, please try again later"
)

// DefaultSettings returns the settings of a config without a greylist
// section.
func DefaultSettings() Settings {
	return Settings{
		Delay: DefaultDelay, RetryWindow: DefaultRetryWindow, Lifetime: DefaultLifetime,
		IPv4Prefix: DefaultIPv4Prefix, IPv6Prefix: DefaultIPv6Prefix,
		AutoAllowlist: DefaultAutoAllowlist, Reply: DefaultReply,
	}
}

// Ranges accepted by Validate. A delay of seconds is allowed (tests,
// operators trying it out); more than a day defers mail beyond what a
// client retries for (RFC 5321 §4.5.4.1: give up after 4-5 days, retry
// every 30 minutes or so).
var (
	durationRanges = []struct {
		key     string
		get     func(*Settings) time.Duration
		lo, hi  time.Duration
		meaning string
	}{
		{"delay", func(s *Settings) time.Duration { return s.Delay }, time.Second, 24 * time.Hour, "how long a new triplet is deferred"},
		{"retry_window", func(s *Settings) time.Duration { return s.RetryWindow }, time.Minute, 30 * 24 * time.Hour, "how long after the delay a retry still passes"},
		{"lifetime", func(s *Settings) time.Duration { return s.Lifetime }, time.Hour, 366 * 24 * time.Hour, "how long a passed triplet is kept"},
	}
	intRanges = []struct {
		key    string
		get    func(*Settings) int
		lo, hi int
	}{
		// Shorter prefixes would lump unrelated senders together.
		{"ipv4_prefix", func(s *Settings) int { return s.IPv4Prefix }, 8, 32},
		{"ipv6_prefix", func(s *Settings) int { return s.IPv6Prefix }, 16, 128},
		{"auto_allowlist", func(s *Settings) int { return s.AutoAllowlist }, 0, 1000},
	}
)

// Validate checks the settings decoded at path (defaults filled in before
// decoding, by DefaultSettings) and reports every problem with
// doc.Problemf.
func Validate(doc *yamlconf.Doc, path string, s *Settings) {
	for _, r := range durationRanges {
		if v := r.get(s); v < r.lo || v > r.hi {
			doc.Problemf(path+"."+r.key, "must be between %v and %v (%s), got %v", fmtDuration(r.lo), fmtDuration(r.hi), r.meaning, fmtDuration(v))
		}
	}
	for _, r := range intRanges {
		if v := r.get(s); v < r.lo || v > r.hi {
			doc.Problemf(path+"."+r.key, "must be between %d and %d, got %d", r.lo, r.hi, v)
		}
	}
	if err := checkReply(s.Reply); err != nil {
		doc.Problemf(path+".reply", "%v", err)
	}
}

// fmtDuration prints whole hours as hours ("720h", not "720h0m0s").
func fmtDuration(d time.Duration) string {
	switch {
	case d < 0:
		return d.String()
	case d >= time.Hour && d%time.Hour == 0:
		return fmt.Sprintf("%dh", d/time.Hour)
	case d >= time.Minute && d%time.Minute == 0:
		return fmt.Sprintf("%dm", d/time.Minute)
	}
	return d.String()
}

// checkReply accepts a 4xx reply only: a 5xx would refuse the mail for
// good, which greylisting never means.
func checkReply(reply string) error {
	r, err := rules.ParseReply(reply)
	if err != nil {
		return err
	}
	if r.Code/100 != 4 {
		return fmt.Errorf("reply %q: must be a 4xx (temporary) code such as 451 so the client retries; a 5xx refuses the mail for good", reply)
	}
	return nil
}

// check is what New requires of the settings: what the store and the key
// need to work at all (Validate is stricter, for config files).
func (s *Settings) check() error {
	switch {
	case s.Delay < time.Millisecond:
		return fmt.Errorf("delay %v: must be at least 1ms", s.Delay)
	case s.RetryWindow < 0:
		return fmt.Errorf("retry_window %v: must not be negative", s.RetryWindow)
	case s.Lifetime < time.Millisecond:
		return fmt.Errorf("lifetime %v: must be at least 1ms", s.Lifetime)
	case s.IPv4Prefix < 0 || s.IPv4Prefix > 32:
		return fmt.Errorf("ipv4_prefix %d: must be between 0 and 32", s.IPv4Prefix)
	case s.IPv6Prefix < 0 || s.IPv6Prefix > 128:
		return fmt.Errorf("ipv6_prefix %d: must be between 0 and 128", s.IPv6Prefix)
	case s.AutoAllowlist < 0:
		return fmt.Errorf("auto_allowlist %d: must not be negative", s.AutoAllowlist)
	}
	return nil
}
