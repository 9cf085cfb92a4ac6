package state

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"
)

// Store is one site's view of the cross-site state: it writes to the site's
// own primary and reads that primary plus the local replicas of every peer
// site's primary. It is safe for concurrent use.
type Store struct {
	opts  Options
	site  string
	hlc   *HLCClock
	own   *instance
	peers []*instance // sorted by site name
	all   []*instance // own first, then peers

	peerCache  *peerCountCache
	rulesCache rulesCache

	bgCtx    context.Context // ends at Close: subscription loops
	bgCancel context.CancelFunc
	bgWG     sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
}

// Open builds the clients and breakers. It does no network I/O, so a site
// whose Redis is down still starts (connections are made by the first calls
// and, in the background, to warm one idle connection per instance).
func Open(o Options) (*Store, error) {
	o.setDefaults()
	if err := o.validate(); err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	s := &Store{opts: o, site: o.Site, hlc: NewHLCClock(o.Site, o.Clock), peerCache: newPeerCountCache()}
	own, err := newInstance(o.Site, RolePrimary, o.Local, &s.opts)
	if err != nil {
		return nil, fmt.Errorf("state: local: %w", err)
	}
	s.own = own
	s.all = append(s.all, own)
	names := make([]string, 0, len(o.Peers))
	for name := range o.Peers {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		in, err := newInstance(name, RolePeerReplica, o.Peers[name], &s.opts)
		if err != nil {
			_ = s.closeInstances()
			return nil, fmt.Errorf("state: peers.%s: %w", name, err)
		}
		s.peers = append(s.peers, in)
		s.all = append(s.all, in)
	}
	s.bgCtx, s.bgCancel = context.WithCancel(context.Background())
	return s, nil
}

// Close stops background loops and closes every client. Calls made after
// Close fail with ErrUnavailable.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.bgCancel()
		s.bgWG.Wait()
		s.closeErr = s.closeInstances()
	})
	return s.closeErr
}

func (s *Store) closeInstances() error {
	var errs []error
	for _, in := range s.all {
		if err := in.close(); err != nil {
			errs = append(errs, fmt.Errorf("close %s: %w", in, err))
		}
	}
	return errors.Join(errs...)
}

// Site is this store's site name.
func (s *Store) Site() string { return s.site }

// Sites lists this site and its peers, this site first.
func (s *Store) Sites() []string {
	out := make([]string, len(s.all))
	for i, in := range s.all {
		out[i] = in.site
	}
	return out
}

// HLC is the store's clock, which stamps rule writes.
func (s *Store) HLC() *HLCClock { return s.hlc }

// Status reports every instance, in parallel: its breaker state (as it is
// when Status returns), counters and, from those whose breaker is closed,
// INFO replication within BulkTimeout. It is meant for health polls off
// the mail path: its INFO calls bypass the breakers, so a slow or failed
// status call never opens the breaker mail-path calls go through, and it
// never waits on an instance whose breaker is not closed.
func (s *Store) Status(ctx context.Context) []InstanceStatus {
	out := make([]InstanceStatus, len(s.all))
	s.fanOut(func(i int, in *instance) { out[i] = in.status(ctx, s.opts.BulkTimeout) })
	return out
}

// fanOut runs fn for every instance (own first) in parallel and waits. The
// own primary runs on the calling goroutine.
func (s *Store) fanOut(fn func(i int, in *instance)) {
	var wg sync.WaitGroup
	for i := 1; i < len(s.all); i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			fn(i, s.all[i])
		}(i)
	}
	fn(0, s.all[0])
	wg.Wait()
}

func (s *Store) now() time.Time { return s.opts.Clock() }

// Key names. The site sits in a hash tag, so all of one site's keys share a
// Redis Cluster slot should a site ever shard its primary.
func sitePrefix(site string) string      { return "gm:{" + site + "}:" }
func rulesKey(site string) string        { return sitePrefix(site) + "rules" }
func rulesVersionKey(site string) string { return sitePrefix(site) + "rules:version" }
func rulesChannel(site string) string    { return sitePrefix(site) + "rules:changed" }
