package greylist_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/milters/policy/greylist"
	"github.com/geomilter/geomilter/shared/redistest"
	"github.com/geomilter/geomilter/shared/state"
	"github.com/geomilter/geomilter/shared/state/statetest"
)

type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}

// TestMain silences go-redis's process-wide logger: the tests freeze
// servers on purpose, and every timed-out read would print a line.
func TestMain(m *testing.M) {
	redis.SetLogger(quietLogger{})
	os.Exit(m.Run())
}

// Test budgets, as in shared/state's site tests: far above a loopback round
// trip on a loaded machine; the assertions are about answers, not time.
const (
	testTimeout = 250 * time.Millisecond
	testOpenFor = 200 * time.Millisecond
	settle      = 15 * time.Second // deadline for replication polls
)

// site is one site: its Redis (primary + replica of the peer), its store
// and greylister on one settable clock.
type site struct {
	*statetest.Site
	name string
	grey *greylist.Greylister
}

func (s *site) check(t *testing.T, at time.Time, tr greylist.Triplet) greylist.Result {
	t.Helper()
	s.Clock.Set(at)
	return s.grey.Check(context.Background(), tr)
}

// startSites starts the multi-site topology of shared/state's tests, with a
// greylister on each site's store. The sightings are stamped by the settable
// clock, so the delay passes when the test says, however slow the machine;
// Redis expires the entries in real time, after Delay+RetryWindow (a day):
// never during the test. Far in the future (t0), so absolute set expiries
// from this clock lie ahead of Redis's real clock.
func startSites(t *testing.T, names ...string) map[string]*site {
	t.Helper()
	o := state.Options{Timeout: testTimeout, BreakerOpenFor: testOpenFor, BreakerFailures: 3, Logger: zerolog.Nop()}
	sites := map[string]*site{}
	for n, s := range statetest.Sites(t, o, t0, names...) {
		g, err := greylist.New(s.Store, greylist.DefaultSettings(), s.Clock.Now, zerolog.Nop(), nil)
		if err != nil {
			t.Fatal(err)
		}
		sites[n] = &site{Site: s, name: n, grey: g}
	}
	return sites
}

// storeKey is the Redis key of a triplet at a site (docs/state.md:
// gm:{SITE}:gl: and the hex of the first 16 bytes of SHA-256 of the key).
func storeKey(siteName string, tr greylist.Triplet) string {
	s := greylist.DefaultSettings()
	sum := sha256.Sum256([]byte(greylist.Key(tr, s.IPv4Prefix, s.IPv6Prefix)))
	return "gm:{" + siteName + "}:gl:" + hex.EncodeToString(sum[:16])
}

// waitReplicated waits until the replica holds key.
func waitReplicated(t *testing.T, replica *redistest.Server, key, what string) {
	t.Helper()
	c := replica.Client()
	statetest.Poll(t, settle, what, func() error {
		n, err := c.Exists(context.Background(), key).Result()
		if err != nil || n != 1 {
			return fmt.Errorf("not yet (%d, %v)", n, err)
		}
		return nil
	})
}

func expect(t *testing.T, where string, r greylist.Result, status greylist.Status, firstSeen time.Time) {
	t.Helper()
	wantDefer := status == greylist.StatusNew || status == greylist.StatusWaiting
	if r.Status != status || r.Defer != wantDefer || r.Err != nil || !r.FirstSeen.Equal(firstSeen) {
		t.Fatalf("%s: %s defer=%v first=%v err=%v; want %s defer=%v first=%v",
			where, r.Status, r.Defer, r.FirstSeen, r.Err, status, wantDefer, firstSeen)
	}
}

func TestAcrossSites(t *testing.T) {
	sites := startSites(t, "lax", "dal")
	lax, dal := sites["lax"], sites["dal"]
	const delay = 5 * time.Minute

	t.Run("deferred at lax, the retry at dal after the delay passes", func(t *testing.T) {
		tr := trip("192.0.2.10")
		at := t0
		expect(t, "first attempt at lax", lax.check(t, at, tr), greylist.StatusNew, at)
		waitReplicated(t, dal.Replicas["lax"], storeKey("lax", tr), "lax's sighting at dal's replica of lax")
		// dal knows the sighting at lax: a retry there before the delay
		// waits out lax's delay, not one of its own.
		expect(t, "early retry at dal", dal.check(t, at.Add(time.Minute), tr), greylist.StatusWaiting, at)
		expect(t, "retry at dal after the delay", dal.check(t, at.Add(delay), tr), greylist.StatusPassed, at)
		// The pass at dal reaches lax: there the delay is not over by
		// lax's clock, yet the triplet has passed.
		statetest.Poll(t, settle, "dal's pass seen at lax", func() error {
			r := lax.check(t, at.Add(2*time.Minute), tr)
			if r.Status != greylist.StatusPassed || r.Defer || !r.FirstSeen.Equal(at) {
				return fmt.Errorf("%+v", r)
			}
			return nil
		})
	})

	t.Run("cut off from each other, each site greylists on its own, and they agree again", func(t *testing.T) {
		lax.Replicas["dal"].Pause()
		dal.Replicas["lax"].Pause()
		paused := true
		resume := func() {
			if paused {
				lax.Replicas["dal"].Resume()
				dal.Replicas["lax"].Resume()
				paused = false
			}
		}
		defer resume()

		tr := with(trip("198.51.100.20"), "cut@example.org", "b@example.net")
		at := t0.Add(time.Hour)
		expect(t, "first attempt at lax", lax.check(t, at, tr), greylist.StatusNew, at)
		// dal cannot see lax's sighting: its own first sighting counts.
		atDal := at.Add(time.Minute)
		expect(t, "first attempt at dal", dal.check(t, atDal, tr), greylist.StatusNew, atDal)
		expect(t, "retry at lax after its delay", lax.check(t, at.Add(delay), tr), greylist.StatusPassed, at)
		// Nor lax's pass: dal waits out its own delay.
		expect(t, "retry at dal before its own delay", dal.check(t, atDal.Add(delay-time.Millisecond), tr), greylist.StatusWaiting, atDal)
		expect(t, "retry at dal after its own delay", dal.check(t, atDal.Add(delay), tr), greylist.StatusPassed, atDal)

		resume()
		// Once the link is back, both merge both sightings: the earliest
		// (lax's) is the first sighting everywhere.
		for _, s := range []*site{lax, dal} {
			statetest.Poll(t, settle, "the merged view at "+s.name, func() error {
				r := s.check(t, at.Add(time.Hour), tr)
				if r.Status != greylist.StatusPassed || r.Defer || !r.FirstSeen.Equal(at) {
					return fmt.Errorf("%s defer=%v first=%v err=%v", r.Status, r.Defer, r.FirstSeen, r.Err)
				}
				return nil
			})
		}
	})

	t.Run("own primary frozen: degraded, accepted", func(t *testing.T) {
		lax.Primary.Pause()
		defer lax.Primary.Resume()
		tr := with(trip("203.0.113.30"), "dark@example.org", "b@example.net")
		for i := 0; i < 5; i++ {
			r := lax.check(t, t0.Add(2*time.Hour), tr)
			if r.Status != greylist.StatusDegraded || r.Defer || !errors.Is(r.Err, state.ErrUnavailable) {
				t.Fatalf("call %d at lax with its primary frozen: %+v; want degraded (ErrUnavailable), not deferred", i, r)
			}
		}
		// dal greylists as usual; lax's data comes from dal's replica.
		at := t0.Add(2 * time.Hour)
		expect(t, "first attempt at dal", dal.check(t, at, tr), greylist.StatusNew, at)
	})
}
