package rules

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

func TestDocRoundTrip(t *testing.T) {
	set, err := ParseFile("../../deploy/examples/rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	docs, err := set.Docs()
	if err != nil {
		t.Fatal(err)
	}
	if len(docs) != len(set.Rules)+len(set.Tenants) {
		t.Fatalf("got %d docs for %d rules and %d tenants", len(docs), len(set.Rules), len(set.Tenants))
	}
	back, skipped := SetFromDocs(docs)
	if len(skipped) > 0 {
		t.Fatalf("skipped: %v", skipped)
	}
	// Docs are ordered by id; compare as maps.
	byID := func(s *Set) map[string]any {
		m := map[string]any{}
		for _, r := range s.Rules {
			m[r.ID] = r
		}
		for _, tn := range s.Tenants {
			m[tn.DocID()] = tn
		}
		return m
	}
	if !reflect.DeepEqual(byID(set), byID(back)) {
		t.Errorf("round trip changed the set\n got %+v\nwant %+v", byID(back), byID(set))
	}
	a, _ := Compile(set)
	b, _ := Compile(back)
	if a.Checksum() != b.Checksum() {
		t.Errorf("checksum differs after round trip: %s vs %s", a.Checksum(), b.Checksum())
	}
	// The checksum does not depend on the order rules were written in.
	rev := set.Clone()
	for i, j := 0, len(rev.Rules)-1; i < j; i, j = i+1, j-1 {
		rev.Rules[i], rev.Rules[j] = rev.Rules[j], rev.Rules[i]
	}
	c, _ := Compile(rev)
	if c.Checksum() != a.Checksum() {
		t.Errorf("checksum depends on rule order")
	}
	// …but does on content.
	rev.Rules[0].Comment += "!"
	d, _ := Compile(rev)
	if d.Checksum() == a.Checksum() {
		t.Errorf("checksum did not change with a comment")
	}
}

func TestRuleFromDoc(t *testing.T) {
	tests := []struct {
		name    string
		id      string
		doc     string
		wantErr string
	}{
		{name: "valid", id: "r1", doc: `{"id":"r1","milter":"access","scope":"global","match":{"client_ip":["192.0.2.0/24"]},"action":"reject","reply":"550 5.7.1 No"}`},
		{name: "id from key", id: "r1", doc: `{"milter":"access","scope":"global","action":"allow"}`},
		{name: "enabled false kept", id: "r1", doc: `{"milter":"access","scope":"global","action":"allow","enabled":false}`},
		{name: "id mismatch", id: "r1", doc: `{"id":"r2","milter":"access","scope":"global","action":"allow"}`, wantErr: `document says id "r2"`},
		{name: "unknown key from a newer version", id: "r1", doc: `{"milter":"access","scope":"global","action":"reject","match":{"client_asn":[64496]}}`, wantErr: `unknown field "client_asn"`},
		{name: "unknown action", id: "r1", doc: `{"milter":"access","scope":"global","action":"tarpit"}`, wantErr: `action: unknown action "tarpit"`},
		{name: "bad cidr", id: "r1", doc: `{"milter":"access","scope":"global","action":"reject","match":{"client_ip":["10.0.0.1/8"]}}`, wantErr: "match.client_ip[0]: network 10.0.0.1/8 has host bits set"},
		{name: "bad reply", id: "r1", doc: `{"milter":"access","scope":"global","action":"tempfail","reply":"550 5.7.1 x"}`, wantErr: "needs 4xx"},
		{name: "wrong type", id: "r1", doc: `{"milter":"access","scope":"global","action":"allow","priority":"high"}`, wantErr: "cannot unmarshal"},
		{name: "not json", id: "r1", doc: `{"milter":`, wantErr: "unexpected EOF"},
		{name: "trailing data", id: "r1", doc: `{"milter":"access","scope":"global","action":"allow"} {}`, wantErr: "trailing data"},
		{name: "null", id: "r1", doc: `null`, wantErr: "milter: required"},
		{name: "tenant id as rule", id: "tenant:x", doc: `{"milter":"access","scope":"global","action":"allow"}`, wantErr: "rule id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := RuleFromDoc(tt.id, json.RawMessage(tt.doc))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r.ID != tt.id {
				t.Errorf("id %q", r.ID)
			}
			doc, err := r.MarshalDoc()
			if err != nil {
				t.Fatal(err)
			}
			again, err := RuleFromDoc(tt.id, doc)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(r, again) {
				t.Errorf("re-decoded rule differs\n got %+v\nwant %+v", again, r)
			}
		})
	}
}

func TestTenantFromDoc(t *testing.T) {
	tn, err := TenantFromDoc("tenant:acme", json.RawMessage(`{"domains":["Acme.Example"],"relay":{"networks":["198.51.100.0/24"]}}`))
	if err != nil {
		t.Fatal(err)
	}
	if tn.ID != "acme" || tn.Domains[0] != "acme.example" || tn.DocID() != "tenant:acme" {
		t.Errorf("got %+v", tn)
	}
	for _, tt := range []struct{ id, doc, want string }{
		{"acme", `{}`, `must start with "tenant:"`},
		{"tenant:acme", `{"id":"globex"}`, `document says id "globex"`},
		{"tenant:acme", `{"domains":["bad domain"]}`, `contains ' '`},
		{"tenant:acme", `{"relay":{"networks":["x"]}}`, `invalid address "x"`},
		{"tenant:acme", `{"colour":"red"}`, `unknown field "colour"`},
	} {
		if _, err := TenantFromDoc(tt.id, json.RawMessage(tt.doc)); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("TenantFromDoc(%s, %s) error = %v, want containing %q", tt.id, tt.doc, err, tt.want)
		}
	}
}

// TestSetFromDocsSkips: invalid documents are skipped and reported, the
// rest is used, and the outcome does not depend on the order of documents.
func TestSetFromDocsSkips(t *testing.T) {
	docs := []Doc{
		{ID: "tenant:globex", Body: json.RawMessage(`{"domains":["shared.example","globex.example"]}`)},
		{ID: "tenant:acme", Body: json.RawMessage(`{"domains":["shared.example"]}`)},
		{ID: "tenant:broken", Body: json.RawMessage(`{"domains":`)},
		{ID: "good", Body: json.RawMessage(`{"milter":"access","scope":"tenant:acme","action":"allow"}`)},
		{ID: "orphan", Body: json.RawMessage(`{"milter":"access","scope":"tenant:globex","action":"allow"}`)},
		{ID: "to-broken", Body: json.RawMessage(`{"milter":"access","scope":"tenant:broken","action":"allow"}`)},
		{ID: "future", Body: json.RawMessage(`{"milter":"access","scope":"global","action":"reject","match":{"ja4":["x"]}}`)},
		{ID: "newmilter", Body: json.RawMessage(`{"milter":"dlp","scope":"global","action":"reject"}`)},
		{ID: "good", Body: json.RawMessage(`{"milter":"access","scope":"global","action":"reject"}`)},
	}
	set, skipped := SetFromDocs(docs)
	if len(set.Tenants) != 1 || set.Tenants[0].ID != "acme" {
		t.Errorf("tenants: %+v (acme sorts first and keeps shared.example)", set.Tenants)
	}
	if len(set.Rules) != 1 || set.Rules[0].ID != "good" || set.Rules[0].Action != ActionAllow {
		t.Errorf("rules: %+v", set.Rules)
	}
	joined := ""
	for _, e := range skipped {
		joined += e.Error() + "\n"
	}
	for _, want := range []string{
		`tenant doc "tenant:globex"`, `tenant doc "tenant:broken"`, `rule doc "orphan"`, `rule doc "to-broken"`,
		`rule doc "future"`, `rule doc "newmilter"`, `doc "good": duplicate id`,
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("skipped reports lack %q:\n%s", want, joined)
		}
	}
	if len(skipped) != 7 {
		t.Errorf("got %d skipped, want 7:\n%s", len(skipped), joined)
	}
	if _, err := Compile(set); err != nil {
		t.Errorf("a set from SetFromDocs must compile: %v", err)
	}
}
