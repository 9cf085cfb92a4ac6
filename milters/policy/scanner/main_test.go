package scanner

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// The real scanners, started once for the package (rspamd takes tens of
// seconds to load its rules). A test needing one calls needRspamd or
// needSpamd, which skips it with the reason when the program is absent.
var (
	rspamdProc, spamdProc *daemon
	rspamdWhy, spamdWhy   string
)

// daemon is a scanner process in its own process group, so that the whole
// group (rspamd's workers included) can be stopped, continued and killed.
type daemon struct {
	addr   string
	cmd    *exec.Cmd
	exited chan struct{} // closed when the process has exited
	log    string        // its log file, shown when it fails to start
}

func (d *daemon) signal(sig syscall.Signal) error { return syscall.Kill(-d.cmd.Process.Pid, sig) }

func (d *daemon) stop() {
	_ = d.signal(syscall.SIGCONT)
	_ = d.signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		_ = d.signal(syscall.SIGKILL)
		<-d.exited
	}
	// Workers left behind by a main process that died first.
	_ = d.signal(syscall.SIGKILL)
}

func TestMain(m *testing.M) {
	var dir string
	var dnsSrv *dns.Server
	// Only the tests that use the programs need them: a -run of the parse
	// tests does not wait for rspamd.
	if wantsDaemons(os.Args) {
		var err error
		if dir, err = os.MkdirTemp("", "geomilter-scanner-"); err != nil {
			fmt.Fprintln(os.Stderr, "scanner test:", err)
			os.Exit(2)
		}
		// rspamd runs as _rspamd and spamd as nobody: they must read it.
		_ = os.Chmod(dir, 0o755)
		var dnsAddr string
		dnsSrv, dnsAddr, err = startNXDomain()
		if err != nil {
			fmt.Fprintln(os.Stderr, "scanner test: DNS server:", err)
			os.Exit(2)
		}
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); rspamdProc, rspamdWhy = startRspamd(dir, dnsAddr) }()
		go func() { defer wg.Done(); spamdProc, spamdWhy = startSpamd(dir) }()
		wg.Wait()
	} else {
		rspamdWhy, spamdWhy = "not started for this -run", "not started for this -run"
	}
	code := m.Run()
	for _, d := range []*daemon{rspamdProc, spamdProc} {
		if d != nil {
			d.stop()
		}
	}
	if dnsSrv != nil {
		_ = dnsSrv.Shutdown()
	}
	if dir != "" {
		os.RemoveAll(dir)
	}
	os.Exit(code)
}

// wantsDaemons reports whether the -test.run or -test.bench pattern may
// select a test or benchmark that uses rspamd or spamd (their names
// contain "Real"); no -test.run pattern runs every test.
func wantsDaemons(args []string) bool {
	pattern := func(flag string) (string, bool) {
		for i, a := range args {
			if v, ok := strings.CutPrefix(a, "-"+flag+"="); ok {
				return v, true
			}
			if a == "-"+flag && i+1 < len(args) {
				return args[i+1], true
			}
		}
		return "", false
	}
	run, hasRun := pattern("test.run")
	if !hasRun {
		return true
	}
	bench, _ := pattern("test.bench")
	for _, v := range []string{run, bench} {
		if strings.Contains(v, "Real") || v == "." {
			return true
		}
	}
	return false
}

func needRspamd(t *testing.T) *daemon {
	t.Helper()
	if rspamdProc == nil {
		missing(t, "rspamd", rspamdWhy)
	}
	return rspamdProc
}

func needSpamd(t *testing.T) *daemon {
	t.Helper()
	if spamdProc == nil {
		missing(t, "spamd", spamdWhy)
	}
	return spamdProc
}

// missing skips the test when the program is not installed, and fails it
// when the program is there but did not start.
func missing(t testing.TB, prog, why string) {
	t.Helper()
	if strings.HasPrefix(why, notInstalled) {
		t.Skipf("%s: %s", prog, why)
	}
	t.Fatalf("%s: %s", prog, why)
}

// notInstalled begins the reason of a program absent from this machine.
const notInstalled = "not installed"

// startNXDomain serves, on a free UDP port of 127.0.0.1, NXDOMAIN for
// every question: rspamd's DNS checks get a fast answer instead of
// waiting for a resolver the test machine may not reach.
func startNXDomain() (*dns.Server, string, error) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetRcode(r, dns.RcodeNameError)
		_ = w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	return srv, pc.LocalAddr().String(), nil
}

// freePort returns a loopback TCP port free a moment ago.
func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// startRspamd runs Debian's rspamd with its own configuration overrides
// (the way scripts/bench-compare.sh does): only a normal worker, on a free
// loopback port; DNS to our NXDOMAIN server; GTUBE recognised (rspamd 3
// needs enable_test_patterns for that).
func startRspamd(dir, dnsAddr string) (*daemon, string) {
	bin, err := exec.LookPath("rspamd")
	if err != nil {
		return nil, notInstalled + " (Debian package rspamd; scripts/install-deps.sh)"
	}
	addr, err := freePort()
	if err != nil {
		return nil, err.Error()
	}
	R := filepath.Join(dir, "rspamd")
	for _, d := range []string{"local/local.d", "local/override.d", "db", "run", "log"} {
		if err := os.MkdirAll(filepath.Join(R, d), 0o755); err != nil {
			return nil, err.Error()
		}
	}
	files := map[string]string{
		"local/override.d/worker-normal.inc":     fmt.Sprintf("bind_socket = %q;\ncount = 1;\n", addr),
		"local/override.d/worker-controller.inc": "enabled = false;\n",
		"local/override.d/worker-proxy.inc":      "enabled = false;\n",
		"local/override.d/worker-fuzzy.inc":      "enabled = false;\n",
		"local/override.d/logging.inc":           fmt.Sprintf("type = \"file\";\nfilename = %q;\nlevel = \"error\";\n", filepath.Join(R, "log/rspamd.log")),
		"local/local.d/options.inc":              fmt.Sprintf("dns { nameserver = [%q]; timeout = 1s; retransmits = 1; }\nenable_test_patterns = true;\n", dnsAddr),
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(R, name), []byte(text), 0o644); err != nil {
			return nil, err.Error()
		}
	}
	args := []string{"-f", "-c", "/etc/rspamd/rspamd.conf", "-p", filepath.Join(R, "run/rspamd.pid"),
		"--var", "LOCAL_CONFDIR=" + filepath.Join(R, "local"), "--var", "DBDIR=" + filepath.Join(R, "db"),
		"--var", "RUNDIR=" + filepath.Join(R, "run"), "--var", "LOGDIR=" + filepath.Join(R, "log")}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("_rspamd")
		if err != nil {
			return nil, "running as root and no user _rspamd to run rspamd as"
		}
		uid, _ := strconv.Atoi(u.Uid)
		for _, d := range []string{"db", "run", "log"} {
			_ = os.Chown(filepath.Join(R, d), uid, -1)
		}
		args = append([]string{"-u", "_rspamd", "-g", "_rspamd"}, args...)
	}
	d, err := spawn(bin, args, filepath.Join(R, "log/stderr"))
	if err != nil {
		return nil, err.Error()
	}
	d.addr, d.log = addr, filepath.Join(R, "log/rspamd.log")
	// Loading the configuration and compiling the regexps takes tens of
	// seconds: wait for /ping, up to 3 minutes on a loaded machine.
	hc := &http.Client{Timeout: time.Second}
	if !waitFor(d, 3*time.Minute, func() bool {
		resp, err := hc.Get("http://" + addr + "/ping")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}) {
		d.stop()
		return nil, "did not answer /ping within 3 minutes; see " + d.log + " " + tail(filepath.Join(R, "log/stderr"))
	}
	return d, ""
}

// startSpamd runs Debian's spamd on a free loopback port: one child, no
// user configs, no network tests (-L).
func startSpamd(dir string) (*daemon, string) {
	bin, err := exec.LookPath("spamd")
	if err != nil {
		return nil, notInstalled + " (Debian packages spamd, spamassassin; scripts/install-deps.sh)"
	}
	addr, err := freePort()
	if err != nil {
		return nil, err.Error()
	}
	S := filepath.Join(dir, "spamd")
	if err := os.MkdirAll(S, 0o777); err != nil {
		return nil, err.Error()
	}
	_ = os.Chmod(S, 0o777)
	args := []string{"-L", "-x", "--listen=" + addr, "--max-children=1", "--min-children=1",
		"-s", "stderr", "-r", filepath.Join(S, "spamd.pid"), "-H", S}
	if os.Geteuid() == 0 {
		// spamd refuses to run its children as root.
		args = append(args, "-u", "nobody")
	}
	d, err := spawn(bin, args, filepath.Join(S, "stderr"))
	if err != nil {
		return nil, err.Error()
	}
	d.addr, d.log = addr, filepath.Join(S, "stderr")
	if !waitFor(d, 2*time.Minute, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return newSpamd(Config{Address: addr}).ping(ctx) == nil
	}) {
		d.stop()
		return nil, "did not answer PING within 2 minutes: " + tail(d.log)
	}
	return d, ""
}

func spawn(bin string, args []string, stderr string) (*daemon, error) {
	f, err := os.Create(stderr)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	f.Close()
	d := &daemon{cmd: cmd, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(d.exited) }()
	return d, nil
}

// waitFor polls ready until it holds, the process exits or limit passes.
func waitFor(d *daemon, limit time.Duration, ready func() bool) bool {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if ready() {
			return true
		}
		select {
		case <-d.exited:
			return false
		case <-time.After(200 * time.Millisecond):
		}
	}
	return false
}

func tail(file string) string {
	b, _ := os.ReadFile(file)
	if len(b) > 600 {
		b = b[len(b)-600:]
	}
	return string(bytes.TrimSpace(b))
}
