package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var binPath string

func TestMain(m *testing.M) {
	binPath = os.Getenv("GEOMILTER_BIN")
	var tmp string
	if binPath == "" {
		var err error
		tmp, err = os.MkdirTemp("", "geomilter-bin")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		binPath = filepath.Join(tmp, "geomilter")
		cmd := exec.Command("go", "build", "-o", binPath, "../milters")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "build geomilter:", err)
			os.Exit(1)
		}
	}
	code := m.Run()
	if tmp != "" {
		os.RemoveAll(tmp)
	}
	os.Exit(code)
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// site is a directory with a geomilter config for one host.
type site struct {
	dir     string
	config  string
	socket  string
	metrics string
}

// newSite writes a standalone config running the access milter with the given
// trail sinks (YAML flow entries).
func newSite(t testing.TB, syncEvery string, sinks ...string) *site {
	t.Helper()
	dir := t.TempDir()
	s := &site{
		dir:     dir,
		config:  filepath.Join(dir, "geomilter.yaml"),
		socket:  filepath.Join(dir, "access.sock"),
		metrics: fmt.Sprintf("127.0.0.1:%d", freePort(t)),
	}
	if err := os.WriteFile(filepath.Join(dir, "rules.yaml"), []byte("# the load tool's recipients are in load.example: a protected domain, so\n# its mail is inbound, not an (always refused) relay attempt\ntenants:\n  - {id: load, domains: [load.example]}\nrules: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "site: itest\nhost: h1\nrules_file: %s/rules.yaml\nstate_dir: %s/state\nspool_dir: %s/spool\n", dir, dir, dir)
	fmt.Fprintf(&b, "log: {level: info}\ntrail:\n  sync_every: %s\n  backoff: {min: 50ms, max: 500ms}\n  sinks:\n", syncEvery)
	for _, sk := range sinks {
		fmt.Fprintf(&b, "    - %s\n", sk)
	}
	fmt.Fprintf(&b, "metrics: {listen: %q}\nmilters:\n  access: {listen: \"unix:%s\", shutdown_timeout: 10s}\n", s.metrics, s.socket)
	if err := os.WriteFile(s.config, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return s
}

// proc is a running geomilter process.
type proc struct {
	cmd    *exec.Cmd
	stderr *lockedBuffer
	done   chan struct{}
	err    error
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// start runs `geomilter access --config` and waits until its socket answers.
func (s *site) start(t testing.TB) *proc {
	t.Helper()
	p := &proc{stderr: &lockedBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(binPath, "access", "--config", s.config)
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("geomilter stderr:\n%s", tail(p.stderr.String(), 40))
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.Dial("unix", s.socket)
		if err == nil {
			c.Close()
			return p
		}
		select {
		case <-p.done:
			t.Fatalf("geomilter exited at start: %v\n%s", p.err, p.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("geomilter socket %s not ready: %v\n%s", s.socket, err, p.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// signal sends sig and waits for the process to exit; it returns the exit code
// (-1 when killed by a signal).
func (p *proc) signal(t testing.TB, sig syscall.Signal, within time.Duration) int {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(within):
		t.Fatalf("process did not exit within %s of %s", within, sig)
	}
	return p.cmd.ProcessState.ExitCode()
}

func tail(s string, lines int) string {
	parts := strings.Split(s, "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}

// collector is an HTTP NDJSON receiver that can play dead: in hang mode it
// accepts the request and never answers (the failure that hurt: an unresponsive
// sink, not a refusing one).
type collector struct {
	srv  *http.Server
	addr string

	mu     sync.Mutex
	hang   bool
	wake   chan struct{}
	events map[string]json.RawMessage // event_id -> event
	posts  int
	dups   int
}

func newCollector(t testing.TB, hang bool) *collector {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &collector{addr: ln.Addr().String(), hang: hang, wake: make(chan struct{}), events: map[string]json.RawMessage{}}
	c.srv = &http.Server{Handler: http.HandlerFunc(c.serve)}
	go func() { _ = c.srv.Serve(ln) }()
	t.Cleanup(func() {
		c.setHang(false)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = c.srv.Shutdown(ctx)
	})
	return c
}

func (c *collector) url() string { return "http://" + c.addr + "/ingest" }

func (c *collector) setHang(h bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.hang && !h {
		close(c.wake)
		c.wake = make(chan struct{})
	}
	c.hang = h
}

func (c *collector) serve(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	hang, wake := c.hang, c.wake
	c.mu.Unlock()
	if hang {
		// Never answer: wait for the client to give up (its timeout) or for
		// the test to end the outage, then drop the request unanswered.
		select {
		case <-r.Context().Done():
		case <-wake:
		}
		panic(http.ErrAbortHandler)
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), 400)
		return
	}
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.posts++
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var ev struct {
			EventID string `json:"event_id"`
		}
		if err := json.Unmarshal(line, &ev); err != nil || ev.EventID == "" {
			http.Error(w, "bad event", 400)
			return
		}
		if _, ok := c.events[ev.EventID]; ok {
			c.dups++
		}
		c.events[ev.EventID] = append(json.RawMessage(nil), line...)
	}
	w.WriteHeader(204)
}

// snapshot returns the events received so far.
func (c *collector) snapshot() map[string]json.RawMessage {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]json.RawMessage, len(c.events))
	for k, v := range c.events {
		out[k] = v
	}
	return out
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
