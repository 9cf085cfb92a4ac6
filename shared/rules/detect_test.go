package rules

import (
	"reflect"
	"testing"
)

// TestDetectMatch: a detect condition holds when one of its detectors is in
// Facts.Detected; detectors not run (nil) satisfy none; precedence puts an
// exception (skip, lower priority) before the detector rule.
func TestDetectMatch(t *testing.T) {
	s := mustSnapshot(t, `
rules:
  - {id: cards, milter: encrypt, scope: global, match: {detect: [card, iban]}, action: encrypt}
  - {id: falcon, milter: encrypt, scope: global, match: {detect: [falcon], rcpt_domain: [partner.example]}, action: encrypt}
  - {id: internal, milter: encrypt, scope: global, match: {rcpt_domain: [internal.example]}, action: skip, priority: -1}
  - {id: tls, milter: encrypt, scope: global, match: {rcpt_domain: [bank.example]}, action: require_tls}
`)
	for _, tt := range []struct {
		rcpt     string
		detected []string
		want     []string
	}{
		{"u@other.example", nil, nil},
		{"u@other.example", []string{}, nil},
		{"u@other.example", []string{"card"}, []string{"cards"}},
		{"u@other.example", []string{"pattern", "iban"}, []string{"cards"}},
		{"u@other.example", []string{"falcon"}, nil},
		{"u@partner.example", []string{"falcon"}, []string{"falcon"}},
		{"u@partner.example", []string{"Card"}, nil}, // names are exact
		{"u@internal.example", []string{"card"}, []string{"internal", "cards"}},
		{"u@bank.example", nil, []string{"tls"}},
	} {
		got := ids(s.Match("encrypt", Facts{Sender: "a@b.example", Rcpt: tt.rcpt, Detected: tt.detected}))
		if len(got) != len(tt.want) || len(got) > 0 && !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s %q: got %v, want %v", tt.rcpt, tt.detected, got, tt.want)
		}
	}
}

// TestDetectRoundTrip: detect survives the document form (replication).
func TestDetectRoundTrip(t *testing.T) {
	set, err := Parse("r.yaml", []byte(`
rules:
  - {id: cards, milter: encrypt, scope: global, match: {detect: [" card ", iban]}, action: encrypt, reply: "550 5.7.1 Encrypt it"}
`))
	if err != nil {
		t.Fatal(err)
	}
	if got := set.Rules[0].Match.Detect; !reflect.DeepEqual(got, []string{"card", "iban"}) {
		t.Errorf("detect %q", got)
	}
	docs, err := set.Docs()
	if err != nil {
		t.Fatal(err)
	}
	back, skipped := SetFromDocs(docs)
	if len(skipped) > 0 || !reflect.DeepEqual(back.Rules, set.Rules) {
		t.Errorf("round trip: %+v (skipped %v), want %+v", back.Rules, skipped, set.Rules)
	}
}
