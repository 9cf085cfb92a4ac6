package detect

import "bytes"

// The scanner reads the text one byte at a time through small state
// machines whose whole state lives in the Scanner, so a Write boundary is
// invisible to them: the findings depend on the bytes only. Positions are
// counted in the normalized stream (some Unicode spaces and hyphens, which
// HTML-reduced text and French number formatting use between digit groups,
// read as ' ' and '-').

// byte classes
const (
	cOther  uint8 = iota // a hard separator: tab, newline, ',', ';', '|', …
	cDigit               // '0'-'9'
	cLetter              // ASCII letter
	cHigh                // a byte of a non-ASCII character: part of a word, never a digit neighbour
	cSpace               // ' ': joins card digit groups and IBAN groups
	cDash                // '-': joins card digit groups
	cFrag                // '/', ':', '.': between digits, they make one number of two (dates, times, decimals)
	cPlus                // '+': an international phone number follows
)

var class = func() (t [256]uint8) {
	for c := '0'; c <= '9'; c++ {
		t[c] = cDigit
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = cLetter
		t[c-'a'+'A'] = cLetter
	}
	for c := 0x80; c < 0x100; c++ {
		t[c] = cHigh
	}
	t[' '] = cSpace
	t['-'] = cDash
	t['/'], t[':'], t['.'] = cFrag, cFrag, cFrag
	t['+'] = cPlus
	return t
}()

const (
	noPos      = int64(-1 << 62)
	resolveLag = window + maxWord + 8 // after a number's end, every event in its window has been seen
	maxPending = 16
	maxGroups  = 6
	maxDigits  = 19
)

// Scanner scans one text stream. It is not safe for concurrent use.
type Scanner struct {
	d   *Detector
	pos int64 // position of the next normalized byte

	norm     uint8 // normalizer state: 0, or the bytes held of a multi-byte space (0xC2; 0xE2; 0xE2 0x80)
	normHeld [2]byte

	partStart   int64
	prev, prev2 byte // previous normalized bytes (0 at the start of a part)
	hist        [16]byte

	// words
	inWord      bool
	word        [maxWord]byte
	wn          int
	wstart      int64
	wlong       bool
	prevAmerica bool

	// keyword and expiry events: end position of the latest of each kind
	lastPos, lastNeg int64

	run     cardRun
	pending [maxPending]pendingCard
	np      int

	ib ibanState

	line      []byte // the current line for the patterns (raw bytes)
	patCounts []int

	f Findings
}

type cardRun struct {
	active     bool
	start      int64 // first digit
	end        int64 // after the last digit
	digits     [maxDigits + 4]byte
	n          int
	over       bool // more than maxDigits digits or maxGroups groups
	groups     [maxGroups + 1]uint8
	ng         int
	sep        byte // ' ' or '-', once a second group started
	sepPending bool // a separator was just read after a group
	poisoned   bool // a letter or '+' touches the number
	firstFrag  bool // the first group follows a digit and '/', ':' or '.'
	waitFrag   bool // the run ended at '/', ':' or '.': a digit next makes the last group a fragment
}

type pendingCard struct {
	end      int64
	pos, neg bool
	needHigh bool // counts only at High confidence (knownIssuer)
}

type ibanState struct {
	active  bool
	done    bool // all characters read; the next byte must not continue it
	buf     [maxIBAN]byte
	n, want int
	mode    uint8 // 0 undecided, 1 compact, 2 grouped
	inGroup int
}

// Write feeds text. It never fails.
func (s *Scanner) Write(p []byte) (int, error) {
	if s.line != nil {
		s.feedLines(p)
	}
	if !s.d.cards && !s.d.iban {
		return len(p), nil
	}
	for _, c := range p {
		if s.norm == 0 {
			// Fast path: a letter inside a word, with no number or IBAN
			// under way, only extends the word.
			if class[c] == cLetter && s.inWord && !s.run.active && !s.ib.active {
				if s.wn < maxWord {
					s.word[s.wn] = c | 0x20
					s.wn++
				} else {
					s.wlong = true
				}
				s.hist[s.pos&15] = c
				s.prev2, s.prev = s.prev, c
				s.pos++
				continue
			}
			if c < 0x80 {
				s.step(c)
				continue
			}
		}
		s.normalize(c)
	}
	return len(p), nil
}

// normalize maps U+00A0 (C2 A0), U+2000–U+200A (E2 80 80–8A) and U+202F
// (E2 80 AF) to ' ', and U+2010, U+2011 (E2 80 90, 91) to '-'; other bytes
// pass unchanged.
func (s *Scanner) normalize(c byte) {
	switch s.norm {
	case 0:
		switch c {
		case 0xC2, 0xE2:
			s.norm, s.normHeld[0] = 1, c
		default:
			s.step(c)
		}
	case 1:
		switch {
		case s.normHeld[0] == 0xC2 && c == 0xA0:
			s.norm = 0
			s.step(' ')
		case s.normHeld[0] == 0xE2 && c == 0x80:
			s.norm, s.normHeld[1] = 2, c
		default:
			s.norm = 0
			s.step(s.normHeld[0])
			s.normalize(c)
		}
	case 2:
		s.norm = 0
		switch {
		case (c >= 0x80 && c <= 0x8A) || c == 0xAF:
			s.step(' ')
		case c == 0x90 || c == 0x91:
			s.step('-')
		default:
			s.step(0xE2)
			s.step(0x80)
			s.normalize(c)
		}
	}
}

func (s *Scanner) flushNorm() {
	switch s.norm {
	case 1:
		s.step(s.normHeld[0])
	case 2:
		s.step(s.normHeld[0])
		s.step(s.normHeld[1])
	}
	s.norm = 0
}

// step reads one normalized byte.
func (s *Scanner) step(c byte) {
	k := class[c]
	pos := s.pos
	if s.d.cards {
		if k == cLetter || k == cHigh {
			if !s.inWord {
				s.inWord, s.wn, s.wlong, s.wstart = true, 0, false, pos
			}
			if s.wn < maxWord {
				lc := c
				if k == cLetter {
					lc |= 0x20 // ASCII lower case
				}
				s.word[s.wn] = lc
				s.wn++
			} else {
				s.wlong = true
			}
		} else if s.inWord {
			s.endWord(pos)
		}
		if k != cDigit && class[s.prev] == cDigit {
			s.checkExpiry(c, pos)
		}
		s.cardStep(c, k, pos)
		// Resolving late changes nothing (event checks the exact distance);
		// resolving keeps the pending list short.
		for s.np > 0 && pos >= s.pending[0].end+resolveLag {
			s.resolveFront()
		}
	}
	if s.d.iban {
		s.ibanStep(c, k)
	}
	s.hist[pos&15] = c
	s.prev2, s.prev = s.prev, c
	s.pos++
}

// endWord looks the finished word up among the keywords.
func (s *Scanner) endWord(pos int64) {
	s.inWord = false
	if s.wlong || s.wn < 2 {
		s.prevAmerica = false
		return
	}
	w := s.word[:s.wn]
	if kwFilter[w[0]]&(1<<s.wn) == 0 {
		s.prevAmerica = false
		return
	}
	kind := keywords[string(w)]
	if s.prevAmerica && string(w) == "express" {
		kind = kwPositive
	}
	s.prevAmerica = string(w) == "american"
	if kind != kwNone {
		s.event(kind, s.wstart, pos)
	}
}

// checkExpiry is called on the first non-digit c after digits (c is 0 at
// the end of a part): an expiry date MM/YY or MM/YYYY (month 01–12, year
// 20YY) ending there is a positive event. A date with a day (DD/MM/YYYY,
// MM/DD/YYYY) is not an expiry date.
func (s *Scanner) checkExpiry(c byte, pos int64) {
	if c == '/' {
		return
	}
	at := func(i int64) byte {
		if i < s.partStart {
			return 0
		}
		return s.hist[i&15]
	}
	i := pos - 1
	y := 0
	for y < 5 && class[at(i)] == cDigit {
		i--
		y++
	}
	if (y != 2 && y != 4) || at(i) != '/' {
		return
	}
	if y == 4 && (at(i+1) != '2' || at(i+2) != '0') {
		return
	}
	m1, m0 := at(i-2), at(i-1)
	if class[m1] != cDigit || class[m0] != cDigit {
		return
	}
	if b := at(i - 3); class[b] == cDigit || b == '/' || b == '.' {
		return
	}
	if m := int(m1-'0')*10 + int(m0-'0'); m < 1 || m > 12 {
		return
	}
	s.event(kwPositive, i-2, pos)
}

// event records a keyword or expiry date at [start, end) and marks the
// numbers waiting for their right-hand context.
func (s *Scanner) event(kind kwKind, start, end int64) {
	for i := 0; i < s.np; i++ {
		p := &s.pending[i]
		if start-p.end <= window {
			if kind == kwPositive {
				p.pos = true
			} else {
				p.neg = true
			}
		}
	}
	if kind == kwPositive {
		s.lastPos = end
	} else {
		s.lastNeg = end
	}
}

// cardStep advances the card number machine. A run is a sequence of digit
// groups joined by single spaces or single dashes (one kind per run); any
// other byte ends it. ISO/IEC 7812 says nothing of layout: the rules here are
// DLP practice (see allowedGrouping and the package comment).
func (s *Scanner) cardStep(c byte, k uint8, pos int64) {
	r := &s.run
	if r.waitFrag {
		r.waitFrag = false
		// "4111 1111 1111 1111 12/28": a digit after '/' makes "12" part of
		// a date, not of the number.
		s.finishRun(k == cDigit)
	}
	switch k {
	case cDigit:
		switch {
		case r.active && !r.sepPending:
		case r.active && r.sepPending:
			r.sepPending = false
			if r.firstFrag && r.ng == 1 {
				// "12/28 4111 …": the date's year does not join the number.
				r.begin(pos, false, false)
			} else if r.ng == len(r.groups) {
				r.over = true
			} else {
				r.ng++
				r.groups[r.ng-1] = 0
			}
		default:
			pk := class[s.prev]
			r.begin(pos, pk == cLetter || pk == cPlus, pk == cFrag && class[s.prev2] == cDigit)
		}
		if r.n < len(r.digits) {
			r.digits[r.n] = c
			r.n++
		} else {
			r.over = true
		}
		if r.ng > 0 && r.groups[r.ng-1] < 255 {
			r.groups[r.ng-1]++
		}
		r.end = pos + 1
	case cSpace, cDash:
		if !r.active {
			return
		}
		if !r.sepPending && (r.sep == 0 || r.sep == c) {
			r.sepPending, r.sep = true, c
			return
		}
		s.finishRun(false) // two separators, or a second kind of separator
	case cLetter:
		if !r.active {
			return
		}
		if !r.sepPending {
			r.poisoned = true // "4111…1111x": part of a word
		}
		s.finishRun(false)
	case cFrag:
		if !r.active {
			return
		}
		if r.sepPending {
			s.finishRun(false)
			return
		}
		r.waitFrag = true
	default:
		if r.active {
			s.finishRun(false)
		}
	}
}

func (r *cardRun) begin(pos int64, poisoned, firstFrag bool) {
	*r = cardRun{active: true, start: pos, ng: 1, poisoned: poisoned, firstFrag: firstFrag}
}

// finishRun ends the current run and checks it; dropLast removes its last
// group (a fragment of a date or decimal).
func (s *Scanner) finishRun(dropLast bool) {
	r := &s.run
	if !r.active {
		return
	}
	r.active, r.waitFrag, r.sepPending = false, false, false
	if r.poisoned || r.over {
		return
	}
	ng, n, end := r.ng, r.n, r.end
	if dropLast {
		last := int(r.groups[ng-1])
		ng, n, end = ng-1, n-last, end-int64(last)-1
	}
	if ng == 0 || (r.firstFrag && ng == 1) {
		return
	}
	if n < 13 || n > 19 {
		return
	}
	if ng > 1 && !allowedGrouping(r.groups[:ng]) {
		return
	}
	d := r.digits[:n]
	ok, needHigh := knownIssuer(d)
	if !ok || !luhn(d) {
		return
	}
	s.candidate(r.start, end, needHigh)
}

// candidate is a valid card number at [start, end): it is counted now when
// a positive event precedes it, else once its right-hand window is read.
func (s *Scanner) candidate(start, end int64, needHigh bool) {
	if s.lastPos != noPos && start-s.lastPos <= window {
		s.count(High)
		return
	}
	if s.np == maxPending {
		s.resolveFront()
	}
	s.pending[s.np] = pendingCard{end: end, needHigh: needHigh,
		neg: s.lastNeg != noPos && start-s.lastNeg <= window}
	s.np++
}

func (s *Scanner) resolveFront() {
	p := s.pending[0]
	copy(s.pending[:], s.pending[1:s.np])
	s.np--
	switch {
	case p.pos:
		s.count(High)
	case p.neg || p.needHigh:
		s.count(Suppressed)
	default:
		s.count(Low)
	}
}

func (s *Scanner) count(c Confidence) {
	if c >= s.d.minConfidence {
		s.f.Cards++
		if c == High {
			s.f.CardsHigh++
		}
		return
	}
	s.f.CardsIgnored++
}

// ibanStep advances the IBAN machine (ISO 13616-1 §5): an attempt starts at
// a letter that follows no letter or digit, and ends as soon as the text
// cannot be an IBAN.
func (s *Scanner) ibanStep(c byte, k uint8) {
	b := &s.ib
	alnum := k == cDigit || k == cLetter
	if !b.active {
		if k == cLetter && !isAlnum(s.prev) {
			*b = ibanState{active: true, n: 1, inGroup: 1}
			b.buf[0] = c &^ 0x20
		}
		return
	}
	if b.done {
		b.active = false
		if !alnum && ibanValid(b.buf[:b.n]) {
			s.f.IBANs++
		}
		return
	}
	switch {
	case alnum:
		if b.mode == 2 && b.inGroup == 4 {
			b.active = false
			return
		}
		if b.n == 4 && b.mode == 0 {
			b.mode = 1
		}
		u := c
		if k == cLetter {
			u &^= 0x20
		}
		switch b.n {
		case 1:
			if k != cLetter {
				b.active = false
				return
			}
			b.want = int(ibanLen[b.buf[0]-'A'][u-'A'])
			if b.want == 0 {
				b.active = false
				return
			}
		case 2, 3:
			if k != cDigit {
				b.active = false
				return
			}
		}
		b.buf[b.n] = u
		b.n++
		b.inGroup++
		if b.n == b.want {
			b.done = true
		}
	case k == cSpace && b.n == 4 && b.mode == 0:
		b.mode, b.inGroup = 2, 0
	case k == cSpace && b.mode == 2 && b.inGroup == 4:
		b.inGroup = 0
	default:
		b.active = false
	}
}

func isAlnum(c byte) bool { k := class[c]; return k == cDigit || k == cLetter }

// feedLines collects raw lines for the patterns. A line ends after '\n';
// a line of MaxLine bytes ends before the next byte that starts a UTF-8
// character, so that the cut depends on the text alone.
func (s *Scanner) feedLines(p []byte) {
	for len(p) > 0 {
		if len(s.line) >= MaxLine {
			switch {
			case p[0] == '\n':
				s.appendLine([]byte{'\n'})
				p = p[1:]
				s.matchLine()
			case p[0]&0xC0 == 0x80:
				s.appendLine(p[:1])
				p = p[1:]
			default:
				s.matchLine()
			}
			continue
		}
		seg := p
		if room := MaxLine - len(s.line); len(seg) > room {
			seg = seg[:room]
		}
		if i := bytes.IndexByte(seg, '\n'); i >= 0 {
			s.appendLine(seg[:i+1])
			p = p[i+1:]
			s.matchLine()
			continue
		}
		s.appendLine(seg)
		p = p[len(seg):]
	}
}

// appendLine appends to the line, growing it to at most MaxLine+4 bytes
// (MaxLine, a character's last continuation bytes, and '\n').
func (s *Scanner) appendLine(b []byte) {
	if need := len(s.line) + len(b); need > cap(s.line) {
		nl := make([]byte, len(s.line), min(max(2*cap(s.line), need), MaxLine+4))
		copy(nl, s.line)
		s.line = nl
	}
	s.line = append(s.line, b...)
}

func (s *Scanner) matchLine() {
	t := s.line
	if n := len(t); n > 0 && t[n-1] == '\n' {
		t = t[:n-1]
		if n := len(t); n > 0 && t[n-1] == '\r' {
			t = t[:n-1]
		}
	}
	for i, p := range s.d.patterns {
		s.patCounts[i] += len(p.re.FindAllIndex(t, -1))
	}
	s.line = s.line[:0]
}

// Break ends a text part: nothing found before it joins anything after it
// (a number, an IBAN, a line, a keyword's reach). The counts go on. Use it
// between the parts and attachment names of one message fed to one Scanner.
func (s *Scanner) Break() {
	s.flushNorm()
	if s.d.cards {
		if s.inWord {
			s.endWord(s.pos)
		}
		if class[s.prev] == cDigit {
			s.checkExpiry(0, s.pos)
		}
		s.run.waitFrag = false
		s.finishRun(false)
		for s.np > 0 {
			s.resolveFront()
		}
	}
	if s.d.iban {
		b := &s.ib
		if b.active && b.done && ibanValid(b.buf[:b.n]) {
			s.f.IBANs++
		}
	}
	if len(s.line) > 0 {
		s.matchLine()
	}
	s.resetPart()
}

func (s *Scanner) resetPart() {
	s.partStart = s.pos
	s.prev, s.prev2 = 0, 0
	s.inWord, s.prevAmerica = false, false
	s.lastPos, s.lastNeg = noPos, noPos
	s.run = cardRun{}
	s.ib = ibanState{}
}

// Close ends the stream (as Break) and returns the findings. The Scanner can
// go on after Close; a later Close returns the counts of the whole stream.
func (s *Scanner) Close() Findings {
	s.Break()
	f := s.f
	f.Hits = nil
	if s.d.cards && f.Cards >= s.d.minCards {
		f.Hits = append(f.Hits, Hit{Detector: "card", Count: f.Cards})
	}
	if s.d.iban && f.IBANs >= s.d.minIBANs {
		f.Hits = append(f.Hits, Hit{Detector: "iban", Count: f.IBANs})
	}
	if len(s.d.patterns) > 0 {
		f.Patterns = make(map[string]int, len(s.d.patterns))
		for i, p := range s.d.patterns {
			f.Patterns[p.name] = s.patCounts[i]
			if s.patCounts[i] >= p.minCount {
				f.Hits = append(f.Hits, Hit{Detector: "pattern:" + p.name, Count: s.patCounts[i]})
			}
		}
	}
	return f
}
