package rules

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// scanSeedPatterns are the body patterns FuzzScan builds rules from: plain
// and Unicode substrings, and expressions with and without a required
// literal, including the case-folding corners ("s" also matches "ſ", "k"
// the Kelvin sign).
var scanSeedPatterns = []string{
	"viagra", "XJS*C4JS*O.*P7CMSGT", "click here", "s", "K", "été", "ÉTÉ", "straße", "ǅ", "ω", "\xff",
	"/v[i1]agra/", "/(cheap|free) (pills|meds)/", "/a.*b/", "/\\d{5}/", "/^$/", "/x*/", "/(?-i)ABC/",
	"/stra(ss|ß)e/", "/ſ/", "/k/", "/(foo|bar)+baz/", "/(?i)ß/", "/^click/", "/here$/", "/\\bwin\\b/",
	"/ÉTÉ/", "/[[:upper:]]{3}/", "/(?s)a.b/", "/k{2,}e/", "/\\x{212a}/", "/click.*here/",
	"/win\\s+\\d+ (money|cash)/", "/(a|b)(c|d)(e|f)g*h/",
}

// naiveScanMatch evaluates body rules one pattern at a time, the way
// content.go evaluates a subject: the reference FuzzScan compares with.
func naiveScanMatch(ruleBodies [][]string, lines []string) []string {
	out := []string{}
	for i, body := range ruleBodies {
	rule:
		for _, v := range body {
			p, err := parsePattern(v)
			if err != nil {
				continue
			}
			for _, l := range lines {
				if p.match(l, strings.ToLower(l)) {
					out = append(out, fmt.Sprintf("r%d", i))
					break rule
				}
			}
		}
	}
	return out
}

// FuzzScan: whatever the patterns and text, a Scan never panics and its
// result equals naiveScanMatch. sel picks seed patterns (each byte one
// pattern; 0xff starts a new rule), extra is one more pattern.
func FuzzScan(f *testing.F) {
	f.Add([]byte{0, 0xff, 1, 11, 0xff, 3}, "", "Buy VIAGRA now\nXJS*C4JS*O.*P7CMSGT")
	f.Add([]byte{3, 0xff, 19, 0xff, 4, 0xff, 20}, "/ſ+/", "Straſe ſ KELVIN \u212a")
	f.Add([]byte{5, 0xff, 6, 0xff, 26, 0xff, 7}, "été", "L'ÉTÉ est là\nété")
	f.Add([]byte{12, 13, 0xff, 14, 0xff, 15, 16}, "/(?i)[a-c]+x/", "\n12345\naxxb")
	f.Add([]byte{10, 0xff, 21, 0xff, 22, 23, 24}, "\xff", "foobarbaz\n\xff\xfe click\nwin here")
	f.Fuzz(func(t *testing.T, sel []byte, extra, text string) {
		var bodies [][]string
		cur := []string{}
		for _, b := range sel {
			if b == 0xff {
				if len(cur) > 0 {
					bodies = append(bodies, cur)
				}
				cur = []string{}
				continue
			}
			cur = append(cur, scanSeedPatterns[int(b)%len(scanSeedPatterns)])
		}
		if _, err := parsePattern(extra); err == nil {
			cur = append(cur, extra)
		}
		if len(cur) > 0 {
			bodies = append(bodies, cur)
		}
		set := &Set{}
		for i, body := range bodies {
			set.Rules = append(set.Rules, Rule{ID: fmt.Sprintf("r%d", i), Milter: "policy", Action: ActionReject, Enabled: true, Match: Match{Body: body}})
		}
		s, err := Compile(set)
		if err != nil {
			t.Fatalf("compile: %v", err)
		}
		lines := strings.Split(text, "\n")
		scan := s.Scanner("policy").NewScan()
		for _, l := range lines {
			scan.Text([]byte(l))
		}
		got := ids(s.Match("policy", Facts{Scan: scan}))
		want := naiveScanMatch(bodies, lines)
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Fatalf("rules %q on lines %q: scan matched %v, naive %v", bodies, lines, got, want)
		}
	})
}
