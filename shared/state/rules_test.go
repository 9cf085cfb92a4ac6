package state_test

import (
	"context"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/geomilter/geomilter/shared/state"
)

// TestPutRulesIdempotentByValue: applying the same document again writes
// nothing — no new version, no reload at the other sites — whatever its
// whitespace, key order or string escapes, and whether it contains
// characters JSON encoders like to escape (<, >, &) or not.
func TestPutRulesIdempotentByValue(t *testing.T) {
	a := startSites(t, "a")["a"]
	ctx := context.Background()
	redis := a.primary.Client()
	version := func() string { return redis.Get(ctx, "gm:{a}:rules:version").Val() }

	const doc = `{"match":{"sender":["<a&b>@x.example"]},"reply":"550 5.7.1 <no> & never"}`
	if ch, err := a.store.PutRules(ctx, []state.RuleDoc{rule("html", doc)}); err != nil || !reflect.DeepEqual(ch, []string{"html"}) {
		t.Fatalf("first PutRules = %v, %v", ch, err)
	}
	raw := redis.HGet(ctx, "gm:{a}:rules", "html").Val()
	if !strings.Contains(raw, `"<a&b>@x.example"`) {
		t.Errorf("stored record %s: the doc is not stored as given (HTML-escaped?)", raw)
	}
	// A record written by an earlier version, with json.Marshal's HTML
	// escaping, holds the same document.
	legacy, err := json.Marshal(map[string]any{"id": "legacy", "doc": json.RawMessage(doc), "hlc": a.store.HLC().Now().String(), "deleted": false})
	if err != nil || !strings.Contains(string(legacy), `\u003c`) {
		t.Fatalf("legacy record %s, %v", legacy, err)
	}
	redis.HSet(ctx, "gm:{a}:rules", "legacy", legacy)
	redis.Incr(ctx, "gm:{a}:rules:version")
	v0 := version()

	same := []struct{ name, doc string }{
		{"identical", doc},
		{"whitespace and key order", "{ \"reply\": \"550 5.7.1 <no> & never\",\n  \"match\": {\"sender\": [\"<a&b>@x.example\"]} }"},
		{"escaped characters", `{"match":{"sender":["\u003ca\u0026b\u003e@x.example"]},"reply":"550 5.7.1 \u003cno> & never"}`},
	}
	for _, tc := range same {
		t.Run(tc.name, func(t *testing.T) {
			ch, err := a.store.PutRules(ctx, []state.RuleDoc{rule("html", tc.doc), rule("legacy", tc.doc)})
			if err != nil || ch != nil {
				t.Fatalf("re-apply changed %v, %v", ch, err)
			}
			if v := version(); v != v0 {
				t.Fatalf("rules version moved from %s to %s: every site would reload", v0, v)
			}
		})
	}

	changed := []struct{ name, doc string }{
		{"a string", strings.Replace(doc, "<no>", "<yes>", 1)},
		{"array order", `{"match":{"sender":["<a&b>@x.example","c@x.example"]},"reply":"550 5.7.1 <no> & never"}`},
		{"a key more", `{"match":{"sender":["<a&b>@x.example"]},"reply":"550 5.7.1 <no> & never","priority":1}`},
	}
	for _, tc := range changed {
		t.Run(tc.name, func(t *testing.T) {
			ch, err := a.store.PutRules(ctx, []state.RuleDoc{rule("html", tc.doc)})
			if err != nil || !reflect.DeepEqual(ch, []string{"html"}) {
				t.Fatalf("PutRules of a changed doc = %v, %v", ch, err)
			}
			m, _, err := a.store.LoadRules(ctx)
			if err != nil || string(m["html"].Doc) != tc.doc {
				t.Fatalf("stored doc %s, %v; want %s", m["html"].Doc, err, tc.doc)
			}
		})
	}
}
