package dkimcheck

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"strings"
)

// VerifyMessage verifies the DKIM signatures of a whole message read from r
// — a file as stored, with CRLF or LF line ends — through the same
// streaming Verifier the milter feeds as a message arrives. It is for tools
// and tests that hold the message as a file; the header is bounded by
// DefaultMaxHeaderBytes, the body streams.
func VerifyMessage(ctx context.Context, r io.Reader, opts VerifyOptions) ([]Result, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	fields, err := readHeaderFields(br, DefaultMaxHeaderBytes)
	if err != nil {
		return nil, err
	}
	v := NewVerifier(ctx, opts)
	for _, f := range fields {
		name, raw, ok := strings.Cut(f, ":")
		if !ok {
			continue // not a header field: the Verifier would drop it too
		}
		v.Header(name, strings.TrimSuffix(raw, "\r\n"))
	}
	v.EndHeaders()
	// RFC 6376 §3.4: canonicalisation works on CRLF lines; a file with LF
	// line ends is the same message.
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line[:0], chunk...)
		if n := len(line); n > 0 && line[n-1] == '\n' && (n < 2 || line[n-2] != '\r') {
			line = append(line[:n-1], '\r', '\n')
		}
		if len(line) > 0 {
			v.Body(line)
		}
		switch err {
		case nil, bufio.ErrBufferFull:
		case io.EOF:
			return v.Close()
		default:
			v.Abort()
			return nil, fmt.Errorf("dkim verify: reading the body: %w", err)
		}
	}
}
