package mimewalk

import (
	"bufio"
	"bytes"
	"io"
)

// splitter cuts the body of a multipart entity into its body parts (RFC 2046
// §5.1.1), line by line, so that no line length and no part size matters: it
// holds at most one buffer (8 KiB) of input. The splitter itself is the
// io.Reader of the current part's raw content (header block and body).
//
// RFC 2046 §5.1.1 rules kept here:
//   - a boundary delimiter line is "--" boundary, optional whitespace, CRLF;
//     the close delimiter adds "--" after the boundary;
//   - "the CRLF preceding the boundary delimiter line is conceptually
//     attached to the boundary": a line end is held back until the next line
//     is known not to be a delimiter;
//   - the preamble (before the first delimiter) and the epilogue (after the
//     close delimiter) are ignored.
//
// Tolerated, as in the wild: bare LF line ends, a first delimiter without a
// preceding line end, and a close delimiter at the end of input without its
// CRLF. A missing close delimiter ends the last part at the end of input.
type splitter struct {
	br   *bufio.Reader
	dash []byte // "--" + boundary

	state        int // one of the split* states
	lineStart    bool
	pre          []byte // held-back line end to hand out before line
	line         []byte // rest of the current content line (valid until the next read of br)
	preBuf       [2]byte
	pendBuf      [2]byte
	pend         int // length of the line end held back in pendBuf
	sawDelimiter bool
	closed       bool
}

const (
	splitPreamble = iota // before the first delimiter
	splitPart            // inside a part
	splitBetween         // a delimiter was read, its part not started yet
	splitEnd             // close delimiter or end of input
)

func newSplitter(r io.Reader, boundary string) *splitter {
	return &splitter{
		br:        bufio.NewReaderSize(r, 8192),
		dash:      []byte("--" + boundary),
		lineStart: true,
	}
}

// next skips the rest of the current part (or the preamble) and reports
// whether another part follows.
func (s *splitter) next() (bool, error) {
	if s.state == splitPreamble || s.state == splitPart {
		if _, err := io.Copy(io.Discard, s); err != nil {
			return false, err
		}
	}
	if s.state != splitBetween {
		return false, nil
	}
	s.state = splitPart
	s.lineStart, s.pend, s.pre, s.line = true, 0, nil, nil
	return true, nil
}

// Read reads the current part's raw content; io.EOF at its end.
func (s *splitter) Read(p []byte) (int, error) {
	for len(s.pre) == 0 && len(s.line) == 0 {
		if s.state != splitPreamble && s.state != splitPart {
			return 0, io.EOF
		}
		if err := s.readLine(); err != nil {
			return 0, err
		}
	}
	n := copy(p, s.pre)
	s.pre = s.pre[n:]
	m := copy(p[n:], s.line)
	s.line = s.line[m:]
	return n + m, nil
}

// readLine reads the next line (or a buffer's worth of a long one) and
// either ends the part at a delimiter or queues the line as content.
func (s *splitter) readLine() error {
	l, err := s.br.ReadSlice('\n')
	complete := err == nil
	if err != nil && err != bufio.ErrBufferFull && err != io.EOF {
		return err
	}
	if len(l) == 0 && err == io.EOF {
		s.state = splitEnd
		return nil
	}
	if s.lineStart && (complete || err == io.EOF) && bytes.HasPrefix(l, s.dash) {
		if d := s.delimiter(l[len(s.dash):]); d != 0 {
			s.sawDelimiter = true
			s.state = splitBetween
			if d == 2 {
				s.closed = true
				s.state = splitEnd
			}
			if err == io.EOF && d == 1 {
				s.state = splitEnd // a delimiter, then nothing
			}
			return nil
		}
	}
	// Content: the line end held back before this line is content after all.
	copy(s.preBuf[:], s.pendBuf[:s.pend])
	s.pre = s.preBuf[:s.pend]
	s.pend = 0
	if complete {
		end := 1
		if len(l) >= 2 && l[len(l)-2] == '\r' {
			end = 2
		}
		s.pend = copy(s.pendBuf[:], l[len(l)-end:])
		l = l[:len(l)-end]
	}
	if s.state == splitPreamble {
		s.pre, l = nil, nil // RFC 2046 §5.1.1: the preamble is ignored
	}
	s.line = l
	s.lineStart = complete
	if err == io.EOF {
		s.state = splitEnd
		if len(s.pre) == 0 && len(s.line) == 0 {
			return nil
		}
	}
	return nil
}

// delimiter classifies what follows "--boundary" on a line: 1 a delimiter, 2
// the close delimiter, 0 neither (the line is content).
func (s *splitter) delimiter(rest []byte) int {
	kind := 1
	if bytes.HasPrefix(rest, []byte("--")) {
		kind, rest = 2, rest[2:]
	}
	rest = bytes.TrimRight(rest, " \t\r\n")
	if len(rest) != 0 {
		return 0
	}
	return kind
}
