package yamlconf

import (
	"fmt"
	"math"
	"math/bits"
	"strconv"
	"strings"
)

// Size is a number of bytes written in a config file as "4096", "64KiB",
// "512MiB", "1GiB" (powers of 1024) or "10MB" (powers of 1000). A decimal
// fraction such as "1.5GiB" is allowed and rounded down to whole bytes.
type Size int64

var sizeUnits = []struct {
	name string
	mult int64
}{
	// Longest names first so "KiB" is not read as "B".
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1000}, {"MB", 1000 * 1000}, {"GB", 1000 * 1000 * 1000}, {"TB", 1000 * 1000 * 1000 * 1000},
	{"B", 1},
}

// ParseSize parses the notation described on Size.
func ParseSize(s string) (Size, error) {
	bad := func() (Size, error) {
		return 0, fmt.Errorf("invalid size %q (want e.g. 4096, 64KiB, 512MiB, 1GiB, 10MB)", s)
	}
	num, mult := s, int64(1)
	for _, u := range sizeUnits {
		if len(s) > len(u.name) && strings.EqualFold(s[len(s)-len(u.name):], u.name) {
			num, mult = s[:len(s)-len(u.name)], u.mult
			break
		}
	}
	whole, frac, hasFrac := strings.Cut(num, ".")
	if whole == "" || !allDigits(whole) || (hasFrac && (frac == "" || !allDigits(frac))) {
		return bad()
	}
	w, err := strconv.ParseInt(whole, 10, 64)
	if err != nil || w > math.MaxInt64/mult {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	total := w * mult
	if hasFrac {
		// Exact integer arithmetic; digits beyond the 18th cannot change a
		// byte count below 2^63 and would overflow the denominator.
		if len(frac) > 18 {
			frac = frac[:18]
		}
		f, _ := strconv.ParseUint(frac, 10, 64)
		den := uint64(math.Pow10(len(frac)))
		// f < den, so f*mult/den < mult: the 128-bit product divides
		// without overflow and the result fits in int64.
		hi, lo := bits.Mul64(f, uint64(mult))
		q, _ := bits.Div64(hi, lo, den)
		add := int64(q)
		if total > math.MaxInt64-add {
			return 0, fmt.Errorf("size %q is too large", s)
		}
		total += add
	}
	return Size(total), nil
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// UnmarshalYAMLConf implements Unmarshaler.
func (s *Size) UnmarshalYAMLConf(value string) error {
	v, err := ParseSize(value)
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// String renders the size in the largest binary unit that divides it, so
// that a value read from a file prints the way it was most likely written.
func (s Size) String() string {
	for _, u := range []struct {
		name string
		mult int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if s != 0 && int64(s)%u.mult == 0 {
			return strconv.FormatInt(int64(s)/u.mult, 10) + u.name
		}
	}
	return strconv.FormatInt(int64(s), 10)
}
