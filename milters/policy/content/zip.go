package content

import (
	"bufio"
	"bytes"
	"compress/flate"
	"encoding/binary"
	"io"
	"unicode/utf8"

	"golang.org/x/text/encoding/charmap"

	"github.com/geomilter/geomilter/shared/mimewalk"
)

// maxZipName bounds an entry name handed to the sink; the rest is skipped.
const maxZipName = 1024

// Signatures of the zip format (APPNOTE.TXT 6.3.10 §4.3.7, §4.3.9, §4.3.12,
// §4.3.14, §4.3.16).
var (
	sigLocal      = []byte("PK\x03\x04")
	sigDescriptor = []byte("PK\x07\x08")
	sigCentral    = []byte("PK\x01\x02")
	sigEnd        = []byte("PK\x05\x06")
	sigEnd64      = []byte("PK\x06\x06")
)

// zipLister lists a zip archive as a stream, from its local file headers
// in order (APPNOTE §4.3.7), without the central directory at the end: a
// milter reads the message once and must not hold an attachment. For each
// entry it reports the name and the type sniffed from the entry's first
// bytes: a stored entry's raw bytes, a deflated entry's first
// mimewalk.SniffLen bytes inflated and no more. An encrypted entry gives
// its name only; an entry that is itself a zip is reported as type "zip"
// and not opened (no recursion: one level is what mail clients show, and
// recursion would multiply the bounds). An entry whose sizes follow its
// data (flag bit 3, §4.3.9) is skipped by scanning forward to the next
// signature. Its buffers are reused across entries and archives.
type zipLister struct {
	br    *bufio.Reader
	lim   limitedByteReader
	fl    io.ReadCloser
	hdr   [26]byte
	name  []byte
	extra []byte
	sniff [mimewalk.SniffLen]byte
}

func newZipLister() *zipLister {
	return &zipLister{br: bufio.NewReaderSize(nil, 4096), name: make([]byte, 0, 64)}
}

// list reports the entries of the archive read from r to found. ok is
// false when the listing was cut (maxEntries, or the archive ends before
// its central directory: cut by the scan limit, or truncated) or the
// archive is malformed. err is only a read error other than the end of r.
func (z *zipLister) list(r io.Reader, maxEntries int, found func(name, typ string)) (ok bool, err error) {
	z.br.Reset(r)
	malformed := false
	for entries := 0; ; entries++ {
		sig, err := z.br.Peek(4)
		if err != nil {
			return false, readErr(err)
		}
		switch {
		case bytes.Equal(sig, sigCentral), bytes.Equal(sig, sigEnd), bytes.Equal(sig, sigEnd64):
			return !malformed, nil // the listing is complete
		case bytes.Equal(sig, sigDescriptor) && entries == 0:
			// A split archive's marker before the first header (§8.5.4).
			z.br.Discard(4)
			entries--
			continue
		case !bytes.Equal(sig, sigLocal):
			return false, nil
		}
		if entries >= maxEntries {
			return false, nil
		}
		bad, err := z.entry(found)
		if err != nil {
			return false, readErr(err)
		}
		malformed = malformed || bad
	}
}

// readErr: the end of the input ends a listing (cut); another error is the
// source's and stops the walk.
func readErr(err error) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return nil
	}
	return err
}

// entry reads one local file header (APPNOTE §4.3.7), reports it and skips
// its data. bad: the entry's data was corrupt (the listing goes on).
func (z *zipLister) entry(found func(name, typ string)) (bad bool, err error) {
	if _, err := z.br.Discard(4); err != nil {
		return false, err
	}
	h := z.hdr[:]
	if _, err := io.ReadFull(z.br, h); err != nil {
		return false, err
	}
	// §4.4: version(2) flags(2) method(2) time(2) date(2) crc(4)
	// compressed(4) uncompressed(4) name length(2) extra length(2).
	flags := binary.LittleEndian.Uint16(h[2:])
	method := binary.LittleEndian.Uint16(h[4:])
	csize := int64(binary.LittleEndian.Uint32(h[14:]))
	usize := int64(binary.LittleEndian.Uint32(h[18:]))
	nameLen := int(binary.LittleEndian.Uint16(h[22:]))
	extraLen := int(binary.LittleEndian.Uint16(h[24:]))

	keep := min(nameLen, maxZipName)
	if cap(z.name) < keep {
		z.name = make([]byte, keep)
	}
	z.name = z.name[:keep]
	if _, err := io.ReadFull(z.br, z.name); err != nil {
		return false, err
	}
	if _, err := discard(z.br, int64(nameLen-keep)); err != nil {
		return false, err
	}
	if csize == 0xFFFFFFFF || usize == 0xFFFFFFFF {
		// Zip64 (§4.5.3): the sizes are in extra field 0x0001.
		if cap(z.extra) < extraLen {
			z.extra = make([]byte, extraLen)
		}
		z.extra = z.extra[:extraLen]
		if _, err := io.ReadFull(z.br, z.extra); err != nil {
			return false, err
		}
		csize, usize = zip64Sizes(z.extra, csize, usize)
	} else if _, err := discard(z.br, int64(extraLen)); err != nil {
		return false, err
	}

	name := entryName(z.name, flags)
	descriptor := flags&0x8 != 0 && csize == 0
	encrypted := flags&0x1 != 0
	dir := len(name) > 0 && name[len(name)-1] == '/' && usize == 0

	var used int64 // bytes of the entry's data consumed while sniffing
	typ := ""
	switch {
	case encrypted || dir:
	case method == 0: // stored (§4.4.5)
		want := mimewalk.SniffLen
		if !descriptor {
			want = int(min(int64(want), csize))
		}
		first, _ := z.br.Peek(want)
		if descriptor {
			// The data ends at the descriptor or the next header.
			if i := indexSig(first); i >= 0 {
				first = first[:i]
			}
		}
		if len(first) > 0 {
			typ = mimewalk.Sniff(first)
		}
	case method == 8: // deflated (§4.4.5, RFC 1951)
		var n int
		n, used, bad = z.inflate(csize, descriptor)
		if n > 0 {
			typ = mimewalk.Sniff(z.sniff[:n])
		}
	}
	if !dir {
		found(name, typ)
	}
	if descriptor {
		if err := z.seekSignature(); err != nil {
			return false, err
		}
	} else if _, err := discard(z.br, csize-used); err != nil {
		return false, err
	}
	return bad, nil
}

// inflate reads the first bytes of a deflated entry into z.sniff. It
// returns how many it got, how many compressed bytes it consumed, and
// whether the data was corrupt.
func (z *zipLister) inflate(csize int64, descriptor bool) (n int, used int64, bad bool) {
	z.lim = limitedByteReader{br: z.br, left: csize}
	if descriptor {
		z.lim.left = -1
	}
	if z.fl == nil {
		z.fl = flate.NewReader(&z.lim)
	} else if err := z.fl.(flate.Resetter).Reset(&z.lim, nil); err != nil {
		return 0, 0, true
	}
	n, err := io.ReadFull(z.fl, z.sniff[:])
	if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
		bad = true
	}
	return n, z.lim.used, bad
}

// seekSignature skips an entry's data of unknown length up to the next
// local header or central directory, past any data descriptor. A
// signature inside the data would end the entry early: the listing may
// then stop as malformed, which is counted, never worse.
func (z *zipLister) seekSignature() error {
	for {
		b, err := z.br.Peek(z.br.Size())
		if len(b) < 4 {
			if err == nil {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		i := indexSig(b)
		switch {
		case i < 0:
			z.br.Discard(len(b) - 3) // keep what may start a signature
		case bytes.HasPrefix(b[i:], sigDescriptor):
			// crc and sizes follow (4 + 8 or 16 bytes): search on after it.
			z.br.Discard(i + 4)
		default:
			z.br.Discard(i)
			return nil
		}
	}
}

// indexSig returns where the first signature that can follow an entry's
// data starts in b, or -1.
func indexSig(b []byte) int {
	for i := 0; ; i++ {
		j := bytes.Index(b[i:], []byte("PK"))
		if j < 0 || i+j+4 > len(b) {
			return -1
		}
		i += j
		if isSig(b[i:]) {
			return i
		}
	}
}

// isSig: b starts with a signature that can follow an entry's data.
func isSig(b []byte) bool {
	return bytes.HasPrefix(b, sigLocal) || bytes.HasPrefix(b, sigCentral) || bytes.HasPrefix(b, sigEnd) ||
		bytes.HasPrefix(b, sigEnd64) || bytes.HasPrefix(b, sigDescriptor)
}

// zip64Sizes reads the sizes from the Zip64 extended information extra
// field (§4.5.3): the original uncompressed size, then the compressed size,
// each present only when its header field is 0xFFFFFFFF.
func zip64Sizes(extra []byte, csize, usize int64) (int64, int64) {
	for len(extra) >= 4 {
		id := binary.LittleEndian.Uint16(extra)
		size := int(binary.LittleEndian.Uint16(extra[2:]))
		extra = extra[4:]
		if size > len(extra) {
			break
		}
		if id == 0x0001 {
			f := extra[:size]
			if usize == 0xFFFFFFFF && len(f) >= 8 {
				usize = int64(binary.LittleEndian.Uint64(f) & (1<<62 - 1))
				f = f[8:]
			}
			if csize == 0xFFFFFFFF && len(f) >= 8 {
				csize = int64(binary.LittleEndian.Uint64(f) & (1<<62 - 1))
			}
			break
		}
		extra = extra[size:]
	}
	return csize, usize
}

// entryName decodes an entry name: UTF-8 when flag bit 11 says so
// (APPNOTE appendix D), else IBM code page 437 (appendix D.1), though most
// archivers write the local code page: valid UTF-8 is taken as such.
func entryName(b []byte, flags uint16) string {
	ascii := true
	for _, c := range b {
		if c >= utf8.RuneSelf {
			ascii = false
			break
		}
	}
	if ascii || flags&0x800 != 0 || utf8.Valid(b) {
		return string(b)
	}
	s, err := charmap.CodePage437.NewDecoder().Bytes(b)
	if err != nil {
		return string(b)
	}
	return string(s)
}

// discard skips n bytes.
func discard(br *bufio.Reader, n int64) (int64, error) {
	var done int64
	for n > 0 {
		k := int(min(n, 1<<30))
		m, err := br.Discard(k)
		done += int64(m)
		n -= int64(m)
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// limitedByteReader hands flate at most left bytes (left < 0: no limit) and
// is an io.ByteReader, so that flate reads no byte past the deflate stream
// (compress/flate wraps any other reader in a buffer).
type limitedByteReader struct {
	br   *bufio.Reader
	left int64
	used int64
}

func (l *limitedByteReader) Read(p []byte) (int, error) {
	if l.left == 0 {
		return 0, io.EOF
	}
	if l.left > 0 && int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.br.Read(p)
	l.used += int64(n)
	if l.left > 0 {
		l.left -= int64(n)
	}
	return n, err
}

func (l *limitedByteReader) ReadByte() (byte, error) {
	if l.left == 0 {
		return 0, io.EOF
	}
	c, err := l.br.ReadByte()
	if err == nil {
		l.used++
		if l.left > 0 {
			l.left--
		}
	}
	return c, err
}
