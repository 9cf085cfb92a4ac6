package state

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// HLC is a hybrid logical clock timestamp: physical wall time in Unix
// milliseconds, a logical counter that orders events within (or behind) the
// same millisecond, and the site that issued it, which breaks the remaining
// ties deterministically.
type HLC struct {
	Wall    int64  // Unix milliseconds
	Logical uint32 // events at the same Wall
	Site    string // issuing site; the higher name wins a tie
}

// Widths of the encoded fields: 15 decimal digits of milliseconds last until
// the year 33658, 10 digits hold any uint32. Fixed widths make the string
// order equal the timestamp order, so merges can compare strings.
const (
	hlcWallDigits    = 15
	hlcLogicalDigits = 10
)

// String encodes the timestamp as "WWWWWWWWWWWWWWW.LLLLLLLLLL.site", which
// sorts (byte-wise) in the same order as Compare.
func (h HLC) String() string {
	w := h.Wall
	if w < 0 {
		w = 0
	}
	b := make([]byte, 0, hlcWallDigits+hlcLogicalDigits+2+len(h.Site))
	b = appendPadded(b, uint64(w), hlcWallDigits)
	b = append(b, '.')
	b = appendPadded(b, uint64(h.Logical), hlcLogicalDigits)
	b = append(b, '.')
	b = append(b, h.Site...)
	return string(b)
}

func appendPadded(b []byte, v uint64, width int) []byte {
	var tmp [20]byte
	s := strconv.AppendUint(tmp[:0], v, 10)
	for i := len(s); i < width; i++ {
		b = append(b, '0')
	}
	return append(b, s...)
}

// ParseHLC decodes a string produced by HLC.String.
func ParseHLC(s string) (HLC, error) {
	parts := strings.SplitN(s, ".", 3)
	if len(parts) != 3 || len(parts[0]) != hlcWallDigits || len(parts[1]) != hlcLogicalDigits {
		return HLC{}, fmt.Errorf("hlc %q: want %d digits.%d digits.site", s, hlcWallDigits, hlcLogicalDigits)
	}
	w, err := strconv.ParseUint(parts[0], 10, 63)
	if err != nil {
		return HLC{}, fmt.Errorf("hlc %q: wall: %w", s, err)
	}
	l, err := strconv.ParseUint(parts[1], 10, 32)
	if err != nil {
		return HLC{}, fmt.Errorf("hlc %q: logical: %w", s, err)
	}
	return HLC{Wall: int64(w), Logical: uint32(l), Site: parts[2]}, nil
}

// Compare orders timestamps: wall time, then logical counter, then site name.
func (h HLC) Compare(o HLC) int {
	switch {
	case h.Wall != o.Wall:
		if h.Wall < o.Wall {
			return -1
		}
		return 1
	case h.Logical != o.Logical:
		if h.Logical < o.Logical {
			return -1
		}
		return 1
	}
	return strings.Compare(h.Site, o.Site)
}

// Time is the physical part as a time.Time.
func (h HLC) Time() time.Time { return time.UnixMilli(h.Wall) }

// HLCClock issues HLC timestamps for one site. It is safe for concurrent use.
//
// Timestamps it issues are strictly increasing, even when the wall clock
// steps backwards, and after Update(remote) every later timestamp is greater
// than remote: an edit made after seeing another site's version always wins
// over that version, whatever the two wall clocks say.
type HLCClock struct {
	site  string
	clock func() time.Time

	mu   sync.Mutex
	last HLC
}

// NewHLCClock returns a clock for site reading wall time from clock
// (time.Now if nil).
func NewHLCClock(site string, clock func() time.Time) *HLCClock {
	if clock == nil {
		clock = time.Now
	}
	return &HLCClock{site: site, clock: clock, last: HLC{Site: site}}
}

// Now returns a timestamp greater than every one issued or observed before.
func (c *HLCClock) Now() HLC {
	pt := c.clock().UnixMilli()
	c.mu.Lock()
	defer c.mu.Unlock()
	if pt > c.last.Wall {
		c.last.Wall, c.last.Logical = pt, 0
	} else {
		c.bumpLogical()
	}
	return HLC{Wall: c.last.Wall, Logical: c.last.Logical, Site: c.site}
}

// Update merges a timestamp observed from elsewhere and returns a new local
// timestamp greater than both it and everything issued before.
func (c *HLCClock) Update(remote HLC) HLC {
	pt := c.clock().UnixMilli()
	c.mu.Lock()
	defer c.mu.Unlock()
	w := max(pt, c.last.Wall, remote.Wall)
	switch {
	case w == c.last.Wall && w == remote.Wall:
		c.last.Logical = max(c.last.Logical, remote.Logical)
		c.bumpLogical()
	case w == c.last.Wall:
		c.bumpLogical()
	case w == remote.Wall:
		c.last.Wall, c.last.Logical = w, remote.Logical
		c.bumpLogical()
	default:
		c.last.Wall, c.last.Logical = w, 0
	}
	return HLC{Wall: c.last.Wall, Logical: c.last.Logical, Site: c.site}
}

// bumpLogical advances the counter; on the (theoretical) overflow it borrows
// a millisecond instead, which keeps the order strictly increasing.
func (c *HLCClock) bumpLogical() {
	if c.last.Logical == ^uint32(0) {
		c.last.Wall++
		c.last.Logical = 0
		return
	}
	c.last.Logical++
}
