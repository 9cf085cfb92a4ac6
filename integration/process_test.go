package integration

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/geomilter/geomilter/shared/milterload"
)

func TestCheckConfigExitCodes(t *testing.T) {
	s := newSite(t, "100ms", "{name: f, type: file, path: /tmp/geomilter-itest-unused.ndjson}")
	out, err := exec.Command(binPath, "check-config", "--config", s.config).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "ok") {
		t.Fatalf("good config: %v %s", err, out)
	}

	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("site: lax\nstate_dir: /var/lib/geomilter\nspool_dir: /var/spool/geomilter\nrules_file: /etc/r.yaml\nredis:\n  timeout: 25 ms\nmilterz: {}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binPath, "check-config", "--config", bad)
	out, err = cmd.CombinedOutput()
	if cmd.ProcessState.ExitCode() != 1 {
		t.Fatalf("bad config: exit %d (%v), output %s", cmd.ProcessState.ExitCode(), err, out)
	}
	// Every problem is reported, each with file, line and key path.
	for _, want := range []string{"bad.yaml:6", "redis.timeout", "bad.yaml:7", "milterz", "unknown key"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("check-config output lacks %q:\n%s", want, out)
		}
	}
}

// A milter refuses to start on a bad config with a message naming the problem,
// and exits non-zero (systemd then shows it).
func TestStartWithBadConfigFails(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("site: LAX!\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binPath, "access", "--config", bad)
	out, _ := cmd.CombinedOutput()
	if cmd.ProcessState.ExitCode() == 0 || !strings.Contains(string(out), "bad.yaml:1") {
		t.Fatalf("exit %d, output %s", cmd.ProcessState.ExitCode(), out)
	}
}

// SIGHUP with a broken config keeps the running one and keeps serving; the
// metrics and health endpoints answer throughout.
func TestSIGHUPKeepsServing(t *testing.T) {
	col := newCollector(t, false)
	s := newSite(t, "50ms", fmt.Sprintf("{name: col, type: http, url: %q}", col.url()))
	p := s.start(t)

	run := func(tag string) {
		res, err := milterload.Run(context.Background(), milterload.Options{
			Network: "unix", Address: s.socket, Transactions: 200, Concurrency: 4, MessageBytes: 256, Rcpts: 1,
			Timeout: time.Minute, Sender: func(i int) string { return fmt.Sprintf("%s-%d@x.test", tag, i) },
		})
		if err != nil || res.Actions["accept"] != 200 {
			t.Fatalf("%s: %v %+v", tag, err, res)
		}
	}
	run("before")
	good, err := os.ReadFile(s.config)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.config, []byte("site: [broken\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "reload refusal logged", func() bool {
		return strings.Contains(p.stderr.String(), "reload refused")
	})
	run("after-bad-reload")
	if err := os.WriteFile(s.config, good, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "reload logged", func() bool {
		return strings.Contains(p.stderr.String(), `"message":"reloaded"`)
	})
	run("after-good-reload")

	for _, path := range []string{"/healthz", "/metrics"} {
		resp, err := http.Get("http://" + s.metrics + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s", path, resp.StatusCode, body)
		}
		if path == "/metrics" {
			for _, m := range []string{"geomilter_milter_transactions_total", "geomilter_trail_events_total", "geomilter_spool_records", "geomilter_trail_drain_sent_total", "geomilter_milter_stage_duration_seconds"} {
				if !strings.Contains(string(body), m) {
					t.Errorf("/metrics lacks %s", m)
				}
			}
		}
	}
	waitFor(t, 30*time.Second, "600 events delivered", func() bool { return len(acceptedSenders(col.snapshot())) == 600 })
	if code := p.signal(t, syscall.SIGTERM, 20*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
}
