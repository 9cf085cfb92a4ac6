package access

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/geomilter/geomilter/shared/trail"
)

// TestTrailSection: the typed trail section says which rules decided or let
// the message through (stage, recipient), what the rate rules counted, and
// which recipients the relay check refused — beside the reasons.
func TestTrailSection(t *testing.T) {
	t0 := time.Date(2026, 11, 27, 8, 0, 30, 0, time.UTC)
	tests := []struct {
		name   string
		rules  string
		c      client
		sender string
		rcpts  []string
		want   string // the section as JSON
	}{
		{"reject at rcpt",
			`rules: [{id: no-eve, milter: access, scope: global, match: {rcpt: [eve@acme.example]}, action: reject}]`,
			outside, "a@outside.example", []string{"bob@acme.example", "eve@acme.example"},
			`{"direction":"inbound","rules":[{"id":"no-eve","scope":"global","action":"reject","stage":"rcpt","rcpt":"eve@acme.example"}]}`},
		{"reject at connect, before any transaction",
			`rules: [{id: block, milter: access, scope: global, match: {client_ip: [203.0.113.0/24]}, action: reject}]`,
			outside, "a@outside.example", []string{"bob@acme.example"},
			`{"rules":[{"id":"block","scope":"global","action":"reject","stage":"connect"}]}`},
		{"allow noted at mail",
			`rules: [{id: ok, milter: access, scope: global, match: {client_ip: [203.0.113.9]}, action: allow}]`,
			outside, "a@outside.example", []string{"bob@acme.example"},
			`{"direction":"inbound","rules":[{"id":"ok","scope":"global","action":"allow","stage":"mail"}]}`},
		{"outbound relay tenant",
			`rules: []`,
			acmeNet, "a@acme.example", []string{"x@elsewhere.example"},
			`{"direction":"outbound","relay_tenant":"acme"}`},
		{"relay refused",
			`rules: []`,
			outside, "a@outside.example", []string{"x@elsewhere.example", "bob@acme.example"},
			`{"direction":"inbound","relay_refused":[{"rcpt":"x@elsewhere.example","domain":"elsewhere.example"}]}`},
		{"rate counted, not exceeded",
			`rules: [{id: per-ip, milter: access, scope: global, rate: {key: client_ip, limit: 5, per: 1m}, action: tempfail}]`,
			outside, "a@outside.example", []string{"bob@acme.example"},
			`{"direction":"inbound","rates":[{"rule_id":"per-ip","key":"client_ip","value":"203.0.113.9","count":1,"limit":5,"window_s":60,"store":"memory"}]}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clk := &fixedClock{t: t0}
			m := newTestMilter(t, compile(t, tc.rules), Options{Clock: clk.now})
			o := run(t, m, tc.c, tc.sender, tc.rcpts...)
			sec, _ := o.st.Section.(*trail.AccessSection)
			got, err := json.Marshal(sec)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("section\n got %s\nwant %s", got, tc.want)
			}
		})
	}

	// A rate rule that trips: its count is above the limit and it is
	// marked exceeded; the reason for humans stays.
	clk := &fixedClock{t: t0}
	m := newTestMilter(t, compile(t, `rules: [{id: per-ip, milter: access, scope: global, rate: {key: client_ip, limit: 1, per: 1m}, action: tempfail}]`), Options{Clock: clk.now})
	run(t, m, outside, "a@outside.example", "bob@acme.example")
	o := run(t, m, outside, "a@outside.example", "bob@acme.example")
	sec, _ := o.st.Section.(*trail.AccessSection)
	if sec == nil || len(sec.Rates) != 1 || !sec.Rates[0].Exceeded || sec.Rates[0].Count != 2 ||
		len(sec.Rules) != 1 || sec.Rules[0].ID != "per-ip" || sec.Rules[0].Stage != "mail" {
		got, _ := json.Marshal(sec)
		t.Errorf("tripped rate: section %s", got)
	}
	if len(o.st.Reasons) == 0 {
		t.Error("tripped rate: no reason for humans")
	}
}
