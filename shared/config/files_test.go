package config_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/geomilter/geomilter/shared/config"
	"github.com/geomilter/geomilter/shared/config/configtest"
	"github.com/geomilter/geomilter/shared/yamlconf"
)

// TestBrokenConfigs runs check-config on every file in testdata/broken and
// compares its output with NAME.err: the exact lines a user sees.
func TestBrokenConfigs(t *testing.T) {
	configtest.Broken(t, "testdata/broken", 15, configtest.CheckConfig)
}

// TestGoodConfigs: the complete examples of the docs are valid files (the
// host they describe is not this one; TestHost checks hosts).
func TestGoodConfigs(t *testing.T) {
	files, _ := filepath.Glob("testdata/good/*.yaml")
	if len(files) < 2 {
		t.Fatalf("want at least 2 good configs, found %d", len(files))
	}
	for _, f := range files {
		if _, err := config.Load(f); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

// TestHost runs the host checks of check-config on testdata/host/*.yaml
// against a test host built under a temporary directory (testdata/host/root
// plus the files made below): ok-*.yaml must pass, every other file must
// give exactly the lines of its .err. nonroot-*.yaml need a user that
// cannot write everywhere, so they are skipped as root.
func TestHost(t *testing.T) {
	root := testHost(t)
	files, _ := filepath.Glob("testdata/host/*.yaml")
	if len(files) < 8 {
		t.Fatalf("want at least 8 host cases, found %d", len(files))
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".yaml")
		t.Run(name, func(t *testing.T) {
			if strings.HasPrefix(name, "nonroot-") && os.Geteuid() == 0 {
				t.Skip("root can write and read anything: run as another user")
			}
			cfg, err := config.Load(f)
			if err != nil {
				t.Fatalf("the file itself must be valid: %v", err)
			}
			out := lines(config.CheckHostUnder(cfg, root))
			if strings.HasPrefix(name, "ok-") {
				if out != "" {
					t.Errorf("want no problem, got:\n%s", out)
				}
				return
			}
			if out == "" {
				t.Fatal("no problem found")
			}
			configtest.Golden(t, strings.TrimSuffix(f, ".yaml")+".err", out)
		})
	}
}

// TestCheckStart: a milter's start-up checks its own socket and the shared
// directories, not the other milters' sockets, and leaves the rules file to
// the rules syncer (which falls back to the saved snapshot).
func TestCheckStart(t *testing.T) {
	root := testHost(t)
	in := `site: home
rules_file: /etc/geomilter/nope.yaml
state_dir: /var/lib/geomilter
spool_dir: /etc/geomilter/redis.pass
milters:
  access: {listen: "unix:/run/nothing/access.sock"}
  policy: {listen: "unix:/run/geomilter/policy.sock"}
`
	cfg, err := config.Parse("s.yaml", []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := lines(config.CheckStartUnder(cfg, "policy", root)),
		"s.yaml:4:1: spool_dir: /etc/geomilter/redis.pass is not a directory\n"; got != want {
		t.Errorf("policy start:\n%s\nwant:\n%s", got, want)
	}
	got := lines(config.CheckStartUnder(cfg, "access", root))
	if !strings.Contains(got, "s.yaml:6:12: milters.access.listen: the socket directory /run/nothing does not exist") ||
		strings.Contains(got, "rules_file") {
		t.Errorf("access start:\n%s", got)
	}
}

// TestCheckStartSuite: the suite's start-up checks the suite's socket, not
// those its members would use alone.
func TestCheckStartSuite(t *testing.T) {
	root := testHost(t)
	in := `site: home
rules_file: /etc/geomilter/nope.yaml
state_dir: /var/lib/geomilter
spool_dir: /var/spool/geomilter
milters:
  access: {listen: "unix:/run/nothing/access.sock"}
  policy: {}
  suite: {listen: "unix:/run/missing/suite.sock", members: [access, policy]}
`
	cfg, err := config.Parse("s.yaml", []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	got := lines(config.CheckStartUnder(cfg, "suite", root))
	if !strings.Contains(got, "s.yaml:8:11: milters.suite.listen: the socket directory /run/missing does not exist") ||
		strings.Contains(got, "milters.access") {
		t.Errorf("suite start:\n%s", got)
	}
}

func lines(ps yamlconf.Problems) string {
	var b strings.Builder
	for _, p := range ps {
		b.WriteString(p.Error() + "\n")
	}
	return b.String()
}

// testHost copies testdata/host/root into a temporary directory and adds
// what git cannot hold: TLS files made now, modes.
func testHost(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	err := filepath.WalkDir("testdata/host/root", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel("testdata/host/root", p)
		dst := filepath.Join(root, rel)
		if d.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		if d.Name() == ".keep" {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	etc := filepath.Join(root, "etc/geomilter")
	caKey, caCert := newCert(t, nil, nil)
	clientKey, clientCert := newCert(t, caKey, caCert)
	otherKey, _ := newCert(t, nil, nil)
	write := func(name string, data []byte, mode os.FileMode) {
		if err := os.WriteFile(filepath.Join(etc, name), data, mode); err != nil {
			t.Fatal(err)
		}
	}
	write("ca.pem", pemCert(caCert), 0o644)
	write("client.pem", pemCert(clientCert), 0o644)
	write("client.key", pemKey(t, clientKey), 0o600)
	write("other.key", pemKey(t, otherKey), 0o600)
	write("unreadable.pass", []byte("secret\n"), 0)
	if err := os.Mkdir(filepath.Join(root, "srv/readonly"), 0o555); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(filepath.Join(root, "srv/readonly"), 0o755) })
	return root
}

// newCert makes a key and a certificate, signed by parent (self-signed,
// as a CA, when parent is nil).
func newCert(t *testing.T, parentKey *ecdsa.PrivateKey, parent *x509.Certificate) (*ecdsa.PrivateKey, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "geomilter test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
	}
	if parent == nil {
		tmpl.IsCA, tmpl.BasicConstraintsValid, tmpl.KeyUsage = true, true, x509.KeyUsageCertSign
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return key, cert
}

func pemCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func pemKey(t *testing.T, k *ecdsa.PrivateKey) []byte {
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
}

// A config that parses is one thing; CheckConfig adds the host's problems
// to the same output, in the order of the file.
func TestCheckConfigChecksTheHost(t *testing.T) {
	var out bytes.Buffer
	code := config.CheckConfig("testdata/host/rules-file-missing.yaml", &out)
	if code != 1 || !strings.Contains(out.String(), "testdata/host/rules-file-missing.yaml:2:1: rules_file: cannot read the rules file /etc/geomilter/nope.yaml") {
		t.Errorf("exit %d, output:\n%s", code, out.String())
	}
}
