package inline

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

// benchKey makes a key with both an RSA certificate and an OpenPGP key, in
// process (the decrypting tests use the real openssl and gpg).
func benchKey(b testing.TB) Key {
	b.Helper()
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		b.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "bench@example.org"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageKeyEncipherment,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		b.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		b.Fatal(err)
	}
	e, err := openpgp.NewEntity("Bench", "", "bench@example.org", &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA})
	if err != nil {
		b.Fatal(err)
	}
	return Key{Address: "bench@example.org", Cert: cert, PGP: e}
}

// patternReader yields n bytes of text lines without holding them.
type patternReader struct{ left int64 }

func (p *patternReader) Read(b []byte) (int, error) {
	if p.left <= 0 {
		return 0, io.EOF
	}
	const line = "The quick brown fox jumps over the lazy dog 0123456789 ÄÖÜ äöü ß €\r\n"
	n := 0
	for n < len(b) && int64(n) < p.left {
		n += copy(b[n:min(len(b), n+int(p.left)-n)], line)
	}
	p.left -= int64(n)
	return n, nil
}

// BenchmarkEncrypt reports throughput and bytes allocated per message: for
// PGP the allocation stays far below the message size (it streams), for
// S/MIME it is a few times the size (pkcs7 works on []byte).
func BenchmarkEncrypt(b *testing.B) {
	k := benchKey(b)
	h := []HeaderField{field("Content-Type", " text/plain; charset=utf-8"), field("Content-Transfer-Encoding", " 8bit")}
	for _, size := range []int64{64 << 10, 8 << 20} {
		for _, c := range []struct {
			name string
			m    Method
			o    Options
		}{
			{"smime-cbc", SMIME, Options{}},
			{"smime-gcm", SMIME, Options{Cipher: AES256GCM}},
			{"pgp", PGP, Options{}},
		} {
			b.Run(c.name+"/"+sizeName(size), func(b *testing.B) {
				b.SetBytes(size)
				b.ReportAllocs()
				for b.Loop() {
					if _, err := Encrypt(io.Discard, h, &patternReader{left: size}, c.m, []Key{k}, c.o); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

func sizeName(n int64) string {
	if n >= 1<<20 {
		return itoa64(n>>20) + "MiB"
	}
	return itoa64(n>>10) + "KiB"
}

func itoa64(n int64) string { return big.NewInt(n).String() }

// TestConcurrent runs Encrypts of both S/MIME kinds and PGP, Lookups and
// Reloads at once; run with -race it checks the pkcs7 lock and the snapshot.
func TestConcurrent(t *testing.T) {
	k := benchKey(t)
	dir := t.TempDir()
	ks, err := OpenKeyStoreWith(dir, StoreOptions{CheckEvery: -1})
	if err != nil {
		t.Fatal(err)
	}
	h := []HeaderField{field("Content-Type", " text/plain")}
	opts := []struct {
		m Method
		o Options
	}{{SMIME, Options{}}, {SMIME, Options{Cipher: AES256GCM}}, {SMIME, Options{OAEP: true}}, {PGP, Options{}}}
	errs := make(chan error, 3*len(opts))
	for i := 0; i < 3*len(opts); i++ {
		go func() {
			c := opts[i%len(opts)]
			_, err := Encrypt(io.Discard, h, &patternReader{left: 10000}, c.m, []Key{k}, c.o)
			ks.Lookup("", "a@example.org")
			if err == nil {
				err = ks.Reload()
			}
			errs <- err
		}()
	}
	for i := 0; i < 3*len(opts); i++ {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
