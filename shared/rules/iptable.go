package rules

import (
	"encoding/binary"
	"net/netip"
	"slices"
)

// postings stores the list of values filed under one key compactly: a map
// holds an int32 per key, the value itself when there is one (the common
// case), or -(n+1) pointing at multi[n] when there are several. Lookups thus
// touch a 4-byte map slot instead of a slice header and its backing array.
type postings struct {
	multi [][]int32
}

func (p *postings) add(cur int32, exists bool, v int32) int32 {
	switch {
	case !exists:
		return v
	case cur >= 0:
		p.multi = append(p.multi, []int32{cur, v})
		return -int32(len(p.multi))
	default:
		p.multi[-cur-1] = append(p.multi[-cur-1], v)
		return cur
	}
}

func (p *postings) appendTo(dst []int32, v int32) []int32 {
	if v >= 0 {
		return append(dst, v)
	}
	return append(dst, p.multi[-v-1]...)
}

func (p *postings) first(v int32) int32 {
	if v >= 0 {
		return v
	}
	return p.multi[-v-1][0]
}

// prefixTable maps network prefixes to values (rule ranks, tenant indexes),
// one hash table per prefix length actually used. A lookup masks the address
// once per used length — a handful in practice (/32, /24, /16, /128, /64,
// /48) — so it costs a few map probes however many networks are loaded, and
// building it is a plain map insert per prefix.
type prefixTable struct {
	v4   lenTables[uint32]
	v6   lenTables[v6key]
	post postings
}

type v6key struct{ hi, lo uint64 }

type lenTables[K comparable] struct {
	bits []int // longest first
	maps []map[K]int32
}

func (lt *lenTables[K]) table(bits int) map[K]int32 {
	i, found := slices.BinarySearchFunc(lt.bits, bits, func(have, want int) int { return want - have })
	if !found {
		lt.bits = slices.Insert(lt.bits, i, bits)
		lt.maps = slices.Insert(lt.maps, i, make(map[K]int32))
	}
	return lt.maps[i]
}

func key4(a netip.Addr, bits int) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:]) & ^(^uint32(0) >> bits) // shifts >= 32 give 0: /32 keeps all
}

func key6(a netip.Addr, bits int) v6key {
	b := a.As16()
	hi, lo := binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
	if bits <= 64 {
		return v6key{hi & ^(^uint64(0) >> bits), 0}
	}
	return v6key{hi, lo & ^(^uint64(0) >> (bits - 64))}
}

func (t *prefixTable) empty() bool { return len(t.v4.bits) == 0 && len(t.v6.bits) == 0 }

// add records v under p, which must be masked and unmapped.
func (t *prefixTable) add(p netip.Prefix, v int32) {
	a, bits := p.Addr(), p.Bits()
	if a.Is4() {
		m, k := t.v4.table(bits), key4(a, bits)
		cur, ok := m[k]
		m[k] = t.post.add(cur, ok, v)
		return
	}
	m, k := t.v6.table(bits), key6(a, bits)
	cur, ok := m[k]
	m[k] = t.post.add(cur, ok, v)
}

// appendAll appends the values of every prefix containing a (unmapped),
// longest prefix first.
func (t *prefixTable) appendAll(dst []int32, a netip.Addr) []int32 {
	if a.Is4() {
		for i, bits := range t.v4.bits {
			if v, ok := t.v4.maps[i][key4(a, bits)]; ok {
				dst = t.post.appendTo(dst, v)
			}
		}
		return dst
	}
	for i, bits := range t.v6.bits {
		if v, ok := t.v6.maps[i][key6(a, bits)]; ok {
			dst = t.post.appendTo(dst, v)
		}
	}
	return dst
}

// longest returns the first value of the longest prefix containing a.
func (t *prefixTable) longest(a netip.Addr) (int32, bool) {
	if a.Is4() {
		for i, bits := range t.v4.bits {
			if v, ok := t.v4.maps[i][key4(a, bits)]; ok {
				return t.post.first(v), true
			}
		}
		return 0, false
	}
	for i, bits := range t.v6.bits {
		if v, ok := t.v6.maps[i][key6(a, bits)]; ok {
			return t.post.first(v), true
		}
	}
	return 0, false
}
