package authres

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestFormat(t *testing.T) {
	tests := []struct {
		name    string
		id      string
		results Results
		want    string
	}{
		{"none", "mx.example.org", nil, "mx.example.org; none"},
		{"one line", "mx.example.org", Results{SPF("pass", "example.com", "")},
			"mx.example.org; spf=pass smtp.mailfrom=example.com"},
		{"all three", "mx.example.org", Results{
			SPF("pass", "example.com", "mail.example.com"),
			DKIM("pass", "example.com", "sel", "abcdefghijklmnop"),
			DMARC("pass", "p=reject dis=none", "example.com"),
		}, "mx.example.org;\r\n" +
			"\tspf=pass smtp.mailfrom=example.com (smtp.helo=mail.example.com);\r\n" +
			"\tdkim=pass header.d=example.com header.s=sel header.b=abcdefgh;\r\n" +
			"\tdmarc=pass (p=reject dis=none) header.from=example.com"},
		{"null sender: helo property", "mx", Results{SPF("softfail", "", "Mail.Example.COM")},
			"mx; spf=softfail smtp.helo=Mail.Example.COM"},
		{"no identity", "mx", Results{SPF("none", "", "")}, "mx; spf=none"},
		{"b needs quotes", "mx", Results{DKIM("fail", "e.com", "s_1", "ab/+=cdEFG")},
			"mx;\r\n\t" + `dkim=fail header.d=e.com header.s=s_1 header.b="ab/+=cdE"`},
		{"b folded", "mx", Results{DKIM("pass", "e.com", "s", "ab c\r\n\tdefghij")},
			"mx;\r\n\tdkim=pass header.d=e.com header.s=s header.b=abcdefgh"},
		{"comment escaping", "mx", Results{{Name: "dmarc", Result: "fail", Comment: `a (b) c\d` + "\r\n"}},
			`mx; dmarc=fail (a \(b\) c\\d  )`},
		{"reason quoted", "mx", Results{{Name: "dkim", Result: "fail", Reason: `bad "sig" \ here`}},
			`mx; dkim=fail reason="bad \"sig\" \\ here"`},
		{"reason token", "mx", Results{{Name: "dkim", Result: "neutral", Reason: "no-key"}},
			`mx; dkim=neutral reason=no-key`},
		{"address pvalue", "mx", Results{{Name: "auth", Result: "pass", Props: []Prop{{"smtp", "auth", "joe.user@example.com"}}}},
			`mx; auth=pass smtp.auth=joe.user@example.com`},
		{"odd pvalue quoted", "mx", Results{{Name: "x", Result: "pass", Props: []Prop{{"header", "from", `a b;c`}}}},
			`mx; x=pass header.from="a b;c"`},
		{"authserv-id quoted", "mx example", nil, `"mx example"; none`},
		{"keyword guard", "mx", Results{{Name: "sp f;", Result: "pa ss"}}, `mx; spf=pass`},
		{"empty result", "mx", Results{{Name: "spf"}}, `mx; spf=none`},
		{"hostile helo", "mx", Results{SPF("pass", "a.example", "x)\r\nX-Evil: (yes\xff")},
			"mx;\r\n\tspf=pass smtp.mailfrom=a.example (smtp.helo=x\\)  X-Evil: \\(yes\uFFFD)"},
		{"hostile mailfrom", "mx", Results{SPF("fail", "a\"b\r\n.example", "")},
			`mx; spf=fail smtp.mailfrom="a\"b  .example"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Format(tc.id, tc.results)
			if got != tc.want {
				t.Errorf("Format =\n%q\nwant\n%q", got, tc.want)
			}
			checkLines(t, got)
			if !ClaimsAuthservID(got, tc.id) {
				t.Errorf("own header %q does not claim %q", got, tc.id)
			}
		})
	}
}

// checkLines: CRLF TAB folds only, no bare CR or LF, and lines within 78
// when no single word is longer.
func checkLines(t *testing.T, value string) {
	t.Helper()
	lines := strings.Split(fieldName+": "+value, "\r\n")
	for i, l := range lines {
		if strings.ContainsAny(l, "\r\n") {
			t.Errorf("bare CR or LF in %q", l)
		}
		if i > 0 && !strings.HasPrefix(l, "\t") {
			t.Errorf("continuation line without WSP: %q", l)
		}
		if len(l) > maxLine && !strings.Contains(strings.TrimSpace(l), " ") {
			continue // one word longer than a line
		}
		if len(l) > maxLine {
			t.Errorf("line of %d characters: %q", len(l), l)
		}
	}
}

func TestFormatLongWraps(t *testing.T) {
	long := strings.Repeat("sub.", 12) + "example.com"
	got := Format("mx.example.org", Results{
		SPF("pass", long, long),
		DKIM("pass", long, "selector2026", "0123456789"),
		DMARC("fail", "p=quarantine dis=none", long),
	})
	checkLines(t, got)
	if strings.Count(got, "\r\n\t") < 5 {
		t.Errorf("expected folds inside long results: %q", got)
	}
	for _, part := range []string{"smtp.mailfrom=" + long, "(smtp.helo=" + long + ")", "header.b=01234567;", "dmarc=fail", "header.from=" + long} {
		if !strings.Contains(got, part) {
			t.Errorf("missing %q in %q", part, got)
		}
	}
	if strings.HasSuffix(got, ";") || strings.HasSuffix(got, "\t") {
		t.Errorf("bad end: %q", got)
	}
}

func TestClaimsAuthservID(t *testing.T) {
	const ours = "mx.example.org"
	tests := []struct {
		raw  string
		want bool
	}{
		{"mx.example.org; spf=pass smtp.mailfrom=a.example", true},
		{"mx.example.org;spf=pass", true},
		{"MX.Example.ORG; none", true},
		{"mx.example.org.; none", true},
		{" mx.example.org 1; dkim=pass header.d=x.example", true},
		{"mx.example.org 1 ; none", true},
		{"(forged by us) mx.example.org; dkim=pass", true},
		{"(nested (comment \\) here)) mx.example.org; none", true},
		{"\r\n\tmx.example.org;\r\n\tdkim=pass", true},
		{"\r\n (c)\r\n mx.example.org (v) 1 (x); none", true},
		{`"mx.example.org"; dkim=pass`, true},
		{`"mx.exam\ple.org"; dkim=pass`, true},
		{"mx.example.org", true},
		{"mx.example.org(c); none", true},
		{"other.example.org; dkim=pass", false},
		{"mx.example.org.evil.test; dkim=pass", false},
		{"evil-mx.example.org; none", false},
		{"mx.example.orgx; none", false},
		{"mx.example.org/1; none", false},
		{"mx.example.org@evil; none", false},
		{`"mx.example.org; dkim=pass`, false}, // unterminated quote
		{"(unterminated mx.example.org; none", false},
		{"; mx.example.org", false},
		{"", false},
		{"   ", false},
		{"(only a comment)", false},
		{"mx.ex\u212aample.org; none", false}, // KELVIN SIGN is not k
		{strings.Repeat("(", 100) + "x" + strings.Repeat(")", 100) + " mx.example.org", false},
		{"\x00mx.example.org", false},
	}
	for _, tc := range tests {
		if got := ClaimsAuthservID(tc.raw, ours); got != tc.want {
			id, err := ParseAuthservID(tc.raw)
			t.Errorf("ClaimsAuthservID(%q) = %v, want %v (id %q, %v)", tc.raw, got, tc.want, id, err)
		}
	}
	if ClaimsAuthservID("; none", "") || ClaimsAuthservID("x; none", "") {
		t.Error("an empty authserv-id is claimed")
	}
}

func TestParseAuthservID(t *testing.T) {
	tests := []struct{ raw, want string }{
		{"mx.example.org; none", "mx.example.org"},
		{`(c) "quoted id" 1; none`, "quoted id"},
		{"host\u00e9.example; none", "host\u00e9.example"},
	}
	for _, tc := range tests {
		if got, err := ParseAuthservID(tc.raw); got != tc.want || err != nil {
			t.Errorf("ParseAuthservID(%q) = %q, %v; want %q", tc.raw, got, err, tc.want)
		}
	}
}

func FuzzClaims(f *testing.F) {
	for _, s := range []string{
		"mx.example.org; none",
		"(c) mx.example.org 1; spf=pass smtp.mailfrom=a.example",
		`"mx.example.org"; dkim=pass`,
		"\r\n\t(a(b)c) MX.EXAMPLE.ORG.; none",
		"((((", `"\`, "x\\",
	} {
		f.Add(s, "mx.example.org")
	}
	f.Fuzz(func(t *testing.T, raw, id string) {
		claims := ClaimsAuthservID(raw, id)
		if claims && strings.TrimSuffix(id, ".") == "" {
			t.Fatalf("empty id claimed by %q", raw)
		}
		// Whatever the client sends, the header stays one field: line
		// ends only as folds.
		v := Format("mx.example.org", Results{SPF("pass", raw, id), DKIM("fail", id, raw, raw), DMARC("fail", raw, id)})
		if strings.Count(v, "\r\n") != strings.Count(v, "\r\n\t") || strings.Count(v, "\n") != strings.Count(v, "\r\n") || strings.Count(v, "\r") != strings.Count(v, "\r\n") {
			t.Fatalf("line end not a fold in %q", v)
		}
		if !utf8.ValidString(v) {
			t.Fatalf("not UTF-8: %q", v)
		}
		if !ClaimsAuthservID(v, "mx.example.org") {
			t.Fatalf("own header not claimed: %q", v)
		}
		// What we write, we recognise as ours, whatever the id.
		if strings.TrimSuffix(id, ".") != "" && !strings.ContainsAny(id, "\r\n\x00\x7f\"\\") && !strings.HasSuffix(id, " ") {
			v := Format(id, Results{DMARC("pass", raw, "example.com")})
			if isPrintable(id) && !ClaimsAuthservID(v, id) {
				t.Fatalf("Format(%q) = %q not claimed", id, v)
			}
		}
	})
}

func isPrintable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return true
}
