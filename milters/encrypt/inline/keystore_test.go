package inline

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/geomilter/geomilter/milters/encrypt/inline/inlinetest"
)

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Set(t time.Time) { c.mu.Lock(); c.t = t; c.mu.Unlock() }

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestKeyStoreLookup: tenants, domain keys, case, bad files, methods.
func TestKeyStoreLookup(t *testing.T) {
	tmp := t.TempDir()
	_, bobCert := inlinetest.NewCert(t, tmp, "bob@example.org", 30)
	_, domCert := inlinetest.NewCert(t, tmp, "example.net", 30)
	_, pub := inlinetest.GPGHome(t, "Carol <carol@example.org>", "never")
	cert := readFile(t, bobCert)

	store := filepath.Join(tmp, "store")
	writeFile(t, filepath.Join(store, "Bob@Example.ORG.pem"), cert)                     // root, mixed case name
	writeFile(t, filepath.Join(store, "acme", "bob@example.org.pem"), cert)             // tenant acme
	writeFile(t, filepath.Join(store, "acme", "bob@example.org.asc"), pub)              // both methods
	writeFile(t, filepath.Join(store, "acme", "example.net.pem"), readFile(t, domCert)) // domain key
	writeFile(t, filepath.Join(store, "acme", "carol@example.org.asc"), pub)
	writeFile(t, filepath.Join(store, "acme", "broken@example.org.pem"), []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	writeFile(t, filepath.Join(store, "acme", "junk@example.org.asc"), []byte("not a key"))
	writeFile(t, filepath.Join(store, "acme", "README.txt"), []byte("ignored"))
	writeFile(t, filepath.Join(store, "acme", ".hidden.pem"), []byte("ignored"))
	writeFile(t, filepath.Join(store, "globex", "dave@example.org.pem"), cert)

	ks, err := OpenKeyStore(store)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		tenant, addr string
		ok           bool
		smime, pgp   bool
		certFrom     string // base name of CertFile
	}{
		{"", "bob@example.org", true, true, false, "Bob@Example.ORG.pem"},
		{"", "<BOB@example.org>", true, true, false, "Bob@Example.ORG.pem"},
		{"acme", "bob@example.org", true, true, true, "bob@example.org.pem"},
		{"acme", "Carol@EXAMPLE.org", true, false, true, ""},
		{"acme", "anyone@example.net", true, true, false, "example.net.pem"}, // domain key
		{"acme", "anyone@Example.NET", true, true, false, "example.net.pem"},
		{"acme", "anyone@sub.example.net", false, false, false, ""}, // no parent-domain walk
		{"acme", "nobody@example.org", false, false, false, ""},     // no key: the milter routes
		{"acme", "broken@example.org", false, false, false, ""},     // bad file skipped
		{"acme", "junk@example.org", false, false, false, ""},
		{"acme", "dave@example.org", false, false, false, ""}, // another tenant's key
		{"globex", "dave@example.org", true, true, false, "dave@example.org.pem"},
		{"globex", "bob@example.org", false, false, false, ""}, // no fallback to the root
		{"nosuch", "bob@example.org", false, false, false, ""},
		{"../store", "bob@example.org", false, false, false, ""},
		{"acme", "example.net", false, false, false, ""}, // not an address
		{"acme", "", false, false, false, ""},
	}
	for _, tc := range tests {
		k, ok := ks.Lookup(tc.tenant, tc.addr)
		if ok != tc.ok || k.Has(SMIME) != tc.smime || k.Has(PGP) != tc.pgp || (tc.certFrom != "" && filepath.Base(k.CertFile) != tc.certFrom) {
			t.Errorf("Lookup(%q, %q) = %v smime=%v pgp=%v from %q; want %v %v %v %q",
				tc.tenant, tc.addr, ok, k.Has(SMIME), k.Has(PGP), filepath.Base(k.CertFile), tc.ok, tc.smime, tc.pgp, tc.certFrom)
		}
	}
	// Each bad file is named once; nothing else is a problem.
	probs := ks.Problems()
	var text []string
	for _, p := range probs {
		text = append(text, p.Error())
	}
	all := strings.Join(text, "\n")
	if len(probs) != 2 || !strings.Contains(all, filepath.Join(store, "acme", "broken@example.org.pem")+": certificate:") ||
		!strings.Contains(all, filepath.Join(store, "acme", "junk@example.org.asc")+":") {
		t.Fatalf("problems:\n%s", all)
	}
	if err := ks.Reload(); err == nil || !strings.Contains(err.Error(), "broken@example.org.pem") {
		t.Fatalf("Reload: %v", err)
	}
	if _, err := OpenKeyStore(filepath.Join(tmp, "missing")); err == nil {
		t.Fatal("OpenKeyStore of a missing directory: no error")
	}
}

// TestKeyStoreValidity: expired and not-yet-valid certificates, expired and
// revoked OpenPGP keys are not used, and are reported.
func TestKeyStoreValidity(t *testing.T) {
	tmp := t.TempDir()
	_, c := inlinetest.NewCert(t, tmp, "bob@example.org", 1)
	_, expiring := inlinetest.GPGHome(t, "Eve <eve@example.org>", "1d")
	revHome, revoked := inlinetest.GPGHome(t, "Rex <rex@example.org>", "never")

	// gpg leaves a revocation certificate in openpgp-revocs.d with its
	// armor line escaped by ":" (so it is not imported by mistake).
	revs, err := filepath.Glob(filepath.Join(revHome, "openpgp-revocs.d", "*.rev"))
	if err != nil || len(revs) != 1 {
		t.Fatalf("revocation certificate: %v %v", revs, err)
	}
	rev := bytes.ReplaceAll(readFile(t, revs[0]), []byte(":-----BEGIN"), []byte("-----BEGIN"))
	inlinetest.Run(t, string(rev), "gpg", "--batch", "--homedir", revHome, "--import")
	revokedNow := inlinetest.Run(t, "", "gpg", "--batch", "--homedir", revHome, "--armor", "--export", "rex@example.org")

	store := filepath.Join(tmp, "store")
	writeFile(t, filepath.Join(store, "bob@example.org.pem"), readFile(t, c))
	writeFile(t, filepath.Join(store, "eve@example.org.asc"), expiring)
	writeFile(t, filepath.Join(store, "rex@example.org.asc"), revokedNow)
	_ = revoked

	now := time.Now()
	tests := []struct {
		name       string
		at         time.Time
		bob, eve   bool
		problemFor []string
	}{
		{"now", now, true, true, []string{"rex@example.org.asc"}},
		{"before the certificate", now.Add(-2 * time.Hour), false, false, []string{"bob@example.org.pem: certificate not valid before", "rex", "eve"}},
		{"after both expire", now.Add(49 * time.Hour), false, false, []string{"bob@example.org.pem: certificate expired", "eve@example.org.asc", "rex"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ks, err := OpenKeyStoreWith(store, StoreOptions{Now: func() time.Time { return tc.at }, CheckEvery: -1})
			if err != nil {
				t.Fatal(err)
			}
			_, bob := ks.Lookup("", "bob@example.org")
			_, eve := ks.Lookup("", "eve@example.org")
			_, rex := ks.Lookup("", "rex@example.org")
			if bob != tc.bob || eve != tc.eve || rex {
				t.Fatalf("bob %v eve %v rex %v, want %v %v false", bob, eve, rex, tc.bob, tc.eve)
			}
			probs := errors.Join(ks.Problems()...)
			for _, p := range tc.problemFor {
				if probs == nil || !strings.Contains(probs.Error(), p) {
					t.Errorf("problems lack %q:\n%v", p, probs)
				}
			}
		})
	}
}

// TestKeyStoreReload: files added, fixed and removed are seen on Reload, and
// on Lookup once CheckEvery has passed.
func TestKeyStoreReload(t *testing.T) {
	tmp := t.TempDir()
	_, c := inlinetest.NewCert(t, tmp, "bob@example.org", 2)
	cert := readFile(t, c)
	store := filepath.Join(tmp, "store")
	path := filepath.Join(store, "t1", "bob@example.org.pem")
	writeFile(t, path, []byte("garbage"))

	clk := &clock{t: time.Now()}
	ks, err := OpenKeyStoreWith(store, StoreOptions{Now: clk.Now, CheckEvery: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := ks.Lookup("t1", "bob@example.org"); ok || len(ks.Problems()) != 1 {
		t.Fatalf("bad file: found %v, problems %v", ok, ks.Problems())
	}

	writeFile(t, path, cert) // fixed: other size, so seen even within one mtime tick
	if _, ok := ks.Lookup("t1", "bob@example.org"); ok {
		t.Fatal("change seen before CheckEvery passed")
	}
	clk.Set(clk.Now().Add(time.Minute))
	if _, ok := ks.Lookup("t1", "bob@example.org"); !ok || len(ks.Problems()) != 0 {
		t.Fatalf("fixed file not seen after CheckEvery: problems %v", ks.Problems())
	}

	writeFile(t, filepath.Join(store, "t2", "example.org.pem"), cert)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := ks.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, ok := ks.Lookup("t1", "bob@example.org"); ok {
		t.Fatal("removed file still served")
	}
	if k, ok := ks.Lookup("t2", "bob@example.org"); !ok || filepath.Base(k.CertFile) != "example.org.pem" {
		t.Fatalf("added domain file not served: %v %+v", ok, k)
	}
}
