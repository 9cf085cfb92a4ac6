package mimewalk

import (
	"bytes"
	"html"
	"io"
)

// TextReader returns the UTF-8 text of a text part's body as Walk hands it
// over: text/html reduced to its visible text (see htmlText), any other type
// as it is.
func TextReader(p *Part, body io.Reader) io.Reader {
	if p.MediaType == "text/html" {
		return newHTMLText(body)
	}
	return body
}

// MaxLinkLen bounds an attribute value LinkReader hands to its callback;
// longer values are cut there (a host comes early in a URL).
const MaxLinkLen = 2048

// LinkReader is TextReader that, for a text/html part, also calls link with
// the value of every href and src attribute of a start tag, as the text is
// read: character references decoded, spaces around trimmed, at most
// MaxLinkLen bytes. The slice is valid only during the call. For any other
// type link is never called. This lets a scanner find the URLs of a message
// in the same single pass as its text, holding at most one bounded value.
func LinkReader(p *Part, body io.Reader, link func(value []byte)) io.Reader {
	if p.MediaType == "text/html" {
		h := newHTMLText(body)
		h.link = link
		return h
	}
	return body
}

// htmlText reduces HTML to the text a reader sees, as a stream, one byte at a
// time: tags, comments, declarations and the content of script and style are
// dropped; character references are decoded (the stdlib's html.UnescapeString,
// which knows the HTML5 named references); block elements and <br> become a
// line end, table cells a tab, so that words and numbers of different blocks
// or cells never join. It holds at most a tag name and one character
// reference, never a whole token, unlike golang.org/x/net/html's tokenizer.
// It is no HTML5 parser: enough for scanning, not for rendering.
type htmlText struct {
	r       io.Reader
	in      [4096]byte
	out     []byte
	pending []byte
	err     error

	state   int
	name    []byte // tag name being read (lower case, at most 16 bytes)
	endTag  bool
	quote   byte   // quote character inside a tag's attribute value
	ref     []byte // character reference being read, "&" included
	raw     string // "</script" or "</style" while inside one
	rawPos  int    // bytes of raw matched
	dashes  int    // "-" seen in a comment, for "-->"
	declPos int    // bytes of "<!--" matched after "<!"

	// Attribute tracking for LinkReader (link != nil). It watches the bytes
	// of a start tag beside the state machine above, never changing it, so
	// that the text is the same with or without it.
	link  func([]byte)
	aSt   int     // aNone, aName, aAfterName, aBeforeValue, aValue
	aName [4]byte // attribute name, lower case, first 4 bytes
	aLen  int     // attribute name length (may exceed len(aName))
	aQ    byte    // quote of the value being read, 0 when unquoted
	aWant bool    // the value is an href or src
	aVal  []byte  // the value read so far, at most MaxLinkLen bytes
	aDec  []byte  // aVal with character references decoded
}

// States of the attribute tracker (HTML5 §13.2.5.32-38, simplified).
const (
	aNone        = iota // before an attribute name
	aName               // in an attribute name
	aAfterName          // after a name, "=" may follow
	aBeforeValue        // after "="
	aValue              // in a value
)

const (
	hText    = iota
	hLT      // after "<"
	hTagName // reading a tag name
	hTag     // inside a tag, after its name
	hDecl    // after "<!": a comment if "--" follows, else a declaration
	hComment // inside "<!-- ... -->"
	hBogus   // "<?...>" or "<!...>": skipped to ">"
	hRef     // after "&"
	hRaw     // inside script or style
)

const maxRef = 32

func newHTMLText(r io.Reader) *htmlText {
	return &htmlText{r: r, name: make([]byte, 0, 16), ref: make([]byte, 0, maxRef)}
}

func (h *htmlText) Read(p []byte) (int, error) {
	for len(h.pending) == 0 {
		if h.err != nil {
			return 0, h.err
		}
		m, err := h.r.Read(h.in[:])
		h.err = err
		h.out = h.out[:0]
		for _, c := range h.in[:m] {
			h.step(c)
		}
		if err != nil {
			h.finish()
		}
		h.pending = h.out
	}
	n := copy(p, h.pending)
	h.pending = h.pending[n:]
	return n, nil
}

// finish flushes what is held at the end of input.
func (h *htmlText) finish() {
	switch h.state {
	case hRef:
		h.out = append(h.out, html.UnescapeString(string(h.ref))...)
	case hLT:
		h.out = append(h.out, '<')
	}
	h.state = hText
}

func isLetter(c byte) bool { return c|0x20 >= 'a' && c|0x20 <= 'z' }

func lower(c byte) byte {
	if c >= 'A' && c <= 'Z' {
		return c | 0x20
	}
	return c
}

func (h *htmlText) step(c byte) {
	switch h.state {
	case hText:
		switch c {
		case '<':
			h.state = hLT
		case '&':
			h.state = hRef
			h.ref = append(h.ref[:0], '&')
		default:
			h.out = append(h.out, c)
		}
	case hRef:
		if (isLetter(c) || c >= '0' && c <= '9' || c == '#') && len(h.ref) < maxRef {
			h.ref = append(h.ref, c)
			return
		}
		if c == ';' && len(h.ref) < maxRef {
			h.ref = append(h.ref, c)
			h.out = append(h.out, html.UnescapeString(string(h.ref))...)
			h.state = hText
			return
		}
		h.out = append(h.out, html.UnescapeString(string(h.ref))...)
		h.state = hText
		h.step(c)
	case hLT:
		switch {
		case isLetter(c):
			h.state, h.endTag = hTagName, false
			h.name = append(h.name[:0], lower(c))
		case c == '/':
			h.state, h.endTag = hTagName, true
			h.name = h.name[:0]
		case c == '!':
			h.state, h.declPos = hDecl, 0
		case c == '?':
			h.state = hBogus
		default:
			// "a < b": a "<" that opens no tag is text (HTML5 §13.2.5.6).
			h.out = append(h.out, '<')
			h.state = hText
			h.step(c)
		}
	case hTagName:
		if isLetter(c) || c >= '0' && c <= '9' {
			if len(h.name) < cap(h.name) {
				h.name = append(h.name, lower(c))
			}
			return
		}
		h.state, h.aSt = hTag, aNone
		h.step(c)
	case hTag:
		if h.link != nil && !h.endTag {
			h.attr(c)
		}
		switch {
		case h.quote != 0:
			if c == h.quote {
				h.quote = 0
			}
		case c == '"' || c == '\'':
			h.quote = c
		case c == '>':
			h.endOfTag()
		}
	case hDecl:
		if c == '-' {
			h.declPos++
			if h.declPos == 2 {
				h.state, h.dashes = hComment, 0
			}
			return
		}
		h.state = hBogus
		h.step(c)
	case hComment:
		switch {
		case c == '-':
			h.dashes++
		case c == '>' && h.dashes >= 2:
			h.state = hText
		default:
			h.dashes = 0
		}
	case hBogus:
		if c == '>' {
			h.state = hText
		}
	case hRaw:
		// Inside script or style: only "</script" (or "</style") ends it.
		if lower(c) == h.raw[h.rawPos] {
			h.rawPos++
			if h.rawPos == len(h.raw) {
				h.raw, h.state, h.endTag = "", hTag, true
				h.name = h.name[:0]
			}
			return
		}
		h.rawPos = 0
		if c == '<' {
			h.rawPos = 1
		}
	}
}

// endOfTag acts on a complete tag: script and style start raw text to drop;
// block elements and line breaks become a line end, cells a tab.
func (h *htmlText) endOfTag() {
	h.state = hText
	name := string(h.name)
	if !h.endTag && (name == "script" || name == "style") {
		h.state, h.raw, h.rawPos = hRaw, "</"+name, 0
		return
	}
	switch name {
	case "td", "th":
		h.out = append(h.out, '\t')
	case "br", "p", "div", "li", "tr", "table", "ul", "ol", "dl", "dt", "dd",
		"h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "hr",
		"section", "article", "header", "footer", "nav", "aside", "title",
		"address", "form", "fieldset", "center", "body", "html", "head":
		h.out = append(h.out, '\n')
	}
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' }

// attr follows the attributes of a start tag and reports href and src values.
func (h *htmlText) attr(c byte) {
	switch h.aSt {
	case aNone:
		if !isSpace(c) && c != '/' && c != '>' {
			h.aSt, h.aLen = aName, 0
			h.attrName(c)
		}
	case aAfterName:
		switch {
		case isSpace(c):
		case c == '=':
			h.aSt = aBeforeValue
		case c == '/' || c == '>':
			h.aSt = aNone
		default:
			h.aSt, h.aLen = aName, 0
			h.attrName(c)
		}
	case aName:
		switch {
		case isSpace(c):
			h.aSt = aAfterName
		case c == '=':
			h.aSt = aBeforeValue
		case c == '/' || c == '>':
			h.aSt = aNone
		default:
			h.attrName(c)
		}
	case aBeforeValue:
		if isSpace(c) {
			return
		}
		if c == '>' {
			h.aSt = aNone
			return
		}
		n := string(h.aName[:min(h.aLen, len(h.aName))])
		h.aWant = h.aLen <= len(h.aName) && (n == "href" || n == "src")
		h.aSt, h.aQ, h.aVal = aValue, 0, h.aVal[:0]
		if c == '"' || c == '\'' {
			h.aQ = c
			return
		}
		h.attrValue(c)
	case aValue:
		if h.aQ != 0 && c == h.aQ || h.aQ == 0 && (isSpace(c) || c == '>') {
			h.aSt = aNone
			h.emitLink()
			return
		}
		h.attrValue(c)
	}
}

func (h *htmlText) attrName(c byte) {
	if h.aLen < len(h.aName) {
		h.aName[h.aLen] = lower(c)
	}
	h.aLen++
}

func (h *htmlText) attrValue(c byte) {
	if h.aWant && len(h.aVal) < MaxLinkLen {
		if h.aVal == nil {
			h.aVal = make([]byte, 0, 256)
		}
		h.aVal = append(h.aVal, c)
	}
}

// emitLink hands a complete href or src value to the callback.
func (h *htmlText) emitLink() {
	if !h.aWant {
		return
	}
	h.aWant = false
	v := h.aVal
	if bytes.IndexByte(v, '&') >= 0 {
		h.aDec = append(h.aDec[:0], html.UnescapeString(string(v))...)
		v = h.aDec
	}
	v = bytes.TrimSpace(v)
	if len(v) > 0 {
		h.link(v)
	}
}
