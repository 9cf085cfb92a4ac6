package rules

import "testing"

// TestMatchResults: spf and dmarc conditions match the check results in
// Facts, never an unknown ("") one, and combine with the scope as every
// condition does (the tenant's rule first).
func TestMatchResults(t *testing.T) {
	set, err := Parse("r.yaml", []byte(`
tenants:
  - {id: acme, domains: [acme.example]}
rules:
  - {id: g-spf, milter: policy, scope: global, match: {spf: [fail, softfail]}, action: tag}
  - {id: acme-dmarc, milter: policy, scope: "tenant:acme", match: {dmarc: [fail]}, action: allow}
  - {id: both, milter: policy, scope: global, match: {spf: [fail], dmarc: [fail]}, action: reject}
`))
	if err != nil {
		t.Fatal(err)
	}
	snap, err := Compile(set)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		rcpt, spf, dmarc string
		want             []string
	}{
		{"a@acme.example", "", "", nil},
		{"a@acme.example", "fail", "", []string{"g-spf"}},
		{"a@acme.example", "SOFTFAIL", "", nil}, // results are lower case
		{"a@acme.example", "softfail", "fail", []string{"acme-dmarc", "g-spf"}},
		{"a@other.example", "softfail", "fail", []string{"g-spf"}},
		{"a@other.example", "fail", "fail", []string{"both", "g-spf"}},
		{"a@acme.example", "pass", "pass", nil},
	} {
		var got []string
		for _, r := range snap.Match("policy", Facts{Sender: "s@x.example", Rcpt: tt.rcpt, SPF: tt.spf, DMARC: tt.dmarc}) {
			got = append(got, r.ID)
		}
		if len(got) != len(tt.want) {
			t.Errorf("%s spf=%q dmarc=%q: got %v, want %v", tt.rcpt, tt.spf, tt.dmarc, got, tt.want)
			continue
		}
		for i := range got {
			if got[i] != tt.want[i] {
				t.Errorf("%s spf=%q dmarc=%q: got %v, want %v", tt.rcpt, tt.spf, tt.dmarc, got, tt.want)
				break
			}
		}
	}
	// The documents keep the conditions.
	docs, err := set.Docs()
	if err != nil {
		t.Fatal(err)
	}
	back, skipped := SetFromDocs(docs)
	if len(skipped) > 0 {
		t.Fatal(skipped)
	}
	b, _ := Compile(back)
	if b.Checksum() != snap.Checksum() {
		t.Errorf("checksum changed through documents")
	}
}
