package yamlconf

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

type level string

// UnmarshalYAMLConf makes level an enum, to test the hook.
func (l *level) UnmarshalYAMLConf(s string) error {
	switch s {
	case "low", "high":
		*l = level(s)
		return nil
	}
	return fmt.Errorf("unknown level %q (known: low, high)", s)
}

type common struct {
	Listen string `yaml:"listen"`
}

type tSink struct {
	Name    string            `yaml:"name"`
	URL     string            `yaml:"url"`
	Timeout time.Duration     `yaml:"timeout"`
	Headers map[string]string `yaml:"headers"`
}

type tConf struct {
	Site    string            `yaml:"site"`
	On      bool              `yaml:"on"`
	Count   int               `yaml:"count"`
	Small   int8              `yaml:"small"`
	Keep    uint              `yaml:"keep"`
	Ratio   float64           `yaml:"ratio"`
	Wait    time.Duration     `yaml:"wait"`
	Max     Size              `yaml:"max"`
	Level   level             `yaml:"level"`
	Addr    netip.Addr        `yaml:"addr"`
	Sinks   []tSink           `yaml:"sinks"`
	Tags    []string          `yaml:"tags"`
	Peers   map[string]*tSink `yaml:"peers"`
	Redis   *tSink            `yaml:"redis"`
	Nested  struct{ Deep struct{ X int } }
	Ignored string `yaml:"-"`
	common  `yaml:",inline"`
}

func TestDecodeValues(t *testing.T) {
	in := `
site: lax
on: true
count: 0x10
small: -5
keep: 7
ratio: 1.5
wait: 1m30s
max: 64MiB
level: high
addr: "2001:db8::1"
listen: unix:/run/x.sock
sinks:
  - {name: a, url: "http://h/", timeout: 5s, headers: {X-Scope-OrgID: t1}}
  - name: b
tags: [x, "y"]
peers: {dal: {name: d}, nyc: ~}
redis: {name: r}
nested: {deep: {x: 3}}
`
	var c tConf
	c.Keep = 99 // preset default, overwritten
	c.Ignored = "kept"
	doc, ps := Decode("t.yaml", []byte(in), &c)
	if ps != nil {
		t.Fatalf("unexpected problems:\n%v", ps)
	}
	want := tConf{
		Site: "lax", On: true, Count: 16, Small: -5, Keep: 7, Ratio: 1.5, Wait: 90 * time.Second,
		Max: 64 << 20, Level: "high", Addr: netip.MustParseAddr("2001:db8::1"),
		Sinks: []tSink{{Name: "a", URL: "http://h/", Timeout: 5 * time.Second, Headers: map[string]string{"X-Scope-OrgID": "t1"}}, {Name: "b"}},
		Tags:  []string{"x", "y"}, Peers: map[string]*tSink{"dal": {Name: "d"}, "nyc": nil}, Redis: &tSink{Name: "r"},
		Ignored: "kept", common: common{Listen: "unix:/run/x.sock"},
	}
	want.Nested.Deep.X = 3
	if !reflect.DeepEqual(c, want) {
		t.Errorf("decoded\n%+v\nwant\n%+v", c, want)
	}
	for path, line := range map[string]int{"": 2, "site": 2, "sinks[1]": 15, "sinks[1].name": 15, "sinks[0].headers.X-Scope-OrgID": 14, "peers.nyc": 17, "nested.deep.x": 19} {
		if !doc.Has(path) {
			t.Errorf("Has(%q) = false", path)
		}
		if l, _ := doc.Position(path); l != line {
			t.Errorf("Position(%q) line = %d, want %d", path, l, line)
		}
	}
	if doc.Has("sinks[1].url") || doc.Has("ignored") {
		t.Error("Has reports keys absent from the file")
	}
}

func TestDecodeKeepsDefaults(t *testing.T) {
	var c tConf
	c.Count, c.Wait, c.Redis = 5, time.Second, &tSink{Name: "def", URL: "u"}
	if _, ps := Decode("t.yaml", []byte("site: x\nredis: {name: r}\n"), &c); ps != nil {
		t.Fatal(ps)
	}
	if c.Count != 5 || c.Wait != time.Second || c.Redis.URL != "u" || c.Redis.Name != "r" {
		t.Errorf("defaults not kept or file not applied: %+v %+v", c, *c.Redis)
	}
}

func TestDecodeProblems(t *testing.T) {
	tests := []struct {
		name, in string
		want     []string
	}{
		{"unknown top-level key", "site: a\nsiet: b\n",
			[]string{`t.yaml:2:1: siet: unknown key, did you mean "site"? (known: site, on, count, small, keep, ratio, wait, max, level, addr, sinks, tags, peers, redis, nested, listen)`}},
		{"unknown nested key with index", "sinks:\n  - name: a\n  - name: b\n    urll: x\n",
			[]string{`t.yaml:4:5: sinks[1].urll: unknown key, did you mean "url"? (known: name, url, timeout, headers)`}},
		{"bad duration", "wait: 25 ms\n", []string{`t.yaml:1:7: wait: invalid duration "25 ms" (want e.g. 25ms, 2s, 1m30s)`}},
		{"duration without unit", "wait: 25\n", []string{`t.yaml:1:7: wait: invalid duration "25" (want e.g. 25ms, 2s, 1m30s)`}},
		{"bad size", "max: 1 GB\n", []string{`t.yaml:1:6: max: invalid size "1 GB" (want e.g. 4096, 64KiB, 512MiB, 1GiB, 10MB)`}},
		{"bad int", "count: ten\n", []string{`t.yaml:1:8: count: expected an integer, got "ten"`}},
		{"quoted int", "count: \"10\"\n", []string{`t.yaml:1:8: count: expected an integer, got "10"`}},
		{"int overflow", "small: 300\n", []string{`t.yaml:1:8: small: integer 300 is out of range`}},
		{"negative uint", "keep: -1\n", []string{`t.yaml:1:7: keep: expected a non-negative integer, got "-1"`}},
		{"bad bool", "on: yes\n", []string{`t.yaml:1:5: on: expected true or false, got "yes"`}},
		{"bad float", "ratio: [1]\n", []string{`t.yaml:1:8: ratio: expected a number, got a list`}},
		{"hook error", "level: mid\n", []string{`t.yaml:1:8: level: unknown level "mid" (known: low, high)`}},
		{"text unmarshaler error", "addr: nope\n", []string{`t.yaml:1:7: addr: invalid value "nope": ParseAddr("nope"): unable to parse IP`}},
		{"string given a map", "site: {a: 1}\n", []string{`t.yaml:1:7: site: expected a string, got a mapping`}},
		{"struct given a scalar", "redis: yes\n", []string{`t.yaml:1:8: redis: expected a mapping, got "yes"`}},
		{"list given a scalar", "tags: x\n", []string{`t.yaml:1:7: tags: expected a list, got "x"`}},
		{"duplicate key", "site: a\ncount: 1\nsite: b\n", []string{`t.yaml:3:1: site: duplicate key (first set at line 1)`}},
		{"duplicate nested key", "peers:\n  dal: {name: a, name: b}\n", []string{`t.yaml:2:18: peers.dal.name: duplicate key (first set at line 2)`}},
		{"custom tag", "site: !secret x\n", []string{`t.yaml:1:7: site: unsupported YAML tag !secret`}},
		{"non-scalar key", "? [a]\n: 1\n", []string{`t.yaml:1:3: a key must be a plain string, got a list`}},
		{"odd map key", "peers: {\"a.b\": {nme: x}}\n", []string{`t.yaml:1:17: peers["a.b"].nme: unknown key, did you mean "name"? (known: name, url, timeout, headers)`}},
		{"root not a mapping", "- a\n", []string{`t.yaml:1:1: expected a mapping, got a list`}},
		{"second document", "site: a\n---\nsite: b\n", []string{`t.yaml:2:1: only one YAML document is allowed per file (found a second one after "---")`}},
		{"syntax error", "site: a\n  count: 1\n", []string{`t.yaml:2: invalid YAML: mapping values are not allowed in this context`}},
		{"tab indentation", "redis:\n\tname: x\n", []string{`t.yaml:2: invalid YAML: found character that cannot start any token (YAML indentation must use spaces, not tabs)`}},
		{"unclosed flow list", "site: a\ntags: [a, b\ncount: 1\n", []string{`t.yaml:2: invalid YAML: did not find expected ',' or ']'`}},
		{"unclosed flow list deeper", "site: a\nredis:\n  name: [a, b\ncount: 1\n", []string{`t.yaml:3: invalid YAML: did not find expected ',' or ']'`}},
		{"bad indentation", "redis:\n  name: a\n url: b\n", []string{`t.yaml:3: invalid YAML: did not find expected key`}},
		{"control character", "site: a\ncount: 1\x01\n", []string{`t.yaml:2: invalid YAML: control characters are not allowed`}},
		{"invalid UTF-8", "site: a\n\nsite: \xff\n", []string{`t.yaml:3: invalid YAML: invalid leading UTF-8 octet`}},
		{"unknown anchor", "site: a\ntags: *nope\n", []string{`t.yaml:2: invalid YAML: unknown anchor 'nope' referenced`}},
		{"unterminated quote on line 1", "site: 'a", []string{`t.yaml:1: invalid YAML: found unexpected end of stream`}},
		{"alias cycle", "redis: &a {<<: *a}\n", []string{`t.yaml:1:16: redis: alias *a refers to a value containing itself`}},
		{"merge of a scalar", "redis: {<<: x}\n", []string{`t.yaml:1:13: redis: merge key << expects a mapping or a list of mappings, got "x"`}},
		{"all problems at once", "site: [a]\ncount: x\nsinks: [{name: a, timeout: 1}, {nam: b}]\nbogus: 1\n", []string{
			`t.yaml:1:7: site: expected a string, got a list`,
			`t.yaml:2:8: count: expected an integer, got "x"`,
			`t.yaml:3:28: sinks[0].timeout: invalid duration "1" (want e.g. 25ms, 2s, 1m30s)`,
			`t.yaml:3:33: sinks[1].nam: unknown key, did you mean "name"? (known: name, url, timeout, headers)`,
			`t.yaml:4:1: bogus: unknown key (known: site, on, count, small, keep, ratio, wait, max, level, addr, sinks, tags, peers, redis, nested, listen)`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c tConf
			_, ps := Decode("t.yaml", []byte(tt.in), &c)
			var got []string
			for _, p := range ps {
				got = append(got, p.Error())
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}

func TestAliasesAndMerge(t *testing.T) {
	in := `
sinks:
  - &base {name: a, timeout: 2s, headers: {h: v}}
  - *base
  - {<<: *base, name: c}
  - {<<: [{url: u1}, {url: u2, name: n}], name: d}
`
	var c tConf
	if _, ps := Decode("t.yaml", []byte(in), &c); ps != nil {
		t.Fatal(ps)
	}
	want := []tSink{
		{Name: "a", Timeout: 2 * time.Second, Headers: map[string]string{"h": "v"}},
		{Name: "a", Timeout: 2 * time.Second, Headers: map[string]string{"h": "v"}},
		{Name: "c", Timeout: 2 * time.Second, Headers: map[string]string{"h": "v"}},
		{Name: "d", URL: "u1"}, // explicit key wins, then earlier merge
	}
	if !reflect.DeepEqual(c.Sinks, want) {
		t.Errorf("got %+v\nwant %+v", c.Sinks, want)
	}
}

func TestAliasBombIsBounded(t *testing.T) {
	var b strings.Builder
	b.WriteString("a0: &a0 {url: x}\n")
	for i := 1; i <= 12; i++ {
		fmt.Fprintf(&b, "a%d: &a%d [", i, i)
		for j := 0; j < 10; j++ {
			if j > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "*a%d", i-1)
		}
		b.WriteString("]\n")
	}
	b.WriteString("tags: *a12\n")
	// The target has the nested-list shape the walker really expands.
	type deep struct {
		Tags [][][][][][][][][][][][]tSink `yaml:"tags"`
	}
	var c deep
	start := time.Now()
	_, ps := Decode("t.yaml", []byte(b.String()), &c)
	if len(ps) > 20 || !strings.Contains(ps.Error(), "document too complex") {
		t.Errorf("alias bomb not reported, got:\n%.500s", ps.Error())
	}
	if time.Since(start) > 30*time.Second {
		t.Errorf("alias bomb took %v", time.Since(start))
	}
}

func TestProblemf(t *testing.T) {
	in := "site: a\nsinks:\n  - {name: a}\n  - {name: b, timeout: soon}\nredis: 3\n"
	var c tConf
	doc, _ := Decode("t.yaml", []byte(in), &c)
	doc.Problemf("sinks[0].url", "required for %s sinks", "http") // absent: parent's place
	doc.Problemf("sinks[1].timeout", "must be positive")          // failed to decode: dropped
	doc.Problemf("redis.name", "required")                        // parent failed: dropped
	doc.Problemf("peers.dal", "must not be the own site")         // nothing present: root
	doc.Problemf("site", "must not be %q", "a")
	got := doc.Problems().Error()
	want := strings.Join([]string{
		`t.yaml:1:1: peers.dal: must not be the own site`,
		`t.yaml:1:1: site: must not be "a"`,
		`t.yaml:3:5: sinks[0].url: required for http sinks`,
		`t.yaml:4:24: sinks[1].timeout: invalid duration "soon" (want e.g. 25ms, 2s, 1m30s)`,
		`t.yaml:5:8: redis: expected a mapping, got "3"`,
	}, "\n")
	if got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

func TestEmptyDocument(t *testing.T) {
	for _, in := range []string{"", "# only a comment\n", "~\n", "---\n"} {
		var c tConf
		doc, ps := Decode("t.yaml", []byte(in), &c)
		if ps != nil || doc.Has("") {
			t.Errorf("%q: problems %v, Has(\"\") = %v; want none, false", in, ps, doc.Has(""))
		}
		doc.Problemf("site", "required")
		if got := doc.Problems().Error(); got != "t.yaml: site: required" {
			t.Errorf("%q: Problemf on empty doc = %q", in, got)
		}
	}
}

func TestTooManyProblems(t *testing.T) {
	var b strings.Builder
	b.WriteString("tags: [")
	for i := 0; i < 1000; i++ {
		b.WriteString("[x], ")
	}
	b.WriteString("]\n")
	var c tConf
	_, ps := Decode("t.yaml", []byte(b.String()), &c)
	if len(ps) != maxProblems+1 || ps[maxProblems].Error() != "t.yaml: 800 more problems not shown" {
		t.Errorf("got %d problems, last %v", len(ps), ps[len(ps)-1])
	}
}

func TestProblemsErr(t *testing.T) {
	var ps Problems
	if ps.Err() != nil {
		t.Error("empty Problems.Err() != nil")
	}
	ps = Problems{{File: "f", Line: 3, Path: "a", Msg: "bad"}, {File: "f", Msg: "worse"}}
	err := ps.Err()
	var got Problems
	if !errors.As(err, &got) || len(got) != 2 {
		t.Fatalf("Err() does not unwrap to Problems: %v", err)
	}
	if err.Error() != "f:3: a: bad\nf: worse" {
		t.Errorf("Error() = %q", err.Error())
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want Size
		err  bool
	}{
		{"4096", 4096, false},
		{"0", 0, false},
		{"64KiB", 64 << 10, false},
		{"512MiB", 512 << 20, false},
		{"1GiB", 1 << 30, false},
		{"2TiB", 2 << 40, false},
		{"10MB", 10_000_000, false},
		{"1kb", 1000, false},
		{"100B", 100, false},
		{"1.5GiB", 3 << 29, false},
		{"0.5KiB", 512, false},
		{"1.999999999999TiB", 2199023255550, false},
		{"", 0, true},
		{"GiB", 0, true},
		{"1 GiB", 0, true},
		{"-1", 0, true},
		{"1.GiB", 0, true},
		{".5GiB", 0, true},
		{"1e3", 0, true},
		{"1PiB", 0, true},
		{"9223372036854775807", 9223372036854775807, false},
		{"9223372036854775808", 0, true},
		{"8388608TiB", 0, true},
		{"8388607.9999999999TiB", 0, false}, // checked below: must not overflow
	}
	for _, tt := range tests {
		got, err := ParseSize(tt.in)
		if (err != nil) != tt.err {
			t.Errorf("ParseSize(%q) err = %v, want err %v", tt.in, err, tt.err)
			continue
		}
		if tt.in == "8388607.9999999999TiB" {
			if got <= 0 {
				t.Errorf("ParseSize(%q) = %d, overflowed", tt.in, got)
			}
			continue
		}
		if !tt.err && got != tt.want {
			t.Errorf("ParseSize(%q) = %d, want %d", tt.in, got, tt.want)
		}
	}
	for _, s := range []Size{0, 100, 1 << 10, 3 << 29, 1 << 30, 1 << 40, 1500} {
		back, err := ParseSize(s.String())
		if err != nil || back != s {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", s.String(), back, err, s)
		}
	}
}

func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		"", "site: a\n", "sinks: [{name: a, timeout: 2s}]\n", "a: &a [*a]\n", "peers: {x: {<<: *y}}\n",
		"max: 1.5GiB\nwait: 1h\n", "redis:\n\tname: x\n", "---\n---\n", "? [a]\n: b\n", "tags: &t [a]\nsinks: *t\n",
		"sinks: [{<<: [{url: a}, *x]}]", "\xff\xfe", "site: !!binary aGVsbG8=\n", "count: 1e3\nsmall: 0o17\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var c tConf
		doc, ps := Decode("f.yaml", data, &c)
		_ = ps.Error()
		doc.Problemf("sinks[3].url", "x")
		_ = doc.Problems().Error()
		_, _ = doc.Position("a.b[1][\"c\"]")
	})
}
