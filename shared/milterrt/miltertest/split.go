package miltertest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"
)

// SplitMessage splits a raw RFC 5322 message (LF or CRLF line ends) into
// the header fields and the body as Postfix sends them to a milter
// (../rfc/5322 2.2, 2.2.3): the name without the whitespace before the
// colon, the value exactly as after the colon with folded lines joined by
// "\n"; the body after the empty line, with CRLF line ends. A line that is
// neither a header field nor a continuation ends the header as the empty
// line does, and starts the body (Postfix treats it so). The body is read
// from r as the returned reader is read.
func SplitMessage(r io.Reader) ([]Header, io.Reader, error) {
	br := bufio.NewReader(r)
	var hs []Header
	for {
		line, err := br.ReadString('\n')
		if err != nil && err != io.EOF {
			return nil, nil, fmt.Errorf("reading the message header: %w", err)
		}
		text := strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
		if line == "" || text == "" {
			return hs, &crlfReader{br: br}, nil // end of message, or the empty line
		}
		if text[0] == ' ' || text[0] == '\t' {
			if len(hs) == 0 {
				return nil, nil, errors.New("message header starts with a continuation line")
			}
			hs[len(hs)-1].Value += "\n" + text
		} else if name, value, ok := strings.Cut(text, ":"); ok && validName(strings.TrimRight(name, " \t")) {
			hs = append(hs, Header{Name: strings.TrimRight(name, " \t"), Value: value})
		} else {
			// Not a header: the body starts here.
			return hs, &crlfReader{br: br, pending: []byte(text + lineEnd(line))}, nil
		}
		if err == io.EOF {
			return hs, &crlfReader{br: br}, nil
		}
	}
}

// validName: printable ASCII but colon (../rfc/5322 3.6.8).
func validName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 33 || s[i] > 126 {
			return false
		}
	}
	return true
}

func lineEnd(line string) string {
	if strings.HasSuffix(line, "\n") {
		return "\r\n"
	}
	return ""
}

// crlfReader gives its input with every line ending in CRLF.
type crlfReader struct {
	br      *bufio.Reader
	buf     []byte
	pending []byte
	lastCR  bool // the last byte passed on was a CR (of a line longer than the buffer)
	err     error
}

func (c *crlfReader) Read(p []byte) (int, error) {
	for len(c.pending) == 0 {
		if c.err != nil {
			return 0, c.err
		}
		line, err := c.br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			err = nil // a long line: passed on in pieces
		}
		c.buf = append(c.buf[:0], line...)
		if n := len(c.buf); n > 0 && c.buf[n-1] == '\n' {
			cr := (n >= 2 && c.buf[n-2] == '\r') || (n == 1 && c.lastCR)
			if !cr {
				c.buf = append(c.buf[:n-1], '\r', '\n')
			}
		}
		if len(c.buf) > 0 {
			c.lastCR = c.buf[len(c.buf)-1] == '\r'
		}
		c.pending, c.err = c.buf, err
	}
	n := copy(p, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}
