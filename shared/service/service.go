// Package service runs one milter process: it loads the config, sets up logging,
// metrics and /healthz, opens the trail spool and its drainers, serves the milter
// socket, and handles signals (SIGTERM: graceful stop; SIGHUP: reload). Every
// milter subcommand of the geomilter binary goes through Run, and `geomilter
// suite` (several milters behind one socket) through RunSuite, on the same code
// path, so listening, signals, metrics and logging live in one place.
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
	"slices"
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

// Process is one running milter process: one milter (geomilter access …), or
// several behind one socket (geomilter suite). Either way it has one config,
// log, metrics registry and listener, Redis store and DNS resolver, and one
// member per milter with the member's own parts: its trail spool (the same
// directory as when the milter runs alone, so switching between a suite and
// separate processes keeps the backlog), rules syncer and Env.
type Process struct {
	name    string // the process: a milter's name, or config.SuiteName
	cfgPath string
	cfg     *config.Config
	log     zerolog.Logger
	// ownsProcess: started by Run, so process-wide settings (GOMAXPROCS) are
	// this milter's to set; not when Start is used inside another program.
	ownsProcess bool

	members []*member       // in chain order; one for a single milter
	milter  milterrt.Milter // what the socket serves: the member's milter, or the suite
	server  *milterrt.Server
	ln      net.Listener
	metrics *metrics.Server
	reg     *prometheus.Registry // the process's one registry: every member's metrics
	store   *state.Store         // nil in standalone mode
	redis   *redisWatch          // nil in standalone mode
	// decisions counts decisions per minute for /status.
	decisions *statuspage.Decisions

	dnsMu sync.Mutex
	dns   resolver.Resolver // the process's one resolver, built at the first Env.DNS

	serveErr chan error
	stopOnce sync.Once
	stopErr  error
}

// member is one milter of a process, with its own parts.
type member struct {
	name   string
	log    zerolog.Logger
	milter milterrt.Milter
	trail  *trailPipe
	rules  *rulesync.Syncer // the rules snapshot and what keeps it current
}

// onTransaction is the member's end-of-transaction hook: one trail event per
// transaction, appended to the member's local spool and nothing else.
func (m *member) onTransaction(st *milterrt.State) *trail.Event {
	ev := eventFromState(st, time.Now())
	m.trail.emitter.Emit(ev)
	return ev
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
	return p.run()
}

// RunSuite runs the milters of milters.suite in one process behind one
// socket (geomilter suite) until SIGTERM or SIGINT; SIGHUP reloads.
// factories holds a Factory per milter name; those of the members are used.
func RunSuite(cfgPath string, factories map[string]Factory, stderr io.Writer) error {
	p, err := StartSuite(cfgPath, factories, stderr)
	if err != nil {
		return err
	}
	return p.run()
}

func (p *Process) run() error {
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

// Start loads the config and starts the named milter's process; it returns
// once the milter socket is listening.
func Start(name, cfgPath string, f Factory, stderr io.Writer) (*Process, error) {
	return start(name, cfgPath, map[string]Factory{name: f}, stderr)
}

// StartSuite loads the config and starts the suite's process: the members of
// milters.suite, in its chain order, built by factories[member], behind
// milters.suite.listen. It returns once that socket is listening.
func StartSuite(cfgPath string, factories map[string]Factory, stderr io.Writer) (*Process, error) {
	return start(config.SuiteName, cfgPath, factories, stderr)
}

func start(name, cfgPath string, factories map[string]Factory, stderr io.Writer) (*Process, error) {
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return nil, err
	}
	mc, ok := cfg.Milter(name)
	switch {
	case !ok && name == config.SuiteName:
		return nil, fmt.Errorf("config %s: no milters.suite section: add one (listen, members) to run milters behind one socket", cfgPath)
	case !ok:
		return nil, fmt.Errorf("config %s: no milters.%s section: this milter is not configured here", cfgPath, name)
	}
	names := []string{name}
	if sc, ok := cfg.Suite(); ok && name == config.SuiteName {
		names = sc.Members
	} else if mc.Listen == "" {
		// Valid only for a suite member: it has no socket of its own.
		return nil, fmt.Errorf("config %s: milters.%s has no listen: %s runs in the suite here (geomilter suite); set milters.%s.listen to run it alone",
			cfgPath, name, name, name)
	}
	for _, n := range names {
		if factories[n] == nil {
			return nil, fmt.Errorf("config %s: milters.suite.members: no milter %q in this program", cfgPath, n)
		}
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
	p.reg = reg
	// The store opens without network I/O; every member shares it.
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
	var (
		routes []metrics.Route
		checks = []metrics.Check{{Name: "milter", Func: p.listening}}
		own    []metrics.Check // the milters' own checks (the archive's journal), after the process's
	)
	for _, n := range names {
		m, env, err := p.startMember(n, factories[n], base.With().Str("milter", n).Str("site", cfg.Site).Logger(), reg)
		if err != nil {
			return nil, err
		}
		// Per-member checks are named "trail:policy" in a suite, and keep
		// their plain names for a milter alone.
		suffix := ""
		if name == config.SuiteName {
			suffix = ":" + n
		}
		checks = append(checks,
			metrics.Check{Name: "trail" + suffix, Func: m.trail.healthy, Detail: m.trail.detail},
			// Never a failure: with no rules the milters decide by their
			// defaults (no rule authorises relay), which is safe to serve.
			metrics.Check{Name: "rules" + suffix, Detail: m.rules.Detail})
		own = append(own, env.checks...)
		routes = append(routes, env.routes...)
	}
	if p.redis != nil {
		checks = append(checks, metrics.Check{Name: "redis", Degraded: p.redis.degraded})
	}
	checks = append(checks, own...)
	if err := distinct(checks, routes); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	maddr, err := cfg.MetricsListen(name)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", cfgPath, err)
	}
	routes = append(routes, p.statusRoute(checks, routes))
	p.metrics, err = metrics.Listen(maddr, reg, checks, routes...)
	if err != nil {
		return nil, err
	}

	opts := milterrt.Options{
		Logger:        log,
		Registerer:    reg,
		MaxSessions:   mc.MaxSessions,
		IdleTimeout:   mc.IdleTimeout,
		MessageDir:    mc.MessageDir,
		MessageMemory: int64(mc.MessageMemory),
	}
	if name == config.SuiteName {
		sm := make([]milterrt.SuiteMember, len(p.members))
		for i, m := range p.members {
			sm[i] = milterrt.SuiteMember{Milter: m.milter, OnTransaction: func(st *milterrt.State) { m.onTransaction(st) }}
		}
		p.milter = milterrt.NewSuite(name, sm, milterrt.SuiteOptions{Logger: log, Registerer: reg,
			MessageDir: mc.MessageDir, MessageMemory: int64(mc.MessageMemory)})
		// The suite's own outcome (what Postfix was told) for /status; the
		// trail events are the members'.
		opts.OnTransaction = func(st *milterrt.State) { p.decisions.Record(finalAction(st)) }
	} else {
		m := p.members[0]
		p.milter = m.milter
		opts.OnTransaction = func(st *milterrt.State) { p.decisions.Record(m.onTransaction(st).Action) }
	}
	p.server = milterrt.New(p.milter, opts)
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
	ev := log.Info().Str("listen", mc.Listen).Str("metrics", p.metrics.Addr()).Str("version", buildinfo.Version)
	if name == config.SuiteName {
		spools := make([]string, len(p.members))
		for i, m := range p.members {
			spools[i] = m.trail.dir
		}
		ev = ev.Strs("members", names).Strs("spools", spools)
	} else {
		ev = ev.Str("spool", p.members[0].trail.dir)
	}
	ev.Msg("started")
	return p, nil
}

// startMember opens a member's own parts (trail spool and drainers, rules
// syncer) and builds its milter with an Env of its own name on the
// process's shared parts (config, registry, store, resolver). The member is
// added to p.members as soon as it has parts to close.
func (p *Process) startMember(name string, f Factory, log zerolog.Logger, reg *prometheus.Registry) (*member, *Env, error) {
	cfg := p.cfg
	m := &member{name: name, log: log}
	var err error
	m.trail, err = openTrail(cfg, name, log, reg)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", name, err)
	}
	p.members = append(p.members, m)
	// Rules: from rules_file (standalone) or merged from every site's Redis,
	// kept current in the background; the first load is bounded (then the
	// saved snapshot serves).
	m.rules, err = rulesync.Start(context.Background(), rulesync.Options{
		Store: p.store, RulesFile: cfg.RulesFile, StateDir: cfg.StateDir,
		Milter: name, Logger: log, Registerer: reg,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("%s: rules: %w", name, err)
	}
	env := NewEnv(name, cfg, log, m.rules)
	env.Registry = reg
	env.Trail = m.trail.emitter
	if p.store != nil { // a nil *Store must not become a non-nil Backend
		env.Store = p.store
	}
	env.newResolver = p.resolver
	m.milter, err = f(env)
	if err != nil {
		return nil, nil, fmt.Errorf("%s milter: %w", name, err)
	}
	return m, env, nil
}

// resolver returns the process's one DNS resolver (docs/dns.md), built when
// a milter first asks for it (Env.DNS), so a dns section that cannot work
// stops only a milter that looks names up; in a suite every member gets the
// same one (one cache, one budget per look-up). It sends nothing until the
// first look-up.
func (p *Process) resolver() (resolver.Resolver, error) {
	p.dnsMu.Lock()
	defer p.dnsMu.Unlock()
	if p.dns != nil {
		return p.dns, nil
	}
	cfg := p.cfg
	o := resolver.Options{Servers: cfg.DNS.Servers, Timeout: cfg.DNS.Timeout, CacheSize: cfg.DNS.CacheSize,
		ServeStale: cfg.DNS.ServeStale, Registerer: p.reg}
	if o.CacheSize == 0 { // config: 0 turns the cache off; resolver: 0 is its default
		o.CacheSize = -1
	}
	if o.ServeStale == 0 { // likewise
		o.ServeStale = -1
	}
	c, err := resolver.New(o)
	if err != nil {
		return nil, fmt.Errorf("config %s: dns: %w", p.cfgPath, err)
	}
	p.dns = c
	return c, nil
}

// distinct reports two health checks or two routes of the same name: in a
// suite they come from several milters, and a clash would hide one of them.
func distinct(checks []metrics.Check, routes []metrics.Route) error {
	seen := make(map[string]bool)
	for _, c := range checks {
		if seen["check "+c.Name] {
			return fmt.Errorf("two health checks named %q", c.Name)
		}
		seen["check "+c.Name] = true
	}
	for _, r := range routes {
		if seen["route "+r.Pattern] {
			return fmt.Errorf("two milters serve %s on the metrics listener", r.Pattern)
		}
		seen["route "+r.Pattern] = true
	}
	return nil
}

func (p *Process) listening() error {
	if p.ln == nil {
		return errors.New("not listening")
	}
	return nil
}

// Reload re-reads the config and the rules; an invalid config is logged and
// the old one kept, an invalid rules file likewise (the rules in force stay).
// Each member that is a Reloader takes the new config; one that refuses it
// keeps its running config (logged), and the process keeps the old one too.
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
	} else {
		p.log.Warn().Msg("milters." + p.name + " is no longer in the config: the process serves on until it is stopped")
	}
	if sc, ok := cfg.Suite(); ok && p.name == config.SuiteName && !slices.Equal(sc.Members, p.memberNames()) {
		p.log.Warn().Strs("members", sc.Members).Msg("suite member changes take a restart")
	}
	refused := false
	for _, m := range p.members {
		if r, ok := m.milter.(Reloader); ok {
			if err := r.Reload(cfg); err != nil {
				m.log.Error().Err(err).Msg("reload refused by milter, keeping the running config")
				refused = true
			}
		}
	}
	if refused {
		return
	}
	p.cfg = cfg
	if p.ownsProcess {
		p.applyMaxProcs()
	}
	p.log.Info().Msg("reloaded")
}

func (p *Process) memberNames() []string {
	names := make([]string, len(p.members))
	for i, m := range p.members {
		names[i] = m.name
	}
	return names
}

// reloadRules re-reads rules_file (standalone) or schedules a reload from
// Redis, for every member. The syncers log a refused file themselves.
func (p *Process) reloadRules() {
	for _, m := range p.members {
		m.rules.SetRulesFile(p.cfg.RulesFile)
		if err := m.rules.Reload(); err == nil && p.store == nil {
			m.log.Info().Str("rules_file", p.cfg.RulesFile).Int("rules", m.rules.Current().Len()).Msg("rules reloaded")
		}
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
	// The milters' own parts first (the archive milter's journal and its
	// drainers): their sessions have ended, their trail events still go out.
	for _, m := range p.members {
		if c, ok := m.milter.(io.Closer); ok {
			errs = append(errs, c.Close())
		}
	}
	// The trail pipes together: each gets the same bound to deliver.
	var wg sync.WaitGroup
	terrs := make([]error, len(p.members))
	for i, m := range p.members {
		if m.trail == nil {
			continue
		}
		wg.Add(1)
		go func() { defer wg.Done(); terrs[i] = m.trail.close(drainFlushTimeout) }()
	}
	wg.Wait()
	errs = append(errs, terrs...)
	if p.metrics != nil {
		errs = append(errs, p.metrics.Close())
	}
	for _, m := range p.members {
		if m.rules != nil {
			m.rules.Close()
		}
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

// Emitter is exported for milters that emit extra events (tests, ops): the
// first member's (the milter's, for a process of one milter).
func (p *Process) Emitter() *trail.Emitter { return p.members[0].trail.emitter }

// Members names the milters of the process, in chain order.
func (p *Process) Members() []string { return p.memberNames() }

// MetricsAddr is the address the metrics listener is bound to (the port
// chosen when the config asks for port 0).
func (p *Process) MetricsAddr() string { return p.metrics.Addr() }

// Addr is the address the milter socket is bound to.
func (p *Process) Addr() net.Addr { return p.ln.Addr() }
