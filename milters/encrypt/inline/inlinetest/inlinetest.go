// Package inlinetest drives the real openssl and gpg for the tests of inline
// encryption: it makes S/MIME certificates and GnuPG homes with fresh keys,
// and opens what the milter encrypted, so a test checks the output with the
// programs recipients use rather than with our own code.
//
// It is imported only by tests (the inline and encrypt packages' unit tests
// and the Postfix integration tests); every helper fails or skips the test it
// is given instead of returning an error.
package inlinetest

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// runTimeout bounds one openssl or gpg run: RSA key generation and gpg's
// first agent start take seconds on a loaded machine, never a minute.
const runTimeout = 60 * time.Second

// NeedTool skips the test when a Debian program it drives is not installed
// (the README's install list has openssl and gnupg).
func NeedTool(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("%s not installed (Debian packages openssl, gnupg): %v", name, err)
	}
}

// Run runs name with args and stdin (may be ""), killed after a minute, and
// returns its standard output; it fails the test with the standard error
// when the program fails.
func Run(t testing.TB, stdin string, name string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	// gpg starts gpg-agent, which may keep the output pipes open: stop
	// waiting for them shortly after gpg itself has ended.
	cmd.WaitDelay = 5 * time.Second
	cmd.Stdin = strings.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return out
}

// NewCert makes an RSA key and a self-signed certificate for addr (CN and
// subjectAltName email) with the real openssl, valid for days days, in dir,
// and returns the file paths <dir>/<addr>.key and <dir>/<addr>.crt.
func NewCert(t testing.TB, dir, addr string, days int) (keyFile, certFile string) {
	t.Helper()
	NeedTool(t, "openssl")
	keyFile = filepath.Join(dir, addr+".key")
	certFile = filepath.Join(dir, addr+".crt")
	Run(t, "", "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
		"-keyout", keyFile, "-out", certFile, "-days", strconv.Itoa(days),
		"-subj", "/CN="+addr, "-addext", "subjectAltName=email:"+addr)
	return keyFile, certFile
}

// GPGHome makes a GnuPG home with a fresh key for uid (ed25519 primary,
// cv25519 encryption subkey, no passphrase, expiring as expire says:
// "never", "1d", …) and returns the home and the armored public key. The
// test's cleanup stops the home's gpg-agent and removes the home.
func GPGHome(t testing.TB, uid, expire string) (home string, pub []byte) {
	t.Helper()
	NeedTool(t, "gpg")
	// A short path under the temporary directory, not t.TempDir():
	// gpg-agent's socket lives in the home, and a socket path is limited
	// to 108 bytes.
	home, err := os.MkdirTemp("", "gmgpg")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_ = exec.CommandContext(ctx, "gpgconf", "--homedir", home, "--kill", "all").Run()
		os.RemoveAll(home)
	})
	if err := os.Chmod(home, 0o700); err != nil {
		t.Fatal(err)
	}
	Run(t, "", "gpg", "--batch", "--homedir", home, "--passphrase", "", "--pinentry-mode", "loopback",
		"--quick-gen-key", uid, "future-default", "default", expire)
	pub = Run(t, "", "gpg", "--batch", "--homedir", home, "--armor", "--export", uid)
	if len(pub) == 0 {
		t.Fatalf("gpg exported no key for %q", uid)
	}
	return home, pub
}

// SMIMEDecrypt opens the S/MIME message in msgFile with the recipient's key
// and certificate (openssl smime -decrypt) and returns the decrypted entity.
func SMIMEDecrypt(t testing.TB, msgFile, keyFile, certFile string) []byte {
	t.Helper()
	NeedTool(t, "openssl")
	return Run(t, "", "openssl", "smime", "-decrypt", "-in", msgFile, "-inkey", keyFile, "-recip", certFile)
}

// PGPDecrypt decrypts the armored OpenPGP message with the keys of the
// GnuPG home (gpg --decrypt) and returns the plaintext.
func PGPDecrypt(t testing.TB, home string, armored []byte) []byte {
	t.Helper()
	NeedTool(t, "gpg")
	return Run(t, string(armored), "gpg", "--batch", "--homedir", home, "--pinentry-mode", "loopback",
		"--passphrase", "", "--decrypt")
}
