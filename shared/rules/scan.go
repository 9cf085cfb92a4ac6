package rules

import (
	"bytes"
	"regexp"
	"regexp/syntax"
	"slices"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"
)

// The scan keys (body, attachment, size, url_domain) are decided in one
// pass over the message: the milter walks the body once, feeding every
// decoded text line, attachment, URL host and the size to a Scan, and the
// Scan records which rules' scan keys hold. Snapshot.Match then treats a
// rule with scan keys as matching only when its Scan says so, so scope,
// priority and the other keys work as for every rule.
//
// With a thousand body rules a line must not cost a thousand searches:
// every substring pattern, and the literals every match of each regular
// expression must contain (found from its syntax tree: "viagra\s+\d+"
// needs "viagra", "(cheap|free) pills" needs "cheap" or "free" and "pill"),
// go into one Aho-Corasick automaton over the lower-cased line. A line
// costs one pass of the automaton plus the regular expressions all of
// whose required literals occurred in it; only expressions without any
// (".*", "\d{5}") run on every line. Joining all expressions into one
// alternation as a first test was measured too and is slower
// (scan_bench_test.go).

// Scan condition bits, per rule.
const (
	sBody uint8 = 1 << iota
	sAttach
	sURL
	sSize
)

// ScanNeeds says what the rules of a Scanner look at, so the milter walks
// only what some rule needs: Text (decoded text lines, for body), Attachments
// (names and sniffed types), URLs (hosts of URLs in the text) and Size.
type ScanNeeds struct{ Text, Attachments, URLs, Size bool }

// Scanner decides the scan keys of one milter's enabled rules. It is built
// once per Snapshot and milter (Snapshot.Scanner), is immutable and safe for
// concurrent use; each message gets its own Scan.
type Scanner struct {
	snap   *Snapshot
	milter string
	need   []uint8 // per slot: the scan keys the rule has
	needs  ScanNeeds

	ac        []*acMatcher
	acTargets [][]int32 // per automaton pattern: slot (>= 0, a substring) or -1-(regex index*maxClauses+clause) (a regex's literal)
	regexes   []scanRegex
	always    []int32 // regexes without a required literal: run on every line
	bodyRules int

	attach []attachRule
	urls   map[string][]int32 // domain → slots
	sizes  []sizeRule
}

type scanRegex struct {
	re   *regexp.Regexp
	slot int32
	full uint8 // a bit per prefilter clause: all set, the line is a candidate
}

type attachRule struct {
	slot  int32
	conds []attachCond
}

type sizeRule struct {
	slot  int32
	conds []sizeCond
}

// scannerSlot caches a milter's Scanner in its Snapshot.
type scannerSlot struct {
	once sync.Once
	sc   *Scanner
}

// Scanner returns the Scanner over the milter's enabled rules with scan
// keys, building it on first use (later calls return the same one). Never
// nil: a milter without such rules gets a Scanner with no rules and no
// needs.
func (s *Snapshot) Scanner(milter string) *Scanner {
	slot := s.scanners[milter]
	if slot == nil {
		return &Scanner{snap: s, milter: milter}
	}
	slot.once.Do(func() { slot.sc = s.buildScanner(milter) })
	return slot.sc
}

func (s *Snapshot) buildScanner(milter string) *Scanner {
	sc := &Scanner{snap: s, milter: milter}
	var patterns []string
	patternID := map[string]int32{}
	addPattern := func(p string, target int32) {
		id, ok := patternID[p]
		if !ok {
			id = int32(len(patterns))
			patternID[p] = id
			patterns = append(patterns, p)
			sc.acTargets = append(sc.acTargets, nil)
		}
		sc.acTargets[id] = append(sc.acTargets[id], target)
	}
	for i := range s.crules {
		c := &s.crules[i]
		if c.scan < 0 || c.rule.Milter != milter {
			continue
		}
		slot := int32(len(sc.need))
		m := &c.rule.Match
		var need uint8
		if len(m.Body) > 0 {
			need |= sBody
			sc.bodyRules++
			for _, v := range m.Body {
				p, err := parsePattern(v)
				if err != nil {
					continue // validated already
				}
				if p.re == nil {
					addPattern(p.sub, slot)
					continue
				}
				ri := int32(len(sc.regexes))
				clauses := requiredLiterals(p.re.String())
				sc.regexes = append(sc.regexes, scanRegex{re: p.re, slot: slot, full: uint8(1)<<len(clauses) - 1})
				if clauses == nil {
					sc.always = append(sc.always, ri)
					continue
				}
				for j, c := range clauses {
					for _, l := range c {
						addPattern(l, -1-(ri*maxClauses+int32(j)))
					}
				}
			}
		}
		if len(m.Attachment) > 0 {
			need |= sAttach
			sc.attach = append(sc.attach, attachRule{slot: slot, conds: compileAttach(m.Attachment)})
		}
		if len(m.URLDomain) > 0 {
			need |= sURL
			if sc.urls == nil {
				sc.urls = map[string][]int32{}
			}
			for _, d := range m.URLDomain {
				sc.urls[d] = append(sc.urls[d], slot)
			}
		}
		if len(m.Size) > 0 {
			need |= sSize
			r := sizeRule{slot: slot}
			for _, v := range m.Size {
				if cond, err := parseSize(v); err == nil {
					r.conds = append(r.conds, cond)
				}
			}
			sc.sizes = append(sc.sizes, r)
		}
		sc.need = append(sc.need, need)
	}
	sc.ac = newACMatchers(patterns, maxACPatternBytes)
	sc.needs = ScanNeeds{Text: sc.bodyRules > 0, Attachments: len(sc.attach) > 0, URLs: len(sc.urls) > 0, Size: len(sc.sizes) > 0}
	return sc
}

// Needs says what any of the Scanner's rules looks at.
func (sc *Scanner) Needs() ScanNeeds { return sc.needs }

// Rules is the number of rules the Scanner covers.
func (sc *Scanner) Rules() int { return len(sc.need) }

// Scan is one message's scan state: feed it the message (Text, Attachment,
// URL, Size), then pass it in Facts.Scan. Not safe for concurrent use.
type Scan struct {
	sc       *Scanner
	sat      []uint8  // per slot: the scan keys that hold
	bodyLeft int      // body rules not yet satisfied
	mark     []uint32 // per regex: the line (gen) its clause mask is for
	mask     []uint8  // per regex: clauses seen in the line; queued (candidate) once the top bit is set
	gen      uint32
	cand     []int32
	lower    []byte
}

// NewScan starts the scan of one message.
func (sc *Scanner) NewScan() *Scan {
	return &Scan{sc: sc, sat: make([]uint8, len(sc.need)), bodyLeft: sc.bodyRules, mark: make([]uint32, len(sc.regexes)), mask: make([]uint8, len(sc.regexes))}
}

// Text scans one line of decoded UTF-8 text without its line ending. A body
// pattern matches within one line; the caller cuts lines longer than 8 KiB.
func (s *Scan) Text(line []byte) {
	sc := s.sc
	if s.bodyLeft == 0 {
		return // every body condition holds already
	}
	s.lower = lowerLine(s.lower[:0], line)
	s.gen++
	if s.gen == 0 { // wrapped: old marks could look current
		clear(s.mark)
		s.gen = 1
	}
	s.cand = s.cand[:0]
	for _, m := range sc.ac {
		m.scan(s.lower, s)
	}
	for _, ri := range sc.always {
		s.tryRegex(ri, line)
	}
	for _, ri := range s.cand {
		s.tryRegex(ri, line)
	}
}

func (s *Scan) tryRegex(ri int32, line []byte) {
	r := &s.sc.regexes[ri]
	if s.sat[r.slot]&sBody == 0 && r.re.Match(line) {
		s.setBody(r.slot)
	}
}

func (s *Scan) setBody(slot int32) {
	if s.sat[slot]&sBody == 0 {
		s.sat[slot] |= sBody
		s.bodyLeft--
	}
}

// queued marks a regex already among the line's candidates.
const queued = 1 << maxClauses

// acHit is called by the automaton for every pattern found in the line.
func (s *Scan) acHit(id int32) {
	for _, t := range s.sc.acTargets[id] {
		if t >= 0 {
			s.setBody(t)
			continue
		}
		ri, j := (-1-t)/maxClauses, (-1-t)%maxClauses
		r := &s.sc.regexes[ri]
		if s.mark[ri] != s.gen {
			s.mark[ri] = s.gen
			s.mask[ri] = 0
		}
		if s.mask[ri]&queued != 0 || s.sat[r.slot]&sBody != 0 {
			continue
		}
		s.mask[ri] |= 1 << j
		if s.mask[ri] == r.full {
			s.mask[ri] |= queued
			s.cand = append(s.cand, ri)
		}
	}
}

// lowerLine appends line lower-cased to dst: ASCII in place, anything else
// through bytes.ToLower (Unicode-aware, as patterns are lower-cased).
func lowerLine(dst, line []byte) []byte {
	for _, b := range line {
		if b >= utf8.RuneSelf {
			return append(dst, bytes.ToLower(line)...)
		}
	}
	for _, b := range line {
		if 'A' <= b && b <= 'Z' {
			b += 'a' - 'A'
		}
		dst = append(dst, b)
	}
	return dst
}

// Attachment records an attachment: its file name ("" when it has none)
// and the type mimewalk.Sniff found in its first bytes ("" when unknown).
func (s *Scan) Attachment(name, typ string) {
	if len(s.sc.attach) == 0 {
		return
	}
	base := strings.ToLower(baseName(strings.TrimSpace(name)))
	for i := range s.sc.attach {
		a := &s.sc.attach[i]
		if s.sat[a.slot]&sAttach != 0 {
			continue
		}
		for j := range a.conds {
			if a.conds[j].holds(base, typ) {
				s.sat[a.slot] |= sAttach
				break
			}
		}
	}
}

// URL records the host of a URL found in the message: lower case, without
// port or trailing dot. A url_domain value holds for its domain and every
// name below it.
func (s *Scan) URL(host string) {
	if len(s.sc.urls) == 0 {
		return
	}
	for h := NormDomain(host); h != ""; h = parent(h) {
		for _, slot := range s.sc.urls[h] {
			s.sat[slot] |= sURL
		}
	}
}

// Size records the message size in bytes; a rule's size values must all
// hold. A later call replaces the earlier size.
func (s *Scan) Size(n int64) {
	for i := range s.sc.sizes {
		r := &s.sc.sizes[i]
		ok := true
		for _, c := range r.conds {
			ok = ok && c.holds(n)
		}
		if ok {
			s.sat[r.slot] |= sSize
		} else {
			s.sat[r.slot] &^= sSize
		}
	}
}

// holds reports whether every scan key of the rule in slot holds.
func (s *Scan) holds(slot int32) bool {
	need := s.sc.need[slot]
	return s.sat[slot]&need == need
}

// Bounds of a regular expression's prefilter: at most maxClauses
// literal sets that must all occur, each of at most maxClauseLiterals
// alternatives (an alternation of many words). Beyond them the expression
// runs on more lines, never on fewer than it matches.
const (
	maxClauses        = 7 // fits the per-line bit mask of a Scan
	maxClauseLiterals = 32
	minExtraClauseLen = 3
)

// requiredLiterals returns clauses of lower-case strings such that, in
// the lower-cased line, every clause has a string occurring wherever the
// expression matches (an AND of ORs); nil when nothing is known (then the
// expression runs on every line).
func requiredLiterals(expr string) [][]string {
	re, err := syntax.Parse(expr, syntax.Perl)
	if err != nil {
		return nil
	}
	cl := required(re)
	slices.SortStableFunc(cl, func(a, b []string) int {
		if betterLiterals(a, b) {
			return -1
		}
		if betterLiterals(b, a) {
			return 1
		}
		return 0
	})
	var out [][]string
	seen := map[string]bool{}
	for _, c := range cl {
		k := strings.Join(c, "\x00")
		if seen[k] || len(out) == maxClauses || len(out) > 0 && minLen(c) < minExtraClauseLen {
			// A short extra clause ("e" of "singles", as "s" is left
			// out) would fire on most lines and add little.
			continue
		}
		seen[k] = true
		out = append(out, c)
	}
	return out
}

// required returns the clauses every match of re satisfies.
func required(re *syntax.Regexp) [][]string {
	switch re.Op {
	case syntax.OpLiteral:
		var out [][]string
		for _, seg := range literalSegments(re) {
			out = append(out, []string{seg})
		}
		return out
	case syntax.OpCapture, syntax.OpPlus:
		return required(re.Sub[0])
	case syntax.OpRepeat:
		if re.Min >= 1 {
			return required(re.Sub[0])
		}
	case syntax.OpConcat:
		var out [][]string
		for _, sub := range re.Sub {
			out = append(out, required(sub)...)
		}
		return out
	case syntax.OpAlternate:
		// Each branch contributes its best clause; one of them occurs.
		var any []string
		for _, sub := range re.Sub {
			var best []string
			for _, c := range required(sub) {
				if best == nil || betterLiterals(c, best) {
					best = c
				}
			}
			if best == nil {
				return nil
			}
			any = append(any, best...)
		}
		if len(any) <= maxClauseLiterals {
			return [][]string{any}
		}
	}
	return nil
}

// betterLiterals prefers the set whose shortest literal is longer (fewer
// false candidates), then the smaller set.
func betterLiterals(a, b []string) bool {
	la, lb := minLen(a), minLen(b)
	if la != lb {
		return la > lb
	}
	return len(a) < len(b)
}

func minLen(ls []string) int {
	n := -1
	for _, l := range ls {
		if n < 0 || len(l) < n {
			n = len(l)
		}
	}
	return n
}

// literalSegments returns the runs of the literal's runes that can be
// found in the lower-cased line: a case-insensitive rune qualifies only
// when every rune it matches lower-cases to the same rune (not so for "s",
// which also matches "ſ", whose lower case is itself).
func literalSegments(re *syntax.Regexp) []string {
	fold := re.Flags&syntax.FoldCase != 0
	var out []string
	var cur []rune
	for _, r := range re.Rune {
		if fold && !foldsToLower(r) {
			if len(cur) > 0 {
				out = append(out, string(cur))
			}
			cur = nil
			continue
		}
		cur = append(cur, unicode.ToLower(r))
	}
	if len(cur) > 0 {
		out = append(out, string(cur))
	}
	return out
}

func foldsToLower(r rune) bool {
	l := unicode.ToLower(r)
	for x := unicode.SimpleFold(r); x != r; x = unicode.SimpleFold(x) {
		if unicode.ToLower(x) != l {
			return false
		}
	}
	return true
}
