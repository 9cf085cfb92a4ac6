package rules

import (
	"encoding/json"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in      string
		op      string
		n       int64
		wantErr string
	}{
		{in: ">5MB", op: ">", n: 5 << 20},
		{in: "<=100k", op: "<=", n: 100 << 10},
		{in: ">= 1 GiB", op: ">=", n: 1 << 30},
		{in: "<2048", op: "<", n: 2048},
		{in: ">10b", op: ">", n: 10},
		{in: ">1.5kb", op: ">", n: 1536},
		{in: ">3Mib", op: ">", n: 3 << 20},
		{in: "5MB", wantErr: "must start with"},
		{in: "=5MB", wantErr: "must start with"},
		{in: ">", wantErr: "needs a number"},
		{in: ">mb", wantErr: "needs a number"},
		{in: ">5tb", wantErr: `unknown unit "tb"`},
		{in: ">1.2.3k", wantErr: "needs a number"},
		{in: ">99999999g", wantErr: "larger than any message"},
	}
	for _, tt := range tests {
		got, err := parseSize(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parseSize(%q) error = %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got.op != tt.op || got.n != tt.n {
			t.Errorf("parseSize(%q) = %+v, %v; want %s %d", tt.in, got, err, tt.op, tt.n)
		}
	}
}

func TestAttachmentValues(t *testing.T) {
	tests := []struct {
		value, name, typ string
		want             bool
	}{
		{"exe", "invoice.exe", "", true},
		{"exe", "invoice.pdf.exe", "application/pdf", true},
		{"exe", "invoice.pdf", "exe", true}, // renamed executable
		{"exe", "INVOICE.EXE", "", true},
		{".exe", "a.exe", "", true},
		{"exe", "exe", "", false}, // no extension, just the name
		{"exe", "a.xexe", "", false},
		{"exe", "a.exe.txt", "text/plain", false},
		{"*.js", "C:\\tmp\\run.JS", "", true},
		{"*.js", "dir/run.js", "", true},
		{"invoice*.pdf", "Invoice-2026.pdf", "", true},
		{"invoice*.pdf", "my-invoice.pdf", "", false},
		{"text/html", "page.htm", "text/html", true},
		{"zip", "", "zip", true},
		{"zip", "", "", false},
		{"*.vbs", "", "", false},
	}
	for _, tt := range tests {
		s := mustSnapshot(t, "rules:\n  - {id: a, milter: policy, scope: global, action: reject, match: {attachment: ["+jsonQuote(tt.value)+"]}}\n")
		scan := s.Scanner("policy").NewScan()
		scan.Attachment(tt.name, tt.typ)
		if got := len(s.Match("policy", Facts{Scan: scan})) == 1; got != tt.want {
			t.Errorf("attachment %q with name %q type %q: holds = %v, want %v", tt.value, tt.name, tt.typ, got, tt.want)
		}
	}
}

func jsonQuote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

const scanYAML = tenantsYAML + `
rules:
  - id: gtube
    milter: policy
    scope: global
    match: {body: ["XJS*C4JS*O.*P7CMSGT"]}
    action: reject
    reply: "550 5.7.1 GTUBE"
  - id: pharma
    milter: policy
    scope: global
    match: {body: ["/v[i1]agra/", "cialis"]}
    score: 3.5
  - id: exe
    milter: policy
    scope: global
    match: {attachment: [exe, "*.js", "*.vbs"]}
    action: quarantine
  - id: big
    milter: policy
    scope: global
    match: {size: [">1MB", "<=10mb"]}
    score: 1
  - id: url
    milter: policy
    scope: tenant:acme
    match: {url_domain: [bad.example]}
    score: 2
  - id: url-and-body
    milter: policy
    scope: global
    match: {url_domain: [bad.example], body: [click]}
    score: -1.25
  - id: helo-and-body
    milter: policy
    scope: global
    match: {helo: [spam.example], body: [hello]}
    action: tempfail
  - id: disabled
    milter: policy
    scope: global
    enabled: false
    match: {body: [hello]}
    action: reject
`

func TestScanMatch(t *testing.T) {
	s := mustSnapshot(t, scanYAML)
	sc := s.Scanner("policy")
	if sc != s.Scanner("policy") {
		t.Errorf("Scanner is not cached")
	}
	if got, want := sc.Rules(), 7; got != want {
		t.Errorf("Rules() = %d, want %d", got, want)
	}
	if got := sc.Needs(); got != (ScanNeeds{true, true, true, true}) {
		t.Errorf("Needs() = %+v", got)
	}
	if got := s.Scanner("access"); got == nil || got.Rules() != 0 || got.Needs() != (ScanNeeds{}) {
		t.Errorf("access Scanner = %+v, want empty", got)
	}
	if got := s.Scanner("nope"); got == nil || got.Rules() != 0 {
		t.Errorf("unknown milter Scanner = %+v, want empty", got)
	}

	type msg struct {
		lines  []string
		attach [][2]string
		urls   []string
		size   int64
	}
	tests := []struct {
		name  string
		msg   msg
		facts Facts
		want  []string
	}{
		{name: "nothing", msg: msg{lines: []string{"plain text"}, size: 100}, want: []string{}},
		{name: "gtube", msg: msg{lines: []string{"x", "XJS*C4JS*O.*P7CMSGT and more"}}, want: []string{"gtube"}},
		{name: "gtube split over lines", msg: msg{lines: []string{"XJS*C4JS*O", ".*P7CMSGT"}}, want: []string{}},
		{name: "regex case-insensitive", msg: msg{lines: []string{"Buy V1AGRA"}}, want: []string{"pharma"}},
		{name: "substring", msg: msg{lines: []string{"CIALIS!"}}, want: []string{"pharma"}},
		{name: "attachment and size", msg: msg{attach: [][2]string{{"a.txt", "text/plain"}, {"x.pdf", "exe"}}, size: 2 << 20}, want: []string{"exe", "big"}},
		{name: "size too big for AND", msg: msg{size: 20 << 20}, want: []string{}},
		{name: "size at bound", msg: msg{size: 10 << 20}, want: []string{"big"}},
		{name: "url below domain, tenant scope", msg: msg{urls: []string{"www.bad.example"}}, facts: Facts{Rcpt: "a@acme.example"}, want: []string{"url"}},
		{name: "url other tenant", msg: msg{urls: []string{"bad.example"}}, facts: Facts{Rcpt: "a@globex.example"}, want: []string{}},
		{name: "url not a parent", msg: msg{urls: []string{"notbad.example", "example"}}, facts: Facts{Rcpt: "a@acme.example"}, want: []string{}},
		{name: "every scan key of a rule", msg: msg{urls: []string{"bad.example"}, lines: []string{"Click here"}}, want: []string{"url-and-body"}},
		{name: "one scan key missing", msg: msg{lines: []string{"Click here"}}, want: []string{}},
		{name: "other keys too", msg: msg{lines: []string{"hello"}}, facts: Facts{Helo: "spam.example"}, want: []string{"helo-and-body"}},
		{name: "other key fails", msg: msg{lines: []string{"hello"}}, facts: Facts{Helo: "ham.example"}, want: []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			scan := sc.NewScan()
			for _, l := range tt.msg.lines {
				scan.Text([]byte(l))
			}
			for _, a := range tt.msg.attach {
				scan.Attachment(a[0], a[1])
			}
			for _, u := range tt.msg.urls {
				scan.URL(u)
			}
			scan.Size(tt.msg.size)
			f := tt.facts
			f.Scan = scan
			got := ids(s.Match("policy", f))
			slices.Sort(got)
			slices.Sort(tt.want)
			if !slices.Equal(got, tt.want) {
				t.Errorf("matched %v, want %v", got, tt.want)
			}
			// Without a Scan no rule with a scan key matches.
			f.Scan = nil
			if got := s.Match("policy", f); len(got) != 0 {
				t.Errorf("without a Scan matched %v", ids(got))
			}
		})
	}

	// A Scan of another snapshot or milter counts as no scan.
	other := mustSnapshot(t, scanYAML)
	scan := other.Scanner("policy").NewScan()
	scan.Text([]byte("cialis"))
	if got := s.Match("policy", Facts{Scan: scan}); len(got) != 0 {
		t.Errorf("Scan of another snapshot matched %v", ids(got))
	}
	if got := other.Match("policy", Facts{Scan: scan}); !slices.Equal(ids(got), []string{"pharma"}) {
		t.Errorf("Scan of its own snapshot matched %v", ids(got))
	}
}

func TestScoreRules(t *testing.T) {
	s := mustSnapshot(t, scanYAML)
	r := s.Rule("pharma")
	if r.Action != ActionScore || r.Score != 3.5 || r.Restrictive() {
		t.Errorf("pharma: action %q score %v restrictive %v; want score 3.5, not restrictive", r.Action, r.Score, r.Restrictive())
	}
	// Explicit "action: score" is the same rule.
	a := mustSnapshot(t, "rules:\n  - {id: a, milter: policy, scope: global, score: -2, match: {body: [x]}}\n")
	b := mustSnapshot(t, "rules:\n  - {id: a, milter: policy, scope: global, score: -2, action: score, match: {body: [x]}}\n")
	if a.Checksum() != b.Checksum() {
		t.Errorf("implied and explicit action score differ")
	}
}

func TestScanRoundTrip(t *testing.T) {
	set, err := Parse("scan.yaml", []byte(scanYAML))
	if err != nil {
		t.Fatal(err)
	}
	docs, err := set.Docs()
	if err != nil {
		t.Fatal(err)
	}
	back, skipped := SetFromDocs(docs)
	if len(skipped) > 0 {
		t.Fatalf("skipped: %v", skipped)
	}
	want := map[string]Rule{}
	for _, r := range set.Rules {
		want[r.ID] = r
	}
	for _, r := range back.Rules {
		if !reflect.DeepEqual(r, want[r.ID]) {
			t.Errorf("rule %s changed through its document\n got %+v\nwant %+v", r.ID, r, want[r.ID])
		}
	}
	s, err := Compile(set)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := s.Save(dir); err != nil {
		t.Fatal(err)
	}
	loaded, _, err := LoadSaved(dir)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := Compile(loaded)
	if err != nil {
		t.Fatal(err)
	}
	if s.Checksum() != s2.Checksum() {
		t.Errorf("checksum changed through save and load")
	}
	doc, _ := s.Rule("pharma").MarshalDoc()
	if !strings.Contains(string(doc), `"score":3.5`) || !strings.Contains(string(doc), `"body":["/v[i1]agra/","cialis"]`) {
		t.Errorf("pharma document %s", doc)
	}
}

func TestRequiredLiterals(t *testing.T) {
	type cl = [][]string
	tests := []struct {
		re   string
		want cl // nil: runs on every line
	}{
		{"(?i)viagra", cl{{"viagra"}}},
		{"(?i)v[i1]agra", cl{{"agra"}}},
		{"(?i)(cheap|free) (pills|meds)", cl{{"cheap", "free"}, {"pill", "med"}}},
		{"(?i)(pills|meds)", cl{{"pill", "med"}}},
		{"(?i)a.*b", cl{{"a"}}},
		{"(?i)abc.*bcd", cl{{"abc"}, {"bcd"}}},
		{"(?i).*", nil},
		{"(?i)\\d{5}", nil},
		{"(?i)(abc)?def", cl{{"def"}}},
		{"(?i)(abc)+", cl{{"abc"}}},
		{"(?i)x{2,}yz", cl{{"yz"}}},
		{"(?i)foo|.*", nil},
		{"(?i)(?-i:ABC)", cl{{"abc"}}},
		// "s" also matches "ſ", which lower-cases to itself: not a safe
		// literal, so "pass" gives "pa" and "ss" gives nothing.
		{"(?i)pass", cl{{"pa"}}},
		{"(?i)ss", nil},
		{"(?i)ÉTÉ", cl{{"été"}}},
		{"(?i)account\\s+free\\s+\\d{3}", cl{{"account"}, {"free"}}},
		{"(?i)a1b2c3d4e5f6g7h8i9", cl{{"a1b2c3d4e5f6g7h8i9"}}},
		{"(?i)a.b.c.d.e.f.g.h.i", cl{{"a"}}},
		{"(?i)aaa.bbb.ccc.ddd.eee.fff.ggg.hhh.iii", cl{{"aaa"}, {"bbb"}, {"ccc"}, {"ddd"}, {"eee"}, {"fff"}, {"ggg"}}},
	}
	for _, tt := range tests {
		got := requiredLiterals(tt.re)
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("requiredLiterals(%q) = %q, want %q", tt.re, got, tt.want)
		}
	}
}

type acHits []int32

func (h *acHits) acHit(id int32) { *h = append(*h, id) }

func TestACMatcher(t *testing.T) {
	m := newACMatcher([]string{"he", "she", "his", "hers", "", "e"})
	var got acHits
	m.scan([]byte("ushers"), &got)
	want := acHits{5, 1, 0, 3} // at "she": e, she, he; at "hers": hers
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("hits %v, want %v", got, want)
	}
	// Split into automata of at most 4 pattern bytes: same ids.
	got = nil
	for _, m := range newACMatchers([]string{"he", "she", "his", "hers", "", "e"}, 4) {
		m.scan([]byte("ushers"), &got)
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("split automata: hits %v, want %v", got, want)
	}
	var none acHits
	newACMatcher(nil).scan([]byte("anything"), &none)
	all := make([]string, 256)
	for i := range all {
		all[i] = string([]byte{byte(i), 'x'})
	}
	got = nil
	newACMatcher(all).scan([]byte("\xffx\x00x"), &got)
	if !slices.Equal(got, acHits{255, 0}) {
		t.Errorf("every byte used: hits %v, want [255 0]", got)
	}
}

// TestScanDocErrors: document errors name the rule id and the key.
func TestScanDocErrors(t *testing.T) {
	tests := []struct {
		doc, want string
	}{
		{`{"milter":"archive","scope":"global","action":"archive","match":{"body":["x"]}}`, `rule doc "r1": match.body: body is a scan key of the policy milter`},
		{`{"milter":"encrypt","scope":"global","action":"encrypt","match":{"url_domain":["a.example"]}}`, `rule doc "r1": match.url_domain: url_domain is a scan key`},
		{`{"milter":"access","scope":"global","action":"reject","match":{"size":[">1m"]}}`, `rule doc "r1": match.size: size is a scan key`},
		{`{"milter":"policy","scope":"global","action":"reject","match":{"attachment":["a b"]}}`, `rule doc "r1": match.attachment[0]: attachment value "a b" contains white space`},
		{`{"milter":"policy","scope":"global","action":"reject","score":2}`, `rule doc "r1": score: a rule adds a score or takes an action`},
		{`{"milter":"policy","scope":"global","action":"score"}`, `rule doc "r1": score: action score needs a non-zero score`},
		{`{"milter":"policy","scope":"global","score":1001}`, `rule doc "r1": score: must be a number between -1000 and 1000`},
		{`{"milter":"policy","scope":"global","match":{"spf":["fail"],"body":["x"]},"action":"reject"}`, `rule doc "r1": match.spf: a rule on spf alone is decided at RCPT`},
		{`{"milter":"policy","scope":"global","match":{"size":[">5 MB"]},"score":0.5}`, ``},
		{`{"milter":"policy","scope":"global","match":{"body":["/(x/"]},"score":0.5}`, `rule doc "r1": match.body[0]: invalid regular expression`},
	}
	for _, tt := range tests {
		r, err := RuleFromDoc("r1", json.RawMessage(tt.doc))
		if tt.want == "" {
			if err != nil {
				t.Errorf("%s: %v", tt.doc, err)
			} else if r.Action != ActionScore {
				t.Errorf("%s: action %q, want score", tt.doc, r.Action)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want %q", tt.doc, err, tt.want)
		}
	}
}

// TestScanDocExamples: the examples under "Scan keys" in docs/rules.md
// parse and do what the text says.
func TestScanDocExamples(t *testing.T) {
	md, err := os.ReadFile("../../docs/rules.md")
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(md), "### Scan keys")
	if !ok {
		t.Fatal("docs/rules.md has no Scan keys section")
	}
	_, block, ok := strings.Cut(after, "```yaml\n")
	block, _, ok2 := strings.Cut(block, "```")
	if !ok || !ok2 {
		t.Fatal("no yaml example under Scan keys")
	}
	s := mustSnapshot(t, tenantsYAML+block)
	scan := s.Scanner("policy").NewScan()
	scan.Text([]byte("XJS*C4JS*O.*P7CMSGT"))
	scan.Attachment("invoice.pdf", "exe")
	scan.URL("www.bad.example")
	scan.Text([]byte("cheap V1AGRA"))
	scan.Size(6 << 20)
	got := ids(s.Match("policy", Facts{Rcpt: "u@acme.example", Scan: scan}))
	slices.Sort(got)
	want := []string{"bad-links", "big-mail", "executables", "gtube"}
	if !slices.Equal(got, want) {
		t.Errorf("matched %v, want %v", got, want)
	}
}

// TestScannerConcurrent: the first Scanner call may race with others;
// all get the same Scanner and scan independently (run with -race).
func TestScannerConcurrent(t *testing.T) {
	s := mustSnapshot(t, scanYAML)
	var wg sync.WaitGroup
	got := make([][]string, 8)
	scanners := make([]*Scanner, 8)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			scanners[i] = s.Scanner("policy")
			scan := scanners[i].NewScan()
			if i%2 == 0 {
				scan.Text([]byte("viagra"))
			}
			got[i] = ids(s.Match("policy", Facts{Scan: scan}))
		}()
	}
	wg.Wait()
	for i := range got {
		want := []string{}
		if i%2 == 0 {
			want = []string{"pharma"}
		}
		if scanners[i] != scanners[0] || !slices.Equal(got[i], want) {
			t.Errorf("goroutine %d: matched %v, want %v (same scanner %v)", i, got[i], want, scanners[i] == scanners[0])
		}
	}
}
