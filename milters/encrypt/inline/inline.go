// Package inline encrypts a message in place for the encrypt milter: the
// MIME entity made of the message's Content-* header fields and its body is
// encrypted to the recipients' keys, as S/MIME (RFC 8551, CMS RFC 5652) or
// as PGP/MIME (RFC 3156, OpenPGP RFC 4880), and becomes the new body. The
// other header fields (From, To, Subject, Date, Message-ID, Received, …)
// stay as they are, since mail transport needs them; the caller keeps them.
//
// The keys come from a KeyStore: a directory per tenant holding one X.509
// certificate (<address>.pem) and/or one armored OpenPGP public key
// (<address>.asc) per address or domain. A recipient without a usable key is
// not found (Lookup reports false), and the milter then routes the message
// to the encryption gateway instead: it never falls back to clear text.
//
// Limits, said once here: S/MIME is built in memory, by
// github.com/smallstep/pkcs7 for AES-CBC EnvelopedData (it works on []byte)
// and by this package for AES-GCM AuthEnvelopedData (which pkcs7 gets wrong,
// see authenveloped.go); so the entity is bounded by Options.MaxSize
// (ErrTooLarge above it; it allocates five to six times the entity). OpenPGP
// streams, with github.com/ProtonMail/go-crypto. No signing: the milter
// holds no user's private key.
package inline

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/geomilter/geomilter/shared/milterrt"
)

// HeaderField is one header field as the milter runtime hands it over; Raw
// is written back byte for byte.
type HeaderField = milterrt.HeaderField

// Method is the inline encryption format.
type Method string

const (
	// SMIME is S/MIME enveloped data, RFC 8551 §3.3.
	SMIME Method = "smime"
	// PGP is PGP/MIME multipart/encrypted, RFC 3156 §4.
	PGP Method = "pgp"
)

// Cipher is the S/MIME content-encryption algorithm.
type Cipher string

const (
	// AES256CBC is AES-256 in CBC mode in EnvelopedData (RFC 3565): what
	// every deployed S/MIME client reads, Outlook and older Thunderbird and
	// Apple Mail included. It is the default for that reason.
	AES256CBC Cipher = "aes256-cbc"
	// AES256GCM is AES-256 in GCM mode (RFC 5084). RFC 8551 §2.7 prefers
	// it, but many clients still cannot open it; opt in per partner.
	AES256GCM Cipher = "aes256-gcm"
)

// DefaultMaxSize bounds the S/MIME entity when Options.MaxSize is zero.
const DefaultMaxSize = 25 << 20

// ErrTooLarge is returned (wrapped) when an S/MIME entity is larger than
// Options.MaxSize; the milter routes such a message instead.
var ErrTooLarge = errors.New("message too large for inline S/MIME encryption")

// Options tune Encrypt. The zero value is usable.
type Options struct {
	// Cipher is the S/MIME content encryption; "" means AES256CBC.
	Cipher Cipher
	// OAEP selects RSAES-OAEP with SHA-256 (RFC 8017, RFC 4055) for the
	// S/MIME key transport instead of RSA PKCS#1 v1.5 (RFC 8551 §2.3 lists
	// both; v1.5 is what old clients read).
	OAEP bool
	// MaxSize bounds the S/MIME entity (header fields and body) in bytes;
	// 0 means DefaultMaxSize.
	MaxSize int64
	// Escrow keys are added as recipients (a sender's own key, so the copy
	// in the Sent folder can be read, or a company escrow key).
	Escrow []Key
	// Now is the clock for OpenPGP key validity; nil means time.Now.
	Now func() time.Time
}

func (o Options) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

// Encrypt writes to w the new body of the message: the entity made of the
// Content-* fields in headers and body, encrypted with method m for every key
// in keys and in o.Escrow. It returns the header fields the caller sets on
// the message after removing every Content-* field of the original
// (MIME-Version, Content-Type, Content-Transfer-Encoding and, for S/MIME,
// Content-Disposition). Nothing the caller can use is written when err is not
// nil, but w may have received part of the output: write to a buffer or a
// temporary file and replace the body only on success.
func Encrypt(w io.Writer, headers []HeaderField, body io.Reader, m Method, keys []Key, o Options) (newHeaders []HeaderField, err error) {
	if m != SMIME && m != PGP {
		return nil, fmt.Errorf("inline encrypt: unknown method %q", m)
	}
	all := make([]Key, 0, len(keys)+len(o.Escrow))
	all = append(all, keys...)
	all = append(all, o.Escrow...)
	if len(all) == 0 {
		return nil, errors.New("inline encrypt: no recipient key")
	}
	for _, k := range all {
		if !k.Has(m) {
			return nil, fmt.Errorf("inline encrypt: key for %q has no %s key", k.Address, m)
		}
	}
	if m == SMIME {
		return encryptSMIME(w, headers, body, all, o)
	}
	return encryptPGP(w, headers, body, all, o)
}

// IsContentField reports whether a header field belongs to the MIME entity
// (RFC 2045 §9: "Content-" fields) and so moves inside the encryption.
func IsContentField(name string) bool {
	return len(name) >= 8 && strings.EqualFold(name[:8], "content-")
}

// writeEntity writes the MIME entity to be encrypted: the Content-* fields as
// received, a blank line and the body, every line ending in CRLF (the
// canonical form, RFC 8551 §3.1.1, RFC 3156 §3). It returns the bytes
// written.
func writeEntity(w io.Writer, headers []HeaderField, body io.Reader) (int64, error) {
	cw := &crlfWriter{w: w}
	for _, h := range headers {
		if !IsContentField(h.Name) {
			continue
		}
		if _, err := io.WriteString(cw, h.Name+":"+h.Raw+"\r\n"); err != nil {
			return cw.n, err
		}
	}
	if _, err := io.WriteString(cw, "\r\n"); err != nil {
		return cw.n, err
	}
	_, err := io.Copy(cw, body)
	return cw.n, err
}

// crlfBytes is read only; a package variable so that each line end does not
// allocate.
var crlfBytes = []byte("\r\n")

// crlfWriter turns bare LF into CRLF on its way to w, keeping CRLF as is.
type crlfWriter struct {
	w      io.Writer
	lastCR bool
	n      int64 // bytes written to w
}

func (c *crlfWriter) Write(p []byte) (int, error) {
	start := 0
	for i, b := range p {
		if b != '\n' {
			continue
		}
		afterCR := (i > 0 && p[i-1] == '\r') || (i == 0 && c.lastCR)
		if afterCR {
			continue
		}
		if err := c.put(p[start:i]); err != nil {
			return start, err
		}
		if err := c.put(crlfBytes); err != nil {
			return start, err
		}
		start = i + 1
	}
	if err := c.put(p[start:]); err != nil {
		return start, err
	}
	if len(p) > 0 {
		c.lastCR = p[len(p)-1] == '\r'
	}
	return len(p), nil
}

func (c *crlfWriter) put(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	n, err := c.w.Write(b)
	c.n += int64(n)
	return err
}

// lineWriter breaks its input into lines of at most width bytes, each ended
// by CRLF: base64 bodies with 76-character lines (RFC 2045 §6.8).
type lineWriter struct {
	w     *bufio.Writer
	width int
	col   int
}

func (l *lineWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(l.width-l.col, len(p))
		if _, err := l.w.Write(p[:k]); err != nil {
			return n, err
		}
		n += k
		p = p[k:]
		l.col += k
		if l.col == l.width {
			if _, err := l.w.WriteString("\r\n"); err != nil {
				return n, err
			}
			l.col = 0
		}
	}
	return n, nil
}

// Close ends the last line and flushes.
func (l *lineWriter) Close() error {
	if l.col > 0 {
		if _, err := l.w.WriteString("\r\n"); err != nil {
			return err
		}
		l.col = 0
	}
	return l.w.Flush()
}

// field builds a header field from its raw value (leading space included).
func field(name, raw string) HeaderField { return milterrt.NewHeaderField(name, raw) }

// boundary returns a fresh multipart boundary (RFC 2046 §5.1.1); random, so
// no armored line can equal it.
func boundary() (string, error) {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("boundary: %w", err)
	}
	return "=_gm-" + hex.EncodeToString(b[:]), nil
}
