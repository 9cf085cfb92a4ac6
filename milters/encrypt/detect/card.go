package detect

// Payment card numbers: ISO/IEC 7812-1 (issuer identification number ranges,
// Luhn check digit, Annex B). The table below holds the major networks'
// published IIN ranges together with the lengths each issues; a number that
// passes Luhn but has no known issuer prefix, or a length that issuer does not
// use, is not a card. Lengths are deliberately narrower than "12–19 for
// everyone": a 15-digit number can only be American Express (34, 37; Diners
// Club is taken at 14 and 16–19 digits only), which keeps IMEI numbers
// (15 digits, Luhn-valid, TAC prefixes 01, 35, 86, 99 …) out.

// issuer is one IIN range: numbers whose first len(lo) digits lie in lo..hi
// and whose length is one of lengths.
type issuer struct {
	lo, hi   string
	lengths  uint32 // bit n set: n digits allowed
	highOnly uint32 // bit n set: n digits count only at High confidence
}

func lens(ns ...int) uint32 {
	var m uint32
	for _, n := range ns {
		m |= 1 << n
	}
	return m
}

var (
	len16to19 = lens(16, 17, 18, 19)
	// issuers lists IIN ranges (ISO/IEC 7812-1 issuer identification
	// numbers, from the networks' own tables). Overlaps are harmless: a
	// number is a card when any range takes it at its length.
	issuers = []issuer{
		// Visa (incl. Electron). 13-digit Visa numbers have not been issued
		// for years, and 13 digits starting with 4 are mostly EAN-13 barcodes
		// (GS1 prefixes 400–440, Germany) and phone numbers without "+":
		// they count only with a card keyword or expiry date nearby.
		{"4", "4", lens(13, 16, 19), lens(13)},
		{"51", "55", lens(16), 0},                     // Mastercard
		{"2221", "2720", lens(16), 0},                 // Mastercard 2-series
		{"34", "34", lens(15), 0},                     // American Express
		{"37", "37", lens(15), 0},                     // American Express
		{"6011", "6011", len16to19, 0},                // Discover
		{"644", "649", len16to19, 0},                  // Discover
		{"65", "65", len16to19, 0},                    // Discover
		{"3528", "3589", len16to19, 0},                // JCB
		{"300", "305", lens(14, 16, 17, 18, 19), 0},   // Diners Club International
		{"3095", "3095", lens(14, 16, 17, 18, 19), 0}, // Diners Club
		{"36", "36", lens(14, 16, 17, 18, 19), 0},     // Diners Club International
		{"38", "39", lens(14, 16, 17, 18, 19), 0},     // Diners Club
		{"62", "62", len16to19, 0},                    // UnionPay
		{"5018", "5018", len16to19, 0},                // Maestro
		{"5020", "5020", len16to19, 0},                // Maestro
		{"5038", "5038", len16to19, 0},                // Maestro
		{"5893", "5893", len16to19, 0},                // Maestro
		{"6304", "6304", len16to19, 0},                // Maestro
		{"6759", "6759", len16to19, 0},                // Maestro
		{"6761", "6763", len16to19, 0},                // Maestro
		{"5019", "5019", lens(16), 0},                 // Dankort
		{"2200", "2204", len16to19, 0},                // Mir
		{"9792", "9792", lens(16), 0},                 // Troy
	}
)

// knownIssuer reports whether digits (ASCII '0'-'9' only) start with a known
// IIN whose network issues numbers of this length, and whether such a number
// counts only at High confidence.
func knownIssuer(digits []byte) (ok, needHigh bool) {
	n := len(digits)
	for _, is := range issuers {
		if is.lengths&(1<<n) == 0 || len(is.lo) > n {
			continue
		}
		p := string(digits[:len(is.lo)])
		if p >= is.lo && p <= is.hi {
			if is.highOnly&(1<<n) == 0 {
				return true, false
			}
			ok, needHigh = true, true
		}
	}
	return ok, needHigh
}

// luhn reports whether the digits pass the Luhn (mod 10) check of
// ISO/IEC 7812-1 Annex B.
func luhn(digits []byte) bool {
	sum := 0
	double := false
	for i := len(digits) - 1; i >= 0; i-- {
		d := int(digits[i] - '0')
		if double {
			d *= 2
			if d > 9 {
				d -= 9
			}
		}
		sum += d
		double = !double
	}
	return sum%10 == 0
}

// allowedGrouping reports whether a number written in groups (sizes in
// order) is in one of the layouts cards are printed and typed in:
// 4-4-4-4 with an optional last group of 1–3 (16–19 digits), 4-4-4-1 (Visa 13),
// 4-6-5 (American Express), 4-6-4 (Diners 14). Other groupings — phone
// numbers (2-3-4-4), IMEI (2-6-6-1), tracking numbers — are not cards.
func allowedGrouping(groups []uint8) bool {
	switch len(groups) {
	case 3:
		return groups[0] == 4 && groups[1] == 6 && (groups[2] == 5 || groups[2] == 4)
	case 4:
		return groups[0] == 4 && groups[1] == 4 && groups[2] == 4 && (groups[3] == 4 || groups[3] == 1)
	case 5:
		return groups[0] == 4 && groups[1] == 4 && groups[2] == 4 && groups[3] == 4 && groups[4] >= 1 && groups[4] <= 3
	}
	return false
}
