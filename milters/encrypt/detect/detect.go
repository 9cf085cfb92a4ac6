// Package detect finds content that should never travel in clear — payment
// card numbers, IBANs, and configured patterns — in a stream of decoded UTF-8
// text (a text part, an attachment name), for the encrypt milter's content
// triggers (issue 17).
//
// A Scanner is an io.Writer: the text goes in through Write in chunks of any
// size, and Close returns the counts. Memory is bounded whatever the input
// size (a few fixed-size state machines and one line of at most MaxLine
// bytes for the patterns), and every finding is the same whatever the chunk
// boundaries of the Write calls: cards and IBANs are found by byte-at-a-time
// state machines whose state carries across calls, and patterns run on whole
// lines. Findings hold counts only, never the matched values, so that they can
// go to logs and trail events.
//
// Cards (ISO/IEC 7812): 13–19 digits, plain or in the usual groupings with a
// single space or dash, Luhn-valid, with a known issuer prefix and a length
// that issuer uses, not part of a longer number or word, never joined across
// field separators. Each gets a confidence from its surroundings (keywords.go):
// High with a card keyword or an expiry date within 64 bytes, Suppressed with
// only a non-card keyword (IMEI, invoice, tracking …) nearby, Low otherwise.
// Config.MinConfidence decides which are counted; the default is Low, see
// Config.
//
// IBANs (ISO 13616): country code, check digits and BBAN of the country's
// registered length, compact or in groups of four, any case, mod-97 == 1.
//
// Patterns: RE2 expressions, matched on each line (a match never spans a line
// break; a line longer than MaxLine is cut there), counted per Scanner.
package detect

import (
	"errors"
	"fmt"
	"regexp"
)

// MaxLine is the longest line the patterns see in one piece; a longer line is
// cut into pieces of MaxLine bytes (at a UTF-8 character boundary), and a
// pattern match across such a cut is not found.
const MaxLine = 32 << 10

// Confidence is how sure the detector is that a number is a payment card.
type Confidence int

const (
	// Suppressed: only a non-card keyword (IMEI, invoice, tracking, phone …)
	// is near the number.
	Suppressed Confidence = iota
	// Low: a valid number with no keyword or expiry date near it.
	Low
	// High: a card keyword or an expiry date is near the number.
	High
)

// String names the confidence as config and trail events spell it.
func (c Confidence) String() string {
	switch c {
	case Suppressed:
		return "suppressed"
	case Low:
		return "low"
	case High:
		return "high"
	}
	return fmt.Sprintf("Confidence(%d)", int(c))
}

// ParseConfidence reads a confidence as config spells it: "low" or "high".
func ParseConfidence(s string) (Confidence, error) {
	switch s {
	case "low":
		return Low, nil
	case "high":
		return High, nil
	}
	return 0, fmt.Errorf("confidence %q is neither \"low\" nor \"high\"", s)
}

// Pattern is a configured content pattern.
type Pattern struct {
	Name     string // names the pattern in Findings and trail events
	Regexp   string // RE2 syntax (package regexp), matched line by line
	MinCount int    // matches per Scanner needed to fire; 0 means 1
}

// Config says what to detect and when it fires.
type Config struct {
	Cards    bool
	IBAN     bool
	Patterns []Pattern

	// MinConfidence is the lowest card confidence that counts. The zero
	// value means Low: every structurally valid card number counts unless only
	// a non-card keyword is near it. Why Low and not High: a false alarm here
	// sends the message through the encryption gateway (it still arrives),
	// while a miss sends a card number in clear — the error that costs a PCI
	// finding. Ordinary mail is kept out by the structure checks (issuer
	// prefix and length, Luhn, grouping, boundaries, separators) and the
	// negative keywords; the testdata/negative corpus shows it. Sites that
	// prefer fewer alarms set High.
	MinConfidence Confidence
	// MinCards and MinIBANs are the counts needed to fire; 0 means 1.
	MinCards int
	MinIBANs int
}

// Detector is a compiled Config. It is immutable and safe for concurrent
// use; each text stream gets its own Scanner.
type Detector struct {
	cards, iban   bool
	minConfidence Confidence
	minCards      int
	minIBANs      int
	patterns      []compiledPattern
}

type compiledPattern struct {
	name     string
	re       *regexp.Regexp
	minCount int
}

// New compiles c. All problems are reported at once, each naming the field.
func New(c Config) (*Detector, error) {
	var errs []error
	d := &Detector{cards: c.Cards, iban: c.IBAN, minConfidence: c.MinConfidence,
		minCards: c.MinCards, minIBANs: c.MinIBANs}
	if d.minConfidence == 0 {
		d.minConfidence = Low
	}
	if c.MinConfidence < 0 || c.MinConfidence > High {
		errs = append(errs, fmt.Errorf("min_confidence: %d is neither low (%d) nor high (%d)", int(c.MinConfidence), int(Low), int(High)))
	}
	if c.MinCards < 0 {
		errs = append(errs, fmt.Errorf("min_cards: %d is negative", c.MinCards))
	}
	if c.MinIBANs < 0 {
		errs = append(errs, fmt.Errorf("min_ibans: %d is negative", c.MinIBANs))
	}
	if d.minCards == 0 {
		d.minCards = 1
	}
	if d.minIBANs == 0 {
		d.minIBANs = 1
	}
	seen := map[string]int{}
	for i, p := range c.Patterns {
		where := fmt.Sprintf("patterns[%d]", i)
		if p.Name == "" {
			errs = append(errs, fmt.Errorf("%s: name is empty", where))
		} else if j, dup := seen[p.Name]; dup {
			errs = append(errs, fmt.Errorf("%s: name %q is already used by patterns[%d]", where, p.Name, j))
		} else {
			seen[p.Name] = i
		}
		if p.MinCount < 0 {
			errs = append(errs, fmt.Errorf("%s (%q): min_count %d is negative", where, p.Name, p.MinCount))
		}
		re, err := regexp.Compile(p.Regexp)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s (%q): regexp: %w", where, p.Name, err))
			continue
		}
		if re.MatchString("") {
			errs = append(errs, fmt.Errorf("%s (%q): regexp %q matches the empty string", where, p.Name, p.Regexp))
			continue
		}
		mc := p.MinCount
		if mc <= 0 {
			mc = 1
		}
		d.patterns = append(d.patterns, compiledPattern{name: p.Name, re: re, minCount: mc})
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("detect config: %w", errors.Join(errs...))
	}
	return d, nil
}

// Findings are the counts from one Scanner. They never hold matched text.
type Findings struct {
	Cards        int            // card numbers counted (confidence ≥ MinConfidence)
	CardsHigh    int            // of Cards, those of High confidence
	CardsIgnored int            // valid card numbers below MinConfidence
	IBANs        int            // valid IBANs
	Patterns     map[string]int // matches per pattern name (nil without patterns)
	Hits         []Hit          // the detectors that fired, in config order
}

// Hit is one detector that reached its threshold.
type Hit struct {
	Detector string // "card", "iban" or "pattern:" + name
	Count    int
}

// Fired reports whether any detector reached its threshold.
func (f Findings) Fired() bool { return len(f.Hits) > 0 }

// Scanner returns a new Scanner for one text stream.
func (d *Detector) Scanner() *Scanner {
	s := &Scanner{d: d}
	if len(d.patterns) > 0 {
		s.patCounts = make([]int, len(d.patterns))
		s.line = make([]byte, 0, 4096)
	}
	s.resetPart()
	return s
}
