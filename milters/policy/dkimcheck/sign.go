package dkimcheck

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// DefaultMaxHeaderBytes bounds the header Sign reads (Postfix's
// header_size_limit is 100 KiB; this is ten times that).
const DefaultMaxHeaderBytes = 1 << 20

// SignedHeaders returns the header fields Sign covers when
// SignOptions.HeaderKeys is nil: RFC 6376 §5.4.1's list, plus the fields
// whose change alters what the reader sees (Sender, Message-ID, the MIME
// fields). Only those present are signed; From is signed once more than
// present (see Sign).
func SignedHeaders() []string {
	return []string{
		"From", "Reply-To", "Subject", "Date", "To", "Cc",
		"Resent-Date", "Resent-From", "Resent-Sender", "Resent-To", "Resent-Cc", "Resent-Message-ID",
		"In-Reply-To", "References",
		"List-Id", "List-Help", "List-Unsubscribe", "List-Unsubscribe-Post", "List-Subscribe",
		"List-Post", "List-Owner", "List-Archive",
		"Sender", "Message-ID",
		"MIME-Version", "Content-Type", "Content-Transfer-Encoding", "Content-ID", "Content-Description",
	}
}

// SignOptions say who signs and how.
type SignOptions struct {
	// Domain is d=, the SDID: the key is published at
	// <Selector>._domainkey.<Domain>.
	Domain string
	// Selector is s=.
	Selector string
	// Identifier is i= (the AUID), optional; it must be Domain or a
	// subdomain of it, with an optional local part (RFC 6376 §3.5).
	Identifier string
	// Key signs: *rsa.PrivateKey (rsa-sha256) or ed25519.PrivateKey
	// (ed25519-sha256, RFC 8463), as LoadKey returns them.
	Key crypto.Signer
	// Now gives t=, the signature time (RFC 6376 §3.5); nil means time.Now.
	Now func() time.Time
	// Expire, when positive, sets x= to t= + Expire (RFC 6376 §3.5: after
	// it, verifiers may treat the signature as invalid).
	Expire time.Duration
	// HeaderKeys are the field names to sign when present; nil means
	// SignedHeaders(). From is always signed.
	HeaderKeys []string
	// MaxHeaderBytes bounds the header read; 0 means DefaultMaxHeaderBytes.
	MaxHeaderBytes int
}

// Sign reads a whole message from r (header, blank line, body; CRLF or LF
// line ends) and returns the value of the DKIM-Signature field that signs
// it: everything after "DKIM-Signature:", starting with a space, folded
// with "\r\n\t" (RFC 5322 §2.2.3), no final line end. The body streams
// through the hash; only the header is kept.
//
// The caller prepends the field: with the milter, InsertHeader(0,
// HeaderName, value) — above the fields it signs (RFC 6376 §5.6). Postfix
// joins folded lines with a bare "\n" on the milter protocol
// (POSTFIX-MILTER-NOTES), so pass strings.ReplaceAll(value, "\r\n", "\n")
// there. The folding does not matter to verifiers: the header is signed
// relaxed, which unfolds it.
//
// What is signed: a=rsa-sha256 or ed25519-sha256, c=relaxed/relaxed, the
// fields of opts.HeaderKeys that are present, each as many times as it
// occurs, and From once more than it occurs (RFC 6376 §8.15: an added From
// would then break the signature).
func Sign(r io.Reader, opts SignOptions) (string, error) {
	algo, err := checkSignOptions(&opts)
	if err != nil {
		return "", err
	}
	br := bufio.NewReader(r)
	fields, err := readHeaderFields(br, opts.MaxHeaderBytes)
	if err != nil {
		return "", err
	}

	// RFC 6376 §3.7: the body hash first (bh=).
	bodyHash := sha256.New()
	canon := &relaxedBody{w: bodyHash}
	if _, err := io.Copy(canon, br); err != nil {
		return "", fmt.Errorf("dkim sign: reading the body: %w", err)
	}
	canon.Close()

	names, err := headerList(fields, opts.HeaderKeys)
	if err != nil {
		return "", err
	}
	now := time.Now
	if opts.Now != nil {
		now = opts.Now
	}
	t := now().Unix()
	tags := [][2]string{
		{"v", "1"},
		{"a", algo},
		{"c", "relaxed/relaxed"},
		{"d", opts.Domain},
		{"s", opts.Selector},
		{"t", strconv.FormatInt(t, 10)},
	}
	if opts.Expire > 0 {
		tags = append(tags, [2]string{"x", strconv.FormatInt(t+int64(opts.Expire/time.Second), 10)})
	}
	if opts.Identifier != "" {
		tags = append(tags, [2]string{"i", opts.Identifier})
	}
	tags = append(tags,
		[2]string{"h", strings.Join(names, ":")},
		[2]string{"bh", base64.StdEncoding.EncodeToString(bodyHash.Sum(nil))},
	)
	unsigned := formatSignature(tags) // ends with "b="

	// RFC 6376 §3.7: the header hash covers the signed fields, picked from
	// the bottom up (§5.4.2), then the DKIM-Signature field itself with an
	// empty b= and no final CRLF.
	h := sha256.New()
	pick := newPicker(fields)
	for _, name := range names {
		if f, ok := pick.next(name); ok {
			io.WriteString(h, relaxedHeader(f))
		}
	}
	io.WriteString(h, strings.TrimSuffix(relaxedHeader(HeaderName+":"+unsigned), "\r\n"))
	digest := h.Sum(nil)

	var sig []byte
	switch k := opts.Key.(type) {
	case ed25519.PrivateKey:
		// RFC 8463 §3: PureEdDSA over the SHA-256 digest.
		sig, err = k.Sign(rand.Reader, digest, crypto.Hash(0))
	default:
		// RFC 6376 §3.3.1: RSASSA-PKCS1-v1_5 with SHA-256.
		sig, err = opts.Key.Sign(rand.Reader, digest, crypto.SHA256)
	}
	if err != nil {
		return "", fmt.Errorf("dkim sign: %s: %w", algo, err)
	}
	return unsigned + foldBase64(base64.StdEncoding.EncodeToString(sig)), nil
}

// checkSignOptions fills defaults and returns a=; the values go into a
// header, so none may hold what would change its structure.
func checkSignOptions(o *SignOptions) (string, error) {
	var algo string
	switch pub := keyPublic(o.Key).(type) {
	case *rsa.PublicKey:
		if bits := pub.N.BitLen(); bits < minRSABits {
			return "", fmt.Errorf("dkim sign: RSA key of %d bits: at least %d needed (RFC 8301 §3.2)", bits, minRSABits)
		}
		algo = "rsa-sha256"
	case ed25519.PublicKey:
		algo = "ed25519-sha256"
	case nil:
		return "", errors.New("dkim sign: no key")
	default:
		return "", fmt.Errorf("dkim sign: unsupported key type %T (want RSA or Ed25519)", pub)
	}
	if !validDomain(o.Domain) {
		return "", fmt.Errorf("dkim sign: invalid domain d=%q", o.Domain)
	}
	if !validDomain(o.Selector) {
		return "", fmt.Errorf("dkim sign: invalid selector s=%q", o.Selector)
	}
	if id := o.Identifier; id != "" {
		at := strings.LastIndexByte(id, '@')
		dom := strings.ToLower(id[at+1:])
		d := strings.ToLower(o.Domain)
		if at < 0 || strings.ContainsAny(id, " \t\r\n;") || (dom != d && !strings.HasSuffix(dom, "."+d)) {
			// RFC 6376 §3.5 i=: the domain part must be d= or a subdomain.
			return "", fmt.Errorf("dkim sign: identifier i=%q is not in domain %q", id, o.Domain)
		}
	}
	if o.MaxHeaderBytes <= 0 {
		o.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	return algo, nil
}

func keyPublic(k crypto.Signer) crypto.PublicKey {
	if k == nil {
		return nil
	}
	return k.Public()
}

// validDomain accepts DNS names (letters, digits, '-', '_', '.'), which is
// what d= and s= are (RFC 6376 §3.5); nothing else can reach the header.
func validDomain(s string) bool {
	if s == "" || len(s) > 253 || s[0] == '.' || s[len(s)-1] == '.' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// readHeaderFields reads header fields up to the blank line (or the end:
// a message without body), each as "Name:value\r\n" with its continuation
// lines, line ends made CRLF.
func readHeaderFields(br *bufio.Reader, max int) ([]string, error) {
	var fields []string
	var cur strings.Builder
	n := 0
	for {
		line, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			// A very long line: gather it whole (still bounded by max).
			buf := append([]byte(nil), line...)
			for err == bufio.ErrBufferFull && n+len(buf) <= max {
				line, err = br.ReadSlice('\n')
				buf = append(buf, line...)
			}
			line = buf
		}
		n += len(line)
		if n > max {
			return nil, fmt.Errorf("dkim sign: header longer than %d bytes", max)
		}
		if err != nil && err != io.EOF {
			return nil, fmt.Errorf("dkim sign: reading the header: %w", err)
		}
		text := strings.TrimRight(string(line), "\r\n")
		if len(line) > 0 && len(text) > 0 && (text[0] == ' ' || text[0] == '\t') && cur.Len() > 0 {
			cur.WriteString(text + "\r\n") // RFC 5322 §2.2.3 continuation
		} else {
			if cur.Len() > 0 {
				fields = append(fields, cur.String())
				cur.Reset()
			}
			if text == "" {
				return fields, nil // the blank line, or the end
			}
			cur.WriteString(text + "\r\n")
		}
		if err == io.EOF {
			if cur.Len() > 0 {
				fields = append(fields, cur.String())
			}
			return fields, nil
		}
	}
}

// headerList is h=: each name of keys once per field of that name present,
// From once more (RFC 6376 §5.4.1, §8.15).
func headerList(fields []string, keys []string) ([]string, error) {
	if keys == nil {
		keys = SignedHeaders()
	}
	count := map[string]int{}
	for _, f := range fields {
		name, _, _ := strings.Cut(f, ":")
		count[strings.ToLower(strings.TrimRight(name, " \t"))]++
	}
	if count["from"] == 0 {
		// RFC 6376 §5.4: From MUST be signed; a message without one has
		// nothing a signature could vouch for (RFC 5322 §3.6 requires it).
		return nil, errors.New("dkim sign: the message has no From header field")
	}
	seen := map[string]bool{}
	var names []string
	for _, k := range append([]string{"From"}, keys...) {
		lk := strings.ToLower(k)
		if seen[lk] || !validFieldName(k) {
			continue
		}
		seen[lk] = true
		for i := 0; i < count[lk]; i++ {
			names = append(names, k)
		}
		if lk == "from" {
			names = append(names, k) // oversigned
		}
	}
	return names, nil
}

// picker hands out the fields of a name from the last one up (RFC 6376
// §5.4.2); once none is left it reports false (a name signed more often
// than present contributes nothing, §5.4).
type picker struct {
	fields []string
	used   map[string]int
}

func newPicker(fields []string) *picker { return &picker{fields: fields, used: map[string]int{}} }

func (p *picker) next(name string) (string, bool) {
	lk := strings.ToLower(name)
	skip := p.used[lk]
	for i := len(p.fields) - 1; i >= 0; i-- {
		n, _, _ := strings.Cut(p.fields[i], ":")
		if !strings.EqualFold(strings.TrimRight(n, " \t"), name) {
			continue
		}
		if skip == 0 {
			p.used[lk]++
			return p.fields[i], true
		}
		skip--
	}
	return "", false
}

// relaxedHeader is RFC 6376 §3.4.2: name lower-cased, unfolded, runs of
// white space made one space, white space around the colon and at the end
// removed; ends with CRLF.
func relaxedHeader(field string) string {
	name, value, _ := strings.Cut(field, ":")
	var b strings.Builder
	b.Grow(len(field))
	b.WriteString(strings.ToLower(strings.TrimRight(name, " \t")))
	b.WriteByte(':')
	wsp, started := false, false
	for i := 0; i < len(value); i++ {
		switch c := value[i]; c {
		case '\r', '\n':
			// unfold: CRLF removed (the WSP after it is kept, then reduced)
		case ' ', '\t':
			wsp = true
		default:
			if wsp && started {
				b.WriteByte(' ')
			}
			wsp, started = false, true
			b.WriteByte(c)
		}
	}
	b.WriteString("\r\n")
	return b.String()
}

// relaxedBody is RFC 6376 §3.4.4 as a stream: white space at line ends
// removed, runs of white space made one space, empty lines at the end
// removed, a CRLF ending a non-empty body. A bare LF counts as a line end
// (the message may come with LF line ends); a bare CR is an ordinary byte.
type relaxedBody struct {
	w     io.Writer
	out   []byte
	wsp   bool // white space pending inside a line
	cr    bool // a CR seen, its LF not yet
	crlfs int  // line ends pending (dropped if only empty lines follow)
	any   bool // something written
}

func (c *relaxedBody) Write(p []byte) (int, error) {
	if cap(c.out) < len(p)+2 {
		c.out = make([]byte, 0, len(p)+64) // reused: chunks are alike
	}
	c.out = c.out[:0]
	for _, ch := range p {
		if c.cr && ch != '\n' {
			c.cr = false
			c.char('\r')
		}
		switch ch {
		case '\r':
			c.cr = true
		case '\n':
			c.cr = false
			c.wsp = false // §3.4.4: trailing white space ignored
			c.crlfs++
		case ' ', '\t':
			c.wsp = true
		default:
			c.char(ch)
		}
	}
	if len(c.out) > 0 {
		if _, err := c.w.Write(c.out); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func (c *relaxedBody) char(ch byte) {
	for ; c.crlfs > 0; c.crlfs-- {
		c.out = append(c.out, '\r', '\n')
	}
	if c.wsp {
		c.out = append(c.out, ' ')
		c.wsp = false
	}
	c.out = append(c.out, ch)
	c.any = true
}

// Close ends the body: a non-empty body ends with one CRLF; an empty one
// stays empty (RFC 6376 §3.4.4, erratum 1384 style as dkimpy and go-msgauth).
func (c *relaxedBody) Close() error {
	c.out = c.out[:0]
	if c.cr {
		c.cr = false
		c.char('\r')
	}
	if c.any {
		c.out = append(c.out, '\r', '\n')
	}
	if len(c.out) > 0 {
		_, err := c.w.Write(c.out)
		return err
	}
	return nil
}

// formatSignature writes the tags folded at 78 columns (RFC 5322 §2.1.1),
// h= split at its colons, and ends with an empty "b=" on its own line.
func formatSignature(tags [][2]string) string {
	var b bytes.Buffer
	col := len(HeaderName) + 1
	put := func(s string) {
		if col+1+len(s) > 78 && col > 1 {
			b.WriteString("\r\n\t")
			col = 1
		} else {
			b.WriteByte(' ')
			col++
		}
		b.WriteString(s)
		col += len(s)
	}
	for _, t := range tags {
		if t[0] == "h" {
			// RFC 6376 §3.5: FWS may surround the colons of h=.
			parts := strings.Split(t[1], ":")
			for i, p := range parts {
				s := p
				if i == 0 {
					s = "h=" + p
				}
				if i < len(parts)-1 {
					s += ":"
				} else {
					s += ";"
				}
				if i == 0 {
					put(s)
					continue
				}
				if col+len(s) > 78 {
					b.WriteString("\r\n\t")
					col = 1
				}
				b.WriteString(s)
				col += len(s)
			}
			continue
		}
		put(t[0] + "=" + t[1] + ";")
	}
	b.WriteString("\r\n\tb=")
	return b.String()
}

// foldBase64 splits b= into lines of 72 characters (RFC 6376 §3.5: FWS is
// allowed inside base64 values).
func foldBase64(s string) string {
	const width = 72
	var b strings.Builder
	for len(s) > width {
		b.WriteString(s[:width])
		b.WriteString("\r\n\t")
		s = s[width:]
	}
	b.WriteString(s)
	return b.String()
}
