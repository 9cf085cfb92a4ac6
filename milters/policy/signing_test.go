package policy

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/milters/policy/dkimcheck"
	"github.com/geomilter/geomilter/shared/rules"
)

// writeKey generates a key of algo ("rsa", "ed25519") and writes it to
// path with mode perm; it returns the key.
func writeKey(t *testing.T, path, algo string, perm os.FileMode) crypto.Signer {
	t.Helper()
	bits := 0
	if algo == "rsa" {
		bits = 1024 // the smallest LoadKey takes: fast to generate
	}
	key, err := dkimcheck.GenerateKey(algo, bits)
	if err != nil {
		t.Fatal(err)
	}
	pemBytes, err := dkimcheck.MarshalKeyPEM(key)
	if err != nil {
		t.Fatal(err)
	}
	// Write then rename, as an admin rotating a key would, so the path
	// names a new file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, pemBytes, perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(tmp, perm); err != nil { // past the umask
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	return key
}

func signingSnapshot(t *testing.T, entries ...rules.Signing) *rules.Snapshot {
	t.Helper()
	snap, err := rules.Compile(&rules.Set{
		Tenants: []rules.Tenant{{ID: "acme", Domains: []string{"acme.example"}}},
		Signing: entries,
	})
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

func sameKey(a, b crypto.Signer) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.Public().(equaler)
	return ok && e.Equal(b.Public())
}

func TestKeyringSigner(t *testing.T) {
	dir := t.TempDir()
	rsaKey := writeKey(t, filepath.Join(dir, "rsa.key"), "rsa", 0o600)
	edKey := writeKey(t, filepath.Join(dir, "ed.key"), "ed25519", 0o640)
	writeKey(t, filepath.Join(dir, "open.key"), "ed25519", 0o644)
	if err := os.WriteFile(filepath.Join(dir, "bad.key"), []byte("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "text.key"), []byte("hello\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "dir.key"), 0o700); err != nil {
		t.Fatal(err)
	}
	entry := func(domain, file, algo string) rules.Signing {
		return rules.Signing{Domain: domain, Selector: "s1", KeyFile: filepath.Join(dir, file), Algorithm: algo}
	}
	snap := signingSnapshot(t,
		entry("acme.example", "rsa.key", ""),
		rules.Signing{Domain: "ed.example", Selector: "s1", KeyFile: filepath.Join(dir, "ed.key"), Subdomains: true},
		entry("missing.example", "none.key", ""),
		entry("open.example", "open.key", ""),
		entry("bad.example", "bad.key", ""),
		entry("text.example", "text.key", ""),
		entry("dir.example", "dir.key", ""),
		entry("mismatch.example", "ed.key", rules.AlgRSASHA256),
		entry("stated.example", "ed.key", rules.AlgEd25519SHA256),
	)
	cases := []struct {
		from      string
		domain    string // "" with wantErr "": no entry
		algo      string
		key       crypto.Signer
		tenant    string
		wantErr   string
		errorLine bool // an error line is logged
	}{
		{from: "acme.example", domain: "acme.example", algo: dkimcheck.AlgRSASHA256, key: rsaKey, tenant: "acme"},
		{from: "ed.example", domain: "ed.example", algo: dkimcheck.AlgEd25519SHA256, key: edKey},
		{from: "news.ed.example", domain: "ed.example", algo: dkimcheck.AlgEd25519SHA256, key: edKey},
		{from: "stated.example", domain: "stated.example", algo: dkimcheck.AlgEd25519SHA256, key: edKey},
		{from: "other.example"},
		{from: "sub.acme.example"},
		{from: "missing.example", wantErr: "none.key: no such file or directory", errorLine: true},
		{from: "open.example", wantErr: "mode 0644 lets others read", errorLine: true},
		{from: "bad.example", wantErr: "bad.key", errorLine: true},
		{from: "text.example", wantErr: "no PEM block found", errorLine: true},
		{from: "dir.example", wantErr: "not a regular file", errorLine: true},
		{from: "mismatch.example", wantErr: "is ed25519-sha256, but the signing entry for mismatch.example says algorithm rsa-sha256", errorLine: true},
	}
	for _, c := range cases {
		t.Run(c.from, func(t *testing.T) {
			var logBuf bytes.Buffer
			k := newKeyring(zerolog.New(&logBuf))
			got, err := k.Signer(snap, c.from)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, c.wantErr)
				}
				if got != nil {
					t.Errorf("a Signing came with the error: %+v", got)
				}
				if c.errorLine != strings.Contains(logBuf.String(), `"level":"error"`) {
					t.Errorf("error logged: %v, want %v:\n%s", !c.errorLine, c.errorLine, logBuf.String())
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.domain == "" {
				if got != nil {
					t.Fatalf("got %+v, want nil", got)
				}
				return
			}
			if got == nil {
				t.Fatal("got nil")
			}
			if got.Domain != c.domain || got.Selector != "s1" || got.Algorithm != c.algo || got.Tenant != c.tenant || !sameKey(got.Key, c.key) {
				t.Errorf("got %s/%s %s tenant %q, want %s/s1 %s tenant %q (same key: %v)",
					got.Domain, got.Selector, got.Algorithm, got.Tenant, c.domain, c.algo, c.tenant, sameKey(got.Key, c.key))
			}
		})
	}

	if k := newKeyring(zerolog.Nop()); true {
		if got, err := k.Signer(nil, "acme.example"); got != nil || err != nil {
			t.Errorf("nil snapshot: %v %v", got, err)
		}
	}
}

// An admin rotates a key by writing a new file under the same path: the
// next message signs with it, no restart. A file that breaks is an error
// until it is fixed.
func TestKeyringRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "acme.key")
	first := writeKey(t, path, "ed25519", 0o600)
	snap := signingSnapshot(t, rules.Signing{Domain: "acme.example", Selector: "s1", KeyFile: path})
	var logBuf bytes.Buffer
	k := newKeyring(zerolog.New(&logBuf))
	loads := func() int { return strings.Count(logBuf.String(), "dkim signing key loaded") }

	steps := []struct {
		name    string
		change  func() crypto.Signer // nil: no change; returns the key expected after it
		wantErr string
	}{
		{name: "first use"},
		{name: "unchanged, cached"},
		{name: "replaced by rename", change: func() crypto.Signer { return writeKey(t, path, "rsa", 0o600) }},
		{name: "rewritten in place", change: func() crypto.Signer {
			key, _ := dkimcheck.GenerateKey("ed25519", 0)
			b, _ := dkimcheck.MarshalKeyPEM(key)
			if err := os.WriteFile(path, b, 0o600); err != nil { // same inode
				t.Fatal(err)
			}
			// Make sure the modification time moves on coarse clocks.
			later := time.Now().Add(2 * time.Second)
			if err := os.Chtimes(path, later, later); err != nil {
				t.Fatal(err)
			}
			return key
		}},
		{name: "removed", change: func() crypto.Signer { os.Remove(path); return nil }, wantErr: "no such file"},
		{name: "back again", change: func() crypto.Signer { return writeKey(t, path, "ed25519", 0o600) }},
	}
	want := first
	for _, s := range steps {
		before := loads()
		if s.change != nil {
			want = s.change()
		}
		got, err := k.Signer(snap, "acme.example")
		if s.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), s.wantErr) {
				t.Fatalf("%s: err = %v, want %q", s.name, err, s.wantErr)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if !sameKey(got.Key, want) {
			t.Fatalf("%s: signs with an old key", s.name)
		}
		wantLoads := 1 // a new file (or the first use) is read once
		if s.change == nil && s.name != "first use" {
			wantLoads = 0
		}
		if got := loads() - before; got != wantLoads {
			t.Errorf("%s: the key was read %d times, want %d", s.name, got, wantLoads)
		}
	}
}

// Problems are logged once a minute per file, name the file, and never
// carry key material.
func TestKeyringLogging(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "open.key")
	key := writeKey(t, path, "ed25519", 0o644) // refused: others may read it
	snap := signingSnapshot(t, rules.Signing{Domain: "acme.example", Selector: "s1", KeyFile: path})
	var logBuf bytes.Buffer
	k := newKeyring(zerolog.New(&logBuf))
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	k.now = func() time.Time { return now }

	lines := func() int { return strings.Count(logBuf.String(), "\n") }
	for i := 0; i < 5; i++ {
		if _, err := k.Signer(snap, "acme.example"); err == nil {
			t.Fatal("a world-readable key was used")
		}
	}
	if lines() != 1 {
		t.Fatalf("%d log lines for 5 failures in one minute, want 1:\n%s", lines(), logBuf.String())
	}
	now = now.Add(keyLogEvery)
	k.Signer(snap, "acme.example")
	if lines() != 2 {
		t.Fatalf("%d log lines after a minute, want 2", lines())
	}
	if !strings.Contains(logBuf.String(), `"key_file":"`+path+`"`) {
		t.Errorf("log does not name the file:\n%s", logBuf.String())
	}

	// Fixed by a chmod alone (the mtime stays): loaded, logged at info, without the key.
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := k.Signer(snap, "acme.example"); err != nil {
		t.Fatal(err)
	}
	pemBytes, _ := dkimcheck.MarshalKeyPEM(key)
	seed := base64.StdEncoding.EncodeToString(key.(ed25519.PrivateKey).Seed())
	body := strings.Split(string(pemBytes), "\n")[1]
	for _, secret := range []string{seed, body, body[:20]} {
		if strings.Contains(logBuf.String(), secret) {
			t.Fatalf("the log carries key material:\n%s", logBuf.String())
		}
	}
	if !strings.Contains(logBuf.String(), "dkim signing key loaded") {
		t.Errorf("no load line:\n%s", logBuf.String())
	}
}

// The cache keeps at most maxKeys keys, dropping the least recently used.
func TestKeyringBounded(t *testing.T) {
	dir := t.TempDir()
	var entries []rules.Signing
	for _, d := range []string{"a", "b", "c"} {
		p := filepath.Join(dir, d+".key")
		writeKey(t, p, "ed25519", 0o600)
		entries = append(entries, rules.Signing{Domain: d + ".example", Selector: "s", KeyFile: p})
	}
	snap := signingSnapshot(t, entries...)
	k := newKeyring(zerolog.Nop())
	k.maxKeys = 2
	now := time.Unix(1000, 0)
	k.now = func() time.Time { now = now.Add(time.Second); return now }
	for _, d := range []string{"a", "b", "a", "c"} {
		if _, err := k.Signer(snap, d+".example"); err != nil {
			t.Fatal(err)
		}
	}
	if len(k.keys) != 2 || k.keys[filepath.Join(dir, "b.key")] != nil {
		t.Errorf("cache holds %d keys (b evicted: %v), want a and c", len(k.keys), k.keys[filepath.Join(dir, "b.key")] == nil)
	}
}
