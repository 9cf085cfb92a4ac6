// Package scanner asks external spam scanners — rspamd over its HTTP
// protocol (/checkv2) and SpamAssassin's spamd over SPAMC/1.5 — for their
// opinion of a message, so that their score and symbols can join the policy
// milter's own.
//
// A scanner is optional and must never hold mail hostage: every request is
// bounded by the scanner's budget (connect included), and a circuit breaker
// stops asking a scanner that failed several times in a row. While the
// breaker is open a message does not wait at all; a background probe (not a
// customer's message) closes it again once the scanner answers.
package scanner

import (
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/shared/yamlconf"
)

// Config is one scanner in milters.policy.scanners.
type Config struct {
	Type string `yaml:"type"` // rspamd | spamd
	// Address: rspamd: the URL of a normal worker (http://127.0.0.1:11333);
	// spamd: host:port or /path/to/socket.
	Address string `yaml:"address"`
	// Budget is the most one message waits for this scanner, connect
	// included; default 2s.
	Budget time.Duration `yaml:"budget"`
	// Weight multiplies the scanner's score before it joins ours; default 1.
	// 0 (written explicitly) asks the scanner for the trail only.
	Weight float64 `yaml:"weight"`
	// MaxSize: larger messages are not sent (skipped, and the result says
	// so); default 10 MiB.
	MaxSize yamlconf.Size `yaml:"max_size"`
	// Breaker: Failures in a row (default 3) open it for OpenFor (default
	// 30s), then a probe closes it when the scanner answers.
	Breaker BreakerConfig `yaml:"breaker"`
	// Password is sent to rspamd as its Password header (a controller
	// needs it); never logged. Optional.
	Password string `yaml:"password" json:"-"`
}

// String describes c for logs, without the password.
func (c Config) String() string {
	return fmt.Sprintf("%s %s (budget %s, weight %v, max_size %d, breaker %d failures/%s)",
		c.Type, c.Address, c.Budget, c.Weight, c.MaxSize, c.Breaker.Failures, c.Breaker.OpenFor)
}

// BreakerConfig is a scanner's circuit breaker.
type BreakerConfig struct {
	Failures int           `yaml:"failures"`
	OpenFor  time.Duration `yaml:"open_for"`
}

// Defaults for keys absent from a scanner's config.
const (
	DefaultBudget   = 2 * time.Second
	DefaultWeight   = 1.0
	DefaultMaxSize  = 10 << 20
	DefaultFailures = 3
	DefaultOpenFor  = 30 * time.Second

	maxBudget   = time.Minute
	maxWeight   = 100.0
	maxFailures = 1000
	maxOpenFor  = time.Hour
	// maxMaxSize: rspamd's default max_message is 50 MiB, spamd's own
	// limit is its clients'; beyond 1 GiB is surely a mistake.
	maxMaxSize = 1 << 30
)

// Types are the scanner types Config.Type accepts.
const (
	TypeRspamd = "rspamd"
	TypeSpamd  = "spamd"
)

// Validate fills in the defaults of cs (in place) and reports every problem
// with doc.Problemf at path[i].key. A key written with a zero value keeps
// it (weight: 0 asks the scanner for the trail only). With a nil doc it
// only fills in the defaults.
func Validate(doc *yamlconf.Doc, path string, cs []Config) {
	for i := range cs {
		c := &cs[i]
		p := path + "[" + strconv.Itoa(i) + "]"
		has := func(key string) bool { return doc != nil && doc.Has(p+"."+key) }
		applyDefaults(c, has)
		if doc == nil {
			continue
		}
		for _, e := range check(c) {
			doc.Problemf(p+"."+e.key, "%s", e.msg)
		}
	}
}

// applyDefaults sets the zero fields that were not written in the file
// (has reports whether a key was); a written zero stays and is checked.
func applyDefaults(c *Config, has func(key string) bool) {
	if c.Budget == 0 && !has("budget") {
		c.Budget = DefaultBudget
	}
	if c.Weight == 0 && !has("weight") {
		c.Weight = DefaultWeight
	}
	if c.MaxSize == 0 && !has("max_size") {
		c.MaxSize = DefaultMaxSize
	}
	if c.Breaker.Failures == 0 && !has("breaker.failures") {
		c.Breaker.Failures = DefaultFailures
	}
	if c.Breaker.OpenFor == 0 && !has("breaker.open_for") {
		c.Breaker.OpenFor = DefaultOpenFor
	}
}

type problem struct{ key, msg string }

// check returns the problems of a config whose defaults are applied.
func check(c *Config) []problem {
	var ps []problem
	add := func(key, format string, args ...any) { ps = append(ps, problem{key, fmt.Sprintf(format, args...)}) }
	switch c.Type {
	case TypeRspamd, TypeSpamd:
		if c.Address == "" {
			add("address", "required for a %s scanner (%s)", c.Type, addressHint(c.Type))
		} else if err := checkAddress(c.Type, c.Address); err != nil {
			add("address", "%s", err)
		}
	case "":
		add("type", "required: rspamd or spamd")
	default:
		add("type", "unknown scanner type %q (want rspamd or spamd)", c.Type)
	}
	if c.Budget <= 0 || c.Budget > maxBudget {
		add("budget", "must be between 1ms and %s, got %s", maxBudget, c.Budget)
	}
	if c.Weight < 0 || c.Weight > maxWeight || math.IsNaN(c.Weight) {
		add("weight", "must be between 0 and %v, got %v", maxWeight, c.Weight)
	}
	if c.MaxSize < 1 || c.MaxSize > maxMaxSize {
		add("max_size", "must be between 1 and %d bytes, got %d", maxMaxSize, c.MaxSize)
	}
	if c.Breaker.Failures < 1 || c.Breaker.Failures > maxFailures {
		add("breaker.failures", "must be between 1 and %d, got %d", maxFailures, c.Breaker.Failures)
	}
	if c.Breaker.OpenFor < time.Millisecond || c.Breaker.OpenFor > maxOpenFor {
		add("breaker.open_for", "must be between 1ms and %s, got %s", maxOpenFor, c.Breaker.OpenFor)
	}
	if c.Password != "" && c.Type == TypeSpamd {
		add("password", "spamd takes no password (only rspamd does)")
	}
	return ps
}

func addressHint(typ string) string {
	if typ == TypeRspamd {
		return "e.g. http://127.0.0.1:11333"
	}
	return "e.g. 127.0.0.1:783 or /run/spamd.sock"
}

// checkAddress checks the form of a scanner address (no connection made).
func checkAddress(typ, addr string) error {
	if typ == TypeRspamd {
		u, err := url.Parse(addr)
		if err != nil || u.Scheme != "http" || u.Host == "" {
			return fmt.Errorf("invalid rspamd address %q: want http://host:port (%s)", addr, addressHint(typ))
		}
		if u.User != nil {
			return fmt.Errorf("invalid rspamd address %q: put the password in password, not in the URL", redactURL(u))
		}
		if u.RawQuery != "" || u.Fragment != "" {
			return fmt.Errorf("invalid rspamd address %q: no query or fragment allowed", addr)
		}
		return nil
	}
	if filepath.IsAbs(addr) {
		return nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return fmt.Errorf("invalid spamd address %q: want host:port or an absolute socket path (%s)", addr, addressHint(typ))
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("invalid spamd address %q: port must be a number from 1 to 65535", addr)
	}
	return nil
}

func redactURL(u *url.URL) string {
	v := *u
	v.User = nil
	return v.String()
}

// Message is what a scanner is asked about.
type Message struct {
	// Open returns the whole message (header section + body); it is called
	// once per scanner asked, so it must return a fresh reader each time.
	Open func() io.Reader
	// Size is the length of what Open returns, in bytes.
	Size int64
	// ClientIP, ClientHost, Helo: the SMTP client. From is the envelope
	// sender ("" is the null sender), User the SASL login ("" = none).
	ClientIP, ClientHost, Helo, From, QueueID, User string
	Rcpts                                           []string
}

// Symbol is one rule a scanner reports as hit.
type Symbol struct {
	Name  string
	Score float64 // multiplied by Weight like Result.Score; 0 from spamd, which names rules without their scores
}

// Result is one scanner's answer about one message.
type Result struct {
	// Scanner is the scanner's Name.
	Scanner string
	// Score is the scanner's score multiplied by its Weight; Required is
	// the scanner's own threshold, as it reported it (not weighted).
	Score, Required float64
	// Action is rspamd's action ("no action", "add header", "reject", …) or
	// "spam"/"ham" from spamd.
	Action  string
	Symbols []Symbol
	// Skipped says why the scanner was not asked: "breaker open", "too
	// large"; "" when it was.
	Skipped string
	// Err is why there is no answer (timeout, connection refused, bad
	// reply), naming the scanner and the step.
	Err      error
	TimedOut bool
	// Duration is the time spent on the request (0 when skipped).
	Duration time.Duration
}

// Reasons a Result was skipped.
const (
	SkippedBreakerOpen = "breaker open"
	SkippedTooLarge    = "too large"
)

// Scanner asks one scanner.
type Scanner interface {
	// Name is "rspamd" or "spamd" (in a Set holding several scanners of
	// one type, followed by "@" and the address).
	Name() string
	// Scan asks about m within the scanner's budget (and ctx); it never
	// waits while the breaker is open.
	Scan(ctx context.Context, m Message) Result
}

// New returns a scanner for a validated Config (defaults applied where zero).
// The returned value also implements io.Closer: Close stops its probe.
func New(c Config, log zerolog.Logger, reg prometheus.Registerer) (Scanner, error) {
	return newClient(c, c.Type, log, reg)
}
