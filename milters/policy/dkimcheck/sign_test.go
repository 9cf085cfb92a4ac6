package dkimcheck

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
)

// testMessage has what signing must cope with: folded and repeated fields,
// fields not to sign, odd white space, empty lines at the end of the body.
const testMessage = "Received: from x by y; Mon, 7 Dec 2026 02:00:00 +0000\r\n" +
	"From: Alice <alice@example.org>\r\n" +
	"To: bob@example.net,\r\n\tcarol@example.net\r\n" +
	"To: dave@example.net\r\n" +
	"Subject:   A  subject \t with\r\n   white space  \r\n" +
	"Date: Mon, 7 Dec 2026 02:00:00 +0000\r\n" +
	"Message-ID: <1@example.org>\r\n" +
	"X-Mailer: not signed\r\n" +
	"MIME-Version: 1.0\r\n" +
	"Content-Type: text/plain; charset=utf-8\r\n" +
	"\r\n" +
	"Hello Bob,  \r\n" +
	"\tthis line \t has  spaces.\r\n" +
	"\r\n" +
	"Alice\r\n" +
	"\r\n\r\n"

// fixedNow is the signing time of the tests: now (to the second), because
// the verifiers judge an x= expiry by the real clock.
var fixedNow = time.Now().Truncate(time.Second)

// keys made once: RSA generation costs a second or so.
var testKeys = sync.OnceValue(func() map[string]crypto.Signer {
	rsaKey, err := GenerateKey("rsa", 2048)
	if err != nil {
		panic(err)
	}
	edKey, err := GenerateKey("ed25519", 0)
	if err != nil {
		panic(err)
	}
	return map[string]crypto.Signer{AlgRSASHA256: rsaKey, AlgEd25519SHA256: edKey}
})

func signWith(t testing.TB, key crypto.Signer, msg string, o SignOptions) string {
	t.Helper()
	o.Key = key
	if o.Domain == "" {
		o.Domain, o.Selector = "example.org", "sel"
	}
	if o.Now == nil {
		o.Now = func() time.Time { return fixedNow }
	}
	v, err := Sign(strings.NewReader(msg), o)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	return v
}

func keyZone(t testing.TB, key crypto.Signer) zone {
	t.Helper()
	rec, err := DNSRecord(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	return zone{"sel._domainkey.example.org": rec}
}

// verifyOurs runs a signed message through the streaming Verifier.
func verifyOurs(t testing.TB, z zone, signed string) []Result {
	t.Helper()
	v := NewVerifier(context.Background(), VerifyOptions{LookupTXT: z.lookup})
	feed(t, v, []byte(signed), 100)
	res, err := v.Close()
	if err != nil {
		t.Fatalf("Close: %v", err)
	}
	return res
}

// verifyLib runs it through go-msgauth directly, no pipe of ours between.
func verifyLib(t testing.TB, z zone, signed string) error {
	t.Helper()
	vs, err := dkim.VerifyWithOptions(strings.NewReader(signed), &dkim.VerifyOptions{
		LookupTXT: func(name string) ([]string, error) { return z.lookup(context.Background(), name) },
	})
	if err != nil {
		return err
	}
	if len(vs) != 1 {
		t.Fatalf("%d verifications", len(vs))
	}
	return vs[0].Err
}

func TestSignVerifies(t *testing.T) {
	for algo, key := range testKeys() {
		t.Run(algo, func(t *testing.T) {
			z := keyZone(t, key)
			value := signWith(t, key, testMessage, SignOptions{Expire: time.Hour, Identifier: "alice@mail.example.org"})
			signed := HeaderName + ":" + value + "\r\n" + testMessage
			tags := parseSignature(value)
			if tags.syntax != "" || tags.algorithm != algo || tags.identifier != "alice@mail.example.org" {
				t.Errorf("signature tags %+v", tags)
			}
			for _, want := range []string{
				"t=" + strconv.FormatInt(fixedNow.Unix(), 10) + ";",
				"x=" + strconv.FormatInt(fixedNow.Unix()+3600, 10) + ";",
				"c=relaxed/relaxed;",
				// present fields each time present, From once more (RFC 6376 §8.15)
				"h=From:From:Subject:Date:To:To:Message-ID:MIME-Version:Content-Type;",
			} {
				if !strings.Contains(strings.ReplaceAll(value, "\r\n\t", ""), want) {
					t.Errorf("signature lacks %q:\n%s", want, value)
				}
			}
			for _, line := range strings.Split(HeaderName+":"+value, "\r\n") {
				if len(line) > 78 {
					t.Errorf("line of %d characters: %q", len(line), line)
				}
			}

			if res := verifyOurs(t, z, signed); len(res) != 1 || res[0].Result != ResultPass {
				t.Errorf("our verifier: %+v", res)
			}
			if err := verifyLib(t, z, signed); err != nil {
				t.Errorf("go-msgauth: %v", err)
			}
			// LF line ends sign the same (the message as a file).
			lf := signWith(t, key, strings.ReplaceAll(testMessage, "\r\n", "\n"), SignOptions{})
			if err := verifyLib(t, z, HeaderName+":"+lf+"\r\n"+testMessage); err != nil {
				t.Errorf("signed with LF line ends: %v", err)
			}

			tampered := map[string]string{
				"body byte":        strings.Replace(signed, "Hello Bob", "Hello Bib", 1),
				"From added above": "From: mallory@example.com\r\n" + signed,
				"From added below": strings.Replace(signed, "\r\n\r\nHello", "\r\nFrom: mallory@example.com\r\n\r\nHello", 1),
				"Subject changed":  strings.Replace(signed, "A  subject", "B  subject", 1),
			}
			for name, msg := range tampered {
				if res := verifyOurs(t, z, msg); len(res) != 1 || res[0].Result != ResultFail {
					t.Errorf("%s: our verifier: %+v, want fail", name, res)
				}
			}
			// Changes relaxed canonicalisation ignores.
			benign := strings.Replace(signed, "Date: Mon", "Date:    Mon", 1)
			benign = strings.Replace(benign, "Alice\r\n", "Alice \t \r\n\r\n", 1)
			benign = strings.Replace(benign, "X-Mailer: not signed", "X-Mailer: changed", 1)
			if res := verifyOurs(t, z, benign); len(res) != 1 || res[0].Result != ResultPass {
				t.Errorf("benign change: %+v, want pass", res)
			}
		})
	}
}

// Our signatures verify with dkimpy, an independent implementation.
func TestSignVerifiesWithDkimpy(t *testing.T) {
	py := needDkimpy(t)
	for algo, key := range testKeys() {
		t.Run(algo, func(t *testing.T) {
			rec := keyZone(t, key)["sel._domainkey.example.org"]
			value := signWith(t, key, testMessage, SignOptions{})
			signed := HeaderName + ":" + value + "\r\n" + testMessage
			if out, err := runPy(py, "dkimpy_verify.py", signed, "sel._domainkey.example.org", rec); err != nil {
				t.Errorf("dkimpy: %v: %s", err, out)
			}
			bad := strings.Replace(signed, "Hello Bob", "Hello Bib", 1)
			if out, err := runPy(py, "dkimpy_verify.py", bad, "sel._domainkey.example.org", rec); err == nil {
				t.Errorf("dkimpy verified a changed body: %s", out)
			}
		})
	}
}

// Messages signed by dkimpy verify with our Verifier, and fail changed by
// one byte.
func TestVerifyDkimpySigned(t *testing.T) {
	py := needDkimpy(t)
	dir := t.TempDir()
	for algo, key := range testKeys() {
		keyFile := filepath.Join(dir, algo)
		var data []byte
		if ed, ok := key.(ed25519.PrivateKey); ok {
			data = []byte(base64.StdEncoding.EncodeToString(ed.Seed()))
		} else {
			var err error
			if data, err = MarshalKeyPEM(key); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(keyFile, data, 0o600); err != nil {
			t.Fatal(err)
		}
		for _, canon := range []string{"relaxed/relaxed", "simple/simple", "relaxed/simple"} {
			t.Run(algo+"/"+canon, func(t *testing.T) {
				out, err := runPy(py, "dkimpy_sign.py", testMessage, algo, keyFile, "example.org", "sel", canon)
				if err != nil {
					t.Fatalf("dkimpy sign: %v: %s", err, out)
				}
				signed := string(out) + testMessage
				z := keyZone(t, key)
				if res := verifyOurs(t, z, signed); len(res) != 1 || res[0].Result != ResultPass || res[0].Algorithm != algo {
					t.Errorf("dkimpy-signed: %+v, want pass", res)
				}
				bad := strings.Replace(signed, "Alice\r\n", "Alicf\r\n", 1)
				if res := verifyOurs(t, z, bad); len(res) != 1 || res[0].Result != ResultFail {
					t.Errorf("dkimpy-signed, one byte changed: %+v, want fail", res)
				}
			})
		}
	}
}

// needDkimpy returns Debian's python3 when it has the dkim module
// (packages python3-dkim, python3-nacl for ed25519), or skips.
func needDkimpy(t *testing.T) string {
	t.Helper()
	const py = "/usr/bin/python3"
	if err := exec.Command(py, "-c", "import dkim, nacl").Run(); err != nil {
		t.Skipf("dkimpy not available (%s -c 'import dkim, nacl': %v): apt-get install python3-dkim python3-nacl", py, err)
	}
	return py
}

func runPy(py, script, stdin string, args ...string) ([]byte, error) {
	cmd := exec.Command(py, append([]string{filepath.Join("testdata", script)}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	return append(out, stderr.Bytes()...), err
}

func TestSignOptionErrors(t *testing.T) {
	key := testKeys()[AlgEd25519SHA256]
	tests := []struct {
		name string
		msg  string
		o    SignOptions
		want string
	}{
		{"no key", testMessage, SignOptions{Domain: "example.org", Selector: "s"}, "no key"},
		{"bad domain", testMessage, SignOptions{Key: key, Domain: "exa mple.org", Selector: "s"}, "invalid domain"},
		{"domain injects a tag", testMessage, SignOptions{Key: key, Domain: "example.org; l=0", Selector: "s"}, "invalid domain"},
		{"bad selector", testMessage, SignOptions{Key: key, Domain: "example.org", Selector: ""}, "invalid selector"},
		{"i= outside d=", testMessage, SignOptions{Key: key, Domain: "example.org", Selector: "s", Identifier: "a@example.com"}, "not in domain"},
		{"i= suffix trick", testMessage, SignOptions{Key: key, Domain: "example.org", Selector: "s", Identifier: "a@badexample.org"}, "not in domain"},
		{"no From", "To: a@example.org\r\n\r\nbody\r\n", SignOptions{Key: key, Domain: "example.org", Selector: "s"}, "no From"},
		{"header too long", "From: a@example.org\r\nX: " + strings.Repeat("x", 200) + "\r\n\r\n", SignOptions{Key: key, Domain: "example.org", Selector: "s", MaxHeaderBytes: 100}, "header longer than 100"},
	}
	for _, tc := range tests {
		_, err := Sign(strings.NewReader(tc.msg), tc.o)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want %q", tc.name, err, tc.want)
		}
	}
}

func TestHeaderList(t *testing.T) {
	fields := []string{"From: a\r\n", "To: b\r\n", "to: c\r\n", "Subject : d\r\n", "X-Other: e\r\n", "List-Id: f\r\n"}
	got, err := headerList(fields, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := "From:From:Subject:To:To:List-Id"; strings.Join(got, ":") != want {
		t.Errorf("h= %s, want %s", strings.Join(got, ":"), want)
	}
	got, _ = headerList(fields, []string{"x-other", "from"})
	if want := "From:From:x-other"; strings.Join(got, ":") != want {
		t.Errorf("h= %s, want %s", strings.Join(got, ":"), want)
	}
}

// RFC 6376 §3.4.5's example, and the edges of §3.4.4.
func TestRelaxedBody(t *testing.T) {
	tests := []struct{ in, want string }{
		{" C \r\nD \t E\r\n\r\n\r\n", " C\r\nD E\r\n"},
		{"", ""},
		{"\r\n\r\n", ""},
		{"  \r\n \t\r\n", ""},
		{"a", "a\r\n"},
		{"a\nb\n", "a\r\nb\r\n"},
		{"a\r\rb\r\n", "a\r\rb\r\n"},
		{"a\r", "a\r\r\n"},
		{"\r\n\r\nx", "\r\n\r\nx\r\n"},
	}
	for _, tc := range tests {
		for _, size := range []int{1, 2, 1000} {
			var out bytes.Buffer
			c := &relaxedBody{w: &out}
			for in := tc.in; len(in) > 0; {
				n := min(size, len(in))
				c.Write([]byte(in[:n]))
				in = in[n:]
			}
			c.Close()
			if out.String() != tc.want {
				t.Errorf("relaxedBody(%q) by %d = %q, want %q", tc.in, size, out.String(), tc.want)
			}
		}
	}
}

func TestRelaxedHeader(t *testing.T) {
	tests := []struct{ in, want string }{
		{"A: X\r\n", "a:X\r\n"},
		{"B : Y\t\r\n\tZ  \r\n", "b:Y Z\r\n"},
		{"Subject:\r\n", "subject:\r\n"},
		{"X:  a  b \r\n", "x:a b\r\n"},
	}
	for _, tc := range tests {
		if got := relaxedHeader(tc.in); got != tc.want {
			t.Errorf("relaxedHeader(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
