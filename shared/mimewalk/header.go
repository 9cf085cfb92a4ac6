package mimewalk

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"mime"
	"strconv"
	"strings"

	"github.com/emersion/go-message/textproto"
)

// Header is a read-only view of one part's header fields (unfolded values, as
// go-message's textproto parses them).
type Header struct {
	h textproto.Header
}

// Get returns the first value of the field key (case-insensitive), "" when
// absent.
func (h Header) Get(key string) string { return h.h.Get(key) }

// Values returns every value of the field key, in order.
func (h Header) Values(key string) []string { return h.h.Values(key) }

// Has reports whether the field key is present.
func (h Header) Has(key string) bool { return h.h.Has(key) }

// Len returns the number of fields.
func (h Header) Len() int { return h.h.Len() }

// Text returns the first value of key with RFC 2047 encoded words decoded to
// UTF-8 (an undecodable word is left as it is).
func (h Header) Text(key string) string { return decodeWords(h.h.Get(key)) }

// Each calls fn for every field, in order, until fn returns false.
func (h Header) Each(fn func(key, value string) bool) {
	fs := h.h.Fields()
	for fs.Next() {
		if !fn(fs.Key(), fs.Value()) {
			return
		}
	}
}

// readHeader reads one header block (RFC 5322 §2.2, RFC 2045 §3) of at most
// Limits.MaxHeaderBytes and parses it with textproto.ReadHeader. It stops at
// the empty line, at the end of input, or at a line that is neither a field
// nor a continuation: that line is returned in rest, as the start of the body
// (a part that starts without its empty line still has its text scanned).
func (w *walker) readHeader(br *bufio.Reader, path string) (Header, io.Reader, error) {
	max := w.lim.MaxHeaderBytes
	var block []byte
	var rest io.Reader
	over := false
	for first := true; ; first = false {
		line, long, err := readLine(br, max)
		if err != nil && err != io.EOF {
			if src := w.ioErr(); src != nil {
				return Header{}, nil, src
			}
			w.problem(path, "encoding", "reading header: %v", err)
		}
		if len(line) == 0 {
			break
		}
		if isBlank(line) {
			break
		}
		cont := line[0] == ' ' || line[0] == '\t'
		if (cont && first) || (!cont && !isField(line)) {
			w.problem(path, "header", "line %d of the header is not a field: header ends there", bytes.Count(block, []byte("\n"))+1)
			rest = bytes.NewReader(line)
			break
		}
		if long || len(block)+len(line) > max {
			if !over {
				w.problem(path, "header", "header block longer than %d bytes: rest of it dropped", max)
			}
			over = true
		} else if !over {
			block = append(block, line...)
			if line[len(line)-1] != '\n' {
				block = append(block, '\r', '\n')
			}
		}
		if err != nil {
			break
		}
	}
	block = append(block, '\r', '\n')
	th, err := textproto.ReadHeader(bufio.NewReaderSize(bytes.NewReader(block), len(block)))
	if err != nil {
		w.problem(path, "header", "malformed header field: %v", clip(err.Error()))
	}
	return Header{h: th}, rest, nil
}

// readLine reads one line with its line end. A line longer than max is cut
// to max bytes, the rest of it skipped, and long set.
func readLine(br *bufio.Reader, max int) (line []byte, long bool, err error) {
	for {
		frag, err := br.ReadSlice('\n')
		if len(line)+len(frag) > max {
			long = true
			frag = frag[:max-len(line)]
		}
		line = append(line, frag...)
		if err != bufio.ErrBufferFull {
			return line, long, err
		}
	}
}

func isBlank(line []byte) bool {
	return string(line) == "\r\n" || string(line) == "\n"
}

// isField reports whether line starts with a field name and a colon (RFC 5322
// §2.2: printable US-ASCII except ":"; whitespace before the colon is
// tolerated, as it is in the wild).
func isField(line []byte) bool {
	i := bytes.IndexByte(line, ':')
	if i <= 0 {
		return false
	}
	name := bytes.TrimRight(line[:i], " \t")
	if len(name) == 0 {
		return false
	}
	for _, c := range name {
		if c < 33 || c > 126 {
			return false
		}
	}
	return true
}

// describe fills a Part from its header fields.
func (w *walker) describe(h Header, path string, depth int, inDigest bool) *Part {
	p := &Part{Path: path, Depth: depth, Header: h, Params: map[string]string{}}
	ct := strings.TrimSpace(h.Get("Content-Type"))
	p.MediaType = "text/plain" // RFC 2045 §5.2
	if inDigest {
		p.MediaType = "message/rfc822" // RFC 2046 §5.1.5
	}
	if ct != "" {
		mt, params, err := mime.ParseMediaType(ct)
		switch {
		case err != nil && !errors.Is(err, mime.ErrInvalidMediaParameter) || !strings.Contains(mt, "/"):
			// RFC 2045 §5.2: an invalid Content-Type is taken as text/plain.
			w.problem(path, "header", "invalid Content-Type: taken as text/plain")
			p.MediaType = "text/plain"
			params = nil
		case err != nil:
			w.problem(path, "header", "invalid Content-Type parameter")
			p.MediaType = mt
		default:
			p.MediaType = mt
		}
		for k, v := range params {
			p.Params[k] = v
		}
		if params != nil {
			if v, ok := rfc2231(ct, "name"); ok {
				p.Params["name"] = v
			}
		}
	}
	p.Charset = strings.ToLower(strings.TrimSpace(p.Params["charset"]))

	if cd := strings.TrimSpace(h.Get("Content-Disposition")); cd != "" {
		// RFC 2183 §2.
		d, params, err := mime.ParseMediaType(cd)
		if err != nil {
			w.problem(path, "header", "invalid Content-Disposition")
		}
		p.Disposition = d
		p.FileName = params["filename"]
		if v, ok := rfc2231(cd, "filename"); ok {
			p.FileName = v
		}
	}
	if p.FileName == "" {
		p.FileName = p.Params["name"]
	}
	// RFC 2047 §5 forbids encoded words in a quoted string, yet mail clients
	// put them in file names; decode them as every reader does.
	p.FileName = decodeWords(p.FileName)

	text := strings.HasPrefix(p.MediaType, "text/")
	p.Attachment = p.Disposition == "attachment" || p.FileName != "" || !text
	p.Text = text && !p.Attachment
	return p
}

// decodeWords decodes RFC 2047 encoded words, leaving the value as it is when
// that fails.
func decodeWords(s string) string {
	if !strings.Contains(s, "=?") {
		return s
	}
	d := mime.WordDecoder{CharsetReader: charsetReader}
	out, err := d.DecodeHeader(s)
	if err != nil {
		return s
	}
	return out
}

// rfc2231 decodes the parameter name from a raw header value when it is
// given in RFC 2231 form (name*=, name*0=, name*0*=, …); ok is false when it
// is not. mime.ParseMediaType keeps extended values (RFC 2231 §4) only in
// UTF-8 or US-ASCII, and drops or half-joins the others. RFC 2231 §3 continuations (name*0*, name*1, …)
// are joined in order; an extended value's charset'language' prefix (§4) is
// on the first segment; extended segments are %-decoded (§4), then the whole
// is converted from the charset to UTF-8.
func rfc2231(raw, name string) (string, bool) {
	type seg struct {
		v   string
		ext bool
	}
	segs := map[int]seg{}
	_, params, _ := strings.Cut(raw, ";")
	for _, f := range strings.Split(params, ";") {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			continue
		}
		k = strings.ToLower(strings.TrimSpace(k))
		v = strings.Trim(strings.TrimSpace(v), `"`)
		if !strings.HasPrefix(k, name+"*") {
			continue
		}
		rest := k[len(name)+1:]
		s := seg{v: v, ext: true}
		idx := 0
		if rest != "" {
			s.ext = strings.HasSuffix(rest, "*")
			n, err := strconv.Atoi(strings.TrimSuffix(rest, "*"))
			if err != nil || n < 0 || n > 1000 {
				continue
			}
			idx = n
		}
		if _, dup := segs[idx]; !dup {
			segs[idx] = s
		}
	}
	first, ok := segs[0]
	if !ok {
		return "", false
	}
	cs := ""
	if first.ext {
		c, rest, ok1 := strings.Cut(first.v, "'")
		_, v, ok2 := strings.Cut(rest, "'")
		if ok1 && ok2 {
			cs, first.v = c, v
		}
		segs[0] = first
	}
	var b []byte
	for i := 0; ; i++ {
		s, ok := segs[i]
		if !ok {
			break
		}
		if s.ext {
			b = append(b, percentDecode(s.v)...)
		} else {
			b = append(b, s.v...)
		}
	}
	out, err := toUTF8(cs, b)
	if err != nil {
		return string(b), true
	}
	return out, true
}

// percentDecode undoes RFC 2231 §4 %XX escapes; a bad escape stays as it is.
func percentDecode(s string) []byte {
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			if h, ok := unhex(s[i+1]); ok {
				if l, ok := unhex(s[i+2]); ok {
					b = append(b, h<<4|l)
					i += 2
					continue
				}
			}
		}
		b = append(b, s[i])
	}
	return b
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
