package rules

import (
	"fmt"
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"
)

// benchWords is the vocabulary of the benchmark's rules and message: the
// message mostly uses words the rules also use, so the automaton and the
// regex prefilters see near misses, not only clean text.
var benchWords = strings.Fields(`account invoice payment offer free cheap meds pills winner prize
	click here unsubscribe bank transfer urgent verify password login update security
	delivery parcel tracking order shipment crypto bitcoin wallet invest profit
	loan credit mortgage rate insurance casino bonus lottery dating singles
	meeting agenda report quarterly review schedule project budget team thanks regards`)

// benchScanSet is BenchmarkScan1000's rule set: 700 body substrings, 100
// body regexes (90 with a required literal, 10 without), 100 subject or
// header rules, 50 attachment and 50 url_domain rules, all policy, most
// adding a score.
func benchScanSet() *Set {
	rng := rand.New(rand.NewPCG(3, 4))
	w := func() string { return benchWords[rng.IntN(len(benchWords))] }
	set := &Set{}
	add := func(m Match) {
		set.Rules = append(set.Rules, Rule{ID: fmt.Sprintf("s%04d", len(set.Rules)), Milter: "policy", Action: ActionScore, Score: 1, Enabled: true, Match: m})
	}
	for i := 0; i < 700; i++ {
		add(Match{Body: []string{fmt.Sprintf("%s %s %d", w(), w(), rng.IntN(100))}})
	}
	for i := 0; i < 90; i++ {
		add(Match{Body: []string{fmt.Sprintf(`/%s\s+%s\s+\d{%d}/`, w(), w(), 2+rng.IntN(3))}})
	}
	for i := 0; i < 10; i++ {
		add(Match{Body: []string{fmt.Sprintf(`/\d{%d}-[a-z]{3}-\d{4}/`, 3+i)}})
	}
	for i := 0; i < 100; i++ {
		if i%2 == 0 {
			add(Match{Subject: []string{w() + " " + w()}})
		} else {
			add(Match{Header: []string{fmt.Sprintf("X-Mailer: /%s.*%d/", w(), i)}})
		}
	}
	exts := []string{"exe", "scr", "js", "vbs", "bat", "cmd", "jar", "iso", "img", "lnk"}
	for i := 0; i < 50; i++ {
		if i%2 == 0 {
			add(Match{Attachment: []string{exts[i%len(exts)]}})
		} else {
			add(Match{Attachment: []string{fmt.Sprintf("%s*.%s", w(), exts[i%len(exts)])}})
		}
	}
	for i := 0; i < 50; i++ {
		add(Match{URLDomain: []string{fmt.Sprintf("%s%d.example", w(), i)}})
	}
	return set
}

// hamWords are words no rule uses.
var hamWords = strings.Fields(`the a of and to in is it that for on with as was at by this from
	we you they have be are not or but all can will would there their what about which when
	one your said more some could them other than then now only its also back after use two
	how our work first well way even new want because any these give day most us note call`)

// benchMessage is a 20 KB text body of about 80-byte lines, and 30 URL
// hosts. Its words are mostly ones no rule uses, with one in eight from the
// rules' vocabulary (near misses for the automaton and the regex
// prefilters); dense makes every word a rule word, the worst case for the
// prefilters.
func benchMessage(dense bool) (lines [][]byte, hosts []string) {
	rng := rand.New(rand.NewPCG(5, 6))
	size := 0
	for size < 20<<10 {
		var b strings.Builder
		for b.Len() < 80 {
			if b.Len() > 0 {
				b.WriteByte(' ')
			}
			w := hamWords[rng.IntN(len(hamWords))]
			if dense || rng.IntN(8) == 0 {
				w = benchWords[rng.IntN(len(benchWords))]
			}
			if rng.IntN(3) == 0 {
				w = strings.ToUpper(w[:1]) + w[1:]
			}
			b.WriteString(w)
		}
		lines = append(lines, []byte(b.String()))
		size += b.Len() + 1
	}
	for i := 0; i < 30; i++ {
		hosts = append(hosts, fmt.Sprintf("www.site%d.example", i))
	}
	return lines, hosts
}

// BenchmarkScan1000 is one message through the 1,000-rule content set: a
// Scan fed a 20 KB body, 30 URL hosts, two attachments and the size, then
// one Match with subject and headers (BENCHMARKS.md).
func BenchmarkScan1000(b *testing.B) { benchScan(b, false) }

// BenchmarkScan1000Dense is BenchmarkScan1000 with a body made only of the
// rules' words: most lines hold the literals of many regexes.
func BenchmarkScan1000Dense(b *testing.B) { benchScan(b, true) }

func benchScan(b *testing.B, dense bool) {
	s, err := Compile(benchScanSet())
	if err != nil {
		b.Fatal(err)
	}
	sc := s.Scanner("policy")
	lines, hosts := benchMessage(dense)
	headers := []Header{{"From", "a@b.example"}, {"X-Mailer", "Outlook 16"}, {"Subject", "Quarterly report"}}
	b.SetBytes(20 << 10)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		scan := sc.NewScan()
		for _, l := range lines {
			scan.Text(l)
		}
		for _, h := range hosts {
			scan.URL(h)
		}
		scan.Attachment("report.pdf", "pdf")
		scan.Attachment("photo.jpg", "image/jpeg")
		scan.Size(30 << 10)
		s.Match("policy", Facts{Rcpt: "u@x.example", ContentKnown: true, Subject: "Quarterly report", Headers: headers, Scan: scan})
	}
}

// BenchmarkScan1000Naive is the same body through the 800 body rules one
// pattern at a time (lower-casing each line once): what the automaton and
// the prefilter save.
func BenchmarkScan1000Naive(b *testing.B) {
	set := benchScanSet()
	var pats []pattern
	for _, r := range set.Rules {
		for _, v := range r.Match.Body {
			p, err := parsePattern(v)
			if err != nil {
				b.Fatal(err)
			}
			pats = append(pats, p)
		}
	}
	lines, _ := benchMessage(false)
	b.SetBytes(20 << 10)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, l := range lines {
			str := string(l)
			lower := strings.ToLower(str)
			for j := range pats {
				pats[j].match(str, lower)
			}
		}
	}
}

// BenchmarkScanRegexAlternation measures the other prefilter considered:
// the 100 body regexes joined into one alternation, run on every line as a
// first test. Compare with BenchmarkScanRegexLiterals.
func BenchmarkScanRegexAlternation(b *testing.B) {
	var alts []string
	for _, r := range benchScanSet().Rules {
		for _, v := range r.Match.Body {
			if strings.HasPrefix(v, "/") {
				alts = append(alts, "(?:"+v[1:len(v)-1]+")")
			}
		}
	}
	re := regexp.MustCompile("(?i)" + strings.Join(alts, "|"))
	lines, _ := benchMessage(false)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, l := range lines {
			re.Match(l)
		}
	}
}

// BenchmarkScanRegexLiterals is the chosen prefilter alone: the 100 body
// regexes' required literals in one automaton, the candidates run.
func BenchmarkScanRegexLiterals(b *testing.B) {
	set := benchScanSet()
	var rs []Rule
	for _, r := range set.Rules {
		if len(r.Match.Body) > 0 && strings.HasPrefix(r.Match.Body[0], "/") {
			rs = append(rs, r)
		}
	}
	s, err := Compile(&Set{Rules: rs})
	if err != nil {
		b.Fatal(err)
	}
	sc := s.Scanner("policy")
	lines, _ := benchMessage(false)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		scan := sc.NewScan()
		for _, l := range lines {
			scan.Text(l)
		}
	}
}
