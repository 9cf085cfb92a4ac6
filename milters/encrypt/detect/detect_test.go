package detect

import (
	"strings"
	"testing"
)

func mustNew(t testing.TB, c Config) *Detector {
	t.Helper()
	d, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func scan(d *Detector, text string) Findings {
	s := d.Scanner()
	s.Write([]byte(text))
	return s.Close()
}

func TestCards(t *testing.T) {
	d := mustNew(t, Config{Cards: true})
	tests := []struct {
		name        string
		text        string
		cards, high int
		ignored     int
	}{
		{"visa plain", "4111111111111111", 1, 0, 0},
		{"visa spaces", "pay with 4111 1111 1111 1111 please", 1, 0, 0},
		{"visa dashes keyword", "Card: 4111-1111-1111-1111", 1, 1, 0},
		{"visa 13 alone", "4222222222222", 0, 0, 1},
		{"visa 13 keyword", "visa 4222222222222", 1, 1, 0},
		{"visa 13 grouped", "4222 2222 2222 2 exp 01/30", 1, 1, 0},
		{"mastercard", "5555555555554444", 1, 0, 0},
		{"mastercard 2-series", "2223 0031 2200 3222", 1, 0, 0},
		{"amex 4-6-5", "3782 822463 10005", 1, 0, 0},
		{"amex plain", "378282246310005", 1, 0, 0},
		{"discover", "6011 1111 1111 1117", 1, 0, 0},
		{"jcb", "3530111333300000", 1, 0, 0},
		{"diners 14", "3056 930902 5904", 1, 0, 0},
		{"unionpay 19", "6212 3456 7890 1234 5", 0, 0, 0}, // not Luhn-valid
		{"unionpay", "6200000000000005", 1, 0, 0},
		{"maestro", "6759 6498 2643 8453", 1, 0, 0},
		{"expiry after", "4111 1111 1111 1111 12/28", 1, 1, 0},
		{"expiry before", "valid 12/2028 number 4111111111111111", 1, 1, 0},
		{"expiry far", "12/28" + strings.Repeat(" ", 80) + "4111111111111111", 1, 0, 0},
		{"keyword after", "4111111111111111 is my credit card", 1, 1, 0},
		{"keyword far after", "4111111111111111" + strings.Repeat(" ", 70) + "card", 1, 0, 0},
		{"keyword on previous line", "Kreditkarte:\n4111 1111 1111 1111\n", 1, 1, 0},
		{"two cards", "4111111111111111, 5555555555554444", 2, 0, 0},
		{"html nbsp", "Card&nbsp;→ 4111\u00a01111\u00a01111\u00a01111", 1, 1, 0},
		{"narrow nbsp", "4111\u202f1111\u202f1111\u202f1111", 1, 0, 0},
		{"csv cell", "name,4111111111111111,12,2028\n", 1, 0, 0},
		{"quoted", "\u201c4111111111111111\u201d", 1, 0, 0},
		{"sentence end", "Number 4111111111111111.", 1, 0, 0},
		{"after a time", "10:30 4111 1111 1111 1111", 1, 0, 0},
		{"after a date", "on 07.12.2026 4111111111111111", 1, 0, 0},
		{"account is not negative", "charge my account 4111 1111 1111 1111", 1, 0, 0},

		{"luhn fails", "4111111111111112", 0, 0, 0},
		{"no issuer", "1234567812345670", 0, 0, 0},
		{"amex wrong length", "3411111111111110", 0, 0, 0},
		{"longer run", "41111111111111110", 0, 0, 0},
		{"digit before", "94111111111111111", 0, 0, 0},
		{"letter before", "x4111111111111111", 0, 0, 0},
		{"letter after", "4111111111111111x", 0, 0, 0},
		{"phone plus", "+4111111111111111", 0, 0, 0},
		{"decimal", "1.4111111111111111", 0, 0, 0},
		{"decimal after", "4111111111111111.5", 0, 0, 0},
		{"tabs", "4111\t1111\t1111\t1111", 0, 0, 0},
		{"semicolons", "4111;1111;1111;1111", 0, 0, 0},
		{"pipes", "4111|1111|1111|1111", 0, 0, 0},
		{"commas", "4111,1111,1111,1111", 0, 0, 0},
		{"newlines", "4111\n1111\n1111\n1111", 0, 0, 0},
		{"double space", "4111  1111  1111  1111", 0, 0, 0},
		{"mixed separators", "4111 1111-1111 1111", 0, 0, 0},
		{"extra group", "1234 4111 1111 1111 1111", 0, 0, 0},
		{"odd grouping", "41 1111 1111 1111 11", 0, 0, 0},
		{"imei plain", "356938035643809", 0, 0, 0},
		{"imei keyword", "IMEI: 4111111111111111", 0, 0, 1},
		{"invoice keyword", "Invoice no. 4111111111111111", 0, 0, 1},
		{"negative and positive", "Order paid by card 4111111111111111", 1, 1, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := scan(d, tc.text)
			if f.Cards != tc.cards || f.CardsHigh != tc.high || f.CardsIgnored != tc.ignored {
				t.Errorf("%q: cards %d high %d ignored %d, want %d %d %d",
					tc.text, f.Cards, f.CardsHigh, f.CardsIgnored, tc.cards, tc.high, tc.ignored)
			}
		})
	}
}

func TestMinConfidenceHigh(t *testing.T) {
	d := mustNew(t, Config{Cards: true, MinConfidence: High})
	f := scan(d, "4111111111111111"+strings.Repeat(" ", 80)+"card 5555555555554444")
	if f.Cards != 1 || f.CardsHigh != 1 || f.CardsIgnored != 1 || len(f.Hits) != 1 {
		t.Errorf("got %+v, want 1 high card counted and 1 low ignored", f)
	}
}

func TestIBAN(t *testing.T) {
	d := mustNew(t, Config{IBAN: true})
	tests := []struct {
		name string
		text string
		want int
	}{
		{"de compact", "DE89370400440532013000", 1},
		{"de grouped", "IBAN: DE89 3704 0044 0532 0130 00.", 1},
		{"gb lower", "gb82 west 1234 5698 7654 32", 1},
		{"gb mixed case", "Gb82West12345698765432", 1},
		{"nl", "NL91ABNA0417164300", 1},
		{"be grouped full last group", "BE68 5390 0754 7034 and more", 1},
		{"two", "DE89370400440532013000 / GB82WEST12345698765432", 2},
		{"after colon", "IBAN:DE89370400440532013000", 1},
		{"nbsp grouped", "DE89\u00a03704\u00a00044\u00a00532\u00a00130\u00a000", 1},
		{"bad check", "DE89370400440532013001", 0},
		{"check digits 00", "DE00370400440532013000", 0},
		{"too long", "DE893704004405320130001", 0},
		{"too short", "DE8937040044053201300", 0},
		{"letter before", "XDE89370400440532013000", 0},
		{"bad grouping", "DE89 37040044 0532 0130 00", 0},
		{"double space", "DE89  3704 0044 0532 0130 00", 0},
		{"unknown country", "XX89370400440532013000", 0},
		{"vat id", "DE123456789", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if f := scan(d, tc.text); f.IBANs != tc.want {
				t.Errorf("%q: %d IBANs, want %d", tc.text, f.IBANs, tc.want)
			}
		})
	}
}

func TestPatterns(t *testing.T) {
	d := mustNew(t, Config{Patterns: []Pattern{
		{Name: "ssn", Regexp: `\b\d{3}-\d{2}-\d{4}\b`, MinCount: 2},
		{Name: "secret", Regexp: `(?i)^top secret$`},
	}})
	f := scan(d, "a 123-45-6789 b\r\nTOP SECRET\r\nc 987-65-4321 and 111-22-3333\nno 123-45-\n6789")
	if f.Patterns["ssn"] != 3 || f.Patterns["secret"] != 1 {
		t.Errorf("patterns %v, want ssn 3 secret 1", f.Patterns)
	}
	if len(f.Hits) != 2 || f.Hits[0] != (Hit{"pattern:ssn", 3}) {
		t.Errorf("hits %v", f.Hits)
	}
	f = scan(d, "only 123-45-6789 once")
	if f.Fired() {
		t.Errorf("one match of a MinCount 2 pattern fired: %v", f.Hits)
	}
}

func TestBreak(t *testing.T) {
	d := mustNew(t, Config{Cards: true, IBAN: true})
	s := d.Scanner()
	s.Write([]byte("4111 1111"))
	s.Break()
	s.Write([]byte(" 1111 1111 card"))
	s.Break()
	s.Write([]byte("DE89370400440532013000"))
	s.Break()
	s.Write([]byte("Card:"))
	s.Break()
	s.Write([]byte("5555555555554444"))
	f := s.Close()
	if f.Cards != 1 || f.CardsHigh != 0 || f.IBANs != 1 {
		t.Errorf("got %+v, want 1 low card (the last part) and 1 IBAN", f)
	}
}

func TestConfigErrors(t *testing.T) {
	_, err := New(Config{MinConfidence: 7, MinCards: -1, Patterns: []Pattern{
		{Name: "", Regexp: "a"},
		{Name: "x", Regexp: "("},
		{Name: "x", Regexp: "b", MinCount: -2},
		{Name: "e", Regexp: "a*"},
	}})
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{
		"min_confidence: 7", "min_cards: -1", "patterns[0]: name is empty",
		`patterns[1] ("x"): regexp: error parsing regexp`, `patterns[2]: name "x" is already used by patterns[1]`,
		`patterns[2] ("x"): min_count -2 is negative`, `patterns[3] ("e"): regexp "a*" matches the empty string`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

// TestChunking feeds each case byte by byte and in every two-piece split:
// the findings must not change.
func TestChunking(t *testing.T) {
	d := mustNew(t, Config{Cards: true, IBAN: true, Patterns: []Pattern{{Name: "n", Regexp: `\d{3}`}}})
	for _, text := range []string{
		"Card: 4111\u00a01111\u00a01111\u00a01111 exp 12/28 and IBAN DE89 3704 0044 0532 0130 00\n",
		"IMEI 356938035643809, order 4111111111111111, €12,50 12/05/2026 +49 30 1234 5678",
		"gb82 west 1234 5698 7654 32 \u2009x\u2011y\u00a0",
	} {
		want := scan(d, text)
		for i := 0; i <= len(text); i++ {
			s := d.Scanner()
			s.Write([]byte(text[:i]))
			s.Write([]byte(text[i:]))
			if got := s.Close(); !sameFindings(got, want) {
				t.Fatalf("split at %d of %q: %+v, want %+v", i, text, got, want)
			}
		}
		s := d.Scanner()
		for i := 0; i < len(text); i++ {
			s.Write([]byte{text[i]})
		}
		if got := s.Close(); !sameFindings(got, want) {
			t.Fatalf("byte by byte %q: %+v, want %+v", text, got, want)
		}
	}
}

func TestLongLines(t *testing.T) {
	d := mustNew(t, Config{Cards: true, Patterns: []Pattern{{Name: "x", Regexp: `x`}, {Name: "e", Regexp: `xé+x`}}})
	// A line of 3×MaxLine bytes without a newline: memory stays bounded and
	// a card across the forced cut is still found (cards do not use lines).
	// "é" (2 bytes) at the cut: the cut waits for the next character.
	text := strings.Repeat("x", MaxLine-8) + " 4111111111111111 " + strings.Repeat("x", MaxLine-11) + "éééx" + strings.Repeat("x", MaxLine)
	s := d.Scanner()
	s.Write([]byte(text))
	if cap(s.line) > MaxLine+4 {
		t.Errorf("line buffer grew to %d bytes", cap(s.line))
	}
	f := s.Close()
	if f.Cards != 1 || f.Patterns["x"] != 3*MaxLine-18 || f.Patterns["e"] != 0 {
		t.Errorf("got cards %d, x %d, e %d", f.Cards, f.Patterns["x"], f.Patterns["e"])
	}
	for _, n := range []int{1, 7, 4096, MaxLine + 1} {
		s := d.Scanner()
		for p := []byte(text); len(p) > 0; {
			k := min(n, len(p))
			s.Write(p[:k])
			p = p[k:]
		}
		if got := s.Close(); !sameFindings(got, f) {
			t.Errorf("Writes of %d bytes: %+v, want %+v", n, got, f)
		}
	}
}

func TestParseConfidence(t *testing.T) {
	for in, want := range map[string]Confidence{"low": Low, "high": High} {
		if got, err := ParseConfidence(in); err != nil || got != want {
			t.Errorf("ParseConfidence(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := ParseConfidence("medium"); err == nil {
		t.Error("ParseConfidence(medium): no error")
	}
}

func sameFindings(a, b Findings) bool {
	if a.Cards != b.Cards || a.CardsHigh != b.CardsHigh || a.CardsIgnored != b.CardsIgnored ||
		a.IBANs != b.IBANs || len(a.Patterns) != len(b.Patterns) || len(a.Hits) != len(b.Hits) {
		return false
	}
	for k, v := range a.Patterns {
		if b.Patterns[k] != v {
			return false
		}
	}
	for i := range a.Hits {
		if a.Hits[i] != b.Hits[i] {
			return false
		}
	}
	return true
}

// TestWriteAllocs: after the first Write, scanning for cards and IBANs
// allocates nothing, however much text goes through: the Scanner's memory
// does not grow with the input.
func TestWriteAllocs(t *testing.T) {
	d := mustNew(t, Config{Cards: true, IBAN: true})
	chunk := []byte(strings.Repeat("Card 4111 1111 1111 1111 exp 12/28, IBAN DE89 3704 0044 0532 0130 00; IMEI 356938035643809\n", 700))
	s := d.Scanner()
	s.Write(chunk)
	if n := testing.AllocsPerRun(20, func() { s.Write(chunk) }); n != 0 {
		t.Errorf("%.1f allocations per %d-byte Write, want 0", n, len(chunk))
	}
	if f := s.Close(); f.Cards != 22*700 || f.IBANs != 22*700 {
		t.Errorf("got %d cards, %d IBANs, want %d each (22 Writes: one, the warm-up run, 20 runs)", f.Cards, f.IBANs, 22*700)
	}
}
