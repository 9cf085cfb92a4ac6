package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// Sizes and limits of the on-disk format (see the package comment).
const (
	segHeaderLen = 24
	recHeaderLen = 24
	// maxRecordLen bounds the length field so that a corrupt length is rejected
	// before anything is allocated for it. Larger records go to body files.
	maxRecordLen = 16 << 20

	// recFlagBody in the length field marks a body record: its data is a
	// body reference (bodyRefLen bytes) naming a body file, not the record's
	// content. The CRC covers the flag with the rest of the header.
	recFlagBody = 1 << 31
	bodyRefLen  = 20 // body id u64 | size u64 | CRC-32C of the body u32

	segMagic    = "GMSPOOL1"
	cursorMagic = 0x474d4355 // "GMCU"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// errTorn reports bytes that are not a complete, valid record: a short read,
// an impossible length, or a checksum mismatch. During Open it marks the
// point where a segment is truncated.
var errTorn = errors.New("torn or corrupt record")

// recHeader is the fixed part in front of every record's data.
type recHeader struct {
	crc    uint32
	length uint32 // of the data in the segment, without recFlagBody
	body   bool   // the data is a body reference
	seq    uint64
	ts     int64 // Unix nanoseconds from Options.Clock at Append
}

// appendRecord encodes one record onto dst.
func appendRecord(dst []byte, seq uint64, ts int64, data []byte) []byte {
	return appendRecordFlags(dst, seq, ts, 0, data)
}

// appendBodyRecord encodes the record of a body file onto dst.
func appendBodyRecord(dst []byte, seq uint64, ts int64, ref bodyRef) []byte {
	return appendRecordFlags(dst, seq, ts, recFlagBody, ref.encode())
}

func appendRecordFlags(dst []byte, seq uint64, ts int64, flags uint32, data []byte) []byte {
	start := len(dst)
	var h [recHeaderLen]byte
	binary.LittleEndian.PutUint32(h[4:], flags|uint32(len(data)))
	binary.LittleEndian.PutUint64(h[8:], seq)
	binary.LittleEndian.PutUint64(h[16:], uint64(ts))
	dst = append(dst, h[:]...)
	dst = append(dst, data...)
	crc := crc32.Checksum(dst[start+4:], castagnoli)
	binary.LittleEndian.PutUint32(dst[start:], crc)
	return dst
}

// parseHeader decodes a record header without checking the checksum; it
// rejects lengths no writer could have produced.
func parseHeader(b []byte) (recHeader, error) {
	if len(b) < recHeaderLen {
		return recHeader{}, fmt.Errorf("%w: short header (%d bytes)", errTorn, len(b))
	}
	raw := binary.LittleEndian.Uint32(b[4:])
	h := recHeader{
		crc:    binary.LittleEndian.Uint32(b[0:]),
		length: raw &^ recFlagBody,
		body:   raw&recFlagBody != 0,
		seq:    binary.LittleEndian.Uint64(b[8:]),
		ts:     int64(binary.LittleEndian.Uint64(b[16:])),
	}
	if h.length > maxRecordLen {
		return recHeader{}, fmt.Errorf("%w: length %d exceeds %d", errTorn, h.length, maxRecordLen)
	}
	if h.body && h.length != bodyRefLen {
		return recHeader{}, fmt.Errorf("%w: body record of length %d, want %d", errTorn, h.length, bodyRefLen)
	}
	if h.seq == 0 {
		return recHeader{}, fmt.Errorf("%w: sequence number 0", errTorn)
	}
	return h, nil
}

// checkRecord verifies the checksum of a header and its data; hdr is the raw
// header bytes (recHeaderLen of them).
func checkRecord(h recHeader, hdr, data []byte) error {
	c := crc32.Update(crc32.Checksum(hdr[4:recHeaderLen], castagnoli), castagnoli, data)
	if c != h.crc {
		return fmt.Errorf("%w: checksum %08x, want %08x", errTorn, c, h.crc)
	}
	if h.body {
		_, err := decodeBodyRef(data)
		return err
	}
	return nil
}

// decodeRecord decodes the record at the start of b. It returns the header,
// the data (aliasing b) and the record's total encoded size. Any error wraps
// errTorn: b does not start with a complete record whose checksum matches.
func decodeRecord(b []byte) (recHeader, []byte, int, error) {
	h, err := parseHeader(b)
	if err != nil {
		return recHeader{}, nil, 0, err
	}
	n := recHeaderLen + int(h.length)
	if len(b) < n {
		return recHeader{}, nil, 0, fmt.Errorf("%w: record of %d bytes, only %d present", errTorn, n, len(b))
	}
	data := b[recHeaderLen:n]
	if err := checkRecord(h, b[:recHeaderLen], data); err != nil {
		return recHeader{}, nil, 0, err
	}
	return h, data, n, nil
}

// encodeSegHeader returns the header written at offset 0 of every segment.
func encodeSegHeader(base uint64) []byte {
	b := make([]byte, segHeaderLen)
	copy(b, segMagic)
	binary.LittleEndian.PutUint64(b[8:], base)
	binary.LittleEndian.PutUint32(b[16:], crc32.Checksum(b[:16], castagnoli))
	return b
}

// checkSegHeader reports whether b is a valid header for a segment whose
// file name says it starts at base.
func checkSegHeader(b []byte, base uint64) error {
	if len(b) < segHeaderLen {
		return fmt.Errorf("%w: short segment header", errTorn)
	}
	if string(b[:8]) != segMagic {
		return fmt.Errorf("%w: bad segment magic", errTorn)
	}
	if crc32.Checksum(b[:16], castagnoli) != binary.LittleEndian.Uint32(b[16:]) {
		return fmt.Errorf("%w: segment header checksum", errTorn)
	}
	if got := binary.LittleEndian.Uint64(b[8:]); got != base {
		return fmt.Errorf("%w: segment header says base %d, file name %d", errTorn, got, base)
	}
	return nil
}

// bodyRef is the data of a body record: which body file holds the record's
// content, its size and its CRC-32C, checked as the body is read.
type bodyRef struct {
	id   uint64 // the file is bodyPath(dir, id)
	size int64
	crc  uint32
}

func (r bodyRef) encode() []byte {
	b := make([]byte, bodyRefLen)
	binary.LittleEndian.PutUint64(b[0:], r.id)
	binary.LittleEndian.PutUint64(b[8:], uint64(r.size))
	binary.LittleEndian.PutUint32(b[16:], r.crc)
	return b
}

// decodeBodyRef decodes the data of a verified body record. The record's
// CRC already vouches for the bytes; this rejects values no writer makes.
func decodeBodyRef(b []byte) (bodyRef, error) {
	if len(b) != bodyRefLen {
		return bodyRef{}, fmt.Errorf("%w: body reference of %d bytes, want %d", errTorn, len(b), bodyRefLen)
	}
	r := bodyRef{
		id:   binary.LittleEndian.Uint64(b[0:]),
		size: int64(binary.LittleEndian.Uint64(b[8:])),
		crc:  binary.LittleEndian.Uint32(b[16:]),
	}
	if r.id == 0 || r.size < 0 {
		return bodyRef{}, fmt.Errorf("%w: body reference id %d size %d", errTorn, r.id, r.size)
	}
	return r, nil
}
