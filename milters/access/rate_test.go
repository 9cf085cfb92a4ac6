package access

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/geomilter/geomilter/shared/state"
)

// mid-window start for fixed clocks: windows of 1m and 1h start on the hour.
var t0 = time.Date(2030, 1, 1, 10, 0, 30, 0, time.UTC)

// TestRateMemory: limit N lets N messages through in a window and refuses
// the N+1st; each message counts once whatever its number of recipients.
func TestRateMemory(t *testing.T) {
	clk := &fixedClock{t: t0}
	tests := []struct {
		name  string
		rules string
		c     func(i int) client
		// sender and recipients of message i
		sender func(i int) string
		rcpts  []string
		limit  int
		// want is the summary of the message that trips (the N+1st)
		want string
	}{
		{"sender key, at mail",
			`rules: [{id: per-sender, milter: access, scope: global, rate: {key: sender, limit: 3, per: 1m}, action: tempfail}]`,
			func(int) client { return outside }, func(int) string { return "Bulk@Outside.example" },
			[]string{"a@acme.example", "b@acme.example"}, 3,
			"mail:tempfail:per-sender rules=per-sender"},
		{"client_ip key, clients rotate names",
			`rules: [{id: per-ip, milter: access, scope: global, rate: {key: client_ip, limit: 2, per: 1h}, action: reject}]`,
			func(i int) client { c := outside; c.name = fmt.Sprintf("h%d.outside.example", i); return c },
			func(i int) string { return fmt.Sprintf("s%d@outside.example", i) },
			[]string{"a@acme.example"}, 2,
			"mail:reject:per-ip rules=per-ip"},
		{"sasl_user key",
			`rules: [{id: per-login, milter: access, scope: global, rate: {key: sasl_user, limit: 2, per: 1m}, action: tempfail, reply: "452 4.7.1 Slow down"}]`,
			func(int) client { c := acmeNet; c.sasl = "acme-relay"; return c },
			func(i int) string { return fmt.Sprintf("s%d@acme.example", i) },
			[]string{"x@gmail.example", "y@gmail.example"}, 2,
			"mail:tempfail:per-login rules=per-login"},
		{"tenant key, outbound: the relay's tenant, at mail",
			`rules: [{id: per-tenant, milter: access, scope: global, rate: {key: tenant, limit: 2, per: 1m}, action: tempfail}]`,
			func(int) client { return acmeNet },
			func(i int) string { return fmt.Sprintf("s%d@acme.example", i) },
			[]string{"x@gmail.example"}, 2,
			"mail:tempfail:per-tenant rules=per-tenant"},
		{"tenant key, inbound: the recipient's tenant, at rcpt",
			`rules: [{id: per-tenant, milter: access, scope: global, rate: {key: tenant, limit: 2, per: 1m}, action: tempfail}]`,
			func(int) client { return outside },
			func(i int) string { return fmt.Sprintf("s%d@outside.example", i) },
			[]string{"a@acme.example", "b@acme-mail.example"}, 2,
			"rcpt(a@acme.example):tempfail:per-tenant rcpt(b@acme-mail.example):tempfail:per-tenant rules=per-tenant"},
		{"tenant-scoped rate, deferred to rcpt, still once per message",
			`rules: [{id: acme-rate, milter: access, scope: "tenant:acme", rate: {key: sender, limit: 2, per: 1m}, action: tempfail}]`,
			func(int) client { return outside }, func(int) string { return "s@outside.example" },
			[]string{"a@acme.example", "b@beta.example", "c@acme-mail.example"}, 2,
			"rcpt(a@acme.example):tempfail:acme-rate rcpt(c@acme-mail.example):tempfail:acme-rate rules=acme-rate"},
		{"null sender counted as <>",
			`rules: [{id: bounces, milter: access, scope: global, rate: {key: sender, limit: 1, per: 1m}, action: tempfail}]`,
			func(int) client { return outside }, func(int) string { return "" },
			[]string{"a@acme.example"}, 1,
			"mail:tempfail:bounces rules=bounces"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := newTestMilter(t, compile(t, tc.rules), Options{Clock: clk.now})
			clk.t = t0
			for i := 0; i < tc.limit; i++ {
				o := run(t, m, tc.c(i), tc.sender(i), tc.rcpts...)
				if len(o.steps) != 0 {
					t.Fatalf("message %d of %d refused: %s", i+1, tc.limit, o.summary())
				}
			}
			if got := run(t, m, tc.c(tc.limit), tc.sender(tc.limit), tc.rcpts...).summary(); got != tc.want {
				t.Fatalf("message %d:\n got  %s\n want %s", tc.limit+1, got, tc.want)
			}
			clk.t = t0.Add(time.Hour) // a new window
			if o := run(t, m, tc.c(0), tc.sender(0), tc.rcpts...); len(o.steps) != 0 {
				t.Fatalf("next window: %s", o.summary())
			}
		})
	}
}

// TestRateSubjects: counts are per rule and per value, and an unknown
// value (no login) is not counted.
func TestRateSubjects(t *testing.T) {
	clk := &fixedClock{t: t0}
	m := newTestMilter(t, compile(t, `
rules:
  - {id: per-sender, milter: access, scope: global, rate: {key: sender, limit: 1, per: 1m}, action: tempfail}
  - {id: per-login, milter: access, scope: global, rate: {key: sasl_user, limit: 1, per: 1m}, action: tempfail}
`), Options{Clock: clk.now})
	for i := 0; i < 3; i++ {
		o := run(t, m, outside, fmt.Sprintf("s%d@outside.example", i), "a@acme.example")
		if got := o.summary(); got != "accept rules=per-sender" {
			t.Fatalf("message %d: %s", i, got)
		}
	}
	if got := run(t, m, outside, "s0@outside.example", "a@acme.example").summary(); got != "mail:tempfail:per-sender rules=per-sender" {
		t.Fatalf("second message of s0: %s", got)
	}
	if n := m.counter.MemoryLen(); n != 3 {
		t.Errorf("%d counter windows, want 3 (one per sender, none for the missing login)", n)
	}
}

// TestRateAfterAllow: a message decided by an allow of higher precedence
// never reaches the rate rule, so it is not counted.
func TestRateAfterAllow(t *testing.T) {
	clk := &fixedClock{t: t0}
	m := newTestMilter(t, compile(t, `
rules:
  - {id: vip, milter: access, scope: global, match: {sender: [vip@outside.example]}, action: allow, priority: -1}
  - {id: per-ip, milter: access, scope: global, rate: {key: client_ip, limit: 2, per: 1m}, action: tempfail}
`), Options{Clock: clk.now})
	for i := 0; i < 5; i++ {
		if got := run(t, m, outside, "vip@outside.example", "a@acme.example").summary(); got != "accept rules=vip" {
			t.Fatalf("vip message %d: %s", i, got)
		}
	}
	for i := 0; i < 2; i++ {
		if got := run(t, m, outside, "other@outside.example", "a@acme.example").summary(); got != "accept rules=per-ip" {
			t.Fatalf("message %d: %s", i, got)
		}
	}
	if got := run(t, m, outside, "other@outside.example", "a@acme.example").summary(); got != "mail:tempfail:per-ip rules=per-ip" {
		t.Fatalf("third counted message: %s", got)
	}
}

// recordingCounter counts in memory and records the subjects of every
// IncrMany call.
type recordingCounter struct {
	mu    sync.Mutex
	calls [][]string
	mem   *state.MemCounter
}

func (c *recordingCounter) IncrMany(ctx context.Context, reqs []state.IncrReq) ([]state.Count, error) {
	var subjects []string
	for _, r := range reqs {
		subjects = append(subjects, r.Subject)
	}
	c.mu.Lock()
	c.calls = append(c.calls, subjects)
	c.mu.Unlock()
	return c.mem.IncrMany(ctx, reqs)
}

// TestRateOneCallPerStage: the rate rules a message reaches at one stage
// are counted in one counter call (one Redis round trip), and every
// subject once per transaction.
func TestRateOneCallPerStage(t *testing.T) {
	tests := []struct {
		name   string
		rules  string
		rcpts  []string
		want   [][]string // subjects per call
		result string
	}{
		{"global rules, at mail", `
rules:
  - {id: per-ip, milter: access, scope: global, rate: {key: client_ip, limit: 100, per: 1m}, action: tempfail}
  - {id: per-sender, milter: access, scope: global, rate: {key: sender, limit: 100, per: 1h}, action: tempfail}
  - {id: per-login, milter: access, scope: global, rate: {key: sasl_user, limit: 100, per: 1h}, action: tempfail}
`, []string{"a@acme.example", "b@beta.example"},
			[][]string{{"per-ip:203.0.113.9", "per-sender:s@outside.example"}},
			"accept rules=per-ip,per-sender"},
		{"tenant rules, per recipient at rcpt", `
rules:
  - {id: acme-rate, milter: access, scope: "tenant:acme", rate: {key: sender, limit: 100, per: 1m}, action: tempfail}
  - {id: per-tenant, milter: access, scope: global, rate: {key: tenant, limit: 100, per: 1h}, action: tempfail}
  - {id: per-ip, milter: access, scope: global, rate: {key: client_ip, limit: 100, per: 1m}, action: tempfail}
`, []string{"a@acme.example", "b@acme-mail.example", "c@beta.example"},
			[][]string{
				{"acme-rate:s@outside.example", "per-ip:203.0.113.9", "per-tenant:acme"}, // a@acme
				{"per-tenant:beta"}, // c@beta; b@acme-mail reuses a@acme's counts
			},
			"accept rules=acme-rate,per-ip,per-tenant"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rc := &recordingCounter{mem: state.NewMemCounter(nil)}
			m := newTestMilter(t, compile(t, tc.rules), Options{Counter: rc})
			o := run(t, m, outside, "s@outside.example", tc.rcpts...)
			for _, c := range rc.calls {
				slices.Sort(c)
			}
			if !reflect.DeepEqual(rc.calls, tc.want) {
				t.Errorf("counter calls %q, want %q", rc.calls, tc.want)
			}
			if got := o.summary(); got != tc.result {
				t.Errorf("got %s, want %s", got, tc.result)
			}
		})
	}
}

// TestRateTripCountsTheOthers: a message that trips one rate rule is still
// counted by the other rate rules of the same stage (they are counted
// together), and the trail lists the deciding rule last.
func TestRateTripCountsTheOthers(t *testing.T) {
	clk := &fixedClock{t: t0}
	m := newTestMilter(t, compile(t, `
rules:
  - {id: per-sender, milter: access, scope: global, rate: {key: sender, limit: 1, per: 1m}, action: tempfail, priority: -1}
  - {id: per-ip, milter: access, scope: global, rate: {key: client_ip, limit: 2, per: 1m}, action: reject}
`), Options{Clock: clk.now})
	steps := []struct{ sender, want string }{
		{"s1@outside.example", "accept rules=per-sender,per-ip"},
		{"s1@outside.example", "mail:tempfail:per-sender rules=per-ip,per-sender"}, // per-ip counted 2
		{"s2@outside.example", "mail:reject:per-ip rules=per-sender,per-ip"},       // per-ip counted 3
	}
	for i, s := range steps {
		if got := run(t, m, outside, s.sender, "a@acme.example").summary(); got != s.want {
			t.Fatalf("message %d: %s, want %s", i+1, got, s.want)
		}
	}
}
