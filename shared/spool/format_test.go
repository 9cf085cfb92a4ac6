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
		if re := appendRecord(nil, h.seq, h.ts, data); !bytes.Equal(re, b[:n]) {
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
