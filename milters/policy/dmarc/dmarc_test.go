package dmarc

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/geomilter/geomilter/shared/resolver"
	"github.com/geomilter/geomilter/shared/resolver/resolvertest"
)

func fixtures() resolvertest.Zone {
	return resolvertest.Zone{
		"_dmarc.reject.example":        {`TXT "v=DMARC1; p=reject"`},
		"_dmarc.quarantine.example":    {`TXT "v=DMARC1; p=quarantine"`},
		"_dmarc.monitor.example":       {`TXT "v=DMARC1; p=none; rua=mailto:d@monitor.example"`},
		"_dmarc.strict.example":        {`TXT "v=DMARC1; p=reject; aspf=s; adkim=s"`},
		"_dmarc.org.example":           {`TXT "v=DMARC1; p=reject; sp=quarantine"`},
		"_dmarc.own.org.example":       {`TXT "v=DMARC1; p=none"`},
		"_dmarc.orgonly.example":       {`TXT "v=DMARC1; p=quarantine"`},
		"_dmarc.pct0.example":          {`TXT "v=DMARC1; p=reject; pct=0"`},
		"_dmarc.pct50.example":         {`TXT "v=DMARC1; p=reject; pct=50"`},
		"_dmarc.pct100.example":        {`TXT "v=DMARC1; p=reject; pct=100"`},
		"_dmarc.pctq.example":          {`TXT "v=DMARC1; p=quarantine; pct=0"`},
		"_dmarc.badp.example":          {`TXT "v=DMARC1; p=bogus"`},
		"_dmarc.nop.example":           {`TXT "v=DMARC1; adkim=s"`},
		"_dmarc.badsp.example":         {`TXT "v=DMARC1; p=reject; sp=maybe"`},
		"_dmarc.badprua.example":       {`TXT "v=DMARC1; p=bogus; rua=mailto:d@badprua.example"`},
		"_dmarc.badpct.example":        {`TXT "v=DMARC1; p=reject; pct=150; adkim=x; garbage"`},
		"_dmarc.upper.example":         {`TXT "v=DMARC1;p=REJECT;ASPF=s"`},
		"_dmarc.vnotfirst.example":     {`TXT "p=reject; v=DMARC1"`},
		"_dmarc.vlower.example":        {`TXT "v=dmarc1; p=reject"`},
		"_dmarc.two.example":           {`TXT "v=DMARC1; p=reject"`, `TXT "v=DMARC1; p=none"`},
		"_dmarc.mixed.example":         {`TXT "some other text"`, `TXT "v=DMARC1; p=reject"`},
		"_dmarc.notdmarc.org.example":  {`TXT "hello"`}, // discarded, so the org record applies
		"_dmarc.servfail.example":      {"SERVFAIL"},
		"_dmarc.xn--bcher-kva.example": {`TXT "v=DMARC1; p=reject"`},
	}
}

func TestEvaluate(t *testing.T) {
	for _, nr := range resolvertest.Serve(t, fixtures()) {
		r := nr.R
		t.Run(nr.Name, func(t *testing.T) {
			type dk = DKIMResult
			tests := []struct {
				name      string
				from      []string
				spf, spfD string
				dkim      []DKIMResult
				sample    int // returned by Sample; -1: Sample must not be called
				want      string
				dis       string // disposition, default none
				policy    string
				tag       string
				recordAt  string
				spfAl     bool
				dkimAl    bool
				sampled   bool
				problems  []string
			}{
				// §3.1.2 SPF, relaxed (default) and strict.
				{name: "spf exact", from: []string{"u@reject.example"}, spf: "pass", spfD: "reject.example", want: Pass, policy: "reject", tag: "p", spfAl: true},
				{name: "spf relaxed sub", from: []string{"u@reject.example"}, spf: "pass", spfD: "bounce.reject.example", want: Pass, policy: "reject", tag: "p", spfAl: true},
				{name: "spf relaxed case", from: []string{"u@REJECT.example"}, spf: "pass", spfD: "Bounce.Reject.Example.", want: Pass, policy: "reject", tag: "p", spfAl: true},
				{name: "spf other domain", from: []string{"u@reject.example"}, spf: "pass", spfD: "other.example", want: Fail, dis: "reject", policy: "reject", tag: "p"},
				{name: "spf fail aligned", from: []string{"u@reject.example"}, spf: "fail", spfD: "reject.example", want: Fail, dis: "reject", policy: "reject", tag: "p"},
				{name: "spf softfail aligned", from: []string{"u@reject.example"}, spf: "softfail", spfD: "reject.example", want: Fail, dis: "reject", policy: "reject", tag: "p"},
				{name: "spf strict sub", from: []string{"u@strict.example"}, spf: "pass", spfD: "bounce.strict.example", want: Fail, dis: "reject", policy: "reject", tag: "p"},
				{name: "spf strict exact", from: []string{"u@strict.example"}, spf: "pass", spfD: "strict.example", want: Pass, policy: "reject", tag: "p", spfAl: true},
				{name: "spf strict upper tags", from: []string{"u@upper.example"}, spf: "pass", spfD: "b.upper.example", want: Fail, dis: "reject", policy: "reject", tag: "p"},
				// §3.1.1 DKIM.
				{name: "dkim exact", from: []string{"u@reject.example"}, dkim: []dk{{"reject.example", "s1", "pass"}}, want: Pass, policy: "reject", tag: "p", dkimAl: true},
				{name: "dkim relaxed sub", from: []string{"u@reject.example"}, dkim: []dk{{"mail.reject.example", "s1", "pass"}}, want: Pass, policy: "reject", tag: "p", dkimAl: true},
				{name: "dkim relaxed parent", from: []string{"u@news.reject.example"}, dkim: []dk{{"reject.example", "s1", "pass"}}, want: Pass, policy: "reject", tag: "p", dkimAl: true, recordAt: "reject.example"},
				{name: "dkim failed sig", from: []string{"u@reject.example"}, dkim: []dk{{"reject.example", "s1", "fail"}}, want: Fail, dis: "reject", policy: "reject", tag: "p"},
				{name: "dkim other domain", from: []string{"u@reject.example"}, dkim: []dk{{"other.example", "s1", "pass"}}, want: Fail, dis: "reject", policy: "reject", tag: "p"},
				{name: "dkim one of several", from: []string{"u@reject.example"}, dkim: []dk{{"other.example", "s1", "pass"}, {"reject.example", "s2", "fail"}, {"reject.example", "s3", "pass"}}, want: Pass, policy: "reject", tag: "p", dkimAl: true},
				{name: "dkim strict sub", from: []string{"u@strict.example"}, dkim: []dk{{"sub.strict.example", "s1", "pass"}}, want: Fail, dis: "reject", policy: "reject", tag: "p"},
				{name: "dkim strict exact", from: []string{"u@strict.example"}, dkim: []dk{{"STRICT.example", "s1", "pass"}}, want: Pass, policy: "reject", tag: "p", dkimAl: true},
				{name: "both aligned", from: []string{"u@reject.example"}, spf: "pass", spfD: "reject.example", dkim: []dk{{"reject.example", "s", "pass"}}, want: Pass, policy: "reject", tag: "p", spfAl: true, dkimAl: true},
				{name: "quarantine", from: []string{"u@quarantine.example"}, want: Fail, dis: "quarantine", policy: "quarantine", tag: "p"},
				{name: "monitor", from: []string{"u@monitor.example"}, want: Fail, dis: "none", policy: "none", tag: "p"},
				// §6.3 sp, §6.6.3 step 3.
				{name: "sp for subdomain", from: []string{"u@sub.org.example"}, want: Fail, dis: "quarantine", policy: "quarantine", tag: "sp", recordAt: "org.example"},
				{name: "p for org itself", from: []string{"u@org.example"}, want: Fail, dis: "reject", policy: "reject", tag: "p", recordAt: "org.example"},
				{name: "own record beats sp", from: []string{"u@own.org.example"}, want: Fail, dis: "none", policy: "none", tag: "p", recordAt: "own.org.example"},
				{name: "record only at org", from: []string{"u@a.b.orgonly.example"}, want: Fail, dis: "quarantine", policy: "quarantine", tag: "p", recordAt: "orgonly.example"},
				{name: "non-dmarc txt discarded", from: []string{"u@notdmarc.org.example"}, want: Fail, dis: "quarantine", policy: "quarantine", tag: "sp", recordAt: "org.example"},
				{name: "org record, aligned pass", from: []string{"u@a.b.orgonly.example"}, spf: "pass", spfD: "orgonly.example", want: Pass, policy: "quarantine", tag: "p", spfAl: true},
				// §6.6.4 pct.
				{name: "pct 0", from: []string{"u@pct0.example"}, sample: 0, want: Fail, dis: "quarantine", policy: "reject", tag: "p", sampled: true},
				{name: "pct 50 in", from: []string{"u@pct50.example"}, sample: 49, want: Fail, dis: "reject", policy: "reject", tag: "p"},
				{name: "pct 50 out", from: []string{"u@pct50.example"}, sample: 50, want: Fail, dis: "quarantine", policy: "reject", tag: "p", sampled: true},
				{name: "pct 100", from: []string{"u@pct100.example"}, sample: -1, want: Fail, dis: "reject", policy: "reject", tag: "p"},
				{name: "pct 0 quarantine", from: []string{"u@pctq.example"}, sample: 10, want: Fail, dis: "none", policy: "quarantine", tag: "p", sampled: true},
				{name: "pct pass not sampled", from: []string{"u@pct0.example"}, spf: "pass", spfD: "pct0.example", sample: -1, want: Pass, policy: "reject", tag: "p", spfAl: true},
				// §6.6.3 discovery outcomes.
				{name: "no record", from: []string{"u@norecord.example"}, spf: "pass", spfD: "norecord.example", sample: -1, want: None},
				{name: "bad p", from: []string{"u@badp.example"}, want: PermError},
				{name: "no p", from: []string{"u@nop.example"}, want: PermError},
				{name: "bad sp", from: []string{"u@badsp.example"}, want: PermError},
				{name: "bad p with rua is p=none", from: []string{"u@badprua.example"}, want: Fail, dis: "none", policy: "none", tag: "p"},
				{name: "bad optional tags default", from: []string{"u@badpct.example"}, dkim: []dk{{"x.badpct.example", "s", "pass"}}, want: Pass, policy: "reject", tag: "p", dkimAl: true},
				{name: "bad optional tags pct 100", from: []string{"u@badpct.example"}, sample: -1, want: Fail, dis: "reject", policy: "reject", tag: "p"},
				{name: "v not first", from: []string{"u@vnotfirst.example"}, want: None},
				{name: "v lower case", from: []string{"u@vlower.example"}, want: None},
				{name: "two records", from: []string{"u@two.example"}, want: PermError},
				{name: "other txt beside", from: []string{"u@mixed.example"}, want: Fail, dis: "reject", policy: "reject", tag: "p"},
				{name: "servfail", from: []string{"u@servfail.example"}, want: TempError},
				// §6.6.1 From fields.
				{name: "display name", from: []string{` "Joe, the boss" <joe@reject.example>`}, want: Fail, dis: "reject", policy: "reject", tag: "p"},
				{name: "encoded word", from: []string{"=?utf-8?q?J=C3=B6rg?= <j@reject.example>"}, want: Fail, dis: "reject", policy: "reject", tag: "p"},
				{name: "folded", from: []string{" Joe\r\n <joe@reject.example>"}, want: Fail, dis: "reject", policy: "reject", tag: "p"},
				{name: "u-label", from: []string{"u@bücher.example"}, want: Fail, dis: "reject", policy: "reject", tag: "p", recordAt: "xn--bcher-kva.example"},
				{name: "no from", want: PermError, problems: []string{FromNoField}},
				{name: "group with member", from: []string{"Team: a@reject.example;"}, want: Fail, dis: "reject", policy: "reject", tag: "p"},
				{name: "empty group", from: []string{"undisclosed-recipients:;"}, want: PermError, problems: []string{FromUnparseable}},
				{name: "empty field", from: []string{""}, want: PermError, problems: []string{FromLenient, FromUnparseable}},
				{name: "garbage from", from: []string{"nobody here"}, want: PermError, problems: []string{FromLenient, FromUnparseable}},
				{name: "not a domain", from: []string{"u@localhost"}, want: PermError, problems: []string{FromUnparseable}},
				{name: "lenient angle", from: []string{"Joe <joe@reject.example"}, want: Fail, dis: "reject", policy: "reject", tag: "p", problems: []string{FromLenient}},
				{name: "two fields same domain", from: []string{"a@reject.example", "b@reject.example"}, spf: "pass", spfD: "reject.example", want: Pass, policy: "reject", tag: "p", spfAl: true, problems: []string{FromSeveralFields}},
				{name: "two fields, second fails", from: []string{"a@norecord.example", "b@reject.example"}, spf: "pass", spfD: "norecord.example", want: Fail, dis: "reject", policy: "reject", tag: "p", problems: []string{FromSeveralFields}},
				{name: "two fields, first passes", from: []string{"a@reject.example", "b@quarantine.example"}, spf: "pass", spfD: "reject.example", want: Fail, dis: "quarantine", policy: "quarantine", tag: "p", problems: []string{FromSeveralFields}},
				{name: "two mailboxes strictest fails", from: []string{"a@quarantine.example, b@reject.example"}, want: Fail, dis: "reject", policy: "reject", tag: "p", problems: []string{FromSeveralAuthors}},
				{name: "two mailboxes both pass", from: []string{"a@reject.example, b@sub.reject.example"}, dkim: []dk{{"reject.example", "s", "pass"}}, want: Pass, policy: "reject", tag: "p", dkimAl: true, problems: []string{FromSeveralAuthors}},
				{name: "two mailboxes temperror", from: []string{"a@reject.example, b@servfail.example"}, dkim: []dk{{"reject.example", "s", "pass"}}, want: TempError, problems: []string{FromSeveralAuthors}},
			}
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					in := Input{From: tc.from, SPFResult: tc.spf, SPFDomain: tc.spfD, DKIM: tc.dkim}
					calls := 0
					in.Sample = func() int {
						calls++
						if tc.sample < 0 {
							t.Error("Sample called")
						}
						return tc.sample
					}
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					defer cancel()
					got := Evaluate(ctx, r, in)
					if got.Result != tc.want {
						t.Fatalf("Result = %s (%s), want %s", got.Result, got.Reason, tc.want)
					}
					dis := tc.dis
					if dis == "" {
						dis = DispositionNone
					}
					if got.Disposition != dis || got.Policy != tc.policy || got.PolicyTag != tc.tag {
						t.Errorf("disposition %q policy %q (%s), want %q %q (%s)", got.Disposition, got.Policy, got.PolicyTag, dis, tc.policy, tc.tag)
					}
					if tc.recordAt != "" && got.RecordDomain != tc.recordAt {
						t.Errorf("RecordDomain = %q, want %q", got.RecordDomain, tc.recordAt)
					}
					if got.SPFAligned != tc.spfAl || got.DKIMAligned != tc.dkimAl || got.SampledOut != tc.sampled {
						t.Errorf("spf aligned %v dkim aligned %v sampled out %v, want %v %v %v",
							got.SPFAligned, got.DKIMAligned, got.SampledOut, tc.spfAl, tc.dkimAl, tc.sampled)
					}
					if !slices.Equal(got.FromProblems, tc.problems) {
						t.Errorf("FromProblems = %q, want %q", got.FromProblems, tc.problems)
					}
					if (got.Result == TempError || got.Result == PermError) != (got.Err != nil) {
						t.Errorf("result %s with Err %v", got.Result, got.Err)
					}
				})
			}
		})
	}
}

// A server that never answers: the evaluation ends with ctx, temperror.
func TestTimeoutIsTempError(t *testing.T) {
	for _, nr := range resolvertest.Blackhole(t) {
		r := nr.R
		t.Run(nr.Name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			got := Evaluate(ctx, r, Input{From: []string{"u@reject.example"}})
			if got.Result != TempError || got.Err == nil || got.Disposition != DispositionNone {
				t.Fatalf("got %s/%s (%v), want temperror/none", got.Result, got.Disposition, got.Err)
			}
		})
	}
}

func TestNilResolver(t *testing.T) {
	if got := Evaluate(context.Background(), nil, Input{From: []string{"u@reject.example"}}); got.Result != TempError {
		t.Errorf("nil resolver: %s", got.Result)
	}
}

func TestComment(t *testing.T) {
	for _, nr := range resolvertest.Serve(t, fixtures()) {
		r := nr.R
		t.Run(nr.Name, func(t *testing.T) {
			tests := []struct {
				from   string
				sample int
				want   string
			}{
				{"u@reject.example", 0, "p=reject dis=reject"},
				{"u@pct0.example", 0, "p=reject dis=quarantine"},
				{"u@sub.org.example", 0, "p=quarantine dis=quarantine"},
				{"u@norecord.example", 0, ""},
			}
			for _, tc := range tests {
				got := Evaluate(context.Background(), r, Input{From: []string{tc.from}, Sample: func() int { return tc.sample }})
				if c := got.Comment(); c != tc.want {
					t.Errorf("%s: Comment = %q, want %q", tc.from, c, tc.want)
				}
			}
		})
	}
}

// RFC 7489 §3.2 with the real public suffix list.
func TestOrgDomain(t *testing.T) {
	tests := map[string]string{
		"example.com":                "example.com",
		"mail.example.com":           "example.com",
		"a.b.example.co.uk":          "example.co.uk",
		"co.uk":                      "co.uk",
		"com":                        "com",
		"x.y.z.example.com.au":       "example.com.au",
		"foo.s3.amazonaws.com":       "foo.s3.amazonaws.com", // private suffix s3.amazonaws.com
		"mail.xn--bcher-kva.example": "xn--bcher-kva.example",
	}
	for in, want := range tests {
		if got := orgDomain(in); got != want {
			t.Errorf("orgDomain(%q) = %q, want %q", in, got, want)
		}
	}
}

// RFC 3492 §7.1 sample strings.
func TestPunycode(t *testing.T) {
	tests := map[string]string{
		"bücher.example":    "xn--bcher-kva.example",
		"Bücher.Example":    "xn--bcher-kva.example",
		"münchen.de":        "xn--mnchen-3ya.de",
		"例え.jp":             "xn--r8jz45g.jp",
		"ascii.example":     "ascii.example",
		"他们为什么不说中文.example": "xn--ihqwcrb4cv8a8dqg056pqjye.example",
	}
	for in, want := range tests {
		got, err := toASCII(in)
		if err != nil || got != want {
			t.Errorf("toASCII(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := toASCII("bad\xffname.example"); err == nil {
		t.Error("invalid UTF-8 accepted")
	}
}

// FuzzFrom: any From value, and any record text, are read without a panic.
func FuzzFrom(f *testing.F) {
	for _, s := range []string{"u@example.com", `"a@b" <c@d.example>, e@f.example`, "<u@x", "=?utf-8?q?=C3?= <a@ü.example>", "@", "a@b@c.example"} {
		f.Add(s, "v=DMARC1; p=reject; sp=none; pct=50; rua=mailto:x@y")
	}
	f.Fuzz(func(t *testing.T, from, record string) {
		domains, _ := authorDomains([]string{from})
		for _, d := range domains {
			if d == "" || len(d) > 253 {
				t.Fatalf("bad domain %q from %q", d, from)
			}
		}
		if isRecord(record) {
			rec, _ := parseRecord(record)
			if rec.Percent < 0 || rec.Percent > 100 {
				t.Fatalf("pct %d", rec.Percent)
			}
		}
	})
}

// The message's DNS budget (shared/resolver) bounds the evaluation: a
// spent budget or a silent server ends it as temperror, disposition none.
func TestBudget(t *testing.T) {
	for _, tc := range []struct {
		name   string
		rs     []resolvertest.Named
		budget time.Duration
	}{
		{"spent", resolvertest.Serve(t, fixtures()), 0},
		{"silent server", resolvertest.Blackhole(t), 200 * time.Millisecond},
	} {
		ctx := resolver.WithBudget(context.Background(), tc.budget)
		got := Evaluate(ctx, tc.rs[0].R, Input{From: []string{"u@reject.example"}})
		if got.Result != TempError || got.Disposition != DispositionNone {
			t.Errorf("%s: got %s/%s (%v), want temperror/none", tc.name, got.Result, got.Disposition, got.Err)
		}
		if _, exhausted := resolver.BudgetSpent(ctx); !exhausted {
			t.Errorf("%s: budget not exhausted", tc.name)
		}
	}
}
