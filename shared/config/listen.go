package config

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/geomilter/geomilter/shared/milterrt"
)

// maxUnixPath is the longest socket path the kernel takes (sun_path is 108
// bytes including the terminating NUL).
const maxUnixPath = 107

// ParseListen parses a milter socket in Postfix notation, "unix:/abs/path"
// or "inet:host:port" (IPv6 hosts in brackets: "inet:[::1]:8891"), into
// arguments for net.Listen / net.Dial: network "unix" or "tcp". The notation
// is milterrt.ParseAddress's; a config also requires an absolute path that
// fits a unix socket, an explicit valid host, and no other kinds. Port 0 is
// accepted so tests can ask for a free port.
func ParseListen(s string) (network, address string, err error) {
	sp, err := milterrt.ParseAddress(s)
	if err == nil {
		err = checkListen(sp)
	}
	if err != nil {
		return "", "", fmt.Errorf("invalid socket %q: %v", s, err)
	}
	return sp.Network, sp.Address, nil
}

func checkListen(sp milterrt.Spec) error {
	switch sp.Kind {
	case "unix":
		if !filepath.IsAbs(sp.Address) {
			return errors.New("the unix socket path must be absolute")
		}
		if len(sp.Address) > maxUnixPath {
			return fmt.Errorf("the unix socket path is longer than %d bytes", maxUnixPath)
		}
	case "inet":
		// Listening on every interface must be asked for explicitly (0.0.0.0
		// or [::]), never by leaving the host out.
		if sp.Host == "" {
			return errors.New("the host is missing")
		}
		if !validHost(sp.Host) {
			return fmt.Errorf("invalid host %q", sp.Host)
		}
	default:
		return fmt.Errorf("unknown type %q, want unix:/path or inet:host:port", sp.Kind)
	}
	return nil
}

// hostPort checks a "host:port" address and returns it normalised. The host
// is required: listening on every interface must be asked for explicitly
// (0.0.0.0 or [::]), never by leaving it out.
func hostPort(s string, allowZero bool) (string, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", fmt.Errorf("not host:port: %s", strings.TrimPrefix(err.Error(), "address "+s+": "))
	}
	if host == "" {
		return "", fmt.Errorf("the host is missing")
	}
	if !validHost(host) {
		return "", fmt.Errorf("invalid host %q", host)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 || (n == 0 && !allowZero) {
		return "", fmt.Errorf("invalid port %q", port)
	}
	return net.JoinHostPort(host, strconv.Itoa(n)), nil
}

func validHost(h string) bool {
	if net.ParseIP(h) != nil {
		return true
	}
	return hostnameRe.MatchString(h)
}

// MetricsListen returns the metrics address of the named process (a
// milter, or SuiteName): milters.<name>.metrics_listen when set, else
// metrics.listen with the port moved up by the process's offset (access +0,
// policy +1, archive +2, encrypt +3, suite +4), so the processes of a host
// never collide, whichever of them run. A base port of 0 (any free port)
// stays 0.
func (c *Config) MetricsListen(milter string) (string, error) {
	offset := slices.Index(ProcessNames(), milter)
	if offset < 0 {
		return "", fmt.Errorf("unknown milter %q (known: %s)", milter, strings.Join(ProcessNames(), ", "))
	}
	if m, ok := c.Milter(milter); ok && m.MetricsListen != "" {
		return m.MetricsListen, nil
	}
	host, port, err := net.SplitHostPort(c.Metrics.Listen)
	if err != nil {
		return "", fmt.Errorf("metrics.listen %q: %w", c.Metrics.Listen, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return "", fmt.Errorf("metrics.listen %q: invalid port", c.Metrics.Listen)
	}
	if p == 0 {
		return c.Metrics.Listen, nil
	}
	if p+offset > 65535 {
		return "", fmt.Errorf("metrics port for %s would be %d (metrics.listen port + %d), past 65535; set milters.%s.metrics_listen", milter, p+offset, offset, milter)
	}
	return net.JoinHostPort(host, strconv.Itoa(p+offset)), nil
}
