package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/geomilter/geomilter/shared/rules"
	"github.com/geomilter/geomilter/shared/yamlconf"
)

// CheckConfig implements `geomilter check-config --config FILE`: it loads
// path and, when the file itself is valid, checks the host with CheckHost.
// It writes "FILE: ok", or each problem on its own line
// ("FILE:LINE:COL: key.path: message"). It returns the exit code, 0 or 1.
//
// The file's problems come first and alone: the host checks need a valid
// config (absolute paths, parsed addresses) to mean anything.
func CheckConfig(path string, w io.Writer) int {
	cfg, err := Load(path)
	var ps yamlconf.Problems
	if err == nil {
		ps = CheckHost(cfg)
	} else if !errors.As(err, &ps) {
		ps = yamlconf.Problems{{File: path, Msg: err.Error()}}
	}
	if len(ps) == 0 {
		fmt.Fprintf(w, "%s: ok\n", path)
		return 0
	}
	for _, p := range ps {
		fmt.Fprintln(w, p.Error())
	}
	return 1
}

// CheckHost checks what a valid config needs of this host: everything that
// would make a milter configured here refuse to start, and the rules file.
// It reads the file system (and nothing else: no network), which Parse
// never does, so Parse's tests stay pure; check-config runs both. It checks:
//   - rules_file (standalone mode): it exists, parses and validates; its own
//     problems follow, named by the rules file's own file:line;
//   - state_dir, spool_dir and any message_dir set: each is a directory
//     this user can write, or can be created;
//   - milters.<name>.listen of every configured milter: a unix socket's
//     directory exists and is writable, and the path is a socket if present;
//   - the Redis password files (non-empty) and TLS files (a CA file with
//     PEM certificates, a client certificate that matches its key).
//
// Metrics addresses and socket clashes are Parse's (they need no host).
// Access is checked as the user running the check: run check-config as the
// milters' user. The problems are those of the config file, placed at the
// key naming the file or directory, then those of the rules file.
func CheckHost(cfg *Config) yamlconf.Problems {
	h := &hostChecker{cfg: cfg}
	return h.run("", true)
}

// CheckStart is the part of CheckHost that the named milter's start-up
// depends on (its own socket, the directories, the Redis files): the
// milter refuses to start on these, with the same messages check-config
// gives. The rules file is left to the rules syncer, which starts from the
// saved snapshot when the file is invalid.
func CheckStart(cfg *Config, milter string) yamlconf.Problems {
	h := &hostChecker{cfg: cfg}
	return h.run(milter, false)
}

type hostChecker struct {
	cfg *Config
	// root, in tests, is prefixed to every path before it is looked at, so
	// a test host lives in a temporary directory while the messages show
	// the paths as the config writes them.
	root  string
	ps    yamlconf.Problems
	rules yamlconf.Problems // the rules file's own problems
}

// run checks every configured milter ("") or one, with or without the
// rules file.
func (h *hostChecker) run(milter string, withRules bool) yamlconf.Problems {
	c := h.cfg
	if withRules && c.Standalone() {
		h.rulesFile()
	}
	h.dir("state_dir", c.StateDir)
	h.dir("spool_dir", c.SpoolDir)
	for _, name := range ProcessNames() {
		m, ok := c.Milter(name)
		if !ok || (milter != "" && name != milter) {
			continue
		}
		p := "milters." + name
		h.socket(p+".listen", m.Listen)
		if h.has(p + ".message_dir") {
			h.dir(p+".message_dir", m.MessageDir)
		}
	}
	if r := c.Redis; r != nil {
		h.instance("redis.local", &r.Local)
		names := make([]string, 0, len(r.Peers))
		for name := range r.Peers {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			in := r.Peers[name]
			h.instance("redis.peers."+name, &in)
		}
	}
	sort.SliceStable(h.ps, func(i, j int) bool {
		if h.ps[i].Line != h.ps[j].Line {
			return h.ps[i].Line < h.ps[j].Line
		}
		return h.ps[i].Column < h.ps[j].Column
	})
	return append(h.ps, h.rules...)
}

func (h *hostChecker) has(path string) bool { return h.cfg.doc != nil && h.cfg.doc.Has(path) }

func (h *hostChecker) problemf(path, format string, args ...any) {
	var line, col int
	if h.cfg.doc != nil {
		line, col = h.cfg.doc.Position(path)
	}
	h.ps = append(h.ps, yamlconf.Problem{File: h.cfg.File, Line: line, Column: col, Path: path, Msg: fmt.Sprintf(format, args...)})
}

// fsPath is where path is looked at (see root).
func (h *hostChecker) fsPath(path string) string {
	if h.root == "" {
		return path
	}
	return filepath.Join(h.root, path)
}

// reason shortens a file system error for a message that already names
// the path.
func reason(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

func (h *hostChecker) rulesFile() {
	name := h.cfg.RulesFile
	data, err := os.ReadFile(h.fsPath(name))
	if err != nil {
		h.problemf("rules_file", "cannot read the rules file %s: %s", name, reason(err))
		return
	}
	set, err := rules.Parse(name, data)
	if err != nil {
		var ps yamlconf.Problems
		if !errors.As(err, &ps) {
			ps = yamlconf.Problems{{File: name, Msg: err.Error()}}
		}
		h.problemf("rules_file", "the rules file %s is invalid (%s below); the milters would not load it", name, plural(len(ps), "problem"))
		h.rules = ps
		return
	}
	// What the milters do with it next; Parse has validated, so this
	// failing would be a bug, but it is what decides at start-up.
	if _, err := rules.Compile(set); err != nil {
		h.problemf("rules_file", "the rules file %s does not compile: %v", name, err)
	}
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// writable reports whether this user may create entries in dir.
func (h *hostChecker) writable(dir string) bool {
	return syscall.Access(h.fsPath(dir), 0x2|0x1) == nil // W_OK|X_OK
}

// dir checks that dir is a writable directory, or can be created (the
// milters create it with MkdirAll): its nearest existing ancestor is a
// writable directory.
func (h *hostChecker) dir(path, dir string) {
	if dir == "" {
		return
	}
	fi, err := os.Stat(h.fsPath(dir))
	switch {
	case err == nil && !fi.IsDir():
		h.problemf(path, "%s is not a directory", dir)
		return
	case err == nil:
		if !h.writable(dir) {
			h.problemf(path, "directory %s is not writable by this user", dir)
		}
		return
	case !missing(err):
		h.problemf(path, "cannot use %s: %s", dir, reason(err))
		return
	}
	for anc := filepath.Dir(dir); ; anc = filepath.Dir(anc) {
		fi, err := os.Stat(h.fsPath(anc))
		switch {
		case missing(err) && anc != filepath.Dir(anc):
			continue
		case err != nil:
			h.problemf(path, "%s does not exist and cannot be created: %s", dir, reason(err))
		case !fi.IsDir():
			h.problemf(path, "%s does not exist and cannot be created: %s is not a directory", dir, anc)
		case !h.writable(anc):
			h.problemf(path, "%s does not exist and cannot be created: %s is not writable by this user", dir, anc)
		}
		return
	}
}

// missing reports a path that does not exist: ENOENT, or ENOTDIR when a
// file stands where a parent directory should be (found by the walk up).
func missing(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}

// socket checks a unix socket's directory: the milter creates the socket
// in it, but not the directory (see milterrt.Listen).
func (h *hostChecker) socket(path, listen string) {
	network, addr, err := ParseListen(listen)
	if err != nil || network != "unix" {
		return // inet: nothing on disk; an invalid one is Parse's problem
	}
	dir := filepath.Dir(addr)
	fi, err := os.Stat(h.fsPath(dir))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		h.problemf(path, "the socket directory %s does not exist (the milter creates the socket, not its directory; "+
			"e.g. RuntimeDirectory=geomilter in the systemd unit makes /run/geomilter)", dir)
		return
	case err != nil:
		h.problemf(path, "cannot use the socket directory %s: %s", dir, reason(err))
		return
	case !fi.IsDir():
		h.problemf(path, "%s is not a directory", dir)
		return
	case !h.writable(dir):
		h.problemf(path, "the socket directory %s is not writable by this user", dir)
		return
	}
	if fi, err := os.Lstat(h.fsPath(addr)); err == nil && fi.Mode()&fs.ModeSocket == 0 {
		kind := "a regular file"
		if fi.Mode().Type() != 0 {
			kind = "mode " + fi.Mode().Type().String()
		}
		h.problemf(path, "%s exists and is not a socket (%s); the milter will not replace it", addr, kind)
	}
}

// instance checks the files of one Redis instance as the state layer reads
// them when the milter starts (shared/state: password files, TLS).
func (h *hostChecker) instance(p string, in *InstanceConfig) {
	h.password(p+".password_file", in.PasswordFile)
	if s := in.Sentinel; s != nil {
		h.password(p+".sentinel.password_file", s.PasswordFile)
	}
	t := in.TLS
	if t == nil {
		return
	}
	if t.CAFile != "" {
		if pem, err := os.ReadFile(h.fsPath(t.CAFile)); err != nil {
			h.problemf(p+".tls.ca_file", "cannot read %s: %s", t.CAFile, reason(err))
		} else if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			h.problemf(p+".tls.ca_file", "%s has no PEM certificate", t.CAFile)
		}
	}
	if t.CertFile == "" || t.KeyFile == "" {
		return // both or neither: Parse's problem
	}
	certPEM, cerr := os.ReadFile(h.fsPath(t.CertFile))
	if cerr != nil {
		h.problemf(p+".tls.cert_file", "cannot read %s: %s", t.CertFile, reason(cerr))
	}
	keyPEM, kerr := os.ReadFile(h.fsPath(t.KeyFile))
	if kerr != nil {
		h.problemf(p+".tls.key_file", "cannot read %s: %s", t.KeyFile, reason(kerr))
	}
	if cerr == nil && kerr == nil {
		if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
			h.problemf(p+".tls", "client certificate %s and key %s: %v", t.CertFile, t.KeyFile, err)
		}
	}
}

// password checks a password file as shared/state reads it: one trailing
// newline is ignored, and an empty password is an error, not "no AUTH".
func (h *hostChecker) password(path, file string) {
	if file == "" {
		return
	}
	b, err := os.ReadFile(h.fsPath(file))
	if err != nil {
		h.problemf(path, "cannot read %s: %s", file, reason(err))
		return
	}
	if strings.TrimRight(string(b), "\r\n") == "" {
		h.problemf(path, "%s is empty (remove password_file for a Redis without AUTH)", file)
	}
}
