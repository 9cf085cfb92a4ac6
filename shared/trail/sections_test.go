package trail

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestSections: each milter's section lands under its own key, survives a
// round trip, and an event without one has none of the keys.
func TestSections(t *testing.T) {
	tests := []struct {
		name string
		sec  Section
		key  string
	}{
		{"access", &AccessSection{Direction: "inbound", Rules: []RuleHit{{ID: "r", Scope: "global", Action: "reject", Stage: "rcpt", Rcpt: "a@b.example"}},
			Rates: []RateCount{{RuleID: "rl", Key: "client_ip", Value: "192.0.2.1", Count: 6, Limit: 5, WindowS: 60, Exceeded: true, Store: "redis"}}}, "access"},
		{"policy", &PolicySection{SPF: []SPFResult{{Identity: "mailfrom", Domain: "example.net", Result: "pass"}},
			DKIM:  []DKIMResult{{Domain: "example.net", Selector: "s1", Result: "pass"}},
			DMARC: &DMARCResult{Domain: "example.net", Policy: "reject", Result: "pass", SPFAligned: true, DKIMAligned: true},
			Score: 1.5, Threshold: 5}, "policy"},
		{"archive", &ArchiveSection{RecordID: "j-1", Targets: []ArchiveTarget{{Name: "s3", Status: "stored"}}, Bytes: 1234}, "archive"},
		{"encrypt", &EncryptSection{Trigger: "rule", Route: "smime", Rules: []RuleHit{{ID: "e", Scope: "global", Action: "encrypt"}}}, "encrypt"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ev := &Event{EventID: NewEventID(time.Now()), Milter: tc.name}
			ev.SetSection(tc.sec)
			b, err := ev.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			var m map[string]json.RawMessage
			if err := json.Unmarshal(b, &m); err != nil {
				t.Fatal(err)
			}
			for _, k := range []string{"access", "policy", "archive", "encrypt"} {
				if _, ok := m[k]; ok != (k == tc.key) {
					t.Errorf("key %q present %v in %s", k, ok, b)
				}
			}
			var back Event
			if err := json.Unmarshal(b, &back); err != nil {
				t.Fatal(err)
			}
			b2, _ := back.Marshal()
			if string(b2) != string(b) {
				t.Errorf("round trip differs:\n%s\n%s", b, b2)
			}
		})
	}
	ev := &Event{}
	ev.SetSection(nil)
	b, _ := ev.Marshal()
	for _, k := range []string{`"access"`, `"policy"`, `"archive"`, `"encrypt"`} {
		if strings.Contains(string(b), k) {
			t.Errorf("event without section has %s: %s", k, b)
		}
	}
}
