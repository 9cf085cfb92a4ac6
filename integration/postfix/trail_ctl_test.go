package postfix

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/geomilter/geomilter/shared/trail"
)

// ctlTrail runs `geomilter ctl trail --json ARGS…` at site s and returns
// the events it printed and its other lines (the warnings on stderr; the
// harness merges both streams).
func (s *site) ctlTrail(args ...string) (evs []trail.Event, other []string, err error) {
	full := append([]string{binPath, "ctl", "--config", s.gmConfig, "--timeout", "1s", "trail", "--json"}, args...)
	out, err := inNS(s.ns, 60*time.Second, full...)
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if !strings.HasPrefix(l, "{") {
			if l != "" {
				other = append(other, l)
			}
			continue
		}
		var ev trail.Event
		if jerr := json.Unmarshal([]byte(l), &ev); jerr != nil {
			return nil, other, fmt.Errorf("ctl trail line %q: %w", l, jerr)
		}
		evs = append(evs, ev)
	}
	return evs, other, err
}

// everyMilterOnce reports whether evs hold exactly one decision per milter,
// all of site on one queue id, in time order.
func everyMilterOnce(evs []trail.Event, site string) error {
	var got []string
	for i, ev := range evs {
		got = append(got, ev.Milter)
		if ev.Site != site || ev.QueueID == "" || ev.QueueID != evs[0].QueueID {
			return fmt.Errorf("event %s: site %q queue id %q (first event's %q)", ev.EventID, ev.Site, ev.QueueID, evs[0].QueueID)
		}
		if i > 0 && ev.Time.Before(evs[i-1].Time) {
			return fmt.Errorf("event %s at %s printed after one at %s", ev.EventID, ev.Time, evs[i-1].Time)
		}
	}
	slices.Sort(got)
	want := slices.Clone(milterNames)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		return fmt.Errorf("milters %v, want one event of each of %v", got, want)
	}
	return nil
}

// `geomilter ctl trail --message-id` finds a message that went through lax
// at both sites — lax reads its own primary, dal its replica of lax — with
// the decision of every milter, the access milter's too (it records no
// Message-ID: ctl joins it by host and queue id). With lax cut off, dal
// still finds it in what its replica had, and lax in its own primary.
func TestCtlTrailAcrossSites(t *testing.T) {
	dal, lax := twoSites(t)
	const mid = "<ctl-trail@client.lax.test>"
	if out, err := lax.swaks("--from", "trail@client.lax.test", "--to", "rcpt@acme.example",
		"--header", "Subject: find me", "--header", "Message-Id: "+mid); err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	waitFor(t, 60*time.Second, "the message at lax's smtp-sink", func() bool { return lax.sink.Load() >= 1 })

	find := func(s *site, what string) []trail.Event {
		t.Helper()
		var evs []trail.Event
		var other []string
		var err error
		ok := eventually(30*time.Second, func() bool {
			evs, other, err = s.ctlTrail("--message-id", mid, "--since", "1h")
			return err == nil && len(other) == 0 && everyMilterOnce(evs, "lax") == nil
		})
		if !ok {
			t.Fatalf("%s: ctl trail --message-id %s: err %v, stderr %q, events %+v (%v)", what, mid, err, other, evs, everyMilterOnce(evs, "lax"))
		}
		return evs
	}
	atLax := find(lax, "at lax")
	atDal := find(dal, "at dal")
	for i := range atLax {
		if atLax[i].EventID != atDal[i].EventID {
			t.Fatalf("lax and dal differ: event %d is %s at lax, %s at dal", i, atLax[i].EventID, atDal[i].EventID)
		}
	}
	for _, ev := range atLax {
		if ev.Milter != "access" && ev.MessageID != mid {
			t.Errorf("%s: message_id %q", ev.Milter, ev.MessageID)
		}
	}

	// The text form: one line per decision, naming the site, milter and queue id.
	out, err := inNS(dal.ns, 60*time.Second, binPath, "ctl", "--config", dal.gmConfig, "trail", "--message-id", mid)
	if err != nil {
		t.Fatalf("ctl trail at dal: %v\n%s", err, out)
	}
	t.Logf("ctl trail --message-id %s at dal:\n%s", mid, out)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != len(milterNames) {
		t.Fatalf("ctl trail at dal printed %d lines, want %d:\n%s", len(lines), len(milterNames), out)
	}
	for i, l := range lines {
		ev := atDal[i]
		if f := strings.Fields(l); len(f) < 6 || f[1] != "lax" || f[2] != ev.Milter || f[3] != ev.QueueID || f[4] != "accept" || f[5] != "trail@client.lax.test" {
			t.Errorf("line %q: want lax %s %s accept trail@client.lax.test", l, ev.Milter, ev.QueueID)
		}
	}

	// lax goes dark for dal: dal's replica of lax answers from what it had.
	// Its link is seen down after repl-timeout, lowered from Redis's 60 s so
	// the test need not wait a minute.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := dal.replica.ConfigSet(ctx, "repl-timeout", "5").Err(); err != nil {
		t.Fatal(err)
	}
	dal.cutLink()
	t.Cleanup(dal.restoreLink)
	waitFor(t, 30*time.Second, "dal's replica of lax to notice the cut", func() bool { return !dal.replicaLinkUp() })
	for _, s := range []*site{dal, lax} {
		evs, other, err := s.ctlTrail("--message-id", mid, "--since", "1h")
		if err != nil || len(other) != 0 {
			t.Fatalf("link cut, at %s: err %v, stderr %q", s.name, err, other)
		}
		if err := everyMilterOnce(evs, "lax"); err != nil {
			t.Errorf("link cut, at %s: %v", s.name, err)
		}
	}
}
