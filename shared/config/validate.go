package config

import (
	"fmt"
	"net/netip"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/geomilter/geomilter/shared/yamlconf"
)

var (
	// Site names go into Redis keys (gm:{lax}:…) and are compared across
	// sites, so they are short, lower-case and free of key syntax.
	siteRe     = regexp.MustCompile(`^[a-z0-9-]{1,32}$`)
	sinkNameRe = regexp.MustCompile(`^[a-z0-9_-]{1,32}$`)
	hostnameRe = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]{0,252})$`)
	// headerRe is an RFC 9110 field-name token.
	headerRe = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
)

const minSegmentBytes = 64 << 10

// validate adds a Problem to doc for every semantic error in c. Values that
// failed to decode are zero here; Doc.Problemf drops problems under them.
func validate(c *Config, doc *yamlconf.Doc) {
	v := validator{doc: doc}
	switch {
	case !doc.Has("site"):
		doc.Problemf("site", "required: this site's name, e.g. site: lax")
	case !siteRe.MatchString(c.Site):
		doc.Problemf("site", "invalid site name %q: use 1 to 32 characters from a-z, 0-9 and -", c.Site)
	}
	if doc.Has("host") && !hostnameRe.MatchString(c.Host) {
		doc.Problemf("host", "invalid host name %q", c.Host)
	}
	if c.Redis != nil {
		v.redis(c)
	}
	if c.Redis == nil && c.RulesFile == "" {
		doc.Problemf("rules_file", "required in standalone mode (without a redis section): the rules come from this file")
	} else {
		v.absPath("rules_file", c.RulesFile, false)
	}
	v.absPath("state_dir", c.StateDir, true)
	v.absPath("spool_dir", c.SpoolDir, true)
	v.oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error")
	v.oneOf("log.format", c.Log.Format, "json", "console")
	v.trail(c)
	if _, err := hostPort(c.Metrics.Listen, true); err != nil {
		doc.Problemf("metrics.listen", "invalid address %q: %v", c.Metrics.Listen, err)
	}
	v.dns(c)
	v.milters(c)
}

type validator struct{ doc *yamlconf.Doc }

func (v validator) absPath(path, value string, required bool) {
	switch {
	case value == "" && required:
		v.doc.Problemf(path, "required (an absolute path)")
	case value != "" && !filepath.IsAbs(value):
		v.doc.Problemf(path, "must be an absolute path, got %q", value)
	}
}

func (v validator) oneOf(path, value string, allowed ...string) {
	if !slices.Contains(allowed, value) {
		v.doc.Problemf(path, "invalid value %q (known: %s)", value, strings.Join(allowed, ", "))
	}
}

// between checks lo < d <= hi (d must be positive).
func (v validator) between(path string, d, hi time.Duration) {
	if d <= 0 || d > hi {
		v.doc.Problemf(path, "must be more than 0 and at most %v, got %v", hi, d)
	}
}

func (v validator) redis(c *Config) {
	r := c.Redis
	if !v.doc.Has("redis.local") {
		v.doc.Problemf("redis.local", "required when the redis section is present (remove the redis section for standalone mode)")
	} else {
		v.instance("redis.local", &r.Local)
	}
	names := make([]string, 0, len(r.Peers))
	for name := range r.Peers {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		p := "redis.peers." + name
		switch {
		case !siteRe.MatchString(name):
			v.doc.Problemf(p, "invalid site name %q: use 1 to 32 characters from a-z, 0-9 and -", name)
		case name == c.Site:
			v.doc.Problemf(p, "a peer cannot be this site itself (site: %s); its data is in redis.local", c.Site)
		}
		inst := r.Peers[name]
		v.instance(p, &inst)
	}
	// The budget of one call on the mail path: more than a second would
	// let an unresponsive Redis hold mail, which is what this design forbids.
	v.between("redis.timeout", r.Timeout, time.Second)
	v.between("redis.dial_timeout", r.DialTimeout, 30*time.Second)
	if r.Breaker.Failures < 1 {
		v.doc.Problemf("redis.breaker.failures", "must be at least 1, got %d", r.Breaker.Failures)
	}
	v.between("redis.breaker.open_for", r.Breaker.OpenFor, time.Hour)
}

func (v validator) instance(p string, in *InstanceConfig) {
	switch {
	case in.Addr == "" && in.Sentinel == nil:
		v.doc.Problemf(p, "needs addr (host:port) or sentinel")
	case in.Addr != "" && in.Sentinel != nil:
		v.doc.Problemf(p+".sentinel", "set either addr or sentinel, not both")
	case in.Addr != "":
		if _, err := hostPort(in.Addr, false); err != nil {
			v.doc.Problemf(p+".addr", "invalid address %q: %v", in.Addr, err)
		}
	default:
		s := in.Sentinel
		if s.MasterName == "" {
			v.doc.Problemf(p+".sentinel.master_name", "required")
		}
		if len(s.Addrs) == 0 {
			v.doc.Problemf(p+".sentinel.addrs", "required: the sentinels' host:port addresses")
		}
		for i, a := range s.Addrs {
			if _, err := hostPort(a, false); err != nil {
				v.doc.Problemf(fmt.Sprintf("%s.sentinel.addrs[%d]", p, i), "invalid address %q: %v", a, err)
			}
		}
		v.absPath(p+".sentinel.password_file", s.PasswordFile, false)
	}
	v.absPath(p+".password_file", in.PasswordFile, false)
	if t := in.TLS; t != nil {
		v.absPath(p+".tls.ca_file", t.CAFile, false)
		v.absPath(p+".tls.cert_file", t.CertFile, false)
		v.absPath(p+".tls.key_file", t.KeyFile, false)
		if (t.CertFile == "") != (t.KeyFile == "") {
			v.doc.Problemf(p+".tls", "cert_file and key_file go together: set both or neither")
		}
	}
}

// sinkKeys says which type-specific keys each sink type uses.
var sinkKeys = map[string][]string{
	"redis": {"maxlen"},
	"http":  {"url", "timeout", "headers"},
	"file":  {"path", "max_bytes", "keep"},
}

func (v validator) trail(c *Config) {
	t := &c.Trail
	v.between("trail.sync_every", t.SyncEvery, time.Minute)
	if t.MaxBytes <= 0 {
		v.doc.Problemf("trail.max_bytes", "must be more than 0, got %v", t.MaxBytes)
	}
	if t.SegmentBytes < minSegmentBytes || (t.MaxBytes > 0 && t.SegmentBytes > t.MaxBytes) {
		v.doc.Problemf("trail.segment_bytes", "must be at least %v and at most trail.max_bytes (%v), got %v",
			yamlconf.Size(minSegmentBytes), t.MaxBytes, t.SegmentBytes)
	}
	if t.Batch < 1 || t.Batch > 100000 {
		v.doc.Problemf("trail.batch", "must be between 1 and 100000, got %d", t.Batch)
	}
	v.between("trail.backoff.min", t.Backoff.Min, time.Hour)
	v.between("trail.backoff.max", t.Backoff.Max, 24*time.Hour)
	if t.Backoff.Min > 0 && t.Backoff.Max > 0 && t.Backoff.Max < t.Backoff.Min {
		v.doc.Problemf("trail.backoff.max", "must not be less than trail.backoff.min (%v), got %v", t.Backoff.Min, t.Backoff.Max)
	}
	seen := make(map[string]string)
	for i := range t.Sinks {
		v.sink(c, fmt.Sprintf("trail.sinks[%d]", i), &t.Sinks[i], seen)
	}
}

func (v validator) sink(c *Config, p string, s *SinkConfig, seen map[string]string) {
	switch {
	case !v.doc.Has(p + ".name"):
		v.doc.Problemf(p+".name", "required")
	case !sinkNameRe.MatchString(s.Name):
		v.doc.Problemf(p+".name", "invalid sink name %q: use 1 to 32 characters from a-z, 0-9, _ and -", s.Name)
	case seen[s.Name] != "":
		v.doc.Problemf(p+".name", "duplicate sink name %q (also %s)", s.Name, seen[s.Name])
	default:
		seen[s.Name] = p
	}
	own, known := sinkKeys[s.Type]
	if !v.doc.Has(p + ".type") {
		v.doc.Problemf(p+".type", "required (redis, http or file)")
		return
	}
	if !known {
		v.doc.Problemf(p+".type", "unknown sink type %q (known: redis, http, file)", s.Type)
		return
	}
	for _, typ := range []string{"redis", "http", "file"} {
		for _, k := range sinkKeys[typ] {
			if typ != s.Type && v.doc.Has(p+"."+k) {
				v.doc.Problemf(p+"."+k, "not used by %s sinks (%s sinks use: %s)", s.Type, s.Type, strings.Join(own, ", "))
			}
		}
	}
	switch s.Type {
	case "redis":
		if c.Redis == nil {
			v.doc.Problemf(p+".type", "a redis sink needs the redis section (this config is standalone)")
		}
		if s.MaxLen < 1 {
			v.doc.Problemf(p+".maxlen", "must be at least 1, got %d", s.MaxLen)
		}
	case "http":
		v.httpSink(p, s)
	case "file":
		v.absPath(p+".path", s.Path, true)
		if s.MaxBytes <= 0 {
			v.doc.Problemf(p+".max_bytes", "must be more than 0, got %v", s.MaxBytes)
		}
		if s.Keep < 0 {
			v.doc.Problemf(p+".keep", "must not be negative, got %d", s.Keep)
		}
	}
}

func (v validator) httpSink(p string, s *SinkConfig) {
	if s.URL == "" {
		v.doc.Problemf(p+".url", "required for http sinks")
	} else if u, err := url.Parse(s.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		v.doc.Problemf(p+".url", "invalid URL %q: want http://host[:port]/path or https://…", s.URL)
	}
	v.between(p+".timeout", s.Timeout, 10*time.Minute)
	names := make([]string, 0, len(s.Headers))
	for k := range s.Headers {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		hp := p + ".headers." + k
		if !headerRe.MatchString(k) {
			v.doc.Problemf(hp, "invalid header name %q", k)
		}
		if strings.ContainsAny(s.Headers[k], "\r\n\x00") {
			v.doc.Problemf(hp, "header value must not contain CR, LF or NUL")
		}
	}
}

func (v validator) milters(c *Config) {
	// Milter sockets and metrics endpoints share the host's TCP ports, so
	// one map catches a clash between any two of them.
	taken := make(map[string]string) // "tcp:host:port" or "unix:/path" -> who uses it
	claim := func(key, path, who string) {
		if strings.HasSuffix(key, ":0") {
			return // a free port picked at start: cannot clash
		}
		if first, dup := taken[key]; dup {
			v.doc.Problemf(path, "%s is also used by %s", strings.TrimPrefix(key, "tcp:"), first)
			return
		}
		taken[key] = who
	}
	for _, name := range ProcessNames() {
		m, ok := c.Milter(name)
		if !ok {
			continue
		}
		p := "milters." + name
		// A suite member without a listen runs only inside the suite: it has
		// no socket and no metrics address of its own to claim.
		alone := m.Listen != "" || !c.InSuite(name)
		switch network, addr, err := ParseListen(m.Listen); {
		case !alone: // served on milters.suite.listen
		case m.Listen == "":
			v.doc.Problemf(p+".listen", "required: unix:/path or inet:host:port")
		case err != nil:
			v.doc.Problemf(p+".listen", "%v", err)
		default:
			claim(network+":"+addr, p+".listen", p+".listen")
		}
		if m.MetricsListen != "" {
			if addr, err := hostPort(m.MetricsListen, true); err != nil {
				v.doc.Problemf(p+".metrics_listen", "invalid address %q: %v", m.MetricsListen, err)
			} else {
				claim("tcp:"+addr, p+".metrics_listen", p+".metrics_listen")
			}
		} else if _, err := hostPort(c.Metrics.Listen, true); err == nil && alone {
			if addr, err := c.MetricsListen(name); err != nil {
				v.doc.Problemf(p+".metrics_listen", "%v", err)
			} else {
				claim("tcp:"+addr, p, fmt.Sprintf("the metrics of %s (metrics.listen + %d)", p, slices.Index(ProcessNames(), name)))
			}
		}
		if m.MaxSessions < 1 {
			v.doc.Problemf(p+".max_sessions", "must be at least 1, got %d", m.MaxSessions)
		}
		v.between(p+".idle_timeout", m.IdleTimeout, 24*time.Hour)
		v.between(p+".shutdown_timeout", m.ShutdownTimeout, time.Hour)
		if v.doc.Has(p + ".message_dir") {
			v.absPath(p+".message_dir", m.MessageDir, true)
		}
		if m.MessageMemory < 0 || m.MessageMemory > 1<<30 {
			v.doc.Problemf(p+".message_memory", "must be between 0 and 1GiB, got %s", m.MessageMemory)
		}
		if m.MaxProcs < 0 || m.MaxProcs > 4096 {
			v.doc.Problemf(p+".max_procs", "must be between 0 (all CPUs) and 4096, got %d", m.MaxProcs)
		}
	}
	if s, ok := c.Suite(); ok {
		v.suiteMembers(c, s)
	}
}

// suiteMembers checks milters.suite.members: at least one, each a milter
// name at most once, each with its own section (its settings: rules,
// targets, keys…; its listen may be left out).
func (v validator) suiteMembers(c *Config, s *SuiteConfig) {
	const p = "milters.suite.members"
	if len(s.Members) == 0 {
		if !v.doc.Has(p) {
			v.doc.Problemf(p, "required: the milters the suite runs, in chain order, e.g. [access, policy, encrypt, archive]")
		} else {
			v.doc.Problemf(p, "lists no milter: name at least one of %s", strings.Join(MilterNames(), ", "))
		}
		return
	}
	seen := make(map[string]int)
	for i, name := range s.Members {
		ep := fmt.Sprintf("%s[%d]", p, i)
		if j, dup := seen[name]; dup {
			v.doc.Problemf(ep, "%q is listed twice (also members[%d]); a milter runs once per message", name, j)
			continue
		}
		seen[name] = i
		if !isMilterName(name) {
			v.doc.Problemf(ep, "unknown milter %q (known: %s)", name, strings.Join(MilterNames(), ", "))
			continue
		}
		if _, ok := c.Milter(name); !ok {
			v.doc.Problemf(ep, "%s has no milters.%s section: add one for its settings (its listen may be left out), e.g. %s: {}", name, name, name)
		}
	}
}

// maxDNSServers bounds dns.servers: each server tried gets an equal share
// of dns.timeout, so a long list only makes every share short.
const maxDNSServers = 8

func (v validator) dns(c *Config) {
	d := &c.DNS
	if len(d.Servers) > maxDNSServers {
		v.doc.Problemf("dns.servers", "at most %d servers (each gets an equal share of dns.timeout), got %d", maxDNSServers, len(d.Servers))
	}
	seen := make(map[string]int)
	for i, s := range d.Servers {
		p := fmt.Sprintf("dns.servers[%d]", i)
		ap, err := netip.ParseAddrPort(s)
		switch {
		case err != nil:
			// A resolver's own address cannot be a name: there would be
			// nothing to look it up with.
			v.doc.Problemf(p, "invalid address %q: want IP:port, e.g. 192.0.2.53:53 or [2001:db8::53]:53 (a name cannot be used)", s)
		case ap.Port() == 0:
			v.doc.Problemf(p, "invalid address %q: the port must be 1 to 65535", s)
		default:
			if j, dup := seen[ap.String()]; dup {
				v.doc.Problemf(p, "%s is listed twice (also dns.servers[%d])", s, j)
			}
			seen[ap.String()] = i
		}
	}
	// Mail waits for DNS: more than 30s for one look-up, or a minute for a
	// message, is past what an SMTP client waits for the end of data.
	v.between("dns.timeout", d.Timeout, 30*time.Second)
	v.between("dns.message_budget", d.MessageBudget, time.Minute)
	if d.Timeout > 0 && d.MessageBudget > 0 && d.Timeout > d.MessageBudget {
		v.doc.Problemf("dns.timeout", "must not be more than dns.message_budget (%v), got %v", d.MessageBudget, d.Timeout)
	}
	if d.CacheSize < 0 || d.CacheSize > 10_000_000 {
		v.doc.Problemf("dns.cache_size", "must be between 0 (no cache) and 10000000, got %d", d.CacheSize)
	}
	// RFC 8767 §5: a stale answer is worth keeping a few days at most.
	if d.ServeStale < 0 || d.ServeStale > 7*24*time.Hour {
		v.doc.Problemf("dns.serve_stale", "must be between 0 (off) and 168h, got %v", d.ServeStale)
	}
}
