package inline

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
)

// AES-GCM is written here as CMS AuthEnvelopedData (RFC 5083) because
// smallstep/pkcs7 v0.2.3 puts GCM into EnvelopedData with a malformed
// GCMParameters (OpenSSL rejects it: "type not constructed"), and RFC 5084
// §1 and RFC 8551 §2.7 want authenticated ciphers in AuthEnvelopedData.

var (
	oidData                 = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1}         // RFC 5652 §4
	oidAuthEnvelopedData    = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 16, 1, 23} // RFC 5083 §1.1
	oidAES256GCM            = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 46}    // RFC 5084 §3.2
	oidRSAEncryption        = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}         // RFC 3370 §4.2.1
	oidRSAESOAEP            = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 7}         // RFC 4055 §4.1
	emptySequence           = asn1.RawValue{FullBytes: []byte{0x30, 0x00}}
	errNoRSAKey             = errors.New("certificate has no RSA key")
	gcmTagSize, gcmNonceLen = 16, 12
)

type cmsContentInfo struct {
	ContentType asn1.ObjectIdentifier
	Content     asn1.RawValue // [0] EXPLICIT, built by hand
}

// RFC 5083 §2.1, without originatorInfo, authAttrs and unauthAttrs.
type cmsAuthEnvelopedData struct {
	Version                  int
	RecipientInfos           []cmsKeyTransRecipientInfo `asn1:"set"`
	AuthEncryptedContentInfo cmsEncryptedContentInfo
	MAC                      []byte
}

// RFC 5652 §6.2.1, version 0: identified by issuer and serial number.
type cmsKeyTransRecipientInfo struct {
	Version                int
	IssuerAndSerialNumber  cmsIssuerAndSerial
	KeyEncryptionAlgorithm pkix.AlgorithmIdentifier
	EncryptedKey           []byte
}

type cmsIssuerAndSerial struct {
	Issuer       asn1.RawValue
	SerialNumber *big.Int
}

// RFC 5652 §6.1; encryptedContent is [0] IMPLICIT OCTET STRING.
type cmsEncryptedContentInfo struct {
	ContentType                asn1.ObjectIdentifier
	ContentEncryptionAlgorithm pkix.AlgorithmIdentifier
	EncryptedContent           []byte `asn1:"tag:0"`
}

// RFC 5084 §3.2.
type gcmParameters struct {
	Nonce  []byte
	ICVLen int
}

// authEnvelope encrypts content with AES-256-GCM for certs and returns the
// DER ContentInfo of an AuthEnvelopedData.
func authEnvelope(content []byte, certs []*x509.Certificate, oaep bool) ([]byte, error) {
	key := make([]byte, 32)
	nonce := make([]byte, gcmNonceLen)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCMWithTagSize(block, gcmTagSize)
	if err != nil {
		return nil, err
	}
	// RFC 5083 §2.2: no authAttrs, so no additional authenticated data;
	// the tag goes into mac, the rest into encryptedContent.
	sealed := aead.Seal(nil, nonce, content, nil)
	ct, tag := sealed[:len(sealed)-gcmTagSize], sealed[len(sealed)-gcmTagSize:]

	params, err := asn1.Marshal(gcmParameters{Nonce: nonce, ICVLen: gcmTagSize})
	if err != nil {
		return nil, err
	}
	infos := make([]cmsKeyTransRecipientInfo, 0, len(certs))
	for _, c := range certs {
		ri, err := keyTrans(key, c, oaep)
		if err != nil {
			return nil, err
		}
		infos = append(infos, ri)
	}
	inner, err := asn1.Marshal(cmsAuthEnvelopedData{
		Version:        0, // RFC 5083 §2.1: always 0
		RecipientInfos: infos,
		AuthEncryptedContentInfo: cmsEncryptedContentInfo{
			ContentType:                oidData,
			ContentEncryptionAlgorithm: pkix.AlgorithmIdentifier{Algorithm: oidAES256GCM, Parameters: asn1.RawValue{FullBytes: params}},
			EncryptedContent:           ct,
		},
		MAC: tag,
	})
	if err != nil {
		return nil, err
	}
	return asn1.Marshal(cmsContentInfo{
		ContentType: oidAuthEnvelopedData,
		Content:     asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: inner},
	})
}

// keyTrans encrypts the content key to one certificate's RSA key: PKCS#1
// v1.5 (RFC 3370 §4.2.1) or RSAES-OAEP with the RFC 4055 default parameters
// (SHA-1, MGF1 with SHA-1; an empty parameter SEQUENCE, RFC 4055 §4.1).
func keyTrans(key []byte, c *x509.Certificate, oaep bool) (cmsKeyTransRecipientInfo, error) {
	pub, ok := c.PublicKey.(*rsa.PublicKey)
	if !ok {
		return cmsKeyTransRecipientInfo{}, fmt.Errorf("%s: %w", c.Subject, errNoRSAKey)
	}
	var (
		ek  []byte
		err error
		alg pkix.AlgorithmIdentifier
	)
	if oaep {
		ek, err = rsa.EncryptOAEP(sha1.New(), rand.Reader, pub, key, nil)
		alg = pkix.AlgorithmIdentifier{Algorithm: oidRSAESOAEP, Parameters: emptySequence}
	} else {
		ek, err = rsa.EncryptPKCS1v15(rand.Reader, pub, key)
		alg = pkix.AlgorithmIdentifier{Algorithm: oidRSAEncryption, Parameters: asn1.NullRawValue}
	}
	if err != nil {
		return cmsKeyTransRecipientInfo{}, fmt.Errorf("key transport to %s: %w", c.Subject, err)
	}
	return cmsKeyTransRecipientInfo{
		Version:                0, // RFC 5652 §6.2.1: issuerAndSerialNumber
		IssuerAndSerialNumber:  cmsIssuerAndSerial{Issuer: asn1.RawValue{FullBytes: c.RawIssuer}, SerialNumber: c.SerialNumber},
		KeyEncryptionAlgorithm: alg,
		EncryptedKey:           ek,
	}, nil
}
