package rulesync

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/shared/rules"
	"github.com/geomilter/geomilter/shared/state"
)

// Where the snapshot in force came from.
const (
	SourceRedis = "redis" // merged from every site's Redis
	SourceDisk  = "disk"  // the snapshot saved in state_dir (Redis did not answer at start)
	SourceFile  = "file"  // rules_file (standalone mode)
	SourceEmpty = "empty" // nothing loaded: no rule applies
)

var sources = []string{SourceRedis, SourceDisk, SourceFile, SourceEmpty}

// Defaults of Options.
const (
	DefaultInitialTimeout = 2 * time.Second
	DefaultPollEvery      = time.Second
	DefaultDebounce       = 50 * time.Millisecond
	DefaultLoadTimeout    = 30 * time.Second
)

// Options configure a Syncer.
type Options struct {
	// Store is the cross-site state; nil means standalone: the rules come
	// from RulesFile.
	Store     *state.Store
	RulesFile string // standalone: the rules file; ignored with a Store
	// StateDir receives rules.snapshot after every change; "" = not saved.
	StateDir string

	Milter     string                // const label "milter" on the metrics; may be empty
	Logger     zerolog.Logger        // loads, problems, fallbacks
	Registerer prometheus.Registerer // nil: metrics are not registered
	Clock      func() time.Time      // default time.Now

	// InitialTimeout bounds the first load from Redis at start; when it
	// does not complete in time the saved snapshot is used.
	InitialTimeout time.Duration
	PollEvery      time.Duration // version poll, the fallback for lost notifications
	Debounce       time.Duration // notifications within this window cause one reload
	LoadTimeout    time.Duration // bound on one background load
}

func (o *Options) setDefaults() {
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.InitialTimeout <= 0 {
		o.InitialTimeout = DefaultInitialTimeout
	}
	if o.PollEvery <= 0 {
		o.PollEvery = DefaultPollEvery
	}
	if o.Debounce <= 0 {
		o.Debounce = DefaultDebounce
	}
	if o.LoadTimeout <= 0 {
		o.LoadTimeout = DefaultLoadTimeout
	}
}

// Status describes the snapshot in force.
type Status struct {
	Source   string
	Rules    int
	Tenants  int
	Checksum string
	Version  string
	// LoadedAt is when this snapshot was installed; VerifiedAt the last time
	// it was known to match its source (every site answered with the
	// versions it was built from; the file was read; the disk snapshot was
	// saved). Age = now - VerifiedAt.
	LoadedAt   time.Time
	VerifiedAt time.Time
	// Stale lists the sites whose documents come from memory because their
	// instance did not answer the last load.
	Stale []string
	// Invalid is the number of documents skipped in the snapshot in force.
	Invalid   int
	LastError string // the last failed load or reload, "" after a success
}

// Syncer keeps a Holder current. Current is safe for concurrent use and
// never blocks; everything else happens on the Syncer's own goroutines.
type Syncer struct {
	holder *Holder
	o      Options
	log    zerolog.Logger
	m      *syncMetrics

	trigger chan struct{}
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	reloadMu sync.Mutex // standalone reloads (SIGHUP) one at a time

	mu          sync.Mutex
	status      Status
	rulesFile   string
	view        map[string]state.RuleDoc // redis: documents of the snapshot in force; nil otherwise
	known       map[string]*siteMemory
	loaded      map[string]int64 // versions of the sites that answered the last load
	complete    bool             // the last load had every site
	savedSum    string
	invalidSeen map[string]bool
}

// Start loads the rules and, with a Store, starts following changes.
//
// Standalone: RulesFile is parsed and compiled; if it is invalid the saved
// snapshot is used (and the problems logged); with neither, Start fails.
//
// With a Store: one load from Redis bounded by InitialTimeout; if some site
// does not answer, the saved snapshot; if there is none, the sites that did
// answer (or an empty snapshot). Then every rules notification (debounced)
// and every version change seen by the poll reloads, off the mail path.
func Start(ctx context.Context, o Options) (*Syncer, error) {
	o.setDefaults()
	s := &Syncer{
		holder:      NewHolder(nil),
		o:           o,
		log:         o.Logger.With().Str("component", "rulesync").Logger(),
		trigger:     make(chan struct{}, 1),
		rulesFile:   o.RulesFile,
		known:       make(map[string]*siteMemory),
		invalidSeen: make(map[string]bool),
	}
	now := o.Clock()
	s.status = Status{Source: SourceEmpty, LoadedAt: now, VerifiedAt: now}
	m, err := newSyncMetrics(o.Registerer, o.Milter, s)
	if err != nil {
		return nil, err
	}
	s.m = m
	s.m.setSource(SourceEmpty)
	if o.StateDir != "" {
		// The milter processes of a host share the file; saves are atomic
		// renames, so concurrent ones never mix.
		if err := os.MkdirAll(o.StateDir, 0o750); err != nil {
			s.m.unregister()
			return nil, fmt.Errorf("rules: state_dir: %w", err)
		}
	}

	if o.Store == nil {
		if err := s.startStandalone(); err != nil {
			s.m.unregister()
			return nil, err
		}
		return s, nil
	}
	s.startRedis(ctx)
	return s, nil
}

func (s *Syncer) startStandalone() error {
	err := s.loadFile(s.rulesFile)
	if err == nil {
		return nil
	}
	if s.o.StateDir != "" {
		if derr := s.loadDisk(); derr == nil {
			s.log.Error().Err(err).Str("rules_file", s.rulesFile).
				Msg("rules file invalid: serving the saved snapshot; fix the file and send SIGHUP")
			s.setError(err)
			return nil
		} else if !errors.Is(derr, fs.ErrNotExist) {
			s.log.Error().Err(derr).Msg("saved rules snapshot unusable")
		}
	}
	return err
}

func (s *Syncer) startRedis(ctx context.Context) {
	ctx, s.cancel = context.WithCancel(ctx)
	ictx, icancel := context.WithTimeout(ctx, s.o.InitialTimeout)
	merged, srcs, err := s.o.Store.LoadRules(ictx)
	icancel()
	missing := missingSites(srcs, s.o.Store.Sites())
	switch {
	case err == nil:
		s.applyLoad(merged, srcs, nil)
	default:
		s.log.Warn().Err(err).Msg("rules: initial load from Redis incomplete")
		derr := errors.New("no state_dir")
		if s.o.StateDir != "" {
			derr = s.loadDisk()
		}
		switch {
		case derr == nil:
			s.log.Warn().Strs("missing", missing).Msg("rules: serving the saved snapshot until every site answers")
			s.setError(err)
		case len(missing) < len(s.o.Store.Sites()) && merged != nil:
			s.log.Warn().Err(derr).Strs("missing", missing).
				Msg("rules: no saved snapshot; serving the rules of the sites that answered")
			s.applyLoad(merged, srcs, missing)
			s.setError(err)
		default:
			s.log.Error().Err(derr).Msg("rules: no site answered and no saved snapshot: serving an empty snapshot (no rule applies)")
			s.setError(err)
			s.m.reloads.WithLabelValues("failed").Inc()
		}
	}
	s.wg.Add(2)
	go func() { defer s.wg.Done(); s.runReloads(ctx) }()
	go func() { defer s.wg.Done(); s.runPoll(ctx) }()
	s.o.Store.Subscribe(ctx, func(string) { s.kick() })
}

// Current returns the snapshot in force; never nil.
func (s *Syncer) Current() *rules.Snapshot { return s.holder.Current() }

// Holder returns the holder the Syncer keeps current.
func (s *Syncer) Holder() *Holder { return s.holder }

// SetRulesFile changes the file a standalone Reload reads (rules_file after a
// config reload).
func (s *Syncer) SetRulesFile(path string) {
	s.mu.Lock()
	s.rulesFile = path
	s.mu.Unlock()
}

// Reload re-reads the rules: standalone, the rules file, synchronously (an
// invalid file keeps the snapshot in force; the error lists its problems);
// with a Store, a reload from Redis is scheduled.
func (s *Syncer) Reload() error {
	if s.o.Store != nil {
		s.kick()
		return nil
	}
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	s.mu.Lock()
	path := s.rulesFile
	s.mu.Unlock()
	if err := s.loadFile(path); err != nil {
		s.log.Error().Err(err).Str("rules_file", path).Msg("rules reload refused: keeping the rules in force")
		return err
	}
	return nil
}

// Status reports the snapshot in force.
func (s *Syncer) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.status
	st.Stale = append([]string(nil), st.Stale...)
	return st
}

// Detail is the /healthz line: source, size, age, and what is degraded. It
// never fails the check: with no rules the access milter authorises no relay
// (docs/operations.md), so serving is safe.
func (s *Syncer) Detail() string {
	st := s.Status()
	age := s.o.Clock().Sub(st.VerifiedAt).Round(100 * time.Millisecond)
	var b strings.Builder
	if st.Source == SourceEmpty {
		b.WriteString("no rules (empty snapshot)")
	} else {
		fmt.Fprintf(&b, "%s: %d rules, %d tenants, verified %s ago", st.Source, st.Rules, st.Tenants, age)
	}
	if len(st.Stale) > 0 {
		fmt.Fprintf(&b, "; last known rules of %s (not answering)", strings.Join(st.Stale, ","))
	}
	if st.Invalid > 0 {
		fmt.Fprintf(&b, "; %d invalid documents skipped", st.Invalid)
	}
	if st.LastError != "" {
		fmt.Fprintf(&b, "; last load: %s", st.LastError)
	}
	return b.String()
}

// Close stops following changes. The snapshot stays readable.
func (s *Syncer) Close() {
	if s.cancel != nil {
		s.cancel()
	}
	s.wg.Wait()
	s.m.unregister()
}

// kick schedules a reload; several kicks before it runs make one.
func (s *Syncer) kick() {
	select {
	case s.trigger <- struct{}{}:
	default:
	}
}

func (s *Syncer) runReloads(ctx context.Context) {
	t := time.NewTimer(0)
	if !t.Stop() {
		<-t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.trigger:
		}
		// Debounce: a burst of notifications (one per site and per write)
		// makes one reload.
		t.Reset(s.o.Debounce)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		select {
		case <-s.trigger:
		default:
		}
		s.reloadRedis(ctx)
	}
}

// runPoll compares the sites' rules versions with those of the last load:
// the fallback when a notification is lost, and what notices a site that
// answers again.
func (s *Syncer) runPoll(ctx context.Context) {
	t := time.NewTicker(s.o.PollEvery)
	defer t.Stop()
	all := len(s.o.Store.Sites())
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		v := s.o.Store.Versions(ctx)
		s.mu.Lock()
		same := len(v) == len(s.loaded)
		for site, ver := range v {
			if lv, ok := s.loaded[site]; !ok || lv != ver {
				same = false
			}
		}
		if same && s.complete && len(v) == all {
			s.status.VerifiedAt = s.o.Clock()
		}
		s.mu.Unlock()
		if !same {
			s.kick()
		}
	}
}

func (s *Syncer) reloadRedis(ctx context.Context) {
	lctx, cancel := context.WithTimeout(ctx, s.o.LoadTimeout)
	merged, srcs, err := s.o.Store.LoadRules(lctx)
	cancel()
	if ctx.Err() != nil {
		return
	}
	missing := missingSites(srcs, s.o.Store.Sites())
	if err != nil && !errors.Is(err, state.ErrUnavailable) {
		s.setError(err)
		s.m.reloads.WithLabelValues("failed").Inc()
		s.log.Error().Err(err).Msg("rules reload failed: keeping the rules in force")
		return
	}
	if len(missing) == len(s.o.Store.Sites()) {
		s.mu.Lock()
		s.loaded, s.complete = map[string]int64{}, false
		s.mu.Unlock()
		s.setError(err)
		s.m.reloads.WithLabelValues("failed").Inc()
		return
	}
	if !s.applyLoad(merged, srcs, missing) {
		s.setError(err)
		s.m.reloads.WithLabelValues("failed").Inc()
		return
	}
	if err != nil {
		s.setError(err)
	}
}

// applyLoad turns one load into the snapshot in force. It returns false when
// the load could not be used (a missing site this process never read, or a
// compile failure), leaving the snapshot in force.
func (s *Syncer) applyLoad(merged map[string]state.RuleDoc, srcs map[string]state.SiteStatus, missing []string) bool {
	now := s.o.Clock()
	s.mu.Lock()
	prev := s.view
	if s.status.Source != SourceRedis {
		prev = nil
	}
	view, heldBack, unknown := combine(merged, missing, s.known, prev)
	answered := make([]string, 0, len(srcs))
	versions := make(map[string]int64, len(srcs))
	for site, st := range srcs {
		if st.Available {
			answered = append(answered, site)
			versions[site] = st.Version
		}
	}
	remember(s.known, merged, answered, now)
	s.loaded, s.complete = versions, len(missing) == 0
	// An incomplete load is used only on top of a view built from Redis
	// (which supplies what the missing sites last said), or when nothing is
	// in force. A saved snapshot (complete, if older) or the rules file stays
	// until every site answers. A site this process never read contributes
	// nothing: acceptable only if the view in force lacks it too.
	usable := len(missing) == 0 || s.status.Source == SourceEmpty ||
		s.status.Source == SourceRedis && (len(unknown) == 0 || subset(unknown, s.status.Stale))
	// Only a load in which every site answered confirms the snapshot.
	verified := now
	if len(missing) > 0 {
		verified = s.status.VerifiedAt
	}
	s.mu.Unlock()
	if !usable {
		s.log.Debug().Strs("missing", unknown).Msg("rules: incomplete load; keeping the snapshot in force")
		return false
	}

	if len(heldBack) > 0 {
		s.log.Warn().Strs("ids", heldBack).Strs("missing", missing).
			Msg("rules: versions that a missing site may have deleted are held back until it answers")
	}
	var invalid []error
	for site, st := range srcs {
		for _, id := range st.Invalid {
			invalid = append(invalid, fmt.Errorf("site %s: rules field %q undecodable; skipped", site, id))
		}
	}
	docs := make([]rules.Doc, 0, len(view))
	newest := ""
	for id, d := range view {
		docs = append(docs, rules.Doc{ID: id, Body: d.Doc})
		newest = max(newest, d.HLC)
	}
	set, skipped := rules.SetFromDocs(docs)
	set.Version = newest
	invalid = append(invalid, skipped...)
	snap, err := rules.Compile(set)
	if err != nil {
		// SetFromDocs returns valid sets; reaching this is a bug, reported
		// rather than served.
		s.log.Error().Err(err).Msg("rules: merged set does not compile; keeping the rules in force")
		return false
	}
	sort.Strings(missing)
	s.install(snap, len(set.Tenants), SourceRedis, verified, missing, invalid, view)
	return true
}

// loadFile parses and compiles a rules file and installs it.
func (s *Syncer) loadFile(path string) error {
	if path == "" {
		return errors.New("rules: no rules_file configured (standalone mode needs one)")
	}
	set, err := rules.ParseFile(path)
	if err != nil {
		s.setError(err)
		s.m.reloads.WithLabelValues("failed").Inc()
		return err
	}
	snap, err := rules.Compile(set)
	if err != nil {
		s.setError(err)
		s.m.reloads.WithLabelValues("failed").Inc()
		return fmt.Errorf("rules file %s: %w", path, err)
	}
	s.install(snap, len(set.Tenants), SourceFile, s.o.Clock(), nil, nil, nil)
	return nil
}

// loadDisk installs the snapshot saved in StateDir.
func (s *Syncer) loadDisk() error {
	set, info, err := rules.LoadSaved(s.o.StateDir)
	if err != nil {
		return err
	}
	snap, err := rules.Compile(set)
	if err != nil {
		return fmt.Errorf("saved rules snapshot: %w", err)
	}
	s.install(snap, len(set.Tenants), SourceDisk, info.SavedAt, nil, info.Skipped, nil)
	s.mu.Lock()
	s.savedSum = info.Checksum
	s.mu.Unlock()
	return nil
}

// install swaps snap in, updates the status and metrics, and saves it to
// StateDir when its content changed.
func (s *Syncer) install(snap *rules.Snapshot, tenants int, source string, verified time.Time, stale []string,
	invalid []error, view map[string]state.RuleDoc) {
	now := s.o.Clock()
	sum := snap.Checksum()
	changed := s.holder.Current().Checksum() != sum
	if changed {
		s.holder.Swap(snap)
	}
	s.mu.Lock()
	loadedAt := s.status.LoadedAt
	if changed {
		loadedAt = now
	}
	s.status = Status{
		Source: source, Rules: snap.Len(), Tenants: tenants,
		Checksum: sum, Version: snap.Version(), LoadedAt: loadedAt, VerifiedAt: verified,
		Stale: stale, Invalid: len(invalid),
	}
	s.view = view
	save := s.o.StateDir != "" && source != SourceDisk && sum != s.savedSum
	newInvalid := s.noteInvalidLocked(invalid)
	s.mu.Unlock()

	for _, e := range newInvalid {
		s.log.Warn().Err(e).Msg("rules: invalid document skipped")
	}
	s.m.invalid.Add(float64(len(newInvalid)))
	s.m.setSource(source)
	s.m.setChecksum(sum)
	s.m.setStale(s.o.Store, stale)
	if changed {
		s.m.reloads.WithLabelValues("changed").Inc()
		s.log.Info().Str("source", source).Int("rules", snap.Len()).Str("checksum", sum).
			Strs("stale", stale).Msg("rules snapshot installed")
	} else {
		s.m.reloads.WithLabelValues("unchanged").Inc()
	}
	if save {
		if err := snap.SaveAt(s.o.StateDir, now); err != nil {
			s.log.Error().Err(err).Msg("rules: saving the snapshot failed (a restart with Redis down would use an older one)")
		} else {
			s.mu.Lock()
			s.savedSum = sum
			s.mu.Unlock()
		}
	}
}

// noteInvalidLocked returns the invalid documents not reported before, and
// forgets those that are gone, so each is logged and counted once.
func (s *Syncer) noteInvalidLocked(invalid []error) []error {
	next := make(map[string]bool, len(invalid))
	var fresh []error
	for _, e := range invalid {
		k := e.Error()
		next[k] = true
		if !s.invalidSeen[k] {
			fresh = append(fresh, e)
		}
	}
	s.invalidSeen = next
	return fresh
}

func (s *Syncer) setError(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		s.status.LastError = ""
		return
	}
	s.status.LastError = err.Error()
}

func subset(a, b []string) bool {
	for _, x := range a {
		found := false
		for _, y := range b {
			found = found || x == y
		}
		if !found {
			return false
		}
	}
	return true
}

func missingSites(srcs map[string]state.SiteStatus, all []string) []string {
	var out []string
	for _, site := range all {
		if st, ok := srcs[site]; !ok || !st.Available {
			out = append(out, site)
		}
	}
	sort.Strings(out)
	return out
}
