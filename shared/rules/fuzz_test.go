package rules

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// FuzzParse: no input makes Parse panic, and whatever it accepts compiles,
// round-trips through documents and can be matched against.
func FuzzParse(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/broken/*.yaml")
	seeds = append(seeds, "../../deploy/examples/rules.yaml")
	for _, p := range seeds {
		if data, err := os.ReadFile(p); err == nil {
			f.Add(data)
		}
	}
	f.Add([]byte("rules:\n  - {id: a, milter: access, scope: global, match: {sender: [\"<>\", .x.example]}, action: allow}\n"))
	f.Add([]byte("tenants: [{id: t, domains: [a.example], relay: {networks: [\"::ffff:1.2.3.0/120\"]}}]\n"))
	f.Add([]byte("rules:\n  - {id: s, milter: policy, scope: global, score: 1.5, match: {body: [\"/a+b/\", x], attachment: [\"*.exe\"], size: [\">1k\"], url_domain: [a.example]}}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		set, err := Parse("fuzz.yaml", data)
		if err != nil {
			return
		}
		s, err := Compile(set)
		if err != nil {
			t.Fatalf("Parse accepted what Compile rejects: %v", err)
		}
		docs, err := set.Docs()
		if err != nil {
			t.Fatal(err)
		}
		back, skipped := SetFromDocs(docs)
		if len(skipped) > 0 {
			t.Fatalf("documents of a parsed set were skipped: %v", skipped)
		}
		s2, err := Compile(back)
		if err != nil {
			t.Fatal(err)
		}
		if s.Checksum() != s2.Checksum() {
			t.Fatalf("checksum changed through documents")
		}
		s.Match("access", Facts{ClientIP: netip.MustParseAddr("192.0.2.1"), Sender: "<>", Rcpt: "a@a.example"})
	})
}

// FuzzRuleFromDoc: no document makes RuleFromDoc panic, and an accepted
// rule encodes to a document that decodes to the same rule.
func FuzzRuleFromDoc(f *testing.F) {
	f.Add("r1", []byte(`{"id":"r1","milter":"access","scope":"global","match":{"client_ip":["192.0.2.0/24"]},"action":"reject","reply":"550 5.7.1 No"}`))
	f.Add("r2", []byte(`{"milter":"access","scope":"tenant:a","action":"tempfail","rate":{"key":"sender","limit":5,"per":"90s"}}`))
	f.Add("r3", []byte(`{"milter":"policy","scope":"domain:x.example","match":{"subject":["/a+/"],"header":["X-A: b"]},"action":"quarantine","enabled":false}`))
	f.Add("r4", []byte(`{"milter":"access","scope":"global","action":"reject","match":{"sender":["<>"],"direction":"inbound"},"priority":-3}`))
	f.Add("r5", []byte(`{"milter":"policy","scope":"global","match":{"body":["/v[i1]agra/","GTUBE"],"attachment":["exe","*.JS"],"size":[">5 MB"],"url_domain":["Bad.Example."]},"score":-2.5}`))
	f.Add("x", []byte(`null`))
	f.Fuzz(func(t *testing.T, id string, doc []byte) {
		r, err := RuleFromDoc(id, json.RawMessage(doc))
		if err != nil {
			return
		}
		out, err := r.MarshalDoc()
		if err != nil {
			t.Fatal(err)
		}
		again, err := RuleFromDoc(id, out)
		if err != nil {
			t.Fatalf("re-decoding %s: %v", out, err)
		}
		if !reflect.DeepEqual(r, again) {
			t.Fatalf("round trip changed the rule\n got %+v\nwant %+v", again, r)
		}
	})
}
