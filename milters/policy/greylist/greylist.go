// Package greylist defers the first delivery attempt of an unknown
// (client network, sender, recipient) triplet and accepts the retry after a
// delay, over the state shared by every site (shared/state): the earliest
// first sighting at any site counts and a triplet passed anywhere has
// passed, so a sender retrying through another site's MX is not delayed
// twice. It never waits on Redis beyond the store's own call budget: a
// store that does not answer gives the documented degraded answer — accept,
// flagged (docs/policy.md "Greylisting, shared by every site").
//
// The technique is Harris's "The Next Step in the Spam Control War:
// Greylisting" (2003); the deferral is a 4xx reply, which RFC 5321 §4.2.1
// and §4.5.4.1 oblige a client to retry.
package greylist

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/shared/state"
)

// Names in the shared state: the set of auto-allowlisted networks, and the
// prefix of the counters of passes per network.
const (
	autoSet        = "greylist-auto"
	passCounterPfx = "greylist-pass:"
)

// Triplet is what greylisting remembers of a delivery attempt.
type Triplet struct {
	Client netip.Addr
	Sender string // "" or "<>": the null sender
	Rcpt   string
}

// Status is the outcome of one Check.
type Status string

// The statuses, also the label values of geomilter_policy_greylist_total.
const (
	StatusNew         Status = "new"         // first sighting: deferred
	StatusWaiting     Status = "waiting"     // seen before, the delay not over: deferred
	StatusPassed      Status = "passed"      // retried after the delay, or passed before: accepted
	StatusAllowlisted Status = "allowlisted" // the client network is auto-allowlisted: accepted
	StatusDegraded    Status = "degraded"    // the store did not answer: accepted, flagged
)

var statuses = []Status{StatusNew, StatusWaiting, StatusPassed, StatusAllowlisted, StatusDegraded}

// Result is the outcome of one Check.
type Result struct {
	Status Status
	// Defer: tempfail this recipient (with Settings.Reply).
	Defer bool
	// FirstSeen is the earliest sighting of the triplet at any site (zero
	// when unknown: allowlisted, or the store did not answer before it
	// said).
	FirstSeen time.Time
	// Err says why the result is degraded.
	Err error
	// Duration is the time Check took.
	Duration time.Duration
}

// Greylister checks triplets against the shared state. Safe for concurrent
// use.
type Greylister struct {
	store state.Backend
	s     Settings
	clock func() time.Time
	log   zerolog.Logger
	total map[Status]prometheus.Counter
}

// New builds a Greylister over store (the site's state.Store, or a
// state.MemStore in standalone mode), reading time from clock (time.Now if
// nil; it must be the clock the store stamps sightings with), and registers
// geomilter_policy_greylist_total{status} with reg (if not nil).
func New(store state.Backend, s Settings, clock func() time.Time, log zerolog.Logger, reg prometheus.Registerer) (*Greylister, error) {
	if store == nil {
		return nil, errors.New("greylist: no state store")
	}
	if err := s.check(); err != nil {
		return nil, fmt.Errorf("greylist: %w", err)
	}
	if clock == nil {
		clock = time.Now
	}
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "geomilter_policy_greylist_total",
		Help: "Greylisting outcomes per recipient: new, waiting (deferred), passed, allowlisted, degraded (store unavailable: accepted).",
	}, []string{"status"})
	g := &Greylister{store: store, s: s, clock: clock, log: log.With().Str("component", "greylist").Logger(),
		total: make(map[Status]prometheus.Counter, len(statuses))}
	for _, st := range statuses {
		g.total[st] = vec.WithLabelValues(string(st))
	}
	if reg != nil {
		if err := reg.Register(vec); err != nil {
			return nil, fmt.Errorf("greylist: register metrics: %w", err)
		}
	}
	return g, nil
}

// Settings returns the settings the Greylister was built with.
func (g *Greylister) Settings() Settings { return g.s }

// Check records a delivery attempt of t and says whether to defer it.
// Every store call answers within the store's budget (and ctx); the first
// that fails ends the check as degraded, not deferred.
func (g *Greylister) Check(ctx context.Context, t Triplet) Result {
	start := time.Now()
	r := g.check(ctx, t)
	r.Duration = time.Since(start)
	g.total[r.Status].Inc()
	if r.Status == StatusDegraded {
		// Debug: while Redis is down this is every recipient; the store's
		// breaker logs the outage itself. No addresses: the status is enough.
		g.log.Debug().Err(r.Err).Msg("greylisting degraded: accepted")
	}
	return r
}

func (g *Greylister) check(ctx context.Context, t Triplet) Result {
	if !t.Client.IsValid() {
		// No client address (a local submission that reached this check):
		// no network to key on. Accept, flagged, rather than greylist
		// every such message under one made-up network.
		return degraded(errors.New("client address unknown: no triplet to check"))
	}
	if err := ctx.Err(); err != nil {
		return degraded(fmt.Errorf("greylist: %w", err))
	}
	network := Network(t.Client, g.s.IPv4Prefix, g.s.IPv6Prefix)
	if g.s.AutoAllowlist > 0 {
		ok, err := g.store.SetHas(ctx, autoSet, network)
		if err != nil {
			return degraded(err)
		}
		if ok {
			// Keep a network that still sends allowlisted for Lifetime
			// since its last message: its triplets are not refreshed while
			// it is allowlisted, so letting the entry lapse would greylist
			// a regular sender's every triplet again. One write per
			// message of an allowlisted network, as for a passed triplet.
			if err := g.store.SetAdd(ctx, autoSet, network, g.s.Lifetime); err != nil {
				return degraded(err)
			}
			return Result{Status: StatusAllowlisted}
		}
	}
	key := Key(t, g.s.IPv4Prefix, g.s.IPv6Prefix)
	before := g.clock()
	first, passed, err := g.store.GreylistSeen(ctx, key, g.s.Delay+g.s.RetryWindow)
	if err != nil {
		return degraded(err)
	}
	if passed {
		// Refresh: a passed triplet is kept Lifetime since it was last
		// seen, not since it passed, so a correspondent who writes every
		// week is never greylisted again; without this write its entry
		// would lapse Lifetime after the first pass and defer it anew.
		if err := g.store.GreylistPass(ctx, key, g.s.Lifetime); err != nil {
			return degraded(err)
		}
		return Result{Status: StatusPassed, FirstSeen: first}
	}
	if elapsed := g.clock().Sub(first); elapsed < g.s.Delay {
		// The store stamps sightings in Unix ms from the same clock: a
		// first sighting no earlier than our reading before the call is
		// this call's (or a concurrent one's) own.
		st := StatusWaiting
		if first.UnixMilli() >= before.UnixMilli() {
			st = StatusNew
		}
		return Result{Status: st, Defer: true, FirstSeen: first}
	}
	// The retry came after the delay and within the retry window (a later
	// one finds the entry expired, so a new first sighting).
	if err := g.store.GreylistPass(ctx, key, g.s.Lifetime); err != nil {
		return degraded(err)
	}
	r := Result{Status: StatusPassed, FirstSeen: first}
	if g.s.AutoAllowlist > 0 {
		if err := g.countPass(ctx, network); err != nil {
			r = degraded(err)
			r.FirstSeen = first
		}
	}
	return r
}

// countPass counts a passed triplet for its network, summed over the sites,
// and allowlists the network once it reaches Settings.AutoAllowlist.
func (g *Greylister) countPass(ctx context.Context, network string) error {
	cs, err := g.store.IncrMany(ctx, []state.IncrReq{{Subject: passCounterPfx + network, Window: g.s.Lifetime}})
	if err != nil {
		return err
	}
	// Counters are fixed windows of Lifetime; Estimate weighs the previous
	// window by the part a sliding window ending now still covers, so a
	// network's passes are not forgotten at a window boundary.
	if len(cs) != 1 || cs[0].Estimate < float64(g.s.AutoAllowlist) {
		return nil
	}
	if err := g.store.SetAdd(ctx, autoSet, network, g.s.Lifetime); err != nil {
		return err
	}
	g.log.Info().Str("network", network).Int("passed", g.s.AutoAllowlist).Msg("client network auto-allowlisted")
	return nil
}

func degraded(err error) Result {
	return Result{Status: StatusDegraded, Err: err}
}

// Network is the client's network as greylisting groups it: the address
// masked to v4 or v6 bits ("192.0.2.0/24", "2001:db8:1:2::/64"). An
// IPv4-mapped IPv6 address counts as IPv4; a zone is dropped. Prefixes out
// of range are clamped.
func Network(a netip.Addr, v4, v6 int) string {
	if !a.IsValid() {
		return "unknown"
	}
	a = a.Unmap().WithZone("")
	bits := min(max(v6, 0), 128)
	if a.Is4() {
		bits = min(max(v4, 0), 32)
	}
	p, err := a.Prefix(bits)
	if err != nil {
		return a.String() // not reached: bits are in range for the family
	}
	return p.String()
}

// Key is the triplet key in the store: the client network (see Network),
// the sender and the recipient, lower-cased, without angle brackets, the
// null sender as "" — each address quoted, so no address can end where
// another begins whatever characters its local part holds (RFC 5321 §4.1.2
// allows almost any in a quoted one).
func Key(t Triplet, v4, v6 int) string {
	return Network(t.Client, v4, v6) + " " + strconv.Quote(normAddr(t.Sender)) + " " + strconv.Quote(normAddr(t.Rcpt))
}

// normAddr lower-cases an address and drops the angle brackets of the SMTP
// path, so "<>" is the null sender "". Lower-casing the local part too is a
// greylisting convention: a sender's retry may change the case, and a
// collision of two mailboxes that differ only in case costs nothing.
func normAddr(a string) string {
	a = strings.TrimSpace(a)
	if len(a) >= 2 && a[0] == '<' && a[len(a)-1] == '>' {
		a = a[1 : len(a)-1]
	}
	return strings.ToLower(a)
}
