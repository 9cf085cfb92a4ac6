// Package redistest runs a real redis-server for tests: one process per call
// on a free loopback port with its own temporary directory, killed when the
// test ends. Tests that exercise failure handling use Pause (SIGSTOP: the
// kernel still accepts connections but nothing is answered, which is what an
// unresponsive host looks like), Kill and Restart.
package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Binary is the redis-server executable tried first; PATH is searched if it
// does not exist.
const Binary = "/usr/bin/redis-server"

// RequireEnv, when set in the environment, turns a missing redis-server into
// a test failure instead of a skip (CI sets it so Redis tests cannot silently
// vanish).
const RequireEnv = "GEOMILTER_REQUIRE_REDIS"

// startTimeout bounds how long Start waits for PING to answer.
const startTimeout = 10 * time.Second

// Option changes how the server is configured.
type Option func(*settings)

type settings struct {
	replicaOf   string
	persistence bool
	extra       []string
}

// WithReplicaOf starts the server as a read-only replica of primaryAddr.
func WithReplicaOf(primaryAddr string) Option {
	return func(s *settings) { s.replicaOf = primaryAddr }
}

// WithConfig appends raw redis.conf lines (later lines override earlier ones).
func WithConfig(lines ...string) Option {
	return func(s *settings) { s.extra = append(s.extra, lines...) }
}

// WithPersistence enables the append-only file (fsync everysec) so data
// survives Kill+Restart.
func WithPersistence() Option {
	return func(s *settings) { s.persistence = true }
}

// Server is one running redis-server.
type Server struct {
	Addr string // "127.0.0.1:PORT"
	Dir  string // working directory: config, log, data files

	t    testing.TB
	bin  string
	conf string

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{} // closed when cmd has been reaped
	paused  bool
	clients []*redis.Client
}

// Start launches redis-server on a free 127.0.0.1 port, waits until PING
// answers and registers cleanup. It skips the test when redis-server is not
// installed, unless GEOMILTER_REQUIRE_REDIS is set.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	bin, err := findBinary()
	if err != nil {
		if os.Getenv(RequireEnv) != "" {
			t.Fatalf("redistest: %v (and %s is set)", err, RequireEnv)
		}
		t.Skipf("redistest: %v; install redis-server or set %s to make this a failure", err, RequireEnv)
	}
	var st settings
	for _, o := range opts {
		o(&st)
	}
	s := &Server{t: t, bin: bin, Dir: t.TempDir()}
	t.Cleanup(s.cleanup)

	// A port picked by listening on :0 can be taken by another process before
	// redis binds it (tests start servers in parallel), so retry with a new one.
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePort()
		if err != nil {
			t.Fatalf("redistest: %v", err)
		}
		s.Addr = fmt.Sprintf("127.0.0.1:%d", port)
		s.conf = filepath.Join(s.Dir, "redis.conf")
		if err := os.WriteFile(s.conf, []byte(config(port, s.Dir, st)), 0o600); err != nil {
			t.Fatalf("redistest: write config: %v", err)
		}
		if lastErr = s.start(); lastErr == nil {
			return s
		}
	}
	t.Fatalf("redistest: start redis-server: %v", lastErr)
	return nil
}

func findBinary() (string, error) {
	if _, err := os.Stat(Binary); err == nil {
		return Binary, nil
	}
	p, err := exec.LookPath("redis-server")
	if err != nil {
		return "", errors.New("redis-server not found at " + Binary + " or in PATH")
	}
	return p, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func config(port int, dir string, st settings) string {
	lines := []string{
		fmt.Sprintf("port %d", port),
		"bind 127.0.0.1",
		fmt.Sprintf("dir %q", dir),
		"daemonize no",
		"logfile " + fmt.Sprintf("%q", filepath.Join(dir, "redis.log")),
		`save ""`,
		"appendonly no",
		// A primary waits this long before a full sync by default (5 s), which
		// only slows down replica tests.
		"repl-diskless-sync-delay 0",
	}
	if st.persistence {
		lines = append(lines, "appendonly yes", "appendfsync everysec")
	}
	if st.replicaOf != "" {
		host, p, err := net.SplitHostPort(st.replicaOf)
		if err == nil {
			lines = append(lines, "replicaof "+host+" "+p, "replica-read-only yes")
		}
	}
	lines = append(lines, st.extra...)
	return strings.Join(lines, "\n") + "\n"
}

// start runs the process and waits for PING; on failure the process is gone.
func (s *Server) start() error {
	cmd := exec.Command(s.bin, s.conf)
	cmd.Dir = s.Dir
	// Own process group so a Ctrl-C to `go test` does not race our cleanup.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("exec %s: %w", s.bin, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()

	s.mu.Lock()
	s.cmd, s.done, s.paused = cmd, done, false
	s.mu.Unlock()

	c := redis.NewClient(&redis.Options{Addr: s.Addr, DialTimeout: 200 * time.Millisecond,
		ReadTimeout: 200 * time.Millisecond, MaxRetries: -1, PoolSize: 1, ContextTimeoutEnabled: true})
	defer c.Close()
	deadline := time.Now().Add(startTimeout)
	for {
		select {
		case <-done:
			return fmt.Errorf("redis-server on %s exited during start-up: %s", s.Addr, s.logTail())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		err := c.Ping(ctx).Err()
		cancel()
		// LOADING etc. still count as "not yet"; a replica answers PING while syncing.
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			s.killProc()
			return fmt.Errorf("redis-server on %s did not answer PING within %v (last: %v): %s",
				s.Addr, startTimeout, err, s.logTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *Server) logTail() string {
	b, err := os.ReadFile(filepath.Join(s.Dir, "redis.log"))
	if err != nil {
		return "(no log)"
	}
	if len(b) > 800 {
		b = b[len(b)-800:]
	}
	return strings.TrimSpace(string(b))
}

// Client returns a new go-redis client for assertions; it is closed on
// cleanup. Context deadlines are honoured (ContextTimeoutEnabled), so a call
// to a paused server returns when its ctx expires rather than after the
// client's read timeout.
func (s *Server) Client() *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.Addr, ContextTimeoutEnabled: true})
	s.mu.Lock()
	s.clients = append(s.clients, c)
	s.mu.Unlock()
	return c
}

func (s *Server) signal(sig syscall.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil || s.cmd.Process == nil {
		s.t.Fatalf("redistest: server %s is not running", s.Addr)
		return
	}
	if err := s.cmd.Process.Signal(sig); err != nil {
		s.t.Fatalf("redistest: signal %v to %s: %v", sig, s.Addr, err)
	}
	switch sig {
	case syscall.SIGSTOP:
		s.paused = true
	case syscall.SIGCONT:
		s.paused = false
	}
}

// Pause freezes the server with SIGSTOP: the kernel keeps accepting TCP
// connections into the backlog, but no command is ever answered.
func (s *Server) Pause() { s.signal(syscall.SIGSTOP) }

// Resume continues a paused server (SIGCONT).
func (s *Server) Resume() { s.signal(syscall.SIGCONT) }

// Stop is Pause, named for the signal it sends.
func (s *Server) Stop() { s.Pause() }

// Kill ends the server with SIGKILL and waits until it is reaped; the port
// then refuses connections until Restart.
func (s *Server) Kill() { s.killProc() }

func (s *Server) killProc() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd, s.paused = nil, false
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

// Restart starts a killed (or running: it is killed first) server again on
// the same port and directory, and waits for PING.
func (s *Server) Restart() {
	s.t.Helper()
	s.killProc()
	var err error
	// The old socket may linger briefly; redis sets SO_REUSEADDR, but another
	// test could grab the port meanwhile, which is reported, not retried.
	for i := 0; i < 3; i++ {
		if err = s.start(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("redistest: restart: %v", err)
}

func (s *Server) cleanup() {
	s.mu.Lock()
	clients := s.clients
	s.clients = nil
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	for _, c := range clients {
		_ = c.Close()
	}
	if cmd == nil {
		return
	}
	// A graceful SIGTERM first (a paused process needs SIGCONT to act on
	// it), then SIGKILL if it has not gone within the grace period.
	_ = cmd.Process.Signal(syscall.SIGCONT)
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-done
	}
	s.mu.Lock()
	s.cmd = nil
	s.mu.Unlock()
}
