// Package config loads a geomilter host's configuration file: one YAML file
// per MTA host, shared by the four milter processes and the ops tools.
//
// Loading is strict and reports every problem at once, each with file, line
// and key path (see package yamlconf): a config error found by
// `geomilter check-config` before a deploy is cheap, one found by a milter
// failing to start on a live MTA is not. Defaults are applied only to keys
// absent from the file, so an explicit bad value (timeout: 0) is reported
// instead of being silently replaced. docs/configuration.md describes every
// key.
package config

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/geomilter/geomilter/shared/yamlconf"
)

// Config is a host's configuration. Optional sections are pointers: nil
// means absent (Redis nil = standalone mode; a nil milter section = that
// milter is not configured on this host).
type Config struct {
	Site      string        `yaml:"site"`
	Host      string        `yaml:"host"`
	Redis     *RedisConfig  `yaml:"redis"`
	RulesFile string        `yaml:"rules_file"`
	StateDir  string        `yaml:"state_dir"`
	SpoolDir  string        `yaml:"spool_dir"`
	Log       LogConfig     `yaml:"log"`
	Trail     TrailConfig   `yaml:"trail"`
	Metrics   MetricsConfig `yaml:"metrics"`
	DNS       DNSConfig     `yaml:"dns"`
	Milters   MiltersConfig `yaml:"milters"`

	// File is the path the config was loaded from (the name given to Parse).
	File string `yaml:"-"`

	// doc is where each key is in File, for the host checks' messages.
	doc *yamlconf.Doc
	// options holds each configured milter's own options (MilterOptions).
	options map[string]any
}

// RedisConfig is the redis section: this site's primary, the local read-only
// replicas of the peer sites' primaries, and the mail-path call budget.
type RedisConfig struct {
	Local       InstanceConfig            `yaml:"local"`
	Peers       map[string]InstanceConfig `yaml:"peers"`
	Timeout     time.Duration             `yaml:"timeout"`
	DialTimeout time.Duration             `yaml:"dial_timeout"`
	Breaker     BreakerConfig             `yaml:"breaker"`
}

// InstanceConfig says how to reach one Redis: either Addr or Sentinel.
type InstanceConfig struct {
	Addr         string          `yaml:"addr"`
	Username     string          `yaml:"username"`
	PasswordFile string          `yaml:"password_file"`
	TLS          *TLSConfig      `yaml:"tls"`
	Sentinel     *SentinelConfig `yaml:"sentinel"`
}

// SentinelConfig finds a primary through Redis Sentinel.
type SentinelConfig struct {
	MasterName   string   `yaml:"master_name"`
	Addrs        []string `yaml:"addrs"`
	Username     string   `yaml:"username"`
	PasswordFile string   `yaml:"password_file"`
}

// BreakerConfig is the circuit breaker around mail-path Redis calls.
type BreakerConfig struct {
	Failures int           `yaml:"failures"`
	OpenFor  time.Duration `yaml:"open_for"`
}

// LogConfig selects the process log's level and format.
type LogConfig struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"`
}

// TrailConfig is the trail spool (one per milter process) and its sinks.
type TrailConfig struct {
	SyncEvery    time.Duration `yaml:"sync_every"`
	MaxBytes     yamlconf.Size `yaml:"max_bytes"`
	SegmentBytes yamlconf.Size `yaml:"segment_bytes"`
	Sinks        []SinkConfig  `yaml:"sinks"`
	Batch        int           `yaml:"batch"`
	Backoff      BackoffConfig `yaml:"backoff"`
}

// SinkConfig is one trail sink. Which fields apply depends on Type:
// redis: MaxLen; http: URL, Timeout, Headers; file: Path, MaxBytes, Keep.
// Setting a field that does not apply to the type is a config problem.
type SinkConfig struct {
	Name string `yaml:"name"`
	Type string `yaml:"type"`

	MaxLen int64 `yaml:"maxlen"`

	URL     string            `yaml:"url"`
	Timeout time.Duration     `yaml:"timeout"`
	Headers map[string]string `yaml:"headers"`

	Path     string        `yaml:"path"`
	MaxBytes yamlconf.Size `yaml:"max_bytes"`
	Keep     int           `yaml:"keep"`
}

// BackoffConfig bounds the wait between failed sends to a sink.
type BackoffConfig struct {
	Min time.Duration `yaml:"min"`
	Max time.Duration `yaml:"max"`
}

// MetricsConfig is the base address of the metrics and /healthz endpoint.
type MetricsConfig struct {
	Listen string `yaml:"listen"`
}

// DNSConfig is the process's DNS resolver (package shared/resolver): the
// recursive servers it asks, and the budgets that bound how long mail
// waits for DNS. docs/dns.md explains the choices.
type DNSConfig struct {
	// Servers are IP:port addresses (IPv6 in brackets), tried in order;
	// empty means the nameservers of /etc/resolv.conf, port 53.
	Servers []string `yaml:"servers"`
	// Timeout is the budget of one look-up, all servers included.
	Timeout time.Duration `yaml:"timeout"`
	// MessageBudget is the total DNS waiting allowed to one message.
	MessageBudget time.Duration `yaml:"message_budget"`
	// CacheSize bounds the answer cache in entries; 0 turns it off.
	CacheSize int `yaml:"cache_size"`
	// ServeStale is how long past its TTL a cached answer is still served
	// while a fresh one is asked for in the background (RFC 8767); 0 off.
	ServeStale time.Duration `yaml:"serve_stale"`
}

// MiltersConfig has one optional section per milter, and the optional
// suite: several of them hosted in one process behind one socket.
type MiltersConfig struct {
	Access  *MilterConfig `yaml:"access"`
	Policy  *MilterConfig `yaml:"policy"`
	Archive *MilterConfig `yaml:"archive"`
	Encrypt *MilterConfig `yaml:"encrypt"`
	Suite   *SuiteConfig  `yaml:"suite"`
}

// SuiteName is the name of the process that hosts several milters behind
// one socket (`geomilter suite`, milters.suite).
const SuiteName = "suite"

// SuiteConfig is milters.suite: the process keys of a milter section
// (listen, max_sessions, …, which apply to the suite's one socket and
// process) and the members, in chain order. Each member keeps its own
// milters.<name> section for its settings; there its listen is optional,
// since it is used only when the milter runs alone.
type SuiteConfig struct {
	MilterConfig `yaml:",inline"`
	Members      []string `yaml:"members"`
}

// MilterConfig is how one milter process listens and bounds its sessions.
type MilterConfig struct {
	Listen          string        `yaml:"listen"`
	MetricsListen   string        `yaml:"metrics_listen"`
	MaxSessions     int           `yaml:"max_sessions"`
	IdleTimeout     time.Duration `yaml:"idle_timeout"`
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// MaxProcs is how many CPUs the milter process's Go runtime runs on at
	// once (GOMAXPROCS); 0 means all. GOMAXPROCS in the environment wins.
	MaxProcs int `yaml:"max_procs"`
	// MessageDir is where a message larger than MessageMemory is written while
	// it arrives (milters that read the whole message: policy, archive,
	// encrypt); "" means <spool_dir>/<milter>/messages. Files are removed at
	// the end of each transaction, and leftovers of a crash at start-up.
	MessageDir string `yaml:"message_dir"`
	// MessageMemory is how much of one message is kept in memory before the
	// rest goes to a file in MessageDir.
	MessageMemory yamlconf.Size `yaml:"message_memory"`

	// Rest holds the milter's own keys while the file is decoded; Parse
	// hands them to the options type the milter's package registered
	// (RegisterMilterOptions) and empties it. See Config.MilterOptions.
	Rest yamlconf.Rest `yaml:",rest"`
}

// MilterNames lists the milters in metrics-port offset order: access is
// metrics.listen's port + 0, policy + 1, archive + 2, encrypt + 3.
func MilterNames() []string { return []string{"access", "policy", "archive", "encrypt"} }

// ProcessNames lists what can run as a process, in metrics-port offset
// order: the four milters, then the suite (+ 4).
func ProcessNames() []string { return append(MilterNames(), SuiteName) }

// Defaults for keys absent from the file.
const (
	DefaultRedisTimeout     = 25 * time.Millisecond
	DefaultRedisDialTimeout = 100 * time.Millisecond
	DefaultBreakerFailures  = 3
	DefaultBreakerOpenFor   = 2 * time.Second
	DefaultLogLevel         = "info"
	DefaultLogFormat        = "json"
	DefaultSyncEvery        = 100 * time.Millisecond
	DefaultTrailMaxBytes    = yamlconf.Size(1 << 30)
	DefaultSegmentBytes     = yamlconf.Size(64 << 20)
	DefaultBatch            = 500
	DefaultBackoffMin       = 100 * time.Millisecond
	DefaultBackoffMax       = 30 * time.Second
	DefaultRedisSinkMaxLen  = 1_000_000
	DefaultHTTPSinkTimeout  = 5 * time.Second
	DefaultFileSinkMaxBytes = yamlconf.Size(100 << 20)
	DefaultFileSinkKeep     = 5
	DefaultMetricsListen    = "127.0.0.1:9464"
	// DefaultDNSTimeout and DefaultDNSMessageBudget: a second per look-up
	// (a nearby recursive resolver answers in milliseconds; opendkim's 5s
	// is what a dark server must not cost a message), three per message
	// (SPF, DKIM and DMARC each get one slow look-up). docs/dns.md.
	DefaultDNSTimeout       = time.Second
	DefaultDNSMessageBudget = 3 * time.Second
	DefaultDNSCacheSize     = 10000
	DefaultDNSServeStale    = 24 * time.Hour
	DefaultMaxSessions      = 512
	DefaultIdleTimeout      = 10 * time.Minute
	// DefaultMaxProcs is 1: a milter waits on Postfix between packets, and one
	// thread picks up the next packet without the wake-ups and spinning of an
	// idle multi-threaded scheduler (measured in BENCHMARKS.md, issue 6).
	DefaultMaxProcs        = 1
	DefaultShutdownTimeout = 30 * time.Second
	// DefaultMessageMemory keeps ordinary mail (most messages are well under
	// 256 KiB) off the disk, and bounds a session's memory for large ones.
	DefaultMessageMemory = yamlconf.Size(256 << 10)
)

// Load reads, decodes and validates the config file at path. On failure
// the error is a yamlconf.Problems listing every problem found.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, yamlconf.Problems{{File: path, Msg: fmt.Sprintf("cannot read config: %v", unwrapPath(err))}}
	}
	return Parse(path, data)
}

// unwrapPath drops the *PathError's repetition of the file name, which the
// Problem already shows.
func unwrapPath(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

// Parse decodes and validates a config file's contents; file is the name
// used in problem messages. On failure the error is a yamlconf.Problems.
func Parse(file string, data []byte) (*Config, error) {
	return parse(file, data, registered)
}

func parse(file string, data []byte, reg *registry) (*Config, error) {
	cfg := &Config{File: file}
	doc, _ := yamlconf.Decode(file, data, cfg)
	if !doc.Has("") && len(doc.Problems()) == 0 {
		doc.Problemf("", "the file is empty; a config needs at least site, state_dir and spool_dir")
		return nil, doc.Problems().Err()
	}
	if keys := rulesKeys(doc); keys != "" {
		// A list of unknown keys would not tell the user what happened.
		return nil, yamlconf.Problems{{File: file, Msg: "this looks like a rules file (" + keys +
			"); check-config wants a host config, see deploy/examples/geomilter.yaml " +
			"(rules files are checked with geomilter ctl rules apply -f FILE --dry-run)"}}
	}
	applyDefaults(cfg, doc, os.Hostname)
	decodeMilterOptions(cfg, doc, reg)
	validate(cfg, doc)
	if err := doc.Problems().Err(); err != nil {
		return nil, err
	}
	cfg.doc = doc
	return cfg, nil
}

// rulesKeys returns "tenants:, rules:" (the ones present) when the document
// has a rules file's top-level keys and none of a host config's required
// ones; "" otherwise.
func rulesKeys(doc *yamlconf.Doc) string {
	if doc.Has("site") || doc.Has("state_dir") || doc.Has("spool_dir") || doc.Has("milters") {
		return ""
	}
	var keys []string
	for _, k := range []string{"tenants", "rules"} {
		if doc.Has(k) {
			keys = append(keys, k+":")
		}
	}
	return strings.Join(keys, ", ")
}

// Standalone reports whether this host runs without Redis: rules from
// rules_file, counters in process memory.
func (c *Config) Standalone() bool { return c.Redis == nil }

// Milter returns the section of the named milter, and whether it is present
// (a milter runs only where its section is). For SuiteName it is the
// suite's process keys (the common keys of milters.suite).
func (c *Config) Milter(name string) (*MilterConfig, bool) {
	var m *MilterConfig
	switch name {
	case "access":
		m = c.Milters.Access
	case "policy":
		m = c.Milters.Policy
	case "archive":
		m = c.Milters.Archive
	case "encrypt":
		m = c.Milters.Encrypt
	case SuiteName:
		if c.Milters.Suite != nil {
			m = &c.Milters.Suite.MilterConfig
		}
	}
	return m, m != nil
}

// Suite returns milters.suite, and whether it is present.
func (c *Config) Suite() (*SuiteConfig, bool) { return c.Milters.Suite, c.Milters.Suite != nil }

// InSuite reports whether the named milter is a member of milters.suite.
func (c *Config) InSuite(milter string) bool {
	return c.Milters.Suite != nil && slices.Contains(c.Milters.Suite.Members, milter)
}

// ProcessOf names the process that serves the named milter on this host:
// SuiteName when it is a member of the suite, else the milter itself. The
// ops tools reach a milter's endpoints at MetricsListen(ProcessOf(name)).
func (c *Config) ProcessOf(milter string) string {
	if c.InSuite(milter) {
		return SuiteName
	}
	return milter
}

// applyDefaults fills keys absent from the file. Present keys are left
// alone even when zero, so validate can report them.
func applyDefaults(c *Config, doc *yamlconf.Doc, hostname func() (string, error)) {
	if !doc.Has("host") {
		h, err := hostname()
		if err != nil {
			doc.Problemf("host", "not set, and the system hostname is unknown (%v); set host", err)
		}
		c.Host = h
	}
	if r := c.Redis; r != nil {
		setDefault(doc, "redis.timeout", &r.Timeout, DefaultRedisTimeout)
		setDefault(doc, "redis.dial_timeout", &r.DialTimeout, DefaultRedisDialTimeout)
		setDefault(doc, "redis.breaker.failures", &r.Breaker.Failures, DefaultBreakerFailures)
		setDefault(doc, "redis.breaker.open_for", &r.Breaker.OpenFor, DefaultBreakerOpenFor)
	}
	setDefault(doc, "log.level", &c.Log.Level, DefaultLogLevel)
	setDefault(doc, "log.format", &c.Log.Format, DefaultLogFormat)
	t := &c.Trail
	setDefault(doc, "trail.sync_every", &t.SyncEvery, DefaultSyncEvery)
	setDefault(doc, "trail.max_bytes", &t.MaxBytes, DefaultTrailMaxBytes)
	setDefault(doc, "trail.segment_bytes", &t.SegmentBytes, DefaultSegmentBytes)
	setDefault(doc, "trail.batch", &t.Batch, DefaultBatch)
	setDefault(doc, "trail.backoff.min", &t.Backoff.Min, DefaultBackoffMin)
	setDefault(doc, "trail.backoff.max", &t.Backoff.Max, DefaultBackoffMax)
	for i := range t.Sinks {
		s, p := &t.Sinks[i], fmt.Sprintf("trail.sinks[%d]", i)
		switch s.Type {
		case "redis":
			setDefault(doc, p+".maxlen", &s.MaxLen, DefaultRedisSinkMaxLen)
		case "http":
			setDefault(doc, p+".timeout", &s.Timeout, DefaultHTTPSinkTimeout)
		case "file":
			setDefault(doc, p+".max_bytes", &s.MaxBytes, DefaultFileSinkMaxBytes)
			setDefault(doc, p+".keep", &s.Keep, DefaultFileSinkKeep)
		}
	}
	setDefault(doc, "metrics.listen", &c.Metrics.Listen, DefaultMetricsListen)
	setDefault(doc, "dns.timeout", &c.DNS.Timeout, DefaultDNSTimeout)
	setDefault(doc, "dns.message_budget", &c.DNS.MessageBudget, DefaultDNSMessageBudget)
	setDefault(doc, "dns.cache_size", &c.DNS.CacheSize, DefaultDNSCacheSize)
	setDefault(doc, "dns.serve_stale", &c.DNS.ServeStale, DefaultDNSServeStale)
	for _, name := range ProcessNames() {
		m, ok := c.Milter(name)
		if !ok {
			continue
		}
		p := "milters." + name
		setDefault(doc, p+".max_sessions", &m.MaxSessions, DefaultMaxSessions)
		setDefault(doc, p+".idle_timeout", &m.IdleTimeout, DefaultIdleTimeout)
		setDefault(doc, p+".shutdown_timeout", &m.ShutdownTimeout, DefaultShutdownTimeout)
		setDefault(doc, p+".max_procs", &m.MaxProcs, DefaultMaxProcs)
		setDefault(doc, p+".message_memory", &m.MessageMemory, DefaultMessageMemory)
		if m.MessageDir == "" {
			m.MessageDir = filepath.Join(c.SpoolDir, name, "messages")
		}
	}
}

// setDefault sets *v to def when path is absent from the file.
func setDefault[T any](doc *yamlconf.Doc, path string, v *T, def T) {
	if !doc.Has(path) {
		*v = def
	}
}
