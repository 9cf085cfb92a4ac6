package postfix

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/geomilter/geomilter/shared/milterrt"
)

// Test-binary-wide state, set once in TestMain before any test runs.
var (
	binPath       string // geomilter binary
	gateReason    string // why the environment cannot run these tests ("" = it can)
	daemonDir     string // Postfix daemon_directory (where master lives)
	binDeadline   time.Time
	interruptions = &registry{fns: map[int]func(){}} // teardowns run on SIGINT/SIGTERM/timeout
)

func TestMain(m *testing.M) {
	flag.Parse()
	gateReason = checkGate()
	var tmp string
	if gateReason == "" {
		sweepStale()
		binPath = os.Getenv("GEOMILTER_BIN")
		if binPath == "" {
			var err error
			if tmp, err = os.MkdirTemp("", "geomilter-bin"); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			binPath = filepath.Join(tmp, "geomilter")
			cmd := exec.Command("go", "build", "-o", binPath, "../../milters")
			cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
			if err := cmd.Run(); err != nil {
				fmt.Fprintln(os.Stderr, "build geomilter:", err)
				os.RemoveAll(tmp)
				os.Exit(1)
			}
		}
	}
	stop := watchInterruptions()
	code := m.Run()
	stop()
	if tmp != "" {
		os.RemoveAll(tmp)
	}
	os.Exit(code)
}

// gate skips the test when the machine cannot run it, or fails it when
// GEOMILTER_REQUIRE_POSTFIX=1 says it must.
func gate(t testing.TB) {
	t.Helper()
	if gateReason == "" {
		return
	}
	if os.Getenv("GEOMILTER_REQUIRE_POSTFIX") == "1" {
		t.Fatalf("GEOMILTER_REQUIRE_POSTFIX=1 but the Postfix tests cannot run: %s", gateReason)
	}
	t.Skipf("skipping real-Postfix tests: %s (run as root after `sudo make deps`; GEOMILTER_REQUIRE_POSTFIX=1 turns this skip into a failure)", gateReason)
}

func checkGate() string {
	if os.Geteuid() != 0 {
		return "not running as root (network namespaces and Postfix instances need root)"
	}
	var missing []string
	for _, b := range []string{"ip", "iptables", "postfix", "postconf", "postqueue", "sendmail", "smtp-source", "smtp-sink", "swaks", "redis-server", "setpriv"} {
		if _, err := exec.LookPath(b); err != nil {
			missing = append(missing, b)
		}
	}
	if len(missing) > 0 {
		return "missing programs: " + strings.Join(missing, ", ")
	}
	// -d: the compiled-in default. Without it postconf reads /etc/postfix/main.cf,
	// which a fresh machine lacks (Postfix installed with "No configuration");
	// the tests run their own instances with their own config directories.
	out, err := exec.Command("postconf", "-d", "-h", "daemon_directory").Output()
	if err != nil {
		return "postconf -d -h daemon_directory: " + cmdError(err)
	}
	daemonDir = strings.TrimSpace(string(out))
	if _, err := os.Stat(filepath.Join(daemonDir, "master")); err != nil {
		return "Postfix master not found: " + err.Error()
	}
	for _, u := range []string{"postfix"} {
		if _, err := lookupID("passwd", u); err != nil {
			return err.Error()
		}
	}
	// Can this machine (container) create network namespaces at all?
	probe := fmt.Sprintf("gm-probe-%d-0", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", probe).CombinedOutput(); err != nil {
		return fmt.Sprintf("cannot create a network namespace: %v %s", err, bytes.TrimSpace(out))
	}
	_ = exec.Command("ip", "netns", "del", probe).Run()
	return ""
}

// cmdError is err with the command's own stderr, which says why it failed.
func cmdError(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(bytes.TrimSpace(ee.Stderr)) > 0 {
		return err.Error() + ": " + string(bytes.TrimSpace(ee.Stderr))
	}
	return err.Error()
}

// lookupID returns the numeric id of a user ("passwd") or group ("group").
func lookupID(db, name string) (int, error) {
	out, err := exec.Command("getent", db, name).Output()
	if err != nil {
		return 0, fmt.Errorf("getent %s %s: %s", db, name, cmdError(err))
	}
	f := strings.Split(strings.TrimSpace(string(out)), ":")
	if len(f) < 3 {
		return 0, fmt.Errorf("getent %s %s: unexpected %q", db, name, out)
	}
	return strconv.Atoi(f[2])
}

// registry holds the teardown of every live harness so that an interrupt (or
// the test binary's own timeout, which would otherwise kill it without running
// any t.Cleanup) still removes namespaces, processes and temp dirs.
type registry struct {
	mu   sync.Mutex
	next int
	fns  map[int]func()
}

func (r *registry) add(f func()) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.next++
	r.fns[r.next] = f
	return r.next
}

func (r *registry) remove(id int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.fns, id)
}

func (r *registry) runAll() {
	r.mu.Lock()
	fns := make([]func(), 0, len(r.fns))
	for _, f := range r.fns {
		fns = append(fns, f)
	}
	r.mu.Unlock()
	for _, f := range fns {
		f()
	}
}

// watchInterruptions tears everything down on SIGINT/SIGTERM/SIGHUP, and
// shortly before -test.timeout fires (the timeout panics the binary, which
// runs no cleanups).
func watchInterruptions() (stop func()) {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	done := make(chan struct{})
	var timer *time.Timer
	if f := flag.Lookup("test.timeout"); f != nil {
		if d, err := time.ParseDuration(f.Value.String()); err == nil && d > 0 {
			margin := min(d/10, 30*time.Second)
			binDeadline = time.Now().Add(d)
			timer = time.AfterFunc(d-margin, func() {
				fmt.Fprintf(os.Stderr, "postfix tests: test timeout (%s) is near: tearing down sites now\n", d)
				interruptions.runAll()
			})
		}
	}
	go func() {
		select {
		case sig := <-sigs:
			fmt.Fprintf(os.Stderr, "postfix tests: %s: tearing down sites\n", sig)
			interruptions.runAll()
			os.Exit(2)
		case <-done:
		}
	}()
	return func() {
		close(done)
		signal.Stop(sigs)
		if timer != nil {
			timer.Stop()
		}
	}
}

// Namespaces are named gm-<site>-<pid>-<n>; temp dirs gm-postfix-<pid>-*.
var (
	staleNS  = regexp.MustCompile(`^gm-[a-z]+-(\d+)-\d+$`)
	staleDir = regexp.MustCompile(`^gm-postfix-(\d+)-`)
)

// sweepStale removes what an earlier, SIGKILLed test binary left behind: its
// namespaces (with every process still inside) and its temp dirs. Only names
// of this package's own pattern whose owning pid is gone are touched.
func sweepStale() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			name := strings.Fields(line + " x")[0]
			if m := staleNS.FindStringSubmatch(name); m != nil && !pidAlive(m[1]) {
				fmt.Fprintf(os.Stderr, "postfix tests: removing stale namespace %s\n", name)
				killNamespace(name)
			}
		}
	}
	ents, _ := os.ReadDir(os.TempDir())
	for _, e := range ents {
		if m := staleDir.FindStringSubmatch(e.Name()); m != nil && e.IsDir() && !pidAlive(m[1]) {
			os.RemoveAll(filepath.Join(os.TempDir(), e.Name()))
		}
	}
}

func pidAlive(s string) bool {
	pid, err := strconv.Atoi(s)
	if err != nil || pid <= 0 {
		return false
	}
	return syscall.Kill(pid, 0) == nil
}

// killNamespace SIGKILLs every process in a namespace and deletes it (which
// also deletes its veth end and its iptables rules).
func killNamespace(name string) {
	for i := 0; i < 3; i++ {
		out, _ := exec.Command("ip", "netns", "pids", name).Output()
		pids := strings.Fields(string(out))
		if len(pids) == 0 {
			break
		}
		for _, p := range pids {
			if pid, err := strconv.Atoi(p); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	_ = exec.Command("ip", "netns", "del", name).Run()
}

var nsSeq atomic.Int64

// harness owns everything one test starts: a temp dir, namespaces, processes.
type harness struct {
	t    testing.TB
	base string

	mu     sync.Mutex
	procs  []*proc
	nss    []string
	closed bool
	regID  int
	nsList string    // file naming the namespaces, for the reaper
	reaper *exec.Cmd // cleans up if the test binary is SIGKILLed
	dumps  []func()  // failure diagnostics
}

func newHarness(t testing.TB) *harness {
	t.Helper()
	gate(t)
	base, err := os.MkdirTemp("", fmt.Sprintf("gm-postfix-%d-", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	// smtpd and cleanup run as the postfix user and must reach the milter
	// sockets and their queue under this dir.
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, base: base}
	h.startReaper()
	h.regID = interruptions.add(h.close)
	t.Cleanup(func() {
		if t.Failed() {
			for _, d := range h.dumps {
				d()
			}
		}
		h.close()
		interruptions.remove(h.regID)
	})
	return h
}

// reaperScript waits for the test binary to die and then removes what a
// SIGKILLed binary could not: the namespaces listed in the list file (with
// every process inside: Postfix's master drops its parent-death signal when it
// changes its effective ids) and the temp dir.
const reaperScript = `
while kill -0 "$1" 2>/dev/null; do sleep 1; done
for ns in $(cat "$2" 2>/dev/null); do
	for i in 1 2 3; do
		pids=$(ip netns pids "$ns" 2>/dev/null)
		[ -z "$pids" ] && break
		kill -9 $pids 2>/dev/null
		sleep 0.2
	done
	ip netns del "$ns" 2>/dev/null
done
rm -rf "$3"
`

// startReaper starts the harness's watchdog: a shell in its own session
// without a parent-death signal (it must outlive a killed test binary just
// long enough to clean up). close() kills it first on a normal end.
func (h *harness) startReaper() {
	h.nsList = filepath.Join(h.base, "namespaces")
	cmd := exec.Command("sh", "-c", reaperScript, "reaper", strconv.Itoa(os.Getpid()), h.nsList, h.base)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		h.t.Fatalf("start reaper: %v", err)
	}
	h.reaper = cmd
	go func() { _ = cmd.Wait() }()
}

// netns creates a namespace with its loopback up.
func (h *harness) netns(site string) string {
	h.t.Helper()
	name := fmt.Sprintf("gm-%s-%d-%d", site, os.Getpid(), nsSeq.Add(1))
	f, err := os.OpenFile(h.nsList, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		h.t.Fatal(err)
	}
	_, err = fmt.Fprintln(f, name)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		h.t.Fatal(err)
	}
	h.mustRun("ip", "netns", "add", name)
	h.mu.Lock()
	h.nss = append(h.nss, name)
	h.mu.Unlock()
	h.mustRun("ip", "-n", name, "link", "set", "lo", "up")
	return name
}

// mustRun runs a short command on the host and fails the test on error.
func (h *harness) mustRun(args ...string) string {
	h.t.Helper()
	out, err := runCmd(30*time.Second, args...)
	if err != nil {
		h.t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// runCmd runs a bounded command and returns its combined output.
func runCmd(within time.Duration, args ...string) (string, error) {
	return runCmdInput(within, "", args...)
}

// runCmdInput is runCmd with stdin. The command is killed (with its process
// group) when it outlives within, and dies with the test binary.
func runCmdInput(within time.Duration, stdin string, args ...string) (string, error) {
	cmd := exec.Command(args[0], args[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr, cmd.Stdin = &out, &out, strings.NewReader(stdin)
	if err := cmd.Start(); err != nil {
		return "", err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return out.String(), err
	case <-time.After(within):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return out.String(), fmt.Errorf("%s: timed out after %s", args[0], within)
	}
}

// inNS runs a bounded command inside a namespace.
func inNS(ns string, within time.Duration, args ...string) (string, error) {
	return runCmd(within, append([]string{"ip", "netns", "exec", ns}, args...)...)
}

// close stops every process (SIGTERM, then SIGKILL), deletes the namespaces
// and removes the temp dir. Safe to call more than once and concurrently.
func (h *harness) close() {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return
	}
	h.closed = true
	procs, nss := h.procs, h.nss
	h.mu.Unlock()
	if h.reaper != nil && h.reaper.Process != nil {
		_ = h.reaper.Process.Kill()
	}
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].stop(3 * time.Second)
	}
	for _, ns := range nss {
		killNamespace(ns)
	}
	os.RemoveAll(h.base)
}

// dumpOnFailure registers a diagnostic printed if the test fails.
func (h *harness) dumpOnFailure(f func()) {
	h.mu.Lock()
	h.dumps = append(h.dumps, f)
	h.mu.Unlock()
}

// proc is a long-running child process.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *lineBuffer
	done chan struct{}
	err  error
}

type procOpts struct {
	gid    int          // run with this primary group (0: root's)
	onLine func(string) // called for every output line
	ready  func() error // polled until nil (20 s) before start returns
	// ownSession: the program makes itself a session leader (Postfix
	// master), which fails if it already leads a process group.
	ownSession bool
}

// start runs args inside ns as a child that dies with the test binary.
func (h *harness) start(name, ns string, o procOpts, args ...string) *proc {
	h.t.Helper()
	p := &proc{name: name, out: &lineBuffer{onLine: o.onLine}, done: make(chan struct{})}
	full := append([]string{"netns", "exec", ns}, args...)
	p.cmd = exec.Command("ip", full...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	attr := &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: !o.ownSession}
	if o.gid != 0 {
		attr.Credential = &syscall.Credential{Uid: 0, Gid: uint32(o.gid)}
	}
	p.cmd.SysProcAttr = attr
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		h.t.Fatalf("start %s: harness closed", name)
	}
	if err := p.cmd.Start(); err != nil {
		h.mu.Unlock()
		h.t.Fatalf("start %s: %v", name, err)
	}
	h.procs = append(h.procs, p)
	h.mu.Unlock()
	go func() { p.err = p.cmd.Wait(); p.out.flush(); close(p.done) }()
	h.dumpOnFailure(func() { h.t.Logf("--- %s output (last 30 lines):\n%s", name, tail(p.out.String(), 30)) })
	if o.ready != nil {
		deadline := time.Now().Add(20 * time.Second)
		for {
			err := o.ready()
			if err == nil {
				break
			}
			select {
			case <-p.done:
				h.t.Fatalf("%s exited at start: %v\n%s", name, p.err, tail(p.out.String(), 30))
			default:
			}
			if time.Now().After(deadline) {
				h.t.Fatalf("%s not ready after 20s: %v\n%s", name, err, tail(p.out.String(), 30))
			}
			time.Sleep(30 * time.Millisecond)
		}
	}
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and waits up to grace, then SIGKILLs.
func (p *proc) stop(grace time.Duration) {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(grace):
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	_ = p.cmd.Process.Kill()
	<-p.done
}

// lineBuffer collects output and calls onLine per line; smtp-sink ends its
// counter lines with CR, so CR also ends a line.
type lineBuffer struct {
	mu     sync.Mutex
	all    bytes.Buffer
	part   []byte
	onLine func(string)
}

func (l *lineBuffer) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.all.Len() < 4<<20 {
		l.all.Write(b)
	}
	if l.onLine == nil {
		return len(b), nil
	}
	l.part = append(l.part, b...)
	for {
		i := bytes.IndexAny(l.part, "\r\n")
		if i < 0 {
			break
		}
		if i > 0 {
			l.onLine(string(l.part[:i]))
		}
		l.part = l.part[i+1:]
	}
	return len(b), nil
}

func (l *lineBuffer) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.onLine != nil && len(l.part) > 0 {
		l.onLine(string(l.part))
		l.part = nil
	}
}

func (l *lineBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.all.String()
}

func tail(s string, lines int) string {
	// smtp-sink ends its counter lines with CR only.
	s = strings.ReplaceAll(s, "\r", "\n")
	parts := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	if !eventually(within, cond) {
		t.Fatalf("timed out after %s waiting for %s", within, what)
	}
}

// eventually polls cond every 100 ms until it holds (true) or within has
// passed (false): waitFor for a caller that says itself what is missing.
func eventually(within time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
	return true
}

// readLines returns a file's lines (nil if it cannot be read yet).
func readLines(path string) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out
}

// serveForPostfix serves m on a unix socket Postfix (user postfix) can
// reach, until the test ends; then the milter is closed if it is an
// io.Closer. Messages beyond o.MessageMemory go to messages/ beside the
// socket unless o.MessageDir says otherwise.
func serveForPostfix(t testing.TB, m milterrt.Milter, path string, o milterrt.Options) {
	t.Helper()
	ln, err := milterrt.Listen("unix:" + path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	if o.MessageDir == "" {
		o.MessageDir = filepath.Join(filepath.Dir(path), "messages")
	}
	srv := newTestServer(m, o) // suite mode: m as a one-member suite (suitemode_test.go)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
		if c, ok := m.(io.Closer); ok {
			c.Close()
		}
	})
}
