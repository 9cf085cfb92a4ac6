package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeCert writes a self-signed certificate and its key as PEM files.
func writeCert(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "redis.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func TestTLSClientConfig(t *testing.T) {
	dir := t.TempDir()
	cert, key := writeCert(t, dir)
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not pem"), 0o644); err != nil {
		t.Fatal(err)
	}

	tc, err := (&TLSConfig{CAFile: cert, CertFile: cert, KeyFile: key, ServerName: "redis.test"}).ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	if tc.RootCAs == nil || len(tc.Certificates) != 1 || tc.ServerName != "redis.test" || tc.MinVersion != tls.VersionTLS12 {
		t.Errorf("ClientConfig = %+v", tc)
	}
	tc, err = (&TLSConfig{}).ClientConfig()
	if err != nil || tc.RootCAs != nil || len(tc.Certificates) != 0 {
		t.Errorf("empty tls section: %+v, %v (want system roots, no client cert)", tc, err)
	}
	for _, tt := range []struct {
		cfg  TLSConfig
		want string
	}{
		{TLSConfig{CAFile: filepath.Join(dir, "missing.pem")}, "tls ca_file"},
		{TLSConfig{CAFile: garbage}, "no PEM certificate"},
		{TLSConfig{CertFile: cert, KeyFile: garbage}, "tls cert_file/key_file"},
	} {
		if _, err := tt.cfg.ClientConfig(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ClientConfig(%+v) err = %v, want %q", tt.cfg, err, tt.want)
		}
	}
}
