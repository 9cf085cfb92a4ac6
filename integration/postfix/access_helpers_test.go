package postfix

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/geomilter/geomilter/shared/trail"
)

// Helpers of the access milter's tests (access_test.go).

// swaksAt sends one message with swaks from inside ns to server
// ("host:port"). The exit status is not treated as an error: swaks exits
// non-zero on every refusal, and the tests assert on the transcript.
func swaksAt(ns, server, helo string, args ...string) string {
	full := append([]string{"swaks", "--server", server, "--helo", helo, "--timeout", "30"}, args...)
	out, err := inNS(ns, 60*time.Second, full...)
	if err != nil {
		out += "\n(swaks: " + err.Error() + ")" // for the failure message
	}
	return out
}

var (
	queuedAsRe = regexp.MustCompile(`queued as ([0-9A-F]+)`)
	refusalRe  = regexp.MustCompile(`(?m)^<\*\* +([45]\d\d [^\r\n]*)`)
)

// queuedAs is the queue id Postfix gave the message in a swaks transcript
// ("" if it was not accepted).
func queuedAs(transcript string) string {
	if m := queuedAsRe.FindStringSubmatch(transcript); m != nil {
		return m[1]
	}
	return ""
}

// refusals are the 4xx/5xx replies in a swaks transcript, in order.
func refusals(transcript string) []string {
	var out []string
	for _, m := range refusalRe.FindAllStringSubmatch(transcript, -1) {
		out = append(out, strings.TrimSpace(m[1]))
	}
	return out
}

// replyAfter reports whether the server answered cmd (e.g. "MAIL FROM:<x>")
// with reply: the transcript line after " -> cmd" is "<** reply".
func replyAfter(transcript, cmd, reply string) bool {
	lines := strings.Split(strings.ReplaceAll(transcript, "\r", ""), "\n")
	for i := 0; i+1 < len(lines); i++ {
		if strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(lines[i]), "->")) == cmd {
			return strings.HasPrefix(strings.TrimSpace(strings.TrimPrefix(lines[i+1], "<**")), reply)
		}
	}
	return false
}

// sentLineRe is Postfix's smtp client delivering one recipient to the
// site's smtp-sink (the relayhost).
var sentLineRe = regexp.MustCompile(fmt.Sprintf(`postfix/smtp\[\d+\]: ([0-9A-F]+): to=<([^>]*)>, relay=[^,]*:%d, .*status=sent`, sinkPort))

// sentRcpts returns the recipients of queue id qid that Postfix delivered to
// the site's smtp-sink, from its maillog.
func sentRcpts(s *site, qid string) []string {
	var out []string
	for _, l := range readLines(s.maillog) {
		if m := sentLineRe.FindStringSubmatch(l); m != nil && m[1] == qid {
			out = append(out, m[2])
		}
	}
	return out
}

// waitSent waits until Postfix has delivered qid to want recipients at the
// sink, and returns them.
func waitSent(t testing.TB, s *site, qid string, want int) []string {
	t.Helper()
	var got []string
	waitFor(t, 30*time.Second, fmt.Sprintf("%d recipient(s) of %s delivered to %s's smtp-sink", want, qid, s.name), func() bool {
		got = sentRcpts(s, qid)
		return len(got) >= want
	})
	return got
}

// accessEvent waits for the access milter's trail event at site s (read
// from its own primary) that match accepts.
func accessEvent(t testing.TB, s *site, what string, match func(trail.Event) bool) trail.Event {
	t.Helper()
	var found trail.Event
	waitFor(t, 30*time.Second, fmt.Sprintf("%s's access trail event for %s", s.name, what), func() bool {
		evs, err := trailEvents(s.primary, s.name)
		if err != nil {
			return false
		}
		for _, ev := range evs {
			if ev.Milter == "access" && match(ev) {
				found = ev
				return true
			}
		}
		return false
	})
	return found
}

// rateCount is what c holds of site's rate-limit counters for rule and value
// (docs/access.md: gm:{SITE}:rl:<rule id>:<value>:<window start ms>), summed
// over the windows still kept.
func rateCount(c *redis.Client, site, rule, value string) (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pattern := "gm:{" + site + "}:rl:" + rule + ":" + value + ":*"
	keys, err := c.Keys(ctx, pattern).Result()
	if err != nil {
		return 0, fmt.Errorf("keys %s: %w", pattern, err)
	}
	var sum int64
	for _, k := range keys {
		v, err := c.Get(ctx, k).Result()
		if err == redis.Nil {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("get %s: %w", k, err)
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %q is not a count", k, v)
		}
		sum += n
	}
	return sum, nil
}

// minuteWindow is the start of the fixed 1m rate window now is in (the
// milter aligns windows on the epoch).
func minuteWindow(now time.Time) int64 { return now.UnixMilli() - now.UnixMilli()%60000 }

func hasString(xs []string, x string) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}
