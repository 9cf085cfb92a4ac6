package inline

import (
	"bufio"
	"fmt"
	"io"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

// encryptPGP builds a PGP/MIME multipart/encrypted message (RFC 3156 §4),
// streaming: the entity goes through the OpenPGP encryption (RFC 4880 §5.13
// SEIPD with MDC, or §5.14 of RFC 9580 when every key asks for AEAD) and the
// ASCII armor (RFC 4880 §6) straight to w.
func encryptPGP(w io.Writer, headers []HeaderField, body io.Reader, keys []Key, o Options) ([]HeaderField, error) {
	b, err := boundary()
	if err != nil {
		return nil, fmt.Errorf("inline PGP: %w", err)
	}
	to := make([]*openpgp.Entity, 0, len(keys))
	for _, k := range keys {
		to = append(to, k.PGP)
	}

	bw := bufio.NewWriter(w)
	// RFC 3156 §4: part 1 is application/pgp-encrypted with "Version: 1",
	// part 2 application/octet-stream with the armored message. The
	// preamble is for readers without PGP/MIME.
	head := "This is an OpenPGP/MIME encrypted message (RFC 3156).\r\n" +
		"\r\n--" + b + "\r\n" +
		"Content-Type: application/pgp-encrypted\r\n" +
		"Content-Description: PGP/MIME version identification\r\n" +
		"\r\n" +
		"Version: 1\r\n" +
		"\r\n--" + b + "\r\n" +
		"Content-Type: application/octet-stream; name=\"encrypted.asc\"\r\n" +
		"Content-Description: OpenPGP encrypted message\r\n" +
		"Content-Disposition: inline; filename=\"encrypted.asc\"\r\n" +
		"\r\n"
	if _, err := bw.WriteString(head); err != nil {
		return nil, fmt.Errorf("inline PGP: write: %w", err)
	}
	// The armor writes LF line ends; mail wants CRLF.
	armored, err := armor.Encode(&crlfWriter{w: bw}, "PGP MESSAGE", nil)
	if err != nil {
		return nil, fmt.Errorf("inline PGP: armor: %w", err)
	}
	cfg := &packet.Config{Time: o.now, DefaultCipher: packet.CipherAES256}
	// No signer: the milter holds no sender's private key. IsBinary keeps
	// the literal data byte for byte (RFC 4880 §5.9 format 'b').
	plain, err := openpgp.Encrypt(armored, to, nil, &openpgp.FileHints{IsBinary: true}, cfg)
	if err != nil {
		return nil, fmt.Errorf("inline PGP: %w", err)
	}
	if _, err := writeEntity(plain, headers, body); err != nil {
		return nil, fmt.Errorf("inline PGP: encrypt message: %w", err)
	}
	if err := plain.Close(); err != nil {
		return nil, fmt.Errorf("inline PGP: encrypt: %w", err)
	}
	if err := armored.Close(); err != nil {
		return nil, fmt.Errorf("inline PGP: armor: %w", err)
	}
	if _, err := bw.WriteString("\r\n\r\n--" + b + "--\r\n"); err != nil {
		return nil, fmt.Errorf("inline PGP: write: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return nil, fmt.Errorf("inline PGP: write: %w", err)
	}
	return []HeaderField{
		field("MIME-Version", " 1.0"),
		field("Content-Type", " multipart/encrypted;\r\n protocol=\"application/pgp-encrypted\";\r\n boundary=\""+b+"\""),
		field("Content-Transfer-Encoding", " 7bit"),
	}, nil
}
