package postfix

import (
	"strings"
	"testing"
	"time"
)

// TestDemoBrokenPostfixFails: when the demo's Postfix part cannot run, `make demo`
// exits non-zero and its console says what failed, with the tool's own error text
// (issue 12: it used to exit 0 and call a setup failure "noise").
// GEOMILTER_DEMO_BREAK=postfix puts a postconf that fails first on the drill's PATH.
func TestDemoBrokenPostfixFails(t *testing.T) {
	gate(t)
	if testing.Short() {
		t.Skip("builds and runs the drill's test binary: not in -short")
	}
	out, err := runCmd(10*time.Minute, "env",
		"GEOMILTER_SKIP_DEPS=1", "GEOMILTER_DEMO_LOOPBACK=0", "GEOMILTER_DEMO_BREAK=postfix", "GEOMILTER_BIN="+binPath,
		"bash", "../../scripts/demo.sh")
	if err == nil {
		t.Fatalf("demo with a broken Postfix part exited 0:\n%s", out)
	}
	for _, want := range []string{
		"broken on purpose",               // postconf's own stderr reached the console
		"postconf -d -h daemon_directory", // with the command that failed
		"demo: FAILED: part two",          // and the part that failed
	} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	for _, bad := range []string{"noise", "demo: OK", "demo drill: OK"} {
		if strings.Contains(out, bad) {
			t.Errorf("demo output says %q for a setup failure:\n%s", bad, out)
		}
	}
	if n := strings.Count(out, "\n"); n > 40 {
		t.Errorf("demo console output is %d lines; want a short summary (details go to its log):\n%s", n, out)
	}
}
