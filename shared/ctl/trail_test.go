package ctl

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/geomilter/geomilter/shared/redistest"
	"github.com/geomilter/geomilter/shared/trail"
)

// ev builds a trail event of site, minutes before now.
func ev(site, host, milter, id string, minutesAgo int, now time.Time) trail.Event {
	return trail.Event{
		Schema: 1, EventID: id, Time: now.Add(-time.Duration(minutesAgo) * time.Minute),
		Site: site, Host: host, Milter: milter, SessionID: "s", TxnID: "s.1",
		Sender: "alice@example.net", Rcpts: []trail.Rcpt{{Addr: "bob@acme.example", Action: "accept"}},
		ClientIP: "203.0.113.9", Stage: "eom", Action: "accept",
	}
}

// xadd appends events to site's stream on c the way the redis sink does.
func xadd(t *testing.T, c *redis.Client, site string, evs ...trail.Event) {
	t.Helper()
	for _, e := range evs {
		b, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.XAdd(context.Background(), &redis.XAddArgs{
			Stream: "gm:{" + site + "}:trail", ID: "*", Values: []any{"id", e.EventID, "event", string(b)},
		}).Err(); err != nil {
			t.Fatal(err)
		}
	}
}

// waitStream waits until the replica holds n entries of site's stream.
func waitStream(t *testing.T, r *redistest.Server, site string, n int64) {
	t.Helper()
	c := r.Client()
	deadline := time.Now().Add(15 * time.Second)
	for {
		got, _ := c.XLen(context.Background(), "gm:{"+site+"}:trail").Result()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica has %d entries of %s's trail, want %d", got, site, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// trailSites starts two sites holding a known trail and returns their configs.
//
// Message m1@x came in at site a on host mta1 (queue Q1: access, policy,
// archive) and was relayed to b (host mtb1, queue Q9: access, policy).
// Noise: another message on mta1 (Q2), a transaction with queue id Q1 on
// another host of a (mta2: queue ids are unique per host only), a
// redelivered copy of one event, and an event outside the window. The
// events are added out of time order, as drains of several milters do.
func trailSites(t *testing.T) (cfgA, cfgB string, primaries, replicas map[string]*redistest.Server) {
	t.Helper()
	cfgA, cfgB, primaries, replicas = twoSites(t, "127.0.0.1:1")
	now := time.Now()
	mk := func(site, host, milter, id, qid, mid string, ago int) trail.Event {
		e := ev(site, host, milter, id, ago, now)
		e.QueueID, e.MessageID = qid, mid
		return e
	}
	a1 := mk("a", "mta1", "access", "a1", "Q1", "", 30)
	a2 := mk("a", "mta1", "policy", "a2", "Q1", "<m1@x>", 29)
	a3 := mk("a", "mta1", "archive", "a3", "Q1", "<m1@x>", 27)
	a4 := mk("a", "mta1", "access", "a4", "Q2", "", 20)
	a4.Sender, a4.ClientIP, a4.Action, a4.Reply = "", "2001:db8::7", "reject", "550 5.7.1 Access denied"
	a4.Rcpts = []trail.Rcpt{{Addr: "carol@acme.example", Action: "reject"}}
	a4.RuleIDs, a4.Reasons = []string{"block-bad-net"}, []string{"client in 2001:db8::/32"}
	a5 := mk("a", "mta2", "access", "a5", "Q1", "", 10)
	a5.Sender = "mallory@example.org"
	old := mk("a", "mta1", "policy", "old", "Q0", "<m1@x>", 3*24*60)
	b1 := mk("b", "mtb1", "access", "b1", "Q9", "", 28)
	b2 := mk("b", "mtb1", "policy", "b2", "Q9", "m1@x", 26)
	xadd(t, primaries["a"].Client(), "a", old, a2, a1, a3, a4, a2, a5)
	xadd(t, primaries["b"].Client(), "b", b2, b1)
	waitStream(t, replicas["b"], "a", 7)
	waitStream(t, replicas["a"], "b", 2)
	return cfgA, cfgB, primaries, replicas
}

// ids returns the event ids of the printed lines (the --json output).
func ids(t *testing.T, out string) []string {
	t.Helper()
	var got []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var e trail.Event
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("--json line %q: %v", line, err)
		}
		got = append(got, e.EventID)
	}
	return got
}

func TestTrailFilters(t *testing.T) {
	cfgA, cfgB, _, _ := trailSites(t)
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"everything in the window, merged in time order, copies dropped", nil, "a1 a2 b1 a3 b2 a4 a5"},
		{"message id joins access by host and queue id", []string{"--message-id", "m1@x"}, "a1 a2 b1 a3 b2"},
		{"message id with brackets", []string{"--message-id", "<m1@x>"}, "a1 a2 b1 a3 b2"},
		{"message id, wide window", []string{"--message-id", "m1@x", "--since", "96h"}, "old a1 a2 b1 a3 b2"},
		{"message id and queue id", []string{"--message-id", "m1@x", "--queue-id", "Q9"}, "b1 b2"},
		{"unknown message id", []string{"--message-id", "nope@x"}, ""},
		{"queue id (any host)", []string{"--queue-id", "Q1"}, "a1 a2 a3 a5"},
		{"sender", []string{"--sender", "MALLORY@example.org"}, "a5"},
		{"null sender", []string{"--sender", "<>"}, "a4"},
		{"rcpt", []string{"--rcpt", "carol@acme.example"}, "a4"},
		{"client ip", []string{"--client", "2001:db8::7"}, "a4"},
		{"client network", []string{"--client", "203.0.113.0/24", "--since", "25m"}, "a5"},
		{"window", []string{"--since", "29m30s", "--until", "26m30s"}, "a2 b1 a3"},
		{"limit", []string{"--limit", "2"}, "a1 a2"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, cfg := range []string{cfgA, cfgB} {
				code, out, errOut := run(append([]string{"--config", cfg, "trail", "--json"}, tc.args...)...)
				if code != ExitOK {
					t.Fatalf("exit %d, stderr:\n%s", code, errOut)
				}
				if got := strings.Join(ids(t, out), " "); got != tc.want {
					t.Errorf("%s: got %q, want %q (stderr %q)", cfg, got, tc.want, errOut)
				}
			}
		})
	}
}

func TestTrailLimitWarns(t *testing.T) {
	cfgA, _, _, _ := trailSites(t)
	code, _, errOut := run("--config", cfgA, "trail", "--limit", "3")
	if code != ExitOK || !strings.Contains(errOut, "more decisions match than --limit 3") {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
}

func TestTrailLines(t *testing.T) {
	cfgA, _, _, _ := trailSites(t)
	code, out, errOut := run("--config", cfgA, "trail", "--queue-id", "Q2")
	if code != ExitOK || errOut != "" {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	want := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z a +access +Q2 +reject +<> → carol@acme\.example \(reject\) client 2001:db8::7 reply "550 5\.7\.1 Access denied" rules block-bad-net — client in 2001:db8::/32\n$`)
	if !want.MatchString(out) {
		t.Errorf("line:\n%q\ndoes not match %s", out, want)
	}
}

// TestTrailDark: an instance that does not answer is named and the others
// answer; a dark peer site is still searchable in its local replica.
func TestTrailDark(t *testing.T) {
	cfgA, _, primaries, replicas := trailSites(t)

	// Site b goes dark: a's replica of it answers from what it had.
	primaries["b"].Pause()
	code, out, errOut := run("--config", cfgA, "--timeout", "500ms", "trail", "--json", "--message-id", "m1@x")
	if code != ExitOK || errOut != "" {
		t.Fatalf("peer dark: exit %d, stderr %q", code, errOut)
	}
	if got := strings.Join(ids(t, out), " "); got != "a1 a2 b1 a3 b2" {
		t.Errorf("peer dark: got %q", got)
	}

	// The local replica of b stops answering too: named, a's events shown.
	replicas["a"].Pause()
	code, out, errOut = run("--config", cfgA, "--timeout", "500ms", "trail", "--json", "--message-id", "m1@x")
	if code != ExitOK {
		t.Fatalf("replica dark: exit %d, stderr %q", code, errOut)
	}
	if got := strings.Join(ids(t, out), " "); got != "a1 a2 a3" {
		t.Errorf("replica dark: got %q", got)
	}
	wantErr := fmt.Sprintf("b peer-replica %s did not answer", replicas["a"].Addr)
	if !strings.Contains(errOut, wantErr) {
		t.Errorf("stderr %q does not name %q", errOut, wantErr)
	}

	// Nothing answers: exit 1, both named.
	primaries["a"].Pause()
	code, out, errOut = run("--config", cfgA, "--timeout", "500ms", "trail")
	if code != ExitProblems || out != "" || !strings.Contains(errOut, "a primary "+primaries["a"].Addr+" did not answer") {
		t.Errorf("all dark: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

func TestTrailUsage(t *testing.T) {
	for _, args := range [][]string{
		{"trail", "extra"},
		{"trail", "--since", "yesterday"},
		{"trail", "--until", "2h", "--since", "1h"},
		{"trail", "--client", "not-an-ip"},
		{"trail", "--limit", "0"},
		{"trail", "--bogus"},
	} {
		if code, _, _ := run(args...); code != ExitUsage {
			t.Errorf("%v: exit %d, want %d", args, code, ExitUsage)
		}
	}
	code, out, _ := run("trail", "--help")
	if code != ExitOK || !strings.Contains(out, "--message-id ID") {
		t.Errorf("--help: exit %d:\n%s", code, out)
	}
}

// TestTrailPages: a stream longer than one XRANGE page is read to its end,
// and the merge keeps every event once, in time order.
func TestTrailPages(t *testing.T) {
	cfgA, _, primaries, replicas := twoSites(t, "127.0.0.1:1")
	now := time.Now()
	const n = 2*trailPage + 500
	var evs []trail.Event
	for i := range n {
		e := ev("b", "mtb1", "access", fmt.Sprintf("p%05d", i), 0, now)
		e.Time = now.Add(-time.Hour).Add(time.Duration(i) * time.Millisecond)
		evs = append(evs, e)
	}
	pipe := primaries["b"].Client().Pipeline()
	for _, e := range evs {
		b, _ := json.Marshal(e)
		pipe.XAdd(context.Background(), &redis.XAddArgs{Stream: "gm:{b}:trail", ID: "*", Values: []any{"id", e.EventID, "event", string(b)}})
	}
	if _, err := pipe.Exec(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitStream(t, replicas["a"], "b", n)
	code, out, errOut := run("--config", cfgA, "trail", "--json", "--limit", fmt.Sprint(n+1))
	if code != ExitOK || errOut != "" {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	got := ids(t, out)
	if len(got) != n || got[0] != "p00000" || got[n-1] != fmt.Sprintf("p%05d", n-1) {
		t.Fatalf("got %d events (first %v, last %v), want %d", len(got), got[:1], got[len(got)-1:], n)
	}
	if !slices.IsSorted(got) {
		t.Error("events not in time order")
	}
}
