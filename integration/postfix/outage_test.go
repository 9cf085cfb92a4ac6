package postfix

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

// (b) A milter down: with lax's archive milter stopped, Postfix applies the
// snippet's default_action=tempfail — every SMTP message is refused with a
// 4xx, a local submission stays in the queue, and nothing at all is accepted
// without the archive milter. Once it is back, mail flows again, the held
// local submission included, each message with its archive trail event.
func TestMilterDownTempfails(t *testing.T) {
	_, lax := twoSites(t)
	const rcpt = "rcpt@acme.example"

	if out, err := lax.swaks("--from", "before@client.lax.test", "--to", rcpt); err != nil {
		t.Fatalf("baseline message: %v\n%s", err, out)
	}
	waitFor(t, 30*time.Second, "the baseline message at smtp-sink", func() bool { return lax.sink.Load() == 1 })
	smtpBefore, _ := lax.queueIDs()

	// Suite mode: archive is a member of lax's suite, so this stops the
	// suite process (isolation of one milter is what a suite gives up).
	t.Logf("stopping %s at lax", lax.hostOf("archive"))
	lax.milters["archive"].stop(10 * time.Second)
	if _, err := os.Stat(lax.socket("archive")); !os.IsNotExist(err) {
		t.Fatalf("archive socket still there after stop: %v", err)
	}

	// swaks: one message, refused with a temporary error.
	out, err := lax.swaks("--from", "during@client.lax.test", "--to", rcpt)
	if err == nil || !regexp.MustCompile(`(?m)^<\*\* +4\d\d `).MatchString(out) || strings.Contains(out, "queued as") {
		t.Fatalf("with the archive milter down, swaks got (err %v):\n%s", err, out)
	}
	t.Logf("swaks with the archive milter down:\n%s", grepLines(out, `^<\*\*`))
	// smtp-source: every message refused with 4xx, none with 5xx.
	const n = 20
	r := lax.smtpSource(time.Minute, "-m", fmt.Sprint(n), "-s", "4", "-f", "during@client.lax.test", "-t", rcpt)
	if r.tempfails != n || r.rejects != 0 {
		t.Fatalf("smtp-source with the archive milter down: %d tempfails, %d rejects, %d errors (want %d, 0):\n%s", r.tempfails, r.rejects, r.errors, n, tail(r.out, 10))
	}
	// A local submission is not lost: it waits in the queue.
	if err := lax.sendmail("root@mx1.lax.test", "ops@acme.example", "held while archive is down"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the local submission held in the queue", func() bool {
		q, err := lax.queueSize()
		return err == nil && q >= 1
	})
	time.Sleep(2 * time.Second) // time for anything wrongly accepted to arrive
	smtpDuring, localDuring := lax.queueIDs()
	if got := lax.sink.Load(); got != 1 {
		t.Fatalf("smtp-sink received %d messages, want still 1: mail was accepted without the archive milter", got)
	}
	if len(smtpDuring) != len(smtpBefore) || len(localDuring) != 0 {
		t.Fatalf("Postfix queued %d SMTP and %d local messages while archive was down, want none", len(smtpDuring)-len(smtpBefore), len(localDuring))
	}
	t.Logf("maillog while archive was down:\n%s", grepLines(strings.Join(readLines(lax.maillog), "\n"), `archive|milter|451|pickup`, 8))

	// Back: mail flows again and the held local message goes out.
	lax.startMilter("archive")
	r = lax.smtpSource(time.Minute, "-m", "10", "-s", "2", "-f", "after@client.lax.test", "-t", rcpt)
	if r.tempfails+r.rejects+r.errors != 0 {
		t.Fatalf("after the archive milter came back: %d tempfails, %d rejects, %d errors:\n%s", r.tempfails, r.rejects, r.errors, tail(r.out, 10))
	}
	back := time.Now()
	lax.kickPickup()
	waitFor(t, 60*time.Second, "10 new messages and the held local one at smtp-sink", func() bool {
		return lax.sink.Load() == 1+10+1
	})
	t.Logf("archive back: 10 SMTP messages and the held local submission delivered %s later", time.Since(back).Round(time.Millisecond))
	var all map[string]bool
	waitFor(t, 20*time.Second, "the new messages in Postfix's log", func() bool {
		smtpAfter, localAfter := lax.queueIDs()
		all = union(smtpAfter, localAfter)
		return len(smtpAfter) == len(smtpBefore)+10 && len(localAfter) == 1
	})
	waitFor(t, 30*time.Second, "an archive event for every accepted message", func() bool {
		evs, err := trailEvents(lax.primary, "lax")
		if err != nil {
			return false
		}
		idx := byMilterQueue(evs)
		for id := range all {
			if len(idx["archive"][id]) != 1 {
				return false
			}
		}
		return true
	})
}

// grepLines returns the lines of s matching re, at most max (0: all).
func grepLines(s, re string, max ...int) string {
	rx := regexp.MustCompile(re)
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if rx.MatchString(l) {
			out = append(out, l)
		}
	}
	if len(max) > 0 && len(out) > max[0] {
		out = out[len(out)-max[0]:]
	}
	return strings.Join(out, "\n")
}

// (c) Dark site: dal goes unresponsive (every packet on lax's end of the link
// dropped — silence, not refusal) while load runs into lax. lax keeps
// accepting at once with zero tempfails, every trail event at lax reaches
// lax's Redis (nothing on lax's mail path or trail depends on dal); dal's
// replica of lax falls behind. When the link returns, dal's replica catches
// up within 30 s.
func TestDarkSiteKeepsAccepting(t *testing.T) {
	dal, lax := twoSites(t)
	const rcpt = "rcpt@acme.example"
	r := lax.smtpSource(time.Minute, "-m", "20", "-s", "4", "-f", "warm@client.lax.test", "-t", rcpt)
	if r.tempfails+r.rejects+r.errors != 0 {
		t.Fatalf("warm-up: %d tempfails, %d rejects, %d errors:\n%s", r.tempfails, r.rejects, r.errors, tail(r.out, 10))
	}
	waitFor(t, 30*time.Second, "warm-up replicated to dal", func() bool {
		ln, lid, err1 := streamState(lax.primary, "lax")
		dn, did, err2 := streamState(dal.replica, "lax")
		return err1 == nil && err2 == nil && ln >= 4*20 && ln == dn && lid == did
	})

	lax.cutLink()
	cutAt := time.Now()
	const n = 300
	start := time.Now()
	r = lax.smtpSource(3*time.Minute, "-m", fmt.Sprint(n), "-s", "8", "-l", "1500", "-f", "dark@client.lax.test", "-t", rcpt)
	took := time.Since(start)
	if r.tempfails+r.rejects+r.errors != 0 {
		t.Fatalf("with dal dark: %d tempfails, %d rejects, %d errors:\n%s", r.tempfails, r.rejects, r.errors, tail(r.out, 10))
	}
	waitFor(t, 60*time.Second, fmt.Sprintf("%d messages at lax's smtp-sink with dal dark", 20+n), func() bool { return lax.sink.Load() == 20+n })
	t.Logf("%d messages accepted and delivered at lax in %s with dal dark", n, took.Round(time.Millisecond))

	// Every event at lax is delivered to lax's own Redis; none waits.
	waitFor(t, 30*time.Second, "every lax trail event in lax's Redis", func() bool {
		smtpIDs, _ := lax.queueIDs()
		evs, err := trailEvents(lax.primary, "lax")
		return err == nil && len(smtpIDs) == 20+n && everyQueueIDHasEvents(evs, smtpIDs) && len(evs) == 4*len(smtpIDs)
	})
	if p, err := lax.pendingTrail(); err != nil || p != 0 {
		t.Fatalf("lax trail events still pending for its redis sink: %v (%v)", p, err)
	}
	// The cut is real: dal's copy of lax is stale.
	ln, _, _ := streamState(lax.primary, "lax")
	dn, _, err := streamState(dal.replica, "lax")
	if err != nil || dn >= ln {
		t.Fatalf("dal's replica of lax has %d entries (err %v), lax %d: the link was not cut", dn, err, ln)
	}
	// Keep dal dark a little longer than the load took, then restore.
	if d := 12*time.Second - time.Since(cutAt); d > 0 {
		time.Sleep(d)
	}
	lax.restoreLink()
	restored := time.Now()
	waitFor(t, 30*time.Second, "dal's replica of lax caught up", func() bool {
		ln, lid, err1 := streamState(lax.primary, "lax")
		dn, did, err2 := streamState(dal.replica, "lax")
		return err1 == nil && err2 == nil && ln == dn && lid == did
	})
	t.Logf("dal dark for %s; dal's replica of lax caught up %s after the link returned (%d entries behind at the end of the load)",
		restored.Sub(cutAt).Round(time.Millisecond), time.Since(restored).Round(time.Millisecond), ln-dn)
}
