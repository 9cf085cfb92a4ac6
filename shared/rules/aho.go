package rules

// acMatcher is an Aho-Corasick automaton (Aho and Corasick, "Efficient
// string matching", CACM 1975) over bytes, built as a dense DFA over byte
// classes: the bytes no pattern contains share one class, so the table is
// states × (distinct pattern bytes + 1) rather than states × 256, and a
// scan costs one table load per input byte whatever the number of
// patterns. It is immutable once built and safe for concurrent use.
//
// Hand-written (about 100 lines) rather than a module: the scanner needs
// only "which pattern ids end here", over a few thousand short patterns,
// and a dependency for that would be larger than the code.
type acMatcher struct {
	class  [256]uint16
	nclass int
	trans  []int32 // state*nclass + class → next state (final form: see the end of newACMatcher)
	out    [][]int32
	dict   []int32 // nearest state on the fail chain with output, or -1
	hasOut []bool  // the state or a state on its fail chain has output
	base   int32   // added to every reported id
}

// maxACPatternBytes bounds the pattern bytes of one automaton, so its
// states (at most one per pattern byte) times 256 classes fit the int32
// row offsets; newACMatchers splits larger sets.
const maxACPatternBytes = 1 << 20

// newACMatchers builds as many automata as the patterns need (one, unless
// they exceed limit bytes, normally maxACPatternBytes); ids are positions
// in patterns throughout.
func newACMatchers(patterns []string, limit int) []*acMatcher {
	var out []*acMatcher
	start, size := 0, 0
	for i, p := range patterns {
		if size+len(p) > limit && i > start {
			m := newACMatcher(patterns[start:i])
			m.base = int32(start)
			out = append(out, m)
			start, size = i, 0
		}
		size += len(p)
	}
	m := newACMatcher(patterns[start:])
	m.base = int32(start)
	return append(out, m)
}

// newACMatcher builds the automaton; pattern i is reported as id i. Empty
// patterns are never reported.
func newACMatcher(patterns []string) *acMatcher {
	m := &acMatcher{}
	var used [256]bool
	for _, p := range patterns {
		for i := 0; i < len(p); i++ {
			used[p[i]] = true
		}
	}
	m.nclass = 1 // class 0: bytes in no pattern
	for b := 0; b < 256; b++ {
		if used[b] {
			m.class[b] = uint16(m.nclass)
			m.nclass++
		}
	}
	// Trie.
	nc := m.nclass
	m.trans = make([]int32, nc)
	m.out = [][]int32{nil}
	for id, p := range patterns {
		if p == "" {
			continue
		}
		s := int32(0)
		for i := 0; i < len(p); i++ {
			c := int(m.class[p[i]])
			next := m.trans[int(s)*nc+c]
			if next == 0 {
				next = int32(len(m.out))
				m.out = append(m.out, nil)
				m.trans = append(m.trans, make([]int32, nc)...)
				m.trans[int(s)*nc+c] = next
			}
			s = next
		}
		m.out[s] = append(m.out[s], int32(id))
	}
	// Breadth-first: fail links, then goto completed into a DFA.
	n := len(m.out)
	fail := make([]int32, n)
	m.dict = make([]int32, n)
	m.hasOut = make([]bool, n)
	m.dict[0] = -1
	queue := make([]int32, 0, n)
	for c := 0; c < nc; c++ {
		if t := m.trans[c]; t != 0 {
			fail[t] = 0
			m.dict[t] = -1
			queue = append(queue, t)
		}
	}
	for len(queue) > 0 {
		s := queue[0]
		queue = queue[1:]
		m.hasOut[s] = len(m.out[s]) > 0 || m.dict[s] >= 0
		for c := 0; c < nc; c++ {
			t := m.trans[int(s)*nc+c]
			f := m.trans[int(fail[s])*nc+c]
			if t == 0 {
				m.trans[int(s)*nc+c] = f
				continue
			}
			fail[t] = f
			if len(m.out[f]) > 0 {
				m.dict[t] = f
			} else {
				m.dict[t] = m.dict[f]
			}
			queue = append(queue, t)
		}
	}
	// Final form for scan: entries hold the next state's row offset
	// (state*nclass), negated minus one when that state has output, so a
	// byte costs one load and no multiply, and the output flag rides along.
	for i, t := range m.trans {
		v := t * int32(nc)
		if m.hasOut[t] {
			v = -v - 1
		}
		m.trans[i] = v
	}
	return m
}

// acSink receives the ids of patterns found by scan.
type acSink interface{ acHit(id int32) }

// scan reports to sink the id of every pattern occurring in b, once per
// occurrence.
func (m *acMatcher) scan(b []byte, sink acSink) {
	if len(m.out) == 1 {
		return
	}
	nc := int32(m.nclass)
	off := int32(0)
	for _, x := range b {
		v := m.trans[off+int32(m.class[x])]
		if v >= 0 {
			off = v
			continue
		}
		off = -v - 1
		for t := off / nc; t >= 0; t = m.dict[t] {
			for _, id := range m.out[t] {
				sink.acHit(m.base + id)
			}
		}
	}
}
