package milterrt

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// SocketMode is the permission of a unix socket created by Listen: Postfix's
// user must be in the milter's group.
const SocketMode = 0o660

// Spec is a milter address in Postfix's notation, parsed.
type Spec struct {
	Kind    string // as written: unix, local, inet, inet4 or inet6
	Network string // for net.Dial and net.Listen: unix, tcp, tcp4 or tcp6
	Address string // the socket path, or host:port (the port without leading zeros)
	Host    string // inet kinds only; "" when left out
}

// ParseAddress is the one parser of Postfix's milter notation: "unix:/path"
// (also "local:/path"), "inet:host:port", "inet:[::1]:port", "inet4:…" and
// "inet6:…". It checks the syntax only; config.ParseListen adds what a
// geomilter config requires. Its errors say what is wrong without repeating
// spec.
func ParseAddress(spec string) (Spec, error) {
	kind, rest, ok := strings.Cut(spec, ":")
	if !ok {
		return Spec{}, errors.New("want unix:/path or inet:host:port")
	}
	switch kind {
	case "unix", "local":
		if rest == "" {
			return Spec{}, errors.New("empty socket path")
		}
		return Spec{Kind: kind, Network: "unix", Address: rest}, nil
	case "inet", "inet4", "inet6":
		host, port, err := net.SplitHostPort(rest)
		if err != nil {
			return Spec{}, fmt.Errorf("not host:port: %s (want inet:host:port, IPv6 as inet:[::1]:port)",
				strings.TrimPrefix(err.Error(), "address "+rest+": "))
		}
		n, err := strconv.Atoi(port)
		if err != nil || n < 0 || n > 65535 {
			return Spec{}, fmt.Errorf("invalid port %q", port)
		}
		network := map[string]string{"inet": "tcp", "inet4": "tcp4", "inet6": "tcp6"}[kind]
		return Spec{Kind: kind, Network: network, Address: net.JoinHostPort(host, strconv.Itoa(n)), Host: host}, nil
	}
	return Spec{}, fmt.Errorf("unknown type %q, want unix:/path or inet:host:port", kind)
}

// ParseSpec turns Postfix's milter notation into a network and address for
// net.Dial and net.Listen (see ParseAddress).
func ParseSpec(spec string) (network, address string, err error) {
	sp, err := ParseAddress(spec)
	if err != nil {
		return "", "", fmt.Errorf("milter address %q: %w", spec, err)
	}
	return sp.Network, sp.Address, nil
}

// Listen opens a listener for a Postfix milter address (see ParseSpec).
//
// For a unix socket: the parent directory must exist; a stale socket file (one
// nobody answers on) is replaced; a socket someone is listening on is an error
// ("already in use"), and so is any other kind of file at that path, which is
// never removed. The socket gets mode SocketMode, and closing the listener
// removes the file (if it is still the one we created).
func Listen(spec string) (net.Listener, error) {
	network, addr, err := ParseSpec(spec)
	if err != nil {
		return nil, err
	}
	if network != "unix" {
		ln, err := net.Listen(network, addr)
		if err != nil {
			return nil, fmt.Errorf("listen %s: %w", spec, err)
		}
		return ln, nil
	}
	return listenUnix(spec, addr)
}

func listenUnix(spec, path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	if fi, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("listen %s: socket directory: %w", spec, err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("listen %s: %s is not a directory", spec, dir)
	}
	if err := clearStaleSocket(path); err != nil {
		return nil, fmt.Errorf("listen %s: %w", spec, err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", spec, err)
	}
	// We remove the file ourselves, and only if it is still ours: another
	// process may have replaced it in the meantime.
	ln.SetUnlinkOnClose(false)
	fi, err := os.Lstat(path)
	if err == nil {
		err = os.Chmod(path, SocketMode)
	}
	if err != nil {
		ln.Close()
		os.Remove(path)
		return nil, fmt.Errorf("listen %s: %w", spec, err)
	}
	return &unixListener{UnixListener: ln, path: path, info: fi}, nil
}

// clearStaleSocket removes path if it is a socket nobody listens on.
func clearStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket (%s); not removing it", path, fi.Mode().Type())
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("%s is already in use by a running process", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("%s: cannot tell whether the socket is in use: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	return nil
}

type unixListener struct {
	*net.UnixListener
	path string
	info fs.FileInfo
	once sync.Once
	err  error
}

func (l *unixListener) Close() error {
	l.once.Do(func() {
		l.err = l.UnixListener.Close()
		if fi, err := os.Lstat(l.path); err == nil && os.SameFile(fi, l.info) {
			if err := os.Remove(l.path); err != nil && l.err == nil {
				l.err = fmt.Errorf("remove socket: %w", err)
			}
		}
	})
	return l.err
}
