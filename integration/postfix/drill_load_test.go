package postfix

import (
	"context"
	"errors"
	"fmt"
	"net/smtp"
	"net/textproto"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/geomilter/geomilter/milters/policy/dkimcheck"
)

// The drill's load: a Go SMTP client in this process whose connections
// are opened inside the sites' namespaces (drill_netns_test.go), one SMTP
// session per message. Unlike smtp-source's "one message, then 1 s pause"
// senders it paces by the clock (open loop: message i starts at
// start + i/rate whatever the replies), so 100+ msg/s on two cores stays
// accurate, and it sees every reply: a greylisting deferral is told apart
// from any other tempfail and retried — at dal, the other site, while the
// link is up.

// drillMsg is one message of the mix.
type drillMsg struct {
	kind   string // in, content, out, tag, grey
	local  string // the client's address ("" for any)
	server string // host:port of the site's smtpd
	from   string
	rcpt   string
	msgID  string
	data   []byte
	first  time.Time // a retry's first attempt
}

// The mix, per message number: 10 % outbound with a subject tag (encrypt
// routes it to the gateway), 10 % plain outbound, 5 % inbound from the
// greylisted domain, the rest inbound DKIM-signed mail (SPF and DMARC
// pass), one in four of it with the phrase the content rule scores.
func drillKindOf(i int, greylisting bool) string {
	switch {
	case i%20 == 10 && greylisting:
		return "grey"
	case i%10 == 3:
		return "tag"
	case i%10 == 7:
		return "out"
	case i%4 == 1:
		return "content"
	}
	return "in"
}

// message builds message i of kind k for site s (inbound: from a client on
// s's lo to s's veth address; outbound: from 127.0.0.1, the tenant's relay).
func (w *drillWorld) message(t testing.TB, run string, i int, kind string, s *site, size int) drillMsg {
	m := drillMsg{kind: kind, msgID: fmt.Sprintf("<drill-%s-%d@%s>", run, i, drillSenderDom)}
	subject := fmt.Sprintf("drill %s %d", run, i)
	body := "Quarterly figures attached below.\r\n"
	switch kind {
	case "out", "tag":
		m.local, m.server = "127.0.0.1", "127.0.0.1:25"
		m.from, m.rcpt = fmt.Sprintf("user%d@acme.example", i%50), fmt.Sprintf("bob%d@%s", i%50, drillPartnerDom)
		if kind == "tag" {
			subject = "[secure] " + subject
		}
	case "grey":
		m.local, m.server = fmt.Sprintf("%s%d", drillClientNet, 1+i%drillClients), s.addr+":25"
		m.from, m.rcpt = fmt.Sprintf("grey-%s-%d@%s", run, i, drillGreyDom), fmt.Sprintf("user%d@acme.example", i%50)
	default:
		m.local, m.server = fmt.Sprintf("%s%d", drillClientNet, 1+i%drillClients), s.addr+":25"
		m.from, m.rcpt = fmt.Sprintf("drill%d@%s", i%50, drillSenderDom), fmt.Sprintf("user%d@acme.example", i%50)
		if kind == "content" {
			body = "Please make the wire transfer today.\r\n"
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: %s\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n",
		m.from, m.rcpt, subject, time.Now().UTC().Format(time.RFC1123Z), m.msgID)
	b.WriteString(body)
	for b.Len() < size {
		b.WriteString(strings.Repeat("x", 70) + "\r\n")
	}
	raw := b.String()
	if kind == "in" || kind == "content" {
		sig, err := dkimcheck.Sign(strings.NewReader(raw), dkimcheck.SignOptions{Domain: drillSenderDom, Selector: "sel", Key: w.key})
		if err != nil {
			t.Fatalf("dkim sign: %v", err)
		}
		raw = dkimcheck.HeaderName + ":" + sig + "\r\n" + raw
	}
	m.data = []byte(raw)
	return m
}

// outcome is what one SMTP session got.
type outcome struct {
	start, end time.Time
	accepted   bool
	code       int    // the refusal's reply code (0: accepted or no reply)
	stage      string // greeting, ehlo, mail, rcpt, data, eom
	text       string
	err        error // not an SMTP reply: connection trouble
}

func (o outcome) greylisted() bool {
	return o.code == 451 && o.stage == "rcpt" && strings.Contains(strings.ToLower(o.text), "greylist")
}

// smtpSend sends m in one session opened inside the namespace of nw.
func smtpSend(nw *nsWorker, m drillMsg) (o outcome) {
	o.start = time.Now()
	defer func() { o.end = time.Now() }()
	fail := func(stage string, err error) outcome {
		o.stage = stage
		var te *textproto.Error
		if errors.As(err, &te) {
			o.code, o.text = te.Code, te.Msg
		} else {
			o.err = err
		}
		return o
	}
	conn, err := nw.dial(m.local, m.server, 10*time.Second)
	if err != nil {
		return fail("connect", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(120 * time.Second))
	c, err := smtp.NewClient(conn, "mx")
	if err != nil {
		return fail("greeting", err)
	}
	if err := c.Hello("client.drill.test"); err != nil {
		return fail("ehlo", err)
	}
	if err := c.Mail(m.from); err != nil {
		return fail("mail", err)
	}
	if err := c.Rcpt(m.rcpt); err != nil {
		return fail("rcpt", err)
	}
	wc, err := c.Data()
	if err != nil {
		return fail("data", err)
	}
	if _, err := wc.Write(m.data); err != nil {
		return fail("eom", err)
	}
	if err := wc.Close(); err != nil {
		return fail("eom", err)
	}
	o.accepted = true
	_ = c.Quit()
	return o
}

// loadStats are one phase's counts, as the client saw them.
type loadStats struct {
	sent, accepted int
	greyFirst      int // first attempts greylisted: expected
	greyRetryDal   int // retries accepted at dal (the triplet came by replication)
	greyRetryOther int // retries accepted at another live site (link cut at retry time)
	greyAgain      int // retries greylisted again (at dal: its copy of lax's triplet not there yet)
	tempfails      int // 4xx other than greylisting, outside kill windows
	rejects        int
	errors         int
	killTempfails  int // 4xx (or errors) inside a kill window (kill variant)
	refusals       []string
}

// killWindow is when a milter was down (kill variant), with a margin for
// sessions in flight.
type killWindow struct {
	milter     string
	from, till time.Time
}

// drillLoad drives the load and keeps what it saw.
type drillLoad struct {
	t      testing.TB
	w      *drillWorld
	loaded []*site // the sites the load goes to (lax; lax and ord)
	dal    *site   // the site that goes dark
	size   int
	run    string

	linkCut atomic.Bool
	seq     atomic.Int64
	wg      sync.WaitGroup

	mu       sync.Mutex
	cur      int // phase index now (-1: outside the measured phases)
	stats    map[int]*loadStats
	accepted map[string]string // Message-ID -> site that accepted it
	kills    []killWindow
	lagMax   time.Duration // pacing: most a message started after its time
	overrun  int           // messages not started: too many in flight
	// cutPassed are greylisted messages whose retry lax accepted while
	// the link was cut (the greylisting convergence probe uses one).
	cutPassed []drillMsg
	cutAt     time.Time // when the link was cut
}

func newDrillLoad(t testing.TB, w *drillWorld, loaded []*site, dal *site, size int) *drillLoad {
	return &drillLoad{t: t, w: w, loaded: loaded, dal: dal, size: size, run: fmt.Sprint(time.Now().Unix()), cur: -1,
		stats: map[int]*loadStats{}, accepted: map[string]string{}}
}

// cut records that the link is cut (true) or back (false).
func (l *drillLoad) cut(on bool) {
	l.mu.Lock()
	if on {
		l.cutAt = time.Now()
	}
	l.linkCut.Store(on)
	l.mu.Unlock()
}

func (l *drillLoad) setPhase(i int) {
	l.mu.Lock()
	l.cur = i
	l.mu.Unlock()
}

func (l *drillLoad) inKill(at time.Time) bool {
	for _, k := range l.kills {
		if !at.Before(k.from) && !at.After(k.till) {
			return true
		}
	}
	return false
}

// record counts an outcome in the phase it started in.
func (l *drillLoad) record(o outcome, m drillMsg, at *site, retry bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.stats[l.cur]
	if st == nil {
		st = &loadStats{}
		l.stats[l.cur] = st
	}
	if !retry {
		st.sent++
	}
	switch {
	case o.accepted:
		st.accepted++
		l.accepted[m.msgID] = at.name
		if retry && at == l.dal {
			st.greyRetryDal++
		} else if retry {
			st.greyRetryOther++
			if l.linkCut.Load() && !m.first.Before(l.cutAt) {
				l.cutPassed = append(l.cutPassed, m)
			}
		}
	case o.greylisted() && m.kind == "grey" && !retry:
		st.greyFirst++
	case o.greylisted() && m.kind == "grey":
		st.greyAgain++
	case (o.code >= 400 && o.code < 500 || o.err != nil) && (l.inKill(o.start) || l.inKill(o.end)):
		st.killTempfails++
	case o.code >= 400 && o.code < 500:
		st.tempfails++
	case o.code >= 500:
		st.rejects++
	default:
		st.errors++
	}
	if !o.accepted && !o.greylisted() && len(st.refusals) < 5 {
		desc := fmt.Sprintf("%s %s at %s: %d %s", m.kind, o.stage, at.name, o.code, o.text)
		if o.err != nil {
			desc = fmt.Sprintf("%s %s at %s: %v", m.kind, o.stage, at.name, o.err)
		}
		st.refusals = append(st.refusals, desc)
	}
}

// one sends message i at a loaded site (in turn); a greylisted one is
// retried after the delay at dal while the link is up, else at the next
// loaded site (lax itself with two sites), and there again if dal defers.
func (l *drillLoad) one(i int, greylisting bool) {
	kind := drillKindOf(i, greylisting)
	first, other := l.siteFor(i), l.siteFor(i+1)
	m := l.w.message(l.t, l.run, i, kind, first, l.size)
	o := smtpSend(l.w.workers[first.name], m)
	l.record(o, m, first, false)
	if !o.greylisted() || kind != "grey" {
		return
	}
	m.first = o.start
	for try := 0; try < 4; try++ {
		time.Sleep(drillGreyDelay + time.Second)
		at := l.dal
		if l.linkCut.Load() || try > 0 {
			at = other
		}
		rm := m
		rm.server = at.addr + ":25"
		o = smtpSend(l.w.workers[at.name], rm)
		l.record(o, rm, at, true)
		if !o.greylisted() {
			return
		}
	}
}

// runPaced starts message after message at rate per second until ctx is
// done; at most maxInFlight sessions at once (a message that would exceed
// it is counted as an overrun, not sent late).
func (l *drillLoad) runPaced(ctx context.Context, rate float64, maxInFlight int) {
	interval := time.Duration(float64(time.Second) / rate)
	sem := make(chan struct{}, maxInFlight)
	start := time.Now()
	for i := 0; ; i++ {
		at := start.Add(time.Duration(i) * interval)
		if d := time.Until(at); d > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(d):
			}
		} else if ctx.Err() != nil {
			return
		}
		lag := time.Since(at)
		select {
		case sem <- struct{}{}:
		default:
			l.mu.Lock()
			l.overrun++
			l.mu.Unlock()
			continue
		}
		l.mu.Lock()
		l.lagMax = max(l.lagMax, lag)
		l.mu.Unlock()
		n := int(l.seq.Add(1))
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.one(n, true)
			<-sem
		}()
	}
}

// capacity is a saturating closed-loop run: sessions clients sending
// without pause for ramp+measure; it returns messages delivered per second
// at the loaded sites (delivery sink plus encryption gateway) over the measure window,
// and what the clients saw accepted per second.
func (l *drillLoad) capacity(sessions int, ramp, measure time.Duration) (delivered, accepted float64, refused int) {
	ctx, cancel := context.WithTimeout(context.Background(), ramp+measure)
	defer cancel()
	var acc, ref atomic.Int64
	var measuring atomic.Bool
	var wg sync.WaitGroup
	for c := 0; c < sessions; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(l.seq.Add(1))
				s := l.siteFor(i)
				m := l.w.message(l.t, l.run, i, drillKindOf(i, false), s, l.size)
				o := smtpSend(l.w.workers[s.name], m)
				if o.accepted {
					l.mu.Lock()
					l.accepted[m.msgID] = s.name
					l.mu.Unlock()
					if measuring.Load() {
						acc.Add(1)
					}
				} else {
					ref.Add(1)
				}
			}
		}()
	}
	time.Sleep(ramp)
	d0, t0 := l.delivered(), time.Now()
	measuring.Store(true)
	<-ctx.Done()
	d1, secs := l.delivered(), time.Since(t0).Seconds()
	measuring.Store(false)
	wg.Wait()
	return float64(d1-d0) / secs, float64(acc.Load()) / secs, int(ref.Load())
}

// siteFor is the loaded site message i goes to: in turn, shifted by one
// every 20 messages so that each site gets every kind of the mix
// (drillKindOf cycles over 20).
func (l *drillLoad) siteFor(i int) *site {
	return l.loaded[(i+i/20)%len(l.loaded)]
}

// delivered is the loaded sites' deliveries: final destination and
// encryption gateway.
func (l *drillLoad) delivered() int64 {
	var n int64
	for _, s := range l.loaded {
		n += s.sink.Load() + s.encSink.Load()
	}
	return n
}

// statsOf returns a copy of phase i's counts; -2 sums every phase and the
// time outside them.
func (l *drillLoad) statsOf(i int) loadStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	if i != -2 {
		if st := l.stats[i]; st != nil {
			return *st
		}
		return loadStats{}
	}
	var sum loadStats
	for _, st := range l.stats {
		sum.sent += st.sent
		sum.accepted += st.accepted
		sum.greyFirst += st.greyFirst
		sum.greyRetryDal += st.greyRetryDal
		sum.greyRetryOther += st.greyRetryOther
		sum.greyAgain += st.greyAgain
		sum.tempfails += st.tempfails
		sum.rejects += st.rejects
		sum.errors += st.errors
		sum.killTempfails += st.killTempfails
	}
	return sum
}

// acceptedCount is the number of messages some site accepted.
func (l *drillLoad) acceptedCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.accepted)
}

// greyPassedAtLax returns a greylisted message first seen and passed at
// lax while the link was cut: dal knows nothing of its triplet until
// replication brings lax's sighting and pass.
func (l *drillLoad) greyPassedAtLax() (drillMsg, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.cutPassed) == 0 {
		return drillMsg{}, false
	}
	return l.cutPassed[0], true
}

// probeGreylist measures greylisting convergence after the link's return:
// a triplet that passed at lax during the outage (its retry went to lax)
// is sent again at dal until dal accepts it without deferring, i.e. until
// lax's "passed" reached dal by replication. The probe's message has its
// own Message-ID and counts in the journal check, not in the phases.
func (l *drillLoad) probeGreylist(wg *sync.WaitGroup, c *converge, since time.Time, limit time.Duration) {
	m, ok := l.greyPassedAtLax()
	if !ok {
		c.note = " (no greylisted message passed at a live site during the outage to probe with)"
		return
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for try := 0; time.Since(since) < limit; try++ {
			p := m
			p.msgID = strings.TrimSuffix(m.msgID, ">") + fmt.Sprintf(".probe%d>", try)
			p.data = []byte(strings.Replace(string(m.data), m.msgID, p.msgID, 1))
			p.server = l.dal.addr + ":25"
			o := smtpSend(l.w.workers["dal"], p)
			if o.accepted {
				l.mu.Lock()
				l.accepted[p.msgID] = "dal"
				l.mu.Unlock()
				c.done(time.Since(since))
				return
			}
			if !o.greylisted() {
				c.mu.Lock()
				c.note = fmt.Sprintf(" (probe refused: %d %s %v)", o.code, o.text, o.err)
				c.mu.Unlock()
			}
			time.Sleep(time.Second)
		}
	}()
}

// drillJournalCheck waits up to within for every accepted message to be
// journaled at both targets of the site that accepted it (its own and
// dal's) and returns those still missing, "<site>/<target> <Message-ID>".
func drillJournalCheck(t testing.TB, w *drillWorld, l *drillLoad, within time.Duration) []string {
	l.mu.Lock()
	acc := make(map[string]string, len(l.accepted))
	for k, v := range l.accepted {
		acc[k] = v
	}
	l.mu.Unlock()
	var lost []string
	eventually(within, func() bool {
		lost = lost[:0]
		dalJ, err := journaledMessageIDs(w.dalJ.dir)
		if err != nil {
			t.Logf("journal target at dal: %v", err)
			return false
		}
		local := map[string]map[string]int{}
		for site, sk := range w.journal {
			if local[site], err = journaledMessageIDs(sk.dir); err != nil {
				t.Logf("journal target at %s: %v", site, err)
				return false
			}
		}
		for id, site := range acc {
			if local[site][id] == 0 {
				lost = append(lost, site+"/local "+id)
			}
			if dalJ[id] == 0 {
				lost = append(lost, site+"/dal "+id)
			}
		}
		if len(lost) > 0 {
			time.Sleep(4 * time.Second)
		}
		return len(lost) == 0
	})
	sort.Strings(lost)
	return lost
}
