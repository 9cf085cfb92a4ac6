package state

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"github.com/rs/zerolog"
)

// TLSConfig names the PEM files for a TLS connection to one instance.
type TLSConfig struct {
	CAFile     string // trusted CAs; system roots when empty
	CertFile   string // client certificate (with KeyFile), for servers that require one
	KeyFile    string
	ServerName string // name to verify; the host part of Addr when empty
}

// InstanceConfig says how to reach one Redis instance: the site's own
// primary, or the local replica of one peer site's primary.
type InstanceConfig struct {
	Addr         string // host:port, or /path for a unix socket
	Username     string // ACL user; empty = default user
	PasswordFile string // file holding the password (trailing newline ignored); empty = no AUTH
	TLS          *TLSConfig
	// SentinelMaster, with SentinelAddrs, reaches the primary through Sentinel
	// (and follows its failovers) instead of Addr.
	SentinelMaster string
	SentinelAddrs  []string
	// SentinelUsername and SentinelPasswordFile authenticate to the
	// sentinels, which keep their own users apart from the instance's; both
	// empty: the sentinels are asked without AUTH. The instance's
	// credentials are never sent to the sentinels.
	SentinelUsername     string
	SentinelPasswordFile string
}

// Options configure a Store. Zero durations and counts take the defaults
// noted beside them.
type Options struct {
	Site  string                    // this site's name; it writes only gm:{Site}:… keys
	Local InstanceConfig            // this site's primary
	Peers map[string]InstanceConfig // peer site name -> local read-only replica of its primary

	Timeout         time.Duration // budget of one mail-path call, default 25ms
	DialTimeout     time.Duration // default 100ms (a dial inside a call is also bounded by Timeout)
	BreakerFailures int           // consecutive failed attempts before the breaker opens, default 3
	BreakerOpenFor  time.Duration // interval of background probes while open, default 2s
	// BulkTimeout is the budget of calls off the mail path that move whole
	// data sets — rule loads and writes, status — default 2s. A 100,000-rule
	// hash does not cross a socket in 25ms.
	BulkTimeout time.Duration

	Clock  func() time.Time // default time.Now
	Logger zerolog.Logger   // breaker transitions and subscription trouble
}

// Defaults.
const (
	DefaultTimeout         = 25 * time.Millisecond
	DefaultDialTimeout     = 100 * time.Millisecond
	DefaultBreakerFailures = 3
	DefaultBreakerOpenFor  = 2 * time.Second
	DefaultBulkTimeout     = 2 * time.Second
)

func (o *Options) setDefaults() {
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = DefaultDialTimeout
	}
	if o.BreakerFailures <= 0 {
		o.BreakerFailures = DefaultBreakerFailures
	}
	if o.BreakerOpenFor <= 0 {
		o.BreakerOpenFor = DefaultBreakerOpenFor
	}
	if o.BulkTimeout <= 0 {
		o.BulkTimeout = DefaultBulkTimeout
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
}

// validSiteName keeps site names usable inside a key's hash tag and an HLC.
func validSiteName(s string) error {
	if s == "" {
		return errors.New("empty site name")
	}
	if strings.ContainsAny(s, "{}:. \t\r\n") {
		return fmt.Errorf("site name %q may not contain braces, colons, dots or spaces", s)
	}
	return nil
}

func (o *Options) validate() error {
	if err := validSiteName(o.Site); err != nil {
		return fmt.Errorf("site: %w", err)
	}
	if err := o.Local.validate(); err != nil {
		return fmt.Errorf("local: %w", err)
	}
	for name, p := range o.Peers {
		if err := validSiteName(name); err != nil {
			return fmt.Errorf("peers: %w", err)
		}
		if name == o.Site {
			return fmt.Errorf("peers.%s: a site is not its own peer", name)
		}
		if err := p.validate(); err != nil {
			return fmt.Errorf("peers.%s: %w", name, err)
		}
	}
	return nil
}

func (c *InstanceConfig) validate() error {
	switch {
	case c.SentinelMaster != "" && len(c.SentinelAddrs) == 0:
		return errors.New("sentinel master name without sentinel addrs")
	case c.SentinelMaster == "" && len(c.SentinelAddrs) > 0:
		return errors.New("sentinel addrs without a master name")
	case c.SentinelMaster == "" && c.Addr == "":
		return errors.New("no addr")
	case c.SentinelMaster == "" && (c.SentinelUsername != "" || c.SentinelPasswordFile != ""):
		return errors.New("sentinel credentials without a sentinel master name")
	}
	return nil
}

func (c *InstanceConfig) describe() string {
	if c.SentinelMaster != "" {
		return "sentinel:" + c.SentinelMaster + "@" + strings.Join(c.SentinelAddrs, ",")
	}
	return c.Addr
}

// clientSettings are the go-redis knobs that differ between a Store's two
// clients per instance.
type clientSettings struct {
	timeout  time.Duration // Read/WriteTimeout and PoolTimeout
	minIdle  int
	poolSize int // 0 = go-redis default
}

// newClient builds a go-redis client for the mail path: every knob that
// could make a call outlive its budget is bounded. It does no network I/O.
func newClient(c InstanceConfig, o *Options, cs clientSettings) (*redis.Client, error) {
	password, err := readPassword(c.PasswordFile)
	if err != nil {
		return nil, err
	}
	tlsConf, err := buildTLS(c.TLS, c.Addr)
	if err != nil {
		return nil, err
	}
	if c.SentinelMaster != "" {
		sentinelPassword, err := readPassword(c.SentinelPasswordFile)
		if err != nil {
			return nil, fmt.Errorf("sentinel %w", err)
		}
		return redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName:       c.SentinelMaster,
			SentinelAddrs:    c.SentinelAddrs,
			SentinelUsername: c.SentinelUsername,
			SentinelPassword: sentinelPassword,
			Username:         c.Username,
			Password:         password,
			TLSConfig:        tlsConf,
			// Same budget discipline as below; see there for why.
			ContextTimeoutEnabled: true,
			ReadTimeout:           cs.timeout,
			WriteTimeout:          cs.timeout,
			DialTimeout:           o.DialTimeout,
			DialerRetries:         1,
			MaxRetries:            1,
			MinRetryBackoff:       -1,
			MaxRetryBackoff:       -1,
			PoolTimeout:           cs.timeout,
			PoolSize:              cs.poolSize,
			MinIdleConns:          cs.minIdle,
			DisableIdentity:       true,
		}), nil
	}
	return redis.NewClient(&redis.Options{
		Addr:      c.Addr,
		Username:  c.Username,
		Password:  password,
		TLSConfig: tlsConf,
		// Without this a context deadline does not bound socket reads/writes.
		ContextTimeoutEnabled: true,
		ReadTimeout:           cs.timeout,
		WriteTimeout:          cs.timeout,
		// One dial attempt (the default is 5 with backoff); a dial is further
		// bounded by the call's context.
		DialTimeout:   o.DialTimeout,
		DialerRetries: 1,
		// One immediate retry covers a pooled connection the server closed
		// while idle; a retry after a timeout is cut by the expired context.
		// (MaxRetries 0 would mean go-redis's default of 3.)
		MaxRetries:      1,
		MinRetryBackoff: -1,
		MaxRetryBackoff: -1,
		PoolTimeout:     cs.timeout,
		PoolSize:        cs.poolSize,
		// A warm connection spares the first mail a dial; dialled in the
		// background, so Open stays free of network I/O.
		MinIdleConns: cs.minIdle,
		// No CLIENT SETINFO / maintenance-notification handshakes: fewer round
		// trips inside the budget of a fresh connection.
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}), nil
}

func readPassword(file string) (string, error) {
	if file == "" {
		return "", nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("password file: %w", err)
	}
	pw := strings.TrimRight(string(b), "\r\n")
	if pw == "" {
		// An empty file is a mistake, not "no password": say so rather
		// than connect without AUTH.
		return "", fmt.Errorf("password file %s is empty", file)
	}
	return pw, nil
}

func buildTLS(t *TLSConfig, addr string) (*tls.Config, error) {
	if t == nil {
		return nil, nil
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName}
	if conf.ServerName == "" {
		if i := strings.LastIndexByte(addr, ':'); i > 0 {
			conf.ServerName = strings.Trim(addr[:i], "[]")
		}
	}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("tls ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls ca_file %s: no PEM certificates", t.CAFile)
		}
		conf.RootCAs = pool
	}
	if t.CertFile != "" || t.KeyFile != "" {
		if t.CertFile == "" || t.KeyFile == "" {
			return nil, errors.New("tls: cert_file and key_file go together")
		}
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("tls client certificate: %w", err)
		}
		conf.Certificates = []tls.Certificate{cert}
	}
	return conf, nil
}

// NewBackgroundClient builds a client for work off the mail path (the trail
// drainer's XADDs, ops tools): the same connection settings as the Store's
// clients (AUTH, TLS, Sentinel), with a longer per-call budget. It does no
// network I/O; the caller closes it.
func NewBackgroundClient(c InstanceConfig, timeout time.Duration) (*redis.Client, error) {
	if err := c.validate(); err != nil {
		return nil, err
	}
	return newClient(c, &Options{DialTimeout: timeout}, clientSettings{timeout: timeout, poolSize: 2})
}
