package inline

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/geomilter/geomilter/milters/encrypt/inline/inlinetest"
)

// testMessage is a multipart message with a non-ASCII text part and a binary
// attachment; it returns all header fields and the body.
func testMessage(t *testing.T) ([]HeaderField, []byte) {
	t.Helper()
	att := make([]byte, 3000)
	if _, err := rand.Read(att); err != nil {
		t.Fatal(err)
	}
	b64 := base64.StdEncoding.EncodeToString(att)
	var lines []string
	for len(b64) > 76 {
		lines = append(lines, b64[:76])
		b64 = b64[76:]
	}
	lines = append(lines, b64)
	body := "This is a multi-part message in MIME format.\r\n" +
		"--XyZ\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\n" +
		"Content-Transfer-Encoding: 8bit\r\n" +
		"\r\n" +
		"Grüße aus Zürich — la facture n° 42 est jointe. Ça coûte 12 €.\r\n" +
		"日本語のテキスト\r\n" +
		"--XyZ\r\n" +
		"Content-Type: application/octet-stream; name=\"invoice.bin\"\r\n" +
		"Content-Transfer-Encoding: base64\r\n" +
		"Content-Disposition: attachment; filename=\"invoice.bin\"\r\n" +
		"\r\n" +
		strings.Join(lines, "\r\n") + "\r\n" +
		"--XyZ--\r\n"
	h := []HeaderField{
		field("Received", " from a.example.org (a.example.org [192.0.2.1])\r\n\tby mx.example.com; Mon, 7 Dec 2026 05:00:00 +0000"),
		field("From", " Alice <alice@example.com>"),
		field("To", " Bob <bob@example.org>"),
		field("Subject", " Invoice"),
		field("Date", " Mon, 7 Dec 2026 05:00:00 +0000"),
		field("Message-ID", " <1@example.com>"),
		field("MIME-Version", " 1.0"),
		field("Content-Type", " multipart/mixed;\r\n\tboundary=\"XyZ\""),
		field("content-language", " de"), // any case is a Content-* field
	}
	return h, []byte(body)
}

// entityOf is the entity Encrypt must encrypt: the Content-* fields as
// received, a blank line, the body.
func entityOf(h []HeaderField, body []byte) []byte {
	var b bytes.Buffer
	for _, f := range h {
		if IsContentField(f.Name) {
			b.WriteString(f.Name + ":" + f.Raw + "\r\n")
		}
	}
	b.WriteString("\r\n")
	b.Write(body)
	return b.Bytes()
}

// assemble writes the message the milter would leave: the original's
// non-MIME fields, the new fields, the new body.
func assemble(h, newH []HeaderField, body []byte) []byte {
	var b bytes.Buffer
	for _, f := range h {
		if IsContentField(f.Name) || strings.EqualFold(f.Name, "MIME-Version") {
			continue
		}
		b.WriteString(f.Name + ":" + f.Raw + "\r\n")
	}
	for _, f := range newH {
		b.WriteString(f.Name + ":" + f.Raw + "\r\n")
	}
	b.WriteString("\r\n")
	b.Write(body)
	return b.Bytes()
}

func storeKey(t *testing.T, dir, addr, tenant, certFile string) Key {
	t.Helper()
	d := filepath.Join(dir, tenant)
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d, addr+".pem"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	ks, err := OpenKeyStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	k, ok := ks.Lookup(tenant, addr)
	if !ok {
		t.Fatalf("Lookup(%q, %q): not found; problems %v", tenant, addr, ks.Problems())
	}
	return k
}

// TestSMIMEOpenSSL encrypts with every content and key encryption choice and
// has the real openssl decrypt the whole message with each recipient's key.
func TestSMIMEOpenSSL(t *testing.T) {
	inlinetest.NeedTool(t, "openssl")
	dir := t.TempDir()
	bobKey, bobCert := inlinetest.NewCert(t, dir, "bob@example.org", 2)
	escKey, escCert := inlinetest.NewCert(t, dir, "escrow@example.com", 2)
	store := filepath.Join(dir, "store")
	bob := storeKey(t, store, "bob@example.org", "acme", bobCert)
	esc := storeKey(t, store, "escrow@example.com", "acme", escCert)
	h, body := testMessage(t)
	want := entityOf(h, body)

	tests := []struct {
		name   string
		opts   Options
		decode []string // openssl subcommand and options
		ctype  string
		algs   []string // in openssl cms -cmsout -print
	}{
		{"cbc default with smime", Options{}, []string{"smime", "-decrypt"}, "enveloped-data", []string{"aes-256-cbc", "rsaEncryption"}},
		{"cbc with cms", Options{Cipher: AES256CBC}, []string{"cms", "-decrypt"}, "enveloped-data", []string{"aes-256-cbc", "rsaEncryption"}},
		{"cbc oaep", Options{OAEP: true}, []string{"cms", "-decrypt"}, "enveloped-data", []string{"aes-256-cbc", "rsaesOaep"}},
		{"gcm", Options{Cipher: AES256GCM}, []string{"cms", "-decrypt"}, "authEnveloped-data", []string{"aes-256-gcm", "rsaEncryption"}},
		{"gcm oaep", Options{Cipher: AES256GCM, OAEP: true}, []string{"cms", "-decrypt"}, "authEnveloped-data", []string{"aes-256-gcm", "rsaesOaep"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := tc.opts
			o.Escrow = []Key{esc}
			var out bytes.Buffer
			newH, err := Encrypt(&out, h, bytes.NewReader(body), SMIME, []Key{bob}, o)
			if err != nil {
				t.Fatal(err)
			}
			for _, line := range strings.Split(strings.TrimSuffix(out.String(), "\r\n"), "\r\n") {
				if len(line) > 76 {
					t.Fatalf("base64 line of %d characters", len(line))
				}
			}
			msg := assemble(h, newH, out.Bytes())
			parsed, err := mail.ReadMessage(bytes.NewReader(msg))
			if err != nil {
				t.Fatal(err)
			}
			mt, params, err := mime.ParseMediaType(parsed.Header.Get("Content-Type"))
			if err != nil || mt != "application/pkcs7-mime" || params["smime-type"] != tc.ctype || params["name"] != "smime.p7m" {
				t.Fatalf("Content-Type %q (%v)", parsed.Header.Get("Content-Type"), err)
			}
			if parsed.Header.Get("Subject") != "Invoice" || parsed.Header.Get("Content-Language") != "" {
				t.Fatalf("outer header fields wrong: %v", parsed.Header)
			}
			in := filepath.Join(t.TempDir(), "msg.eml")
			if err := os.WriteFile(in, msg, 0o600); err != nil {
				t.Fatal(err)
			}
			printed := string(inlinetest.Run(t, "", "openssl", "cms", "-cmsout", "-print", "-in", in))
			for _, a := range tc.algs {
				if !strings.Contains(printed, a) {
					t.Errorf("structure lacks %s:\n%s", a, printed)
				}
			}
			for _, r := range []struct{ key, cert string }{{bobKey, bobCert}, {escKey, escCert}} {
				args := append(append([]string{}, tc.decode...), "-in", in, "-inkey", r.key, "-recip", r.cert)
				got := inlinetest.Run(t, "", "openssl", args...)
				if !bytes.Equal(got, want) {
					t.Fatalf("openssl %v with %s: entity differs\n got %q\nwant %q", tc.decode, filepath.Base(r.key), head(got), head(want))
				}
			}
		})
	}
}

func head(b []byte) []byte {
	if len(b) > 300 {
		return b[:300]
	}
	return b
}

// TestPGPGnuPG encrypts PGP/MIME and has the real gpg decrypt part 2 with
// the recipient's and the escrow key.
func TestPGPGnuPG(t *testing.T) {
	bobHome, bobPub := inlinetest.GPGHome(t, "Bob <bob@example.org>", "never")
	escHome, escPub := inlinetest.GPGHome(t, "Escrow <escrow@example.com>", "never")
	store := t.TempDir()
	for name, pub := range map[string][]byte{"bob@example.org.asc": bobPub, "example.com.asc": escPub} {
		if err := os.WriteFile(filepath.Join(store, name), pub, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ks, err := OpenKeyStore(store)
	if err != nil {
		t.Fatal(err)
	}
	bob, ok1 := ks.Lookup("", "Bob@Example.org")
	esc, ok2 := ks.Lookup("", "escrow@example.com") // through the domain key
	if !ok1 || !ok2 || !bob.Has(PGP) || bob.Has(SMIME) {
		t.Fatalf("lookup: %v %v %+v; problems %v", ok1, ok2, bob, ks.Problems())
	}
	h, body := testMessage(t)
	want := entityOf(h, body)

	var out bytes.Buffer
	newH, err := Encrypt(&out, h, bytes.NewReader(body), PGP, []Key{bob}, Options{Escrow: []Key{esc}})
	if err != nil {
		t.Fatal(err)
	}
	msg := assemble(h, newH, out.Bytes())
	parsed, err := mail.ReadMessage(bytes.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	mt, params, err := mime.ParseMediaType(parsed.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/encrypted" || params["protocol"] != "application/pgp-encrypted" {
		t.Fatalf("Content-Type %q (%v)", parsed.Header.Get("Content-Type"), err)
	}
	// RFC 3156 §4: exactly two parts, version then data.
	mr := multipart.NewReader(parsed.Body, params["boundary"])
	var parts [][]byte
	var types []string
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(p)
		if err != nil {
			t.Fatal(err)
		}
		parts = append(parts, b)
		types = append(types, p.Header.Get("Content-Type"))
	}
	if len(parts) != 2 || types[0] != "application/pgp-encrypted" || !strings.HasPrefix(types[1], "application/octet-stream") ||
		strings.TrimSpace(string(parts[0])) != "Version: 1" {
		t.Fatalf("parts %q: %q", types, parts)
	}
	for _, home := range []string{bobHome, escHome} {
		got := inlinetest.PGPDecrypt(t, home, parts[1])
		if !bytes.Equal(got, want) {
			t.Fatalf("gpg --decrypt: entity differs\n got %q\nwant %q", head(got), head(want))
		}
	}
}

func TestEncryptErrors(t *testing.T) {
	dir := t.TempDir()
	_, cert := inlinetest.NewCert(t, dir, "bob@example.org", 2)
	bob := storeKey(t, filepath.Join(dir, "store"), "bob@example.org", "", cert)
	h, body := testMessage(t)

	tests := []struct {
		name    string
		m       Method
		keys    []Key
		o       Options
		wantErr string
		is      error
	}{
		{"no keys", SMIME, nil, Options{}, "no recipient key", nil},
		{"key without pgp", PGP, []Key{bob}, Options{}, `"bob@example.org" has no pgp key`, nil},
		{"unknown method", "rot13", []Key{bob}, Options{}, "unknown method", nil},
		{"unknown cipher", SMIME, []Key{bob}, Options{Cipher: "des"}, "unknown cipher", nil},
		{"too large", SMIME, []Key{bob}, Options{MaxSize: 1000}, "entity over 1000 bytes", ErrTooLarge},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Encrypt(io.Discard, h, bytes.NewReader(body), tc.m, tc.keys, tc.o)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err %v, want %q", err, tc.wantErr)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Fatalf("err %v is not %v", err, tc.is)
			}
		})
	}
}

func TestCRLFWriter(t *testing.T) {
	tests := []struct {
		in   []string // writes
		want string
	}{
		{[]string{"a\nb\n"}, "a\r\nb\r\n"},
		{[]string{"a\r\nb\r\n"}, "a\r\nb\r\n"},
		{[]string{"a\r", "\nb\n"}, "a\r\nb\r\n"},
		{[]string{"a\r", "x\n"}, "a\rx\r\n"},
		{[]string{"\n\n"}, "\r\n\r\n"},
		{[]string{"", "no end"}, "no end"},
	}
	for _, tc := range tests {
		var b bytes.Buffer
		w := &crlfWriter{w: &b}
		for _, s := range tc.in {
			if n, err := w.Write([]byte(s)); err != nil || n != len(s) {
				t.Fatalf("%q: %d %v", tc.in, n, err)
			}
		}
		if b.String() != tc.want || w.n != int64(len(tc.want)) {
			t.Errorf("%q: got %q (n=%d), want %q", tc.in, b.String(), w.n, tc.want)
		}
	}
}
