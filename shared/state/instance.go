package state

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// ErrUnavailable is wrapped by every error caused by an instance that did not
// answer in time, refused the connection, or whose breaker is open.
var ErrUnavailable = errors.New("redis unavailable")

// Roles of instances.
const (
	RolePrimary     = "primary"      // this site's own primary
	RolePeerReplica = "peer-replica" // local read-only replica of a peer's primary
)

// instance is one Redis process with its breaker. Two clients share the
// breaker: fast (mail path, budget Timeout) and bulk (rule loads and
// writes, status, subscriptions; budget BulkTimeout).
type instance struct {
	site string // whose data it holds
	role string
	addr string
	fast *redis.Client
	bulk *redis.Client
	br   *breaker
}

func newInstance(site, role string, c InstanceConfig, o *Options) (*instance, error) {
	fast, err := newClient(c, o, clientSettings{timeout: o.Timeout, minIdle: 1})
	if err != nil {
		return nil, err
	}
	bulk, err := newClient(c, o, clientSettings{timeout: o.BulkTimeout, poolSize: 4})
	if err != nil {
		_ = fast.Close()
		return nil, err
	}
	in := &instance{site: site, role: role, addr: c.describe(), fast: fast, bulk: bulk}
	log := o.Logger.With().Str("site", site).Str("role", role).Str("addr", in.addr).Logger()
	probe := func() error {
		ctx, cancel := probeCtx(o.Timeout)
		defer cancel()
		return fast.Ping(ctx).Err()
	}
	in.br = newBreaker(o.BreakerFailures, o.BreakerOpenFor, o.Clock, probe, breakerLogger(log))
	return in, nil
}

func breakerLogger(log zerolog.Logger) func(from, to BreakerState, err error) {
	return func(from, to BreakerState, err error) {
		var ev *zerolog.Event
		if to == BreakerClosed {
			ev = log.Info()
		} else {
			ev = log.Warn().Err(err)
		}
		ev.Str("from", from.String()).Str("to", to.String()).Msg("redis breaker")
	}
}

func (in *instance) String() string { return in.site + " " + in.role + " " + in.addr }

// call runs fn against client c within budget, through the breaker. Errors
// caused by the instance's unavailability wrap ErrUnavailable; redis.Nil and
// error replies pass through unchanged (the instance answered).
func (in *instance) call(ctx context.Context, c *redis.Client, budget time.Duration,
	fn func(ctx context.Context, c *redis.Client) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !in.br.allow() {
		return fmt.Errorf("%s: breaker open: %w", in, ErrUnavailable)
	}
	cctx, cancel := context.WithTimeout(ctx, budget)
	err := fn(cctx, c)
	cancel()
	failure, timedOut := classify(ctx, err)
	in.br.record(failure, timedOut, err)
	if failure {
		return fmt.Errorf("%s: %w: %w", in, ErrUnavailable, err)
	}
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("%s: %w", in, err)
	}
	return err
}

// classify decides whether err counts against the instance. parent is the
// caller's context: when it ended, the caller gave up and the instance is
// not to blame.
func classify(parent context.Context, err error) (failure, timedOut bool) {
	if err == nil || errors.Is(err, redis.Nil) {
		return false, false
	}
	if parent.Err() != nil {
		return false, false
	}
	var re redis.Error
	if errors.As(err, &re) {
		return false, false // an error reply: the instance is alive
	}
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, redis.ErrPoolTimeout) ||
		(errors.As(err, &ne) && ne.Timeout()) {
		return true, true
	}
	return true, false
}

// InstanceStatus describes one Redis instance as this Store sees it.
type InstanceStatus struct {
	Site      string // whose data it holds
	Role      string // RolePrimary or RolePeerReplica
	Addr      string
	Up        bool      // breaker closed: mail-path calls go through
	Breaker   string    // "closed", "suspect", "open", as it stood when Status returned
	LastError string    // the breaker's last failure, else StatusError
	OpenSince time.Time // start of the current outage; zero when up
	// StatusError is why this Status call got no INFO replication from an
	// instance whose breaker is closed (empty when it answered or when the
	// breaker is not closed). It does not count against the breaker.
	StatusError string

	// Counters since Open. TimedOut counts calls that waited out their
	// budget; Trips counts breaker cycles. With the breaker working,
	// TimedOut grows by the calls in flight when an instance went dark, not
	// by the calls made while it stays dark (those are FastFails).
	Calls, Failures, TimedOut, FastFails, Trips, Probes uint64

	// Replication is the instance's INFO replication, when it answered
	// (asked only while the breaker is closed).
	Replication *ReplicationInfo
}

// ReplicationInfo holds the INFO replication fields that show how stale a
// peer replica is.
type ReplicationInfo struct {
	Role                    string // "master" or "slave"; a peer copy must be "slave"
	MasterLinkStatus        string // replica: "up" or "down"
	MasterLastIOSecondsAgo  int64  // replica: seconds since the last data from its primary; -1 unknown
	MasterSyncInProgress    bool   // replica: a full resync is running
	MasterLinkDownSinceSecs int64  // replica, while the link is down; -1 otherwise
	MasterReplOffset        int64
	ConnectedReplicas       int64 // primary: replicas attached now
}

// status asks the instance for INFO replication on the bulk client within
// budget and reports it with the breaker's state as it is after that call.
//
// The INFO call bypasses the breaker on purpose: a health poll runs off the
// mail path every few seconds, with a budget fit for a loaded host, and
// neither its slowness nor its failure may open the breaker that mail-path
// calls go through — those find a dark instance by themselves within their
// own budget. It is made only while the breaker is closed, so a status
// never waits on an instance the mail path already found dark.
func (in *instance) status(ctx context.Context, budget time.Duration) InstanceStatus {
	var info string
	var infoErr error
	if in.br.isClosed() {
		cctx, cancel := context.WithTimeout(ctx, budget)
		info, infoErr = in.bulk.Info(cctx, "replication").Result()
		cancel()
		if infoErr != nil {
			infoErr = fmt.Errorf("%s: status: %w", in, infoErr)
		}
	}
	snap := in.br.snapshot() // after the call: a failure of a concurrent mail-path call shows
	st := InstanceStatus{
		Site: in.site, Role: in.role, Addr: in.addr,
		Up: snap.state == BreakerClosed, Breaker: snap.state.String(), OpenSince: snap.openSince,
		Calls: snap.stats.calls, Failures: snap.stats.failed, TimedOut: snap.stats.timedOut,
		FastFails: snap.stats.fastFails, Trips: snap.stats.trips, Probes: snap.stats.probes,
	}
	if snap.lastErr != nil {
		st.LastError = snap.lastErr.Error()
	}
	switch {
	case infoErr != nil:
		st.StatusError = infoErr.Error()
		if st.LastError == "" {
			st.LastError = st.StatusError
		}
	case info != "":
		st.Replication = parseReplicationInfo(info)
	}
	return st
}

func parseReplicationInfo(info string) *ReplicationInfo {
	r := &ReplicationInfo{MasterLastIOSecondsAgo: -1, MasterLinkDownSinceSecs: -1}
	for _, line := range strings.Split(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		switch k {
		case "role":
			r.Role = v
		case "master_link_status":
			r.MasterLinkStatus = v
		case "master_last_io_seconds_ago":
			r.MasterLastIOSecondsAgo = n
		case "master_sync_in_progress":
			r.MasterSyncInProgress = v == "1"
		case "master_link_down_since_seconds":
			r.MasterLinkDownSinceSecs = n
		case "master_repl_offset":
			r.MasterReplOffset = n
		case "connected_slaves":
			r.ConnectedReplicas = n
		}
	}
	return r
}

func (in *instance) close() error {
	in.br.shutdown()
	return errors.Join(in.fast.Close(), in.bulk.Close())
}
