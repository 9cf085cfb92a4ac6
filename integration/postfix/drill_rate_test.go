package postfix

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"
)

// The three-site drill's rate-limit check (issue 19): a rate rule's
// counter is the sum over sites (docs/state.md: each site counts in its own
// key, the total is read from its primary and its replicas of the others).
// During the outage the two live sites must see each other's counts (so
// they enforce the limit together), and once dal is back it must see
// theirs too.

// drillRateLimit is the probe rule's limit (drillRules: drill-rate-probe,
// key sender, per 168h so no window boundary falls inside a drill).
const (
	drillRateLimit = 6
	drillRateDom   = "rate.example"
)

// rateCheck runs the probe and keeps its verdict.
type rateCheck struct {
	l        *drillLoad
	live     []*site
	dal      *site
	sender   string
	returned chan time.Time
	done     chan struct{}

	mu       sync.Mutex
	duringOK bool
	during   string
	afterOK  bool
	after    string
}

// startRateCheck sends, after wait, 4 probe messages at the first live
// site, waits until the second's replica of the first has them, and sends
// 4 more at the second: with the counts summed, no more than the limit in
// all are accepted. After the link's return (linkReturned) and dal's
// replicas of both caught up, one more at dal must be refused.
func startRateCheck(l *drillLoad, live []*site, dal *site, wait time.Duration) *rateCheck {
	r := &rateCheck{l: l, live: live, dal: dal, sender: fmt.Sprintf("rate-%s@%s", l.run, drillRateDom),
		returned: make(chan time.Time, 1), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		time.Sleep(wait)
		a, b := live[0], live[1]
		accA, refA := r.send(a, 4)
		synced := eventually(20*time.Second, func() bool { return caughtUp(b, a) })
		accB, refB := r.send(b, 4)
		r.mu.Lock()
		r.duringOK = synced && accA+accB <= drillRateLimit && accA+accB >= drillRateLimit-1 && refA+refB > 0
		r.during = fmt.Sprintf("during the outage %d of 4 accepted at %s, then %d of 4 at %s (%d refused; %s's replica of %s caught up: %v)",
			accA, a.name, accB, b.name, refA+refB, b.name, a.name, synced)
		r.mu.Unlock()
		at := <-r.returned
		ok := eventually(60*time.Second, func() bool { return caughtUp(dal, a) && caughtUp(dal, b) })
		acc, ref := r.send(dal, 1)
		r.mu.Lock()
		r.afterOK = ok && acc == 0 && ref == 1
		r.after = fmt.Sprintf("after the link's return (dal's replicas caught up in %s: %v) 1 more at dal: %d accepted, %d refused",
			time.Since(at).Round(100*time.Millisecond), ok, acc, ref)
		r.mu.Unlock()
	}()
	return r
}

func (r *rateCheck) linkReturned(at time.Time) { r.returned <- at }

// send sends n probe messages at s, one after the other; accepted ones
// count in the journal check.
func (r *rateCheck) send(s *site, n int) (accepted, refused int) {
	for i := 0; i < n; i++ {
		k := int(r.l.seq.Add(1))
		m := r.l.w.message(r.l.t, r.l.run, k, "in", s, 500)
		m.from = r.sender
		o := smtpSend(r.l.w.workers[s.name], m)
		switch {
		case o.accepted:
			accepted++
			r.l.mu.Lock()
			r.l.accepted[m.msgID] = s.name
			r.l.mu.Unlock()
		case o.code >= 400 && o.code < 500 && strings.Contains(o.text, "rate probe"):
			refused++
		}
	}
	return accepted, refused
}

// result waits for the check and says whether the limit was enforced
// over the sites.
func (r *rateCheck) result() (bool, string) {
	select {
	case <-r.done:
	case <-time.After(120 * time.Second):
		return false, "rate limits summed over sites: the probe did not finish"
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.duringOK && r.afterOK, fmt.Sprintf("rate limit %d summed over the live sites during the outage and over all three after: %s; %s",
		drillRateLimit, r.during, r.after)
}

// caughtUp reports whether o's replica of s has everything s's primary had
// written when asked.
func caughtUp(o, s *site) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	info, err := s.primary.Info(ctx, "replication").Result()
	if err != nil {
		return false
	}
	want, ok := replOffset(info, "master_repl_offset")
	if !ok {
		return false
	}
	rinfo, err := replicaAt(o, s).Info(ctx, "replication").Result()
	if err != nil || !strings.Contains(rinfo, "master_link_status:up") {
		return false
	}
	got, ok := replOffset(rinfo, "slave_repl_offset")
	return ok && got >= want
}
