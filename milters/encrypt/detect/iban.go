package detect

// IBAN: ISO 13616-1. An IBAN is a two-letter ISO 3166-1 country code, two
// check digits and a country-specific BBAN of fixed length; it is valid when
// the number formed by moving the first four characters to the end, letters
// replaced by 10..35, is 1 mod 97 (ISO 13616-1 §6, ISO 7064 MOD 97-10). The
// electronic format is compact; the paper format groups it in fours
// separated by single spaces (ISO 13616-1 §5.2). Both are accepted, in any
// letter case.

// ibanLengths is the total IBAN length per country code, from the SWIFT IBAN
// registry (the ISO 13616 registration authority): every SEPA country and the
// other registered ones.
var ibanLengths = map[string]int{
	"AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16,
	"BG": 22, "BH": 22, "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22,
	"CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20,
	"EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22,
	"GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21,
	"HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30,
	"KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
	"LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20,
	"MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23,
	"PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22,
	"RU": 33, "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24,
	"SM": 27, "SO": 23, "ST": 25, "SV": 28, "TL": 23, "TN": 24, "TR": 26,
	"UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}

// maxIBAN is the longest registered IBAN (Russia, 33; 34 is the ISO limit).
const maxIBAN = 34

// ibanLen is ibanLengths as a 26×26 table, so that the scanner looks a
// country up without building a string.
var ibanLen = func() (t [26][26]uint8) {
	for cc, n := range ibanLengths {
		t[cc[0]-'A'][cc[1]-'A'] = uint8(n)
	}
	return t
}()

// ibanValid reports whether s (upper-case letters and digits, compact, of
// the country's length) has valid check digits: 02..98 (ISO 13616-1 §6.2,
// 00, 01 and 99 are never issued) and the whole is 1 mod 97.
func ibanValid(s []byte) bool {
	if len(s) < 5 {
		return false
	}
	cd := int(s[2]-'0')*10 + int(s[3]-'0')
	if cd < 2 || cd > 98 {
		return false
	}
	rem := 0
	add := func(c byte) {
		switch {
		case c >= '0' && c <= '9':
			rem = (rem*10 + int(c-'0')) % 97
		default: // 'A'..'Z' → 10..35: two digits
			rem = (rem*100 + int(c-'A') + 10) % 97
		}
	}
	for _, c := range s[4:] {
		add(c)
	}
	for _, c := range s[:4] {
		add(c)
	}
	return rem == 1
}
