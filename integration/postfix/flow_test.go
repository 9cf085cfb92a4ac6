package postfix

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/geomilter/geomilter/shared/trail"
)

// byMilterQueue indexes events by milter and queue id.
func byMilterQueue(evs []trail.Event) map[string]map[string][]trail.Event {
	out := map[string]map[string][]trail.Event{}
	for _, ev := range evs {
		if out[ev.Milter] == nil {
			out[ev.Milter] = map[string][]trail.Event{}
		}
		out[ev.Milter][ev.QueueID] = append(out[ev.Milter][ev.QueueID], ev)
	}
	return out
}

// everyQueueIDHasEvents reports whether each milter has an event for each id.
func everyQueueIDHasEvents(evs []trail.Event, ids map[string]bool) bool {
	idx := byMilterQueue(evs)
	for _, m := range milterNames {
		for id := range ids {
			if len(idx[m][id]) == 0 {
				return false
			}
		}
	}
	return true
}

func union(a, b map[string]bool) map[string]bool {
	out := map[string]bool{}
	for k := range a {
		out[k] = true
	}
	for k := range b {
		out[k] = true
	}
	return out
}

// fileEvents reads the file sink's events, deduplicated by id.
func fileEvents(path string) map[string]trail.Event {
	out := map[string]trail.Event{}
	for _, l := range readLines(path) {
		var ev trail.Event
		if json.Unmarshal([]byte(l), &ev) == nil && ev.EventID != "" {
			out[ev.EventID] = ev
		}
	}
	return out
}

// checkEnvelope checks that what the milter recorded from real Postfix
// matches what the test's clients sent.
func checkEnvelope(t *testing.T, m string, ev trail.Event) {
	t.Helper()
	rcpts := func() []string {
		var out []string
		for _, r := range ev.Rcpts {
			out = append(out, r.Addr)
		}
		return out
	}
	switch ev.Sender {
	case "sender@client.lax.test": // smtp-source
		if ev.Helo != "client.lax.test" || len(ev.Rcpts) != 1 || ev.Rcpts[0].Addr != "rcpt@acme.example" || ev.TLS != "" {
			t.Errorf("%s: smtp-source message %s: helo %q rcpts %v tls %q", m, ev.QueueID, ev.Helo, rcpts(), ev.TLS)
		}
	case "swaks@client.lax.test": // STARTTLS, two recipients, own Message-Id
		if fmt.Sprint(rcpts()) != "[one@acme.example two@acme.example]" || !strings.HasPrefix(ev.TLS, "TLSv1") {
			t.Errorf("%s: swaks message %s: rcpts %v tls %q (want both recipients, TLSv1.x from the EHLO after STARTTLS)", m, ev.QueueID, rcpts(), ev.TLS)
		}
		if m != "access" && ev.MessageID != "<tls-two-rcpts@client.lax.test>" {
			t.Errorf("%s: swaks message %s: message_id %q", m, ev.QueueID, ev.MessageID)
		}
	case "root@mx1.lax.test": // sendmail
		if fmt.Sprint(rcpts()) != "[ops@acme.example]" {
			t.Errorf("%s: local message %s: rcpts %v", m, ev.QueueID, rcpts())
		}
	default:
		t.Errorf("%s: event %s has sender %q, not one the test sent", m, ev.QueueID, ev.Sender)
	}
}

// (a) Normal flow: mail through lax's Postfix with all four milters attached
// arrives at smtp-sink; every milter writes exactly one trail event per message
// carrying Postfix's queue id; the events reach lax's Redis stream and, through
// dal's replica of lax, are readable at dal. A locally submitted message goes
// through non_smtpd_milters too, and its events carry no client IP.
func TestNormalFlow(t *testing.T) {
	dal, lax := twoSites(t)
	const n = 120
	start := time.Now()
	r := lax.smtpSource(2*time.Minute, "-m", fmt.Sprint(n), "-s", "6", "-l", "2000", "-f", "sender@client.lax.test", "-t", "rcpt@acme.example")
	if r.tempfails+r.rejects+r.errors != 0 {
		t.Fatalf("smtp-source: %d tempfails, %d rejects, %d errors:\n%s", r.tempfails, r.rejects, r.errors, tail(r.out, 20))
	}
	if out, err := lax.swaks("--tls", "--from", "swaks@client.lax.test", "--to", "one@acme.example,two@acme.example",
		"--header", "Subject: two recipients", "--header", "Message-Id: <tls-two-rcpts@client.lax.test>"); err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	if err := lax.sendmail("root@mx1.lax.test", "ops@acme.example", "local submission"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, fmt.Sprintf("%d messages at lax's smtp-sink", n+2), func() bool { return lax.sink.Load() >= n+2 })
	t.Logf("%d SMTP + 1 local messages delivered in %s", n+1, time.Since(start).Round(time.Millisecond))

	var smtpIDs, localIDs map[string]bool
	waitFor(t, 20*time.Second, fmt.Sprintf("%d SMTP and 1 local message queued in Postfix's log", n+1), func() bool {
		smtpIDs, localIDs = lax.queueIDs() // postlogd writes the log asynchronously
		return len(smtpIDs) == n+1 && len(localIDs) == 1
	})
	all := union(smtpIDs, localIDs)

	var evs []trail.Event
	waitFor(t, 30*time.Second, "a trail event from every milter for every message at lax", func() bool {
		var err error
		evs, err = trailEvents(lax.primary, "lax")
		return err == nil && everyQueueIDHasEvents(evs, all)
	})
	idx := byMilterQueue(evs)
	for _, m := range milterNames {
		for id := range all {
			got := idx[m][id]
			if len(got) != 1 {
				t.Errorf("%s: %d events for queue id %s, want exactly 1", m, len(got), id)
				continue
			}
			ev := got[0]
			if ev.Site != "lax" || ev.Action != "accept" || ev.Stage != "eom" {
				t.Errorf("%s %s: site %q action %q stage %q, want lax/accept/eom", m, id, ev.Site, ev.Action, ev.Stage)
			}
			// (That a local submission carries no client_ip is checked by
			// TestLocalSubmissionIsLocal.)
			if smtpIDs[id] && ev.ClientIP != "127.0.0.1" {
				t.Errorf("%s: SMTP message %s has client_ip %q, want 127.0.0.1", m, id, ev.ClientIP)
			}
			checkEnvelope(t, m, ev)
		}
		// Events without a queue id are transactions Postfix never queued.
		for id, got := range idx[m] {
			if !all[id] {
				t.Errorf("%s: %d events for queue id %q that Postfix never queued (first: %+v)", m, len(got), id, got[0])
			}
		}
	}
	if t.Failed() {
		return
	}

	// The file sink has the same events.
	file := fileEvents(filepath.Join(lax.dir, "trail.ndjson"))
	for _, ev := range evs {
		if _, ok := file[ev.EventID]; !ok {
			t.Fatalf("event %s (%s %s) in Redis but not in the file sink", ev.EventID, ev.Milter, ev.QueueID)
		}
	}

	// dal reads lax's trail from its local replica of lax's primary.
	waitFor(t, 30*time.Second, "lax's trail replicated to dal", func() bool {
		rep, err := trailEvents(dal.replica, "lax")
		return err == nil && len(rep) == len(evs)
	})
	rep, _ := trailEvents(dal.replica, "lax")
	want := map[string]bool{}
	for _, ev := range evs {
		want[ev.EventID] = true
	}
	for _, ev := range rep {
		if !want[ev.EventID] {
			t.Fatalf("dal's replica has event %s that lax's primary does not", ev.EventID)
		}
	}
	t.Logf("%d trail events (4 milters x %d messages) at lax, the same %d at dal", len(evs), len(all), len(rep))
}

// A message submitted locally (sendmail -> postdrop -> pickup, filtered by
// non_smtpd_milters) is a local submission for the milters: the access
// milter's relay check lets it through without any relay network configured,
// and its trail events carry no client_ip (docs/trail-events.md). Standalone
// mode, one site, no rules at all.
func TestLocalSubmissionIsLocal(t *testing.T) {
	h := newHarness(t)
	s := h.newSite("loc", "")
	o := siteOpts{withMilters: true}
	s.startMilters(o)
	s.startSinks()
	s.startPostfix(o)
	if err := s.sendmail("root@mx1.loc.test", "ops@remote.example", "local submission"); err != nil {
		t.Fatal(err)
	}
	_, local := s.queueIDs()
	waitFor(t, 30*time.Second, "the local submission at smtp-sink (a milter-reject in the maillog means it was not treated as local)", func() bool {
		_, local = s.queueIDs()
		return s.sink.Load() >= 1
	})
	var evs map[string]trail.Event
	waitFor(t, 20*time.Second, "an event from every milter in the file sink", func() bool {
		evs = fileEvents(filepath.Join(s.dir, "trail.ndjson"))
		n := 0
		for _, ev := range evs {
			if local[ev.QueueID] {
				n++
			}
		}
		return len(local) == 1 && n == len(milterNames)
	})
	for _, ev := range evs {
		if local[ev.QueueID] && (ev.ClientIP != "" || ev.ClientPort != 0) {
			t.Errorf("%s: local submission %s has client_ip %q client_port %d, want none", ev.Milter, ev.QueueID, ev.ClientIP, ev.ClientPort)
		}
	}
}
