// Package service runs one milter process: it loads the config, sets up logging,
// metrics and /healthz, opens the trail spool and its drainers, serves the milter
// socket, and handles signals (SIGTERM: graceful stop; SIGHUP: reload). Every
// milter subcommand of the geomilter binary goes through Run, so listening,
// signals, metrics and logging live in one place.
package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/shared/buildinfo"
	"github.com/geomilter/geomilter/shared/config"
	"github.com/geomilter/geomilter/shared/logging"
	"github.com/geomilter/geomilter/shared/metrics"
	"github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/resolver"
	"github.com/geomilter/geomilter/shared/rules"
	"github.com/geomilter/geomilter/shared/rulesync"
	"github.com/geomilter/geomilter/shared/state"
	"github.com/geomilter/geomilter/shared/statuspage"
	"github.com/geomilter/geomilter/shared/trail"
)

// Env is what a milter's constructor gets from the process: everything it
// depends on is passed in here, so tests and deployments choose the parts
// (STYLE.md: dependencies are passed in).
type Env struct {
	Name     string
	Config   *config.Config
	Log      zerolog.Logger
	Registry prometheus.Registerer
	// Rules serves the current rules snapshot (one atomic load per call).
	Rules RulesView
	// Store is the state (rate counters, greylist triplets, sets); never
	// nil: the site-partitioned Redis store (*state.Store) when the config
	// has a redis section, else one in process memory (*state.MemStore,
	// standalone mode).
	Store state.Backend
	// Clock is the time milters decide by (rate windows, greylist delays);
	// never nil (time.Now unless a test sets another).
	Clock func() time.Time
	// Resolver is the DNS the milter looks names up through, when a test
	// sets one; milters get it through DNS.
	Resolver resolver.Resolver
	// newResolver builds the process's resolver from the config (set by
	// Start); nil from NewEnv.
	newResolver func() (resolver.Resolver, error)
	// routes and checks are what the milter added with Handle and
	// AddCheck: served and reported by the process's metrics listener.
	routes []metrics.Route
	checks []metrics.Check
	// Trail is where the process's trail events go; milters normally fill
	// milterrt.State (Reasons, RuleIDs and their typed Section) and let the
	// process emit one event per transaction. Nil outside a process (tests).
	Trail *trail.Emitter
}

// NewEnv returns an Env with the parts that must never be nil filled in
// for standalone use: an in-memory store and the system clock. Tests and
// tools start from it and set what they need.
func NewEnv(name string, cfg *config.Config, log zerolog.Logger, rv RulesView) *Env {
	return &Env{Name: name, Config: cfg, Log: log, Rules: rv, Store: state.NewMemStore(time.Now), Clock: time.Now}
}

// DNS returns the process's one resolver, built from the config's dns
// section at the first call. A milter that looks names up calls it in its
// constructor, so a dns section that cannot work (no servers, an unusable
// /etc/resolv.conf) stops that milter's start with a clear error, and only
// that milter's.
func (e *Env) DNS() (resolver.Resolver, error) {
	if e.Resolver != nil {
		return e.Resolver, nil
	}
	if e.newResolver == nil {
		return nil, errors.New("no DNS resolver in this environment")
	}
	r, err := e.newResolver()
	if err != nil {
		return nil, err
	}
	e.Resolver = r
	return r, nil
}

// Handle adds an endpoint to the process's metrics listener (beside
// /metrics and /healthz), for a milter's own status and operations (the
// archive milter's /archive/status). Call it from the milter's constructor.
func (e *Env) Handle(pattern string, h http.Handler) {
	e.routes = append(e.routes, metrics.Route{Pattern: pattern, Handler: h})
}

// Routes serves what the milter added with Handle (tests drive a
// milter's endpoints through it without a listener).
func (e *Env) Routes() http.Handler {
	mux := http.NewServeMux()
	for _, r := range e.routes {
		mux.Handle(r.Pattern, r.Handler)
	}
	return mux
}

// AddCheck adds a milter's own health check to /healthz (the archive
// milter's journal targets). Call it from the milter's constructor.
func (e *Env) AddCheck(c metrics.Check) { e.checks = append(e.checks, c) }

// RulesView gives the rules snapshot in force.
type RulesView interface {
	Current() *rules.Snapshot
}

// Factory builds a milter.
type Factory func(env *Env) (milterrt.Milter, error)

// Reloader is implemented by milters that take a new config on SIGHUP without
// dropping sessions (rules, thresholds). Listen addresses are not reloaded.
type Reloader interface {
	Reload(cfg *config.Config) error
}

// drainFlushTimeout bounds how long a stopping process tries to deliver what is
// still buffered; whatever is left stays in the spool for the next start.
const drainFlushTimeout = 5 * time.Second

// Process is one running milter process.
type Process struct {
	name    string
	cfgPath string
	cfg     *config.Config
	log     zerolog.Logger
	// ownsProcess: started by Run, so process-wide settings (GOMAXPROCS) are
	// this milter's to set; not when Start is used inside another program.
	ownsProcess bool

	milter  milterrt.Milter
	server  *milterrt.Server
	ln      net.Listener
	trail   *trailPipe
	metrics *metrics.Server
	store   *state.Store     // nil in standalone mode
	rules   *rulesync.Syncer // the rules snapshot and what keeps it current
	redis   *redisWatch      // nil in standalone mode
	// decisions counts decisions per minute for /status.
	decisions *statuspage.Decisions

	serveErr chan error
	stopOnce sync.Once
	stopErr  error
}

// applyMaxProcs sets GOMAXPROCS from milters.<name>.max_procs, unless the
// environment sets GOMAXPROCS (the operator's word wins).
func (p *Process) applyMaxProcs() {
	mc, ok := p.cfg.Milter(p.name)
	if !ok {
		return
	}
	if env := os.Getenv("GOMAXPROCS"); env != "" {
		p.log.Info().Str("GOMAXPROCS", env).Int("max_procs", mc.MaxProcs).Msg("GOMAXPROCS from the environment overrides max_procs")
		return
	}
	n := mc.MaxProcs
	if n == 0 {
		n = runtime.NumCPU()
	}
	if old := runtime.GOMAXPROCS(n); old != n {
		p.log.Info().Int("max_procs", n).Int("was", old).Msg("Go runtime CPUs set")
	}
}

// Run runs the named milter until SIGTERM or SIGINT; SIGHUP reloads.
func Run(name, cfgPath string, f Factory, stderr io.Writer) error {
	p, err := Start(name, cfgPath, f, stderr)
	if err != nil {
		return err
	}
	p.ownsProcess = true
	p.applyMaxProcs()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	for {
		select {
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				p.Reload()
				continue
			}
			p.log.Info().Str("signal", sig.String()).Msg("stopping")
			return p.Stop()
		case err := <-p.serveErr:
			p.log.Error().Err(err).Msg("milter listener failed")
			_ = p.Stop()
			return err
		}
	}
}

// Start loads the config and starts the process's parts; it returns once the
// milter socket is listening.
func Start(name, cfgPath string, f Factory, stderr io.Writer) (*Process, error) {
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return nil, err
	}
	mc, ok := cfg.Milter(name)
	if !ok {
		return nil, fmt.Errorf("config %s: no milters.%s section: this milter is not configured here", cfgPath, name)
	}
	// The same host checks as check-config (its socket directory, the
	// directories, the Redis files), so both refuse for the same reasons
	// and with the same file:line messages.
	if ps := config.CheckStart(cfg, name); len(ps) > 0 {
		return nil, ps
	}
	base, err := logging.New(stderr, cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", cfgPath, err)
	}
	log := base.With().Str("milter", name).Str("site", cfg.Site).Logger()
	p := &Process{name: name, cfgPath: cfgPath, cfg: cfg, log: log, serveErr: make(chan error, 1),
		decisions: statuspage.NewDecisions(time.Now)}
	ok = false
	defer func() {
		if !ok {
			p.closeParts()
		}
	}()

	reg := metrics.NewRegistry()
	p.trail, err = openTrail(cfg, name, log, reg)
	if err != nil {
		return nil, err
	}
	// Rules: from rules_file (standalone) or merged from every site's Redis,
	// kept current in the background; the store opens without network I/O,
	// and the first rules load is bounded (then the saved snapshot serves).
	if cfg.Redis != nil {
		redis.SetLogger(redisLogger{log}) // process-wide: go-redis has one logger
		p.store, err = state.Open(StateOptions(cfg, log))
		if err != nil {
			return nil, fmt.Errorf("config %s: redis: %w", cfgPath, err)
		}
		p.redis, err = startRedisWatch(p.store, reg, name)
		if err != nil {
			return nil, err
		}
	}
	p.rules, err = rulesync.Start(context.Background(), rulesync.Options{
		Store: p.store, RulesFile: cfg.RulesFile, StateDir: cfg.StateDir,
		Milter: name, Logger: log, Registerer: reg,
	})
	if err != nil {
		return nil, fmt.Errorf("rules: %w", err)
	}
	env := NewEnv(name, cfg, log, p.rules)
	env.Registry = reg
	env.Trail = p.trail.emitter
	if p.store != nil { // a nil *Store must not become a non-nil Backend
		env.Store = p.store
	}
	// One DNS resolver per process (docs/dns.md), built when a milter asks
	// for it (Env.DNS): a dns section that cannot work stops only a milter
	// that looks names up. It sends nothing until the first look-up.
	env.newResolver = func() (resolver.Resolver, error) {
		o := resolver.Options{Servers: cfg.DNS.Servers, Timeout: cfg.DNS.Timeout, CacheSize: cfg.DNS.CacheSize, Registerer: reg}
		if o.CacheSize == 0 { // config: 0 turns the cache off; resolver: 0 is its default
			o.CacheSize = -1
		}
		c, err := resolver.New(o)
		if err != nil {
			return nil, fmt.Errorf("config %s: dns: %w", cfgPath, err)
		}
		return c, nil
	}
	p.milter, err = f(env)
	if err != nil {
		return nil, fmt.Errorf("%s milter: %w", name, err)
	}

	maddr, err := cfg.MetricsListen(name)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", cfgPath, err)
	}
	checks := []metrics.Check{
		{Name: "milter", Func: p.listening},
		{Name: "trail", Func: p.trail.healthy, Detail: p.trail.detail},
		// Never a failure: with no rules the milters decide by their
		// defaults (no rule authorises relay), which is safe to serve.
		{Name: "rules", Detail: p.rules.Detail},
	}
	if p.redis != nil {
		checks = append(checks, metrics.Check{Name: "redis", Degraded: p.redis.degraded})
	}
	checks = append(checks, env.checks...)
	routes := append(env.routes, p.statusRoute(checks, env.routes))
	p.metrics, err = metrics.Listen(maddr, reg, checks, routes...)
	if err != nil {
		return nil, err
	}

	p.server = milterrt.New(p.milter, milterrt.Options{
		Logger:        log,
		Registerer:    reg,
		MaxSessions:   mc.MaxSessions,
		IdleTimeout:   mc.IdleTimeout,
		OnTransaction: p.onTransaction,
		MessageDir:    mc.MessageDir,
		MessageMemory: int64(mc.MessageMemory),
	})
	p.ln, err = milterrt.Listen(mc.Listen)
	if err != nil {
		return nil, fmt.Errorf("milters.%s.listen: %w", name, err)
	}
	go func() {
		if err := p.server.Serve(p.ln); err != nil && !errors.Is(err, milterrt.ErrServerClosed) {
			p.serveErr <- err
		}
	}()
	ok = true
	log.Info().Str("listen", mc.Listen).Str("metrics", p.metrics.Addr()).Str("version", buildinfo.Version).
		Str("spool", p.trail.dir).Msg("started")
	return p, nil
}

// onTransaction is the runtime's end-of-transaction hook: one trail event per
// transaction, appended to the local spool and nothing else.
func (p *Process) onTransaction(st *milterrt.State) {
	ev := eventFromState(st, time.Now())
	p.trail.emitter.Emit(ev)
	p.decisions.Record(ev.Action)
}

func (p *Process) listening() error {
	if p.ln == nil {
		return errors.New("not listening")
	}
	return nil
}

// Reload re-reads the config and the rules; an invalid config is logged and
// the old one kept, an invalid rules file likewise (the rules in force stay).
func (p *Process) Reload() {
	defer p.reloadRules()
	cfg, err := config.Load(p.cfgPath)
	if err != nil {
		p.log.Error().Err(err).Msg("reload refused: config invalid, keeping the running one")
		return
	}
	if mc, ok := cfg.Milter(p.name); ok {
		if old, _ := p.cfg.Milter(p.name); old != nil && old.Listen != mc.Listen {
			p.log.Warn().Str("listen", mc.Listen).Msg("listen address changes take a restart")
		}
	}
	if r, ok := p.milter.(Reloader); ok {
		if err := r.Reload(cfg); err != nil {
			p.log.Error().Err(err).Msg("reload refused by milter, keeping the running config")
			return
		}
	}
	p.cfg = cfg
	if p.ownsProcess {
		p.applyMaxProcs()
	}
	p.log.Info().Msg("reloaded")
}

// reloadRules re-reads rules_file (standalone) or schedules a reload from
// Redis. The syncer logs a refused file itself.
func (p *Process) reloadRules() {
	p.rules.SetRulesFile(p.cfg.RulesFile)
	if err := p.rules.Reload(); err == nil && p.store == nil {
		p.log.Info().Str("rules_file", p.cfg.RulesFile).Int("rules", p.rules.Current().Len()).Msg("rules reloaded")
	}
}

// Stop stops gracefully: no new sessions; sessions inside a transaction finish
// (bounded by shutdown_timeout); every trail event is synced to disk; the
// drainers get a short bound to deliver; nothing undelivered is lost (it stays
// in the spool for the next start).
func (p *Process) Stop() error {
	p.stopOnce.Do(func() {
		mc, _ := p.cfg.Milter(p.name)
		timeout := 30 * time.Second
		if mc != nil && mc.ShutdownTimeout > 0 {
			timeout = mc.ShutdownTimeout
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		if err := p.server.Shutdown(ctx); err != nil {
			p.log.Warn().Err(err).Msg("sessions cut at shutdown timeout")
		}
		p.stopErr = p.closeParts()
		p.log.Info().Msg("stopped")
	})
	return p.stopErr
}

func (p *Process) closeParts() error {
	var errs []error
	// The milter's own parts first (the archive milter's journal and its
	// drainers): its sessions have ended, its trail events still go out.
	if c, ok := p.milter.(io.Closer); ok {
		errs = append(errs, c.Close())
	}
	if p.trail != nil {
		errs = append(errs, p.trail.close(drainFlushTimeout))
	}
	if p.metrics != nil {
		errs = append(errs, p.metrics.Close())
	}
	if p.rules != nil {
		p.rules.Close()
	}
	if p.redis != nil {
		p.redis.close()
	}
	if p.store != nil {
		errs = append(errs, p.store.Close())
	}
	return errors.Join(errs...)
}

// SpoolDir is where a milter's trail spool lives.
func SpoolDir(cfg *config.Config, milter string) string {
	return filepath.Join(cfg.SpoolDir, milter, "trail")
}

// Emitter is exported for milters that emit extra events (tests, ops).
func (p *Process) Emitter() *trail.Emitter { return p.trail.emitter }
