package dkimcheck

import (
	"crypto"
	"crypto/ed25519"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// copyKey puts a testdata key in a temporary file of the given mode (git
// keeps no modes but the executable bit).
func copyKey(t *testing.T, name string, mode os.FileMode) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, readFile(t, filepath.Join("testdata", name)), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // umask aside
		t.Fatal(err)
	}
	return path
}

func TestLoadKey(t *testing.T) {
	tests := []struct {
		name     string
		file     string
		mode     os.FileMode
		algo     string
		warn     bool
		errMatch string
	}{
		{"PKCS#1 RSA 1024 (RFC 8463 A.1)", "rfc8463-rsa.pem", 0o600, AlgRSASHA256, true, ""},
		{"PKCS#8 RSA 1024", "rsa1024-pkcs8.pem", 0o600, AlgRSASHA256, true, ""},
		{"PKCS#8 Ed25519", "ed25519-pkcs8.pem", 0o600, AlgEd25519SHA256, false, ""},
		{"group-readable is allowed", "ed25519-pkcs8.pem", 0o640, AlgEd25519SHA256, false, ""},
		{"world-readable", "ed25519-pkcs8.pem", 0o644, "", false, "mode 0644"},
		{"group-writable", "ed25519-pkcs8.pem", 0o660, "", false, "mode 0660"},
		{"RSA 512", "rsa512.pem", 0o600, "", false, "512"},
		{"not a key", "rfc8463-keys.txt", 0o600, "", false, "no PEM block"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := copyKey(t, tc.file, tc.mode)
			key, algo, err := LoadKey(path)
			if tc.errMatch != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errMatch) || !strings.Contains(err.Error(), path) {
					t.Fatalf("err %v, want one naming %s and %q", err, path, tc.errMatch)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if algo != tc.algo {
				t.Errorf("algo %s, want %s", algo, tc.algo)
			}
			if w := KeyWarning(key); (w != "") != tc.warn {
				t.Errorf("KeyWarning = %q", w)
			}
		})
	}
	if _, _, err := LoadKey(filepath.Join(t.TempDir(), "absent")); err == nil {
		t.Error("absent file loaded")
	}
}

// RFC 8463 A.2: the published records are what DNSRecord makes of the
// A.1 keys; and the RFC's message signed with its key verifies against
// them.
func TestRFC8463Keys(t *testing.T) {
	z := rfc8463Zone(t)
	seed, _ := base64.StdEncoding.DecodeString("nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=")
	ed := ed25519.NewKeyFromSeed(seed)
	rsaKey, _, err := LoadKey(copyKey(t, "rfc8463-rsa.pem", 0o600))
	if err != nil {
		t.Fatal(err)
	}
	for sel, pub := range map[string]any{"brisbane": ed.Public(), "test": rsaKey.Public()} {
		rec, err := DNSRecord(pub)
		if err != nil {
			t.Fatal(err)
		}
		if want := z[sel+"._domainkey.football.example.com"]; rec != want {
			t.Errorf("%s: DNSRecord = %q, want %q", sel, rec, want)
		}
	}

	msg := string(readFile(t, "testdata/rfc8463-a3.eml"))
	unsigned := msg[strings.Index(msg, "From: Joe"):]
	for sel, key := range map[string]crypto.Signer{"brisbane": ed, "test": rsaKey} {
		value, err := Sign(strings.NewReader(unsigned), SignOptions{Domain: "football.example.com", Selector: sel, Key: key})
		if err != nil {
			t.Fatal(err)
		}
		res := verifyOurs(t, z, HeaderName+":"+value+"\r\n"+unsigned)
		if len(res) != 1 || res[0].Result != ResultPass || res[0].Selector != sel {
			t.Errorf("%s: %+v", sel, res)
		}
	}
}

func TestGenerateKey(t *testing.T) {
	tests := []struct {
		algo string
		bits int
		ok   bool
	}{
		{"ed25519", 0, true},
		{"ed25519-sha256", 256, true},
		{"ed25519", 2048, false},
		{"rsa", 1024, true},
		{"rsa", 512, false},
		{"rsa", 16384, false},
		{"dsa", 0, false},
	}
	for _, tc := range tests {
		key, err := GenerateKey(tc.algo, tc.bits)
		if (err == nil) != tc.ok {
			t.Errorf("GenerateKey(%s, %d): err %v", tc.algo, tc.bits, err)
			continue
		}
		if err != nil {
			continue
		}
		pemData, err := MarshalKeyPEM(key)
		if err != nil {
			t.Fatal(err)
		}
		back, algo, err := ParseKeyPEM(pemData)
		if err != nil {
			t.Fatalf("%s: parse back: %v", tc.algo, err)
		}
		if !strings.HasPrefix(algo, strings.TrimSuffix(tc.algo, "-sha256")) {
			t.Errorf("%s: parsed as %s", tc.algo, algo)
		}
		if r1, _ := DNSRecord(key.Public()); r1 == "" {
			t.Errorf("%s: no record", tc.algo)
		} else if r2, _ := DNSRecord(back.Public()); r1 != r2 {
			t.Errorf("%s: key changed through PEM", tc.algo)
		}
	}
}

func TestDNSRecordEd25519(t *testing.T) {
	key, _ := GenerateKey("ed25519", 0)
	rec, err := DNSRecord(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	p := strings.TrimPrefix(rec, "v=DKIM1; k=ed25519; p=")
	raw, err := base64.StdEncoding.DecodeString(p)
	if p == rec || err != nil || len(raw) != 32 {
		t.Errorf("record %q: RFC 8463 §4 wants p= the raw 32-byte key", rec)
	}
	if _, err := DNSRecord("not a key"); err == nil {
		t.Error("DNSRecord took a string")
	}
}

func TestSplitTXT(t *testing.T) {
	rec := "v=DKIM1; k=rsa; p=" + strings.Repeat("A", 600)
	parts := SplitTXT(rec)
	if len(parts) != 3 || len(parts[0]) != 255 || len(parts[1]) != 255 || strings.Join(parts, "") != rec {
		t.Errorf("SplitTXT: %d parts", len(parts))
	}
	if got := SplitTXT("short"); len(got) != 1 || got[0] != "short" {
		t.Errorf("SplitTXT(short) = %q", got)
	}
	if got := ZoneTXT("v=DKIM1; p=x"); got != `"v=DKIM1; p=x"` {
		t.Errorf("ZoneTXT = %s", got)
	}
	z := ZoneTXT(rec)
	if !strings.HasPrefix(z, `( "v=DKIM1; k=rsa; p=AAA`) || !strings.HasSuffix(z, `AAA" )`) || strings.Count(z, `"`) != 6 {
		t.Errorf("ZoneTXT = %s", z)
	}
}
