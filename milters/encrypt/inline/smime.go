package inline

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"sync"

	"github.com/smallstep/pkcs7"
)

// pkcs7Mu guards the package variables through which smallstep/pkcs7 takes
// its algorithms (ContentEncryptionAlgorithm, KeyEncryptionAlgorithm,
// KeyEncryptionHash): they are set and used under it, one Encrypt at a time.
// Nothing else in geomilter may use that library's Encrypt without it.
var pkcs7Mu sync.Mutex

// encryptSMIME builds an application/pkcs7-mime enveloped-data message
// (RFC 8551 §3.3): the entity is read whole (bounded by MaxSize), encrypted
// into a CMS EnvelopedData (RFC 5652 §6; AES-CBC) or AuthEnvelopedData
// (RFC 5083; AES-GCM) and written base64 encoded.
func encryptSMIME(w io.Writer, headers []HeaderField, body io.Reader, keys []Key, o Options) ([]HeaderField, error) {
	limit := o.MaxSize
	if limit <= 0 {
		limit = DefaultMaxSize
	}
	cipher := o.Cipher
	if cipher == "" {
		cipher = AES256CBC
	}
	if cipher != AES256CBC && cipher != AES256GCM {
		return nil, fmt.Errorf("inline S/MIME: unknown cipher %q", cipher)
	}

	var entity bytes.Buffer
	lw := &limitWriter{w: &entity, left: limit}
	if _, err := writeEntity(lw, headers, body); err != nil {
		if lw.over {
			return nil, fmt.Errorf("inline S/MIME: entity over %d bytes: %w", limit, ErrTooLarge)
		}
		return nil, fmt.Errorf("inline S/MIME: read message: %w", err)
	}

	certs := make([]*x509.Certificate, 0, len(keys))
	for _, k := range keys {
		certs = append(certs, k.Cert)
	}
	var der []byte
	var err error
	smimeType := "enveloped-data" // RFC 8551 §3.2.2
	if cipher == AES256GCM {
		smimeType = "authEnveloped-data"
		der, err = authEnvelope(entity.Bytes(), certs, o.OAEP)
	} else {
		der, err = envelope(entity.Bytes(), certs, o.OAEP)
	}
	if err != nil {
		return nil, fmt.Errorf("inline S/MIME: %w", err)
	}

	// RFC 8551 §3.3 and §3.2.2: base64, with the name and filename
	// smime.p7m that older clients look for.
	lines := &lineWriter{w: bufio.NewWriter(w), width: 76}
	enc := base64.NewEncoder(base64.StdEncoding, lines)
	if _, err := enc.Write(der); err != nil {
		return nil, fmt.Errorf("inline S/MIME: write: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("inline S/MIME: write: %w", err)
	}
	if err := lines.Close(); err != nil {
		return nil, fmt.Errorf("inline S/MIME: write: %w", err)
	}
	return []HeaderField{
		field("MIME-Version", " 1.0"),
		field("Content-Type", " application/pkcs7-mime; smime-type="+smimeType+";\r\n name=smime.p7m"),
		field("Content-Transfer-Encoding", " base64"),
		field("Content-Disposition", " attachment; filename=smime.p7m"),
	}, nil
}

// envelope makes an AES-256-CBC EnvelopedData (RFC 5652 §6, RFC 3565 §2.2)
// with pkcs7.Encrypt; see pkcs7Mu.
func envelope(content []byte, certs []*x509.Certificate, oaep bool) ([]byte, error) {
	pkcs7Mu.Lock()
	defer pkcs7Mu.Unlock()
	pkcs7.ContentEncryptionAlgorithm = pkcs7.EncryptionAlgorithmAES256CBC
	pkcs7.KeyEncryptionAlgorithm = pkcs7.OIDEncryptionAlgorithmRSA // RFC 3370 §4.2.1
	// RSAES-OAEP with SHA-1 and MGF1-SHA-1 (RFC 4055 §4.1 defaults): with
	// any other hash, pkcs7 v0.2.3 encrypts with MGF1 of that hash but
	// writes no maskGenAlgorithm, so readers use MGF1-SHA-1 and fail.
	// OAEP's security does not rest on SHA-1's collision resistance.
	pkcs7.KeyEncryptionHash = crypto.SHA1
	if oaep {
		pkcs7.KeyEncryptionAlgorithm = pkcs7.OIDEncryptionAlgorithmRSAESOAEP // RFC 3560 §3
	}
	return pkcs7.Encrypt(content, certs)
}

// limitWriter fails once more than left bytes are written.
type limitWriter struct {
	w    io.Writer
	left int64
	over bool
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > l.left {
		l.over = true
		return 0, ErrTooLarge
	}
	l.left -= int64(len(p))
	return l.w.Write(p)
}
