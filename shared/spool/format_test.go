package spool

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"testing"
)

func TestDecodeRecord(t *testing.T) {
	valid := appendRecord(nil, 7, 1234, []byte(`{"event":"accept"}`))
	mutate := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(valid)) }
	body := appendBodyRecord(nil, 8, 1234, bodyRef{id: 5, size: 50 << 20, crc: 0xdeadbeef})
	mutate2 := func(b []byte, f func(b []byte)) []byte { b = bytes.Clone(b); f(b); return b }
	// fixCRC makes a changed record verify again: what a buggy writer,
	// not bit rot, would produce.
	fixCRC := func(b []byte) {
		binary.LittleEndian.PutUint32(b, crc32.Checksum(b[4:], crc32.MakeTable(crc32.Castagnoli)))
	}
	tests := []struct {
		name    string
		in      []byte
		wantErr bool
		wantN   int
	}{
		{"valid", valid, false, len(valid)},
		{"valid with trailing bytes", append(bytes.Clone(valid), 1, 2, 3), false, len(valid)},
		{"empty data", appendRecord(nil, 1, 0, nil), false, recHeaderLen},
		{"empty input", nil, true, 0},
		{"short header", valid[:recHeaderLen-1], true, 0},
		{"short data", valid[:len(valid)-1], true, 0},
		{"data byte flipped", mutate(func(b []byte) []byte { b[len(b)-1] ^= 1; return b }), true, 0},
		{"seq changed", mutate(func(b []byte) []byte { b[8]++; return b }), true, 0},
		{"time changed", mutate(func(b []byte) []byte { b[16]++; return b }), true, 0},
		{"length grown", mutate(func(b []byte) []byte { b[4]++; return append(b, 0) }), true, 0},
		{"length beyond limit", mutate(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[4:], maxRecordLen+1); return b }), true, 0},
		{"seq zero", appendRecord(nil, 0, 0, []byte("x")), true, 0},
		{"body record", body, false, len(body)},
		{"body record, flag cleared", mutate2(body, func(b []byte) { b[7] &^= 0x80; fixCRC(b) }), false, len(body)},
		{"body record, size changed", mutate2(body, func(b []byte) { b[recHeaderLen+8]++ }), true, 0},
		{"body record of the wrong length", appendRecordFlags(nil, 3, 0, recFlagBody, make([]byte, bodyRefLen+1)), true, 0},
		{"body record with id 0", appendBodyRecord(nil, 3, 0, bodyRef{id: 0, size: 9}), true, 0},
		{"body record with a negative size", appendBodyRecord(nil, 3, 0, bodyRef{id: 1, size: -1}), true, 0},
		{"other flag bits", mutate2(valid, func(b []byte) { b[7] |= 0x40; fixCRC(b) }), true, 0},
		{"zeros", make([]byte, 64), true, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, n, err := decodeRecord(tc.in)
			if (err != nil) != tc.wantErr || n != tc.wantN {
				t.Fatalf("decodeRecord = n %d, err %v; want n %d, error %v", n, err, tc.wantN, tc.wantErr)
			}
			if err != nil && !errors.Is(err, errTorn) {
				t.Fatalf("error %v does not wrap errTorn", err)
			}
		})
	}
}

// FuzzDecodeRecord: arbitrary bytes never panic the decoder, and whatever it
// accepts has a matching CRC-32C and re-encodes to the same bytes.
func FuzzDecodeRecord(f *testing.F) {
	valid := appendRecord(nil, 42, 1700000000000000000, []byte(`{"queue_id":"4Xyz","action":"reject"}`))
	f.Add(valid)
	f.Add(append(bytes.Clone(valid), valid...))
	f.Add(valid[:len(valid)-3])
	f.Add(appendRecord(nil, 1, 0, nil))
	f.Add([]byte{})
	f.Add(make([]byte, recHeaderLen))
	body := appendBodyRecord(nil, 43, 1700000000000000000, bodyRef{id: 9, size: 50 << 20, crc: 0x12345678})
	f.Add(body)
	f.Add(append(bytes.Clone(body), valid...))
	f.Add(body[:len(body)-1])
	f.Fuzz(func(t *testing.T, b []byte) {
		h, data, n, err := decodeRecord(b)
		if err != nil {
			if !errors.Is(err, errTorn) {
				t.Fatalf("error %v does not wrap errTorn", err)
			}
			return
		}
		if n < recHeaderLen || n > len(b) || n != recHeaderLen+len(data) {
			t.Fatalf("n = %d for %d input bytes and %d data bytes", n, len(b), len(data))
		}
		if got := crc32.Checksum(b[4:n], crc32.MakeTable(crc32.Castagnoli)); got != binary.LittleEndian.Uint32(b) {
			t.Fatalf("accepted a record whose CRC %08x does not match %08x", got, binary.LittleEndian.Uint32(b))
		}
		re := appendRecord(nil, h.seq, h.ts, data)
		if h.body {
			// A body record holds a reference a writer could have made.
			ref, err := decodeBodyRef(data)
			if err != nil {
				t.Fatalf("accepted a body record whose reference does not decode: %v", err)
			}
			re = appendBodyRecord(nil, h.seq, h.ts, ref)
		}
		if !bytes.Equal(re, b[:n]) {
			t.Fatalf("re-encoding differs")
		}
	})
}

func TestCursorSlot(t *testing.T) {
	b := encodeCursorSlot(99)
	if seq, ok := decodeCursorSlot(b); !ok || seq != 99 {
		t.Fatalf("decode = %d, %v; want 99, true", seq, ok)
	}
	for i := range b {
		c := bytes.Clone(b)
		c[i] ^= 0x10
		if _, ok := decodeCursorSlot(c); ok {
			t.Fatalf("slot with byte %d flipped accepted", i)
		}
	}
}
