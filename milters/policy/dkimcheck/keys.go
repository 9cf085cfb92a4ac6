package dkimcheck

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

const (
	// minRSABits: RFC 8301 §3.2, signers MUST use RSA keys of at least
	// 1024 bits (and verifiers refuse shorter ones).
	minRSABits = 1024
	// goodRSABits: RFC 8301 §3.2, signers SHOULD use 2048 bits or more.
	goodRSABits = 2048
	// DefaultRSABits is what GenerateKey makes when bits is 0.
	DefaultRSABits = 2048
	maxRSABits     = 8192
	// maxKeyFile bounds what LoadKey reads (an 8192-bit PKCS#8 RSA key in
	// PEM is about 6.5 KiB).
	maxKeyFile = 64 << 10
)

// Algorithm names as a= spells them.
const (
	AlgRSASHA256     = "rsa-sha256"
	AlgEd25519SHA256 = "ed25519-sha256"
)

// LoadKey reads a private key from a PEM file: "RSA PRIVATE KEY" (PKCS#1)
// or "PRIVATE KEY" (PKCS#8, RSA or Ed25519). It returns the key and the a=
// algorithm it signs with.
//
// It refuses a file others may read or anyone but its owner may write
// (mode & 0o026 != 0: world-readable, group- or world-writable), as
// OpenDKIM's RequireSafeKeys does: a signing key that others can read
// lets them sign as the domain. Group-readable (0640, owner root, group of
// the service) is allowed. It refuses RSA keys under 1024 bits (RFC 8301
// §3.2); KeyWarning tells about ones under 2048.
func LoadKey(path string) (crypto.Signer, string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, "", fmt.Errorf("dkim key %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, "", fmt.Errorf("dkim key %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, "", fmt.Errorf("dkim key %s: not a regular file", path)
	}
	if perm := st.Mode().Perm(); perm&0o026 != 0 {
		return nil, "", fmt.Errorf("dkim key %s: mode %04o lets others read or write the key; chmod 0600 (or 0640 for a service group)", path, perm)
	}
	if st.Size() > maxKeyFile {
		return nil, "", fmt.Errorf("dkim key %s: %d bytes, not a key file (at most %d)", path, st.Size(), maxKeyFile)
	}
	data := make([]byte, st.Size())
	if _, err := io.ReadFull(f, data); err != nil {
		return nil, "", fmt.Errorf("dkim key %s: %w", path, err)
	}
	key, algo, err := ParseKeyPEM(data)
	if err != nil {
		return nil, "", fmt.Errorf("dkim key %s: %w", path, err)
	}
	return key, algo, nil
}

// ParseKeyPEM is LoadKey without the file: the first PEM block of data.
func ParseKeyPEM(data []byte) (crypto.Signer, string, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, "", errors.New("no PEM block found")
	}
	if _, ok := block.Headers["Proc-Type"]; ok {
		return nil, "", errors.New("encrypted PEM key: store the key unencrypted, readable by the service only")
	}
	var key any
	var err error
	switch block.Type {
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	default:
		return nil, "", fmt.Errorf("PEM block %q: want \"PRIVATE KEY\" (PKCS#8) or \"RSA PRIVATE KEY\" (PKCS#1)", block.Type)
	}
	if err != nil {
		return nil, "", fmt.Errorf("PEM block %q: %w", block.Type, err)
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if bits := k.N.BitLen(); bits < minRSABits {
			return nil, "", fmt.Errorf("RSA key of %d bits: at least %d needed (RFC 8301 §3.2)", bits, minRSABits)
		}
		return k, AlgRSASHA256, nil
	case ed25519.PrivateKey:
		return k, AlgEd25519SHA256, nil
	}
	return nil, "", fmt.Errorf("PEM block %q: unsupported key type %T (want RSA or Ed25519)", block.Type, key)
}

// KeyWarning says what is weak about a usable key, or "": RSA under 2048
// bits (RFC 8301 §3.2: signers SHOULD use at least 2048). The caller logs
// it at load.
func KeyWarning(key crypto.Signer) string {
	if k, ok := key.(*rsa.PrivateKey); ok && k.N.BitLen() < goodRSABits {
		return fmt.Sprintf("RSA key of %d bits: RFC 8301 §3.2 asks for %d or more", k.N.BitLen(), goodRSABits)
	}
	return ""
}

// GenerateKey makes a new signing key: algo "rsa" (or "rsa-sha256") with
// bits between 1024 and 8192 (0 means 2048), or "ed25519" (or
// "ed25519-sha256") with bits 0 or 256.
func GenerateKey(algo string, bits int) (crypto.Signer, error) {
	switch strings.ToLower(algo) {
	case "rsa", AlgRSASHA256:
		if bits == 0 {
			bits = DefaultRSABits
		}
		if bits < minRSABits || bits > maxRSABits {
			return nil, fmt.Errorf("dkim keygen: RSA key of %d bits: want %d to %d (RFC 8301 §3.2)", bits, minRSABits, maxRSABits)
		}
		k, err := rsa.GenerateKey(rand.Reader, bits)
		if err != nil {
			return nil, fmt.Errorf("dkim keygen: %w", err)
		}
		return k, nil
	case "ed25519", AlgEd25519SHA256:
		if bits != 0 && bits != 256 {
			return nil, fmt.Errorf("dkim keygen: an Ed25519 key has 256 bits, not %d", bits)
		}
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("dkim keygen: %w", err)
		}
		return k, nil
	}
	return nil, fmt.Errorf("dkim keygen: unknown algorithm %q (want rsa or ed25519)", algo)
}

// MarshalKeyPEM encodes a private key for LoadKey: RSA as PKCS#1 ("RSA
// PRIVATE KEY", which every DKIM implementation reads: OpenDKIM, dkimpy,
// rspamd), Ed25519 as PKCS#8 ("PRIVATE KEY", RFC 8410). Write it mode 0600.
func MarshalKeyPEM(key crypto.Signer) ([]byte, error) {
	switch k := key.(type) {
	case *rsa.PrivateKey:
		return pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)}), nil
	case ed25519.PrivateKey:
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			return nil, fmt.Errorf("dkim key: %w", err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
	}
	return nil, fmt.Errorf("dkim key: unsupported key type %T", key)
}

// DNSRecord is the key record to publish at <selector>._domainkey.<domain>
// (RFC 6376 §3.6.1): "v=DKIM1; k=rsa; p=<base64 SubjectPublicKeyInfo>" or,
// RFC 8463 §4, "v=DKIM1; k=ed25519; p=<base64 of the raw 32-byte key>".
func DNSRecord(pub crypto.PublicKey) (string, error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		der, err := x509.MarshalPKIXPublicKey(k)
		if err != nil {
			return "", fmt.Errorf("dkim record: %w", err)
		}
		return "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der), nil
	case ed25519.PublicKey:
		return "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(k), nil
	}
	return "", fmt.Errorf("dkim record: unsupported public key type %T", pub)
}

// SplitTXT cuts a record into character-strings of at most 255 bytes
// (RFC 1035 §3.3.14: a TXT record is a sequence of character-strings of
// up to 255 bytes each; RFC 6376 §3.6.2.2: verifiers join them without
// anything between).
func SplitTXT(record string) []string {
	const max = 255
	var parts []string
	for len(record) > max {
		parts = append(parts, record[:max])
		record = record[max:]
	}
	return append(parts, record)
}

// ZoneTXT is the record as zone-file text for the RDATA of a TXT record:
// its character-strings quoted, in parentheses when there are several,
// e.g. `( "v=DKIM1; k=rsa; p=MIIB…" "…IDAQAB" )` (RFC 1035 §5.1).
func ZoneTXT(record string) string {
	parts := SplitTXT(record)
	quoted := make([]string, len(parts))
	for i, p := range parts {
		quoted[i] = `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(p) + `"`
	}
	if len(quoted) == 1 {
		return quoted[0]
	}
	return "( " + strings.Join(quoted, "\n\t") + " )"
}
