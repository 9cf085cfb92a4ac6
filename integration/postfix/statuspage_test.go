package postfix

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// chromiumPath is Debian's chromium (scripts/install-deps.sh), or "".
func chromiumPath() string {
	for _, n := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
	}
	return ""
}

// chromium runs headless Chromium inside the site's namespace (so it
// reaches the metrics listener on the site's loopback) with its own
// profile, and returns its stdout; stderr (D-Bus noise: no session bus
// here) is dropped. --no-sandbox: the tests run as root.
func (s *site) chromium(args ...string) (string, error) {
	prof, err := os.MkdirTemp(s.dir, "chromium-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(prof)
	cmd := []string{chromiumPath(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
		"--user-data-dir=" + prof}
	cmd = append(cmd, args...)
	quoted := make([]string, len(cmd))
	for i, a := range cmd {
		quoted[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return inNS(s.ns, 60*time.Second, "sh", "-c", strings.Join(quoted, " ")+" 2>/dev/null")
}

var siteRowRe = regexp.MustCompile(`<tr class="site( bad)?" data-site="([a-z]+)" data-state="([^"]*)">`)

// statusRows is each site's row on the page as the browser built it:
// site → state, with " (red)" when marked bad.
func statusRows(dom string) map[string]string {
	out := map[string]string{}
	for _, m := range siteRowRe.FindAllStringSubmatch(dom, -1) {
		st := m[3]
		if m[1] != "" {
			st += " (red)"
		}
		out[m[2]] = st
	}
	return out
}

// TestStatusPage: lax's /status, rendered by headless Chromium inside lax's
// namespace, shows both sites with their links up and lax's decisions;
// with the link to dal cut it shows dal in red with since when, still
// within a bounded time, and lax up; with lax's replica of dal wedged, that
// instance dark.
func TestStatusPage(t *testing.T) {
	gate(t)
	if chromiumPath() == "" {
		t.Skip("chromium not installed (scripts/install-deps.sh installs it)")
	}
	_, lax := twoSites(t)
	url := fmt.Sprintf("http://127.0.0.1:%d/status", metricsPort("access"))

	if out, err := lax.swaks("--from", "status@client.lax.test", "--to", "rcpt@acme.example"); err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	waitFor(t, 30*time.Second, "the message at smtp-sink", func() bool { return lax.sink.Load() == 1 })

	var dom string
	waitFor(t, 30*time.Second, "lax's page in Chromium with both sites up", func() bool {
		var err error
		dom, err = lax.chromium("--dump-dom", url)
		rows := statusRows(dom)
		return err == nil && rows["lax"] == "up" && rows["dal"] == "up"
	})
	for _, want := range []string{"site lax, host mx1", "lax (this site)", "<th>accept</th>", `id="state" class="state ok">up<`} {
		if !strings.Contains(dom, want) {
			t.Errorf("page with both sites up lacks %q:\n%s", want, dom)
		}
	}
	up := filepath.Join(lax.dir, "status-up.png")
	if out, err := lax.chromium("--screenshot="+up, "--window-size=1200,900", "--hide-scrollbars", url); err != nil {
		t.Fatalf("chromium --screenshot: %v\n%s", err, out)
	}
	checkPNG(t, up)

	// Dark dal: lax's replica notices a silent link after repl-timeout
	// (lowered from Redis's 60 s so the test need not wait a minute).
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := lax.replica.ConfigSet(ctx, "repl-timeout", "5").Err(); err != nil {
		t.Fatal(err)
	}
	lax.cutLink()
	defer lax.restoreLink()
	var rows map[string]string
	waitFor(t, 60*time.Second, "lax's page in Chromium marking dal red", func() bool {
		var err error
		dom, err = lax.chromium("--dump-dom", url)
		rows = statusRows(dom)
		return err == nil && strings.HasSuffix(rows["dal"], "(red)") && rows["lax"] == "up"
	})
	t.Logf("with the link cut: rows %v", rows)
	for _, want := range []string{" ago)</td>", `class="state warn">degraded<`} {
		if !strings.Contains(dom, want) {
			t.Errorf("page with dal dark lacks %q:\n%s", want, dom)
		}
	}
	// The page never waits on the dark site: it answers from memory and
	// local Redis (a bound of 300 ms on its one look-up).
	timed := func(what string) {
		t.Helper()
		start := time.Now()
		out, err := inNS(lax.ns, 10*time.Second, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", url)
		took := time.Since(start)
		if err != nil || out != "200" {
			t.Fatalf("curl /status with %s: %v %q", what, err, out)
		}
		t.Logf("/status with %s answered in %s (curl in the namespace, its start included)", what, took.Round(time.Millisecond))
		if took > 2*time.Second {
			t.Errorf("/status took %s with %s, want about 1 s at most", took, what)
		}
	}
	timed("the link to dal cut")
	dark := filepath.Join(lax.dir, "status-dark.png")
	if out, err := lax.chromium("--screenshot="+dark, "--window-size=1200,900", "--hide-scrollbars", url); err != nil {
		t.Fatalf("chromium --screenshot: %v\n%s", err, out)
	}
	checkPNG(t, dark)

	// lax's own copy of dal stops answering (every command paused for 30
	// s, as a wedged process would): its breaker opens and the row says
	// dark, with the start of the outage.
	pctx, pcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer pcancel()
	if err := lax.replica.Do(pctx, "CLIENT", "PAUSE", "30000", "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 25*time.Second, "lax's page in Chromium showing its replica of dal dark", func() bool {
		var err error
		dom, err = lax.chromium("--dump-dom", url)
		rows = statusRows(dom)
		return err == nil && rows["dal"] == "dark (red)" && rows["lax"] == "up"
	})
	timed("lax's replica of dal wedged")
	if !regexp.MustCompile(`dal peer-replica 127\.0\.0\.1:6380: breaker open`).MatchString(dom) {
		t.Errorf("page with lax's replica dark does not list its open breaker:\n%s", dom)
	}
	// GEOMILTER_STATUS_SCREENSHOT=DIR keeps both screenshots (docs/images).
	if dir := os.Getenv("GEOMILTER_STATUS_SCREENSHOT"); dir != "" {
		for _, f := range []string{up, dark} {
			b, _ := os.ReadFile(f)
			if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), b, 0o644); err != nil {
				t.Error(err)
			}
		}
	}
}

func checkPNG(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if len(b) < 4096 || string(b[1:4]) != "PNG" {
		t.Fatalf("screenshot %s: %d bytes, not a PNG of a page", path, len(b))
	}
}
