package mimewalk

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"golang.org/x/text/encoding"
	"golang.org/x/text/encoding/htmlindex"
	"golang.org/x/text/encoding/ianaindex"
	"golang.org/x/text/transform"
)

// transferDecoder undoes a Content-Transfer-Encoding (RFC 2045 §6.1). An
// unknown encoding passes the body as is and is recorded (RFC 2045 §6.4: such
// a body is to be treated as application/octet-stream; the scanner still
// sees its bytes).
func (w *walker) transferDecoder(cte, path string, r io.Reader) io.Reader {
	switch cte {
	case "", "7bit", "8bit", "binary":
		return r
	case "base64":
		return &base64Reader{r: r, problem: func(d string) { w.problem(path, "encoding", "base64: %s", d) }}
	case "quoted-printable":
		return &qpReader{r: r}
	}
	w.problem(path, "encoding", "unknown Content-Transfer-Encoding %q: body passed as is", clip(cte))
	return r
}

// base64Reader decodes base64 (RFC 2045 §6.8) leniently: characters outside
// the alphabet are skipped (§6.8: "must be ignored", recorded once when they
// are not whitespace), a "=" ends the current quantum and decoding goes on
// after it (bodies made of several encoded blobs exist), a dangling sextet at
// the end is recorded. It never fails on content.
type base64Reader struct {
	r       io.Reader
	problem func(detail string)
	in      [4096]byte
	out     [3 * 4096 / 4 * 2]byte
	pending []byte
	q       uint32 // sextets of the quantum being read
	n       int    // number of sextets in q
	junk    bool
	err     error
}

var b64 = func() (t [256]int8) {
	for i := range t {
		t[i] = -1
	}
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	for i := 0; i < len(alphabet); i++ {
		t[alphabet[i]] = int8(i)
	}
	return t
}()

func (b *base64Reader) Read(p []byte) (int, error) {
	for len(b.pending) == 0 {
		if b.err != nil {
			if b.err == io.EOF && b.n == 1 {
				b.problem("dangling character at the end")
				b.n = 0
			}
			return 0, b.err
		}
		m, err := b.r.Read(b.in[:])
		b.err = err
		out := b.out[:0]
		for _, c := range b.in[:m] {
			v := b64[c]
			if v < 0 {
				switch c {
				case '=':
					out = b.flush(out)
				case ' ', '\t', '\r', '\n':
				default:
					if !b.junk {
						b.junk = true
						b.problem(fmt.Sprintf("byte 0x%02x outside the alphabet skipped", c))
					}
				}
				continue
			}
			b.q = b.q<<6 | uint32(v)
			b.n++
			if b.n == 4 {
				out = append(out, byte(b.q>>16), byte(b.q>>8), byte(b.q))
				b.q, b.n = 0, 0
			}
		}
		if err != nil {
			out = b.flush(out)
		}
		b.pending = out
	}
	n := copy(p, b.pending)
	b.pending = b.pending[n:]
	return n, nil
}

// flush ends a quantum early (padding or end of input): 2 sextets give one
// byte, 3 give two (RFC 2045 §6.8).
func (b *base64Reader) flush(out []byte) []byte {
	switch b.n {
	case 2:
		out = append(out, byte(b.q>>4))
	case 3:
		out = append(out, byte(b.q>>10), byte(b.q>>2))
	case 1:
		return out // kept: reported at the end if nothing follows
	}
	b.q, b.n = 0, 0
	return out
}

// qpReader decodes quoted-printable (RFC 2045 §6.7) leniently, one byte at a
// time, so that no line length matters: "=XX" is the octet XX (rule 1), "="
// before the line end (after optional whitespace) is a soft line break (rule
// 5), and a "=" not followed by either stays a literal "=" as most readers
// show it. Trailing whitespace (rule 3) is kept: it changes nothing for a
// scanner.
type qpReader struct {
	r       io.Reader
	in      [4096]byte
	out     [4096 + 2 + maxQPSpace]byte
	pending []byte
	state   int    // 0 text, 1 after "=", 2 after "=" and a hex digit, 3 after "=" and whitespace, 4 after "=" ... CR
	hi      byte   // the hex digit in state 2
	ws      []byte // whitespace after "=" in state 3, at most maxQPSpace
	err     error
}

func (q *qpReader) Read(p []byte) (int, error) {
	for len(q.pending) == 0 {
		if q.err != nil {
			return 0, q.err
		}
		m, err := q.r.Read(q.in[:])
		q.err = err
		out := q.out[:0]
		for _, c := range q.in[:m] {
			out = q.step(out, c)
		}
		if err != nil {
			switch q.state {
			case 2:
				out = append(out, '=', q.hi)
			case 3:
				out = append(out, '=')
				out = append(out, q.ws...)
			}
			q.state = 0
		}
		q.pending = out
	}
	n := copy(p, q.pending)
	q.pending = q.pending[n:]
	return n, nil
}

// maxQPSpace bounds the whitespace kept between "=" and a line end: a line
// is at most 76 characters (RFC 2045 §6.7 rule 5).
const maxQPSpace = 80

func (q *qpReader) step(out []byte, c byte) []byte {
	switch q.state {
	case 1:
		if _, ok := unhex(c); ok {
			q.hi, q.state = c, 2
			return out
		}
		switch c {
		case '\r':
			q.state = 4
			return out
		case '\n':
			q.state = 0
			return out
		case ' ', '\t':
			q.state = 3
			q.ws = append(q.ws[:0], c)
			return out
		}
		out = append(out, '=')
	case 2:
		h, _ := unhex(q.hi)
		if l, ok := unhex(c); ok {
			q.state = 0
			return append(out, h<<4|l)
		}
		out = append(out, '=', q.hi)
	case 3:
		switch c {
		case ' ', '\t':
			if len(q.ws) < maxQPSpace {
				q.ws = append(q.ws, c)
				return out
			}
		case '\r':
			q.state = 4
			return out
		case '\n':
			q.state = 0
			return out
		}
		// Not a soft line break after all: "=" and the spaces are text.
		out = append(out, '=')
		out = append(out, q.ws...)
	case 4:
		q.state = 0
		if c == '\n' {
			return out
		}
	}
	q.state = 0
	if c == '=' {
		q.state = 1
		return out
	}
	return append(out, c)
}

// charsetDecoder converts a text part to UTF-8 (RFC 2046 §4.1.2). UTF-8,
// US-ASCII and no charset pass as they are (RFC 2046 §4.1.2: the default is
// US-ASCII; 8-bit bytes then are most often UTF-8); an unknown charset
// passes as is and is recorded.
func (w *walker) charsetDecoder(cs, path string, r io.Reader) io.Reader {
	enc, err := lookupCharset(cs)
	if err != nil {
		w.problem(path, "charset", "%v: body passed as is", err)
		return r
	}
	if enc == nil {
		return r
	}
	return transform.NewReader(r, enc.NewDecoder())
}

// lookupCharset finds a charset by its IANA (MIME) name, else its WHATWG
// name. nil, nil: UTF-8 or ASCII, nothing to convert.
func lookupCharset(cs string) (encoding.Encoding, error) {
	cs = strings.ToLower(strings.Trim(cs, " \t\"'"))
	switch cs {
	case "", "utf-8", "utf8", "us-ascii", "ascii":
		return nil, nil
	}
	enc, err := ianaindex.MIME.Encoding(cs)
	if enc == nil || err != nil {
		enc, err = htmlindex.Get(cs)
	}
	if enc == nil || err != nil {
		return nil, fmt.Errorf("unknown charset %q", clip(cs))
	}
	return enc, nil
}

// charsetReader is mime.WordDecoder's CharsetReader (RFC 2047 §2).
func charsetReader(cs string, input io.Reader) (io.Reader, error) {
	enc, err := lookupCharset(cs)
	if err != nil {
		return nil, err
	}
	if enc == nil {
		return input, nil
	}
	return enc.NewDecoder().Reader(input), nil
}

// toUTF8 converts b from the charset cs.
func toUTF8(cs string, b []byte) (string, error) {
	enc, err := lookupCharset(cs)
	if err != nil {
		return "", err
	}
	if enc == nil {
		return string(b), nil
	}
	out, err := enc.NewDecoder().Bytes(b)
	if err != nil {
		return "", errors.New("charset conversion failed")
	}
	return string(out), nil
}
