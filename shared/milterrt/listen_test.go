package milterrt

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseSpec(t *testing.T) {
	cases := []struct {
		spec, network, addr, err string
	}{
		{"unix:/run/geomilter/access.sock", "unix", "/run/geomilter/access.sock", ""},
		{"local:/run/x.sock", "unix", "/run/x.sock", ""},
		{"inet:127.0.0.1:8891", "tcp", "127.0.0.1:8891", ""},
		{"inet:[::1]:8891", "tcp", "[::1]:8891", ""},
		{"inet:localhost:0", "tcp", "localhost:0", ""},
		{"inet6:[::1]:25", "tcp6", "[::1]:25", ""},
		{"unix:", "", "", "empty socket path"},
		{"inet:127.0.0.1", "", "", "want inet:host:port"},
		{"inet:::1:25", "", "", "want inet:host:port"},
		{"inet:host:http", "", "", `invalid port "http"`},
		{"inet:host:70000", "", "", `invalid port "70000"`},
		{"inet:127.0.0.1:025", "tcp", "127.0.0.1:25", ""},
		{"tcp:127.0.0.1:25", "", "", `unknown type "tcp"`},
		{"/run/x.sock", "", "", "want unix:/path"},
	}
	for _, tc := range cases {
		n, a, err := ParseSpec(tc.spec)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseSpec(%q) error %v, want %q", tc.spec, err, tc.err)
			}
			continue
		}
		if err != nil || n != tc.network || a != tc.addr {
			t.Errorf("ParseSpec(%q) = %q %q %v, want %q %q", tc.spec, n, a, err, tc.network, tc.addr)
		}
	}
}

func TestListenUnix(t *testing.T) {
	dir := socketDir(t)
	path := filepath.Join(dir, "m.sock")

	// A stale socket (nobody listening) is replaced.
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("stale socket file missing: %v", err)
	}
	ln, err := Listen("unix:" + path)
	if err != nil {
		t.Fatalf("over stale socket: %v", err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != SocketMode || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket mode %v, %v", fi.Mode(), err)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial new socket: %v", err)
	}
	c.Close()

	// A live socket is refused and left alone.
	if ln2, err := Listen("unix:" + path); err == nil || !strings.Contains(err.Error(), "already in use") {
		if ln2 != nil {
			ln2.Close()
		}
		t.Fatalf("second Listen on a live socket: %v, want already in use", err)
	}
	if c, err := net.Dial("unix", path); err != nil {
		t.Fatalf("live socket damaged by refused Listen: %v", err)
	} else {
		c.Close()
	}

	// Close removes the file.
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Fatalf("socket file left after Close: %v", err)
	}

	// A regular file is never removed.
	if err := os.WriteFile(path, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen("unix:" + path); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Listen over a regular file: %v", err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "keep" {
		t.Fatalf("regular file changed: %q %v", b, err)
	}

	// A missing directory is an error, not created.
	missing := filepath.Join(dir, "nope", "m.sock")
	if _, err := Listen("unix:" + missing); err == nil || !strings.Contains(err.Error(), "socket directory") {
		t.Fatalf("missing dir: %v", err)
	}
	if _, err := os.Stat(filepath.Dir(missing)); !os.IsNotExist(err) {
		t.Fatal("Listen created the socket directory")
	}
}

func TestListenUnixKeepsReplacedSocket(t *testing.T) {
	path := filepath.Join(socketDir(t), "m.sock")
	ln, err := Listen("unix:" + path)
	if err != nil {
		t.Fatal(err)
	}
	// Another process takes the path over (removes ours, binds its own).
	os.Remove(path)
	other, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	ln.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("closing our listener removed the other process's socket: %v", err)
	}
}

func TestListenInet(t *testing.T) {
	for _, spec := range []string{"inet:127.0.0.1:0", "inet:[::1]:0"} {
		ln, err := Listen(spec)
		if err != nil {
			if strings.Contains(spec, "::1") {
				t.Logf("no IPv6 loopback here: %v", err)
				continue
			}
			t.Fatal(err)
		}
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatalf("%s: %v", spec, err)
		}
		c.Close()
		ln.Close()
	}
	if _, err := Listen("inet:192.0.2.1:0"); err == nil {
		t.Error("listening on an address not on this host succeeded")
	}
}

// socketDir returns a short directory: unix socket paths are limited to 108
// bytes, which t.TempDir() can exceed.
func socketDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "mrt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}
