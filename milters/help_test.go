package main

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
)

// TestHelp: every command answers --help with exit 0, listing its commands
// and flags (issue 12: `geomilter ctl --help` listed two flags and no commands).
func TestHelp(t *testing.T) {
	tests := []struct {
		args []string
		want []string // each must appear in the help
	}{
		{[]string{"--help"}, []string{"access", "policy", "archive", "encrypt", "suite", "one socket", "check-config", "ctl", "bench milter", "version", "greylisting", "trail"}},
		{[]string{"help"}, []string{"access", "check-config"}},
		{[]string{"-h"}, []string{"access", "check-config"}},
		{[]string{"access", "--help"}, []string{"usage: geomilter access", "--config FILE"}},
		{[]string{"policy", "--help"}, []string{"usage: geomilter policy", "--config FILE", "DKIM signing", "greylisting", "scanners"}},
		{[]string{"archive", "--help"}, []string{"usage: geomilter archive", "--config FILE", "journal", "temporary failure"}},
		{[]string{"encrypt", "--help"}, []string{"usage: geomilter encrypt", "--config FILE", "encryption gateway", "inline S/MIME"}},
		{[]string{"suite", "--help"}, []string{"usage: geomilter suite", "--config FILE", "milters.suite.members", "one milter\nsocket", "SIGHUP"}},
		{[]string{"check-config", "--help"}, []string{"usage: geomilter check-config", "--config FILE"}},
		{[]string{"bench", "milter", "--help"}, []string{"usage: geomilter bench milter", "--socket", "--json"}},
		{[]string{"version", "--help"}, []string{"usage: geomilter version"}},
		{[]string{"ctl", "--help"}, []string{"rules apply", "rules list", "rules delete", "rules export", "status", "archive status", "archive replay", "--config FILE", "--timeout"}},
		{[]string{"ctl", "archive", "status", "--help"}, []string{"usage: geomilter ctl archive status", "--json"}},
		{[]string{"ctl", "archive", "replay", "--help"}, []string{"usage: geomilter ctl archive replay", "--target", "--since"}},
		{[]string{"ctl", "help"}, []string{"rules apply", "status"}},
		{[]string{"ctl", "rules", "--help"}, []string{"rules apply", "status"}},
		{[]string{"ctl", "rules", "apply", "--help"}, []string{"usage: geomilter ctl rules apply", "-f FILE", "--dry-run", "--prune", "--config FILE", "--timeout"}},
		{[]string{"ctl", "rules", "list", "--help"}, []string{"usage: geomilter ctl rules list", "--config FILE"}},
		{[]string{"ctl", "rules", "delete", "--help"}, []string{"usage: geomilter ctl rules delete", "--dry-run"}},
		{[]string{"ctl", "rules", "export", "--help"}, []string{"usage: geomilter ctl rules export", "--config FILE"}},
		{[]string{"ctl", "status", "--help"}, []string{"usage: geomilter ctl status", "up, down", "--config FILE"}},
		{[]string{"ctl", "--config", "/nonexistent.yaml", "status", "-h"}, []string{"usage: geomilter ctl status"}},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var out, errw bytes.Buffer
			if code := run(tc.args, &out, &errw); code != 0 {
				t.Fatalf("exit %d, want 0; stderr:\n%s", code, errw.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("help lacks %q:\n%s", w, out.String())
				}
			}
		})
	}
}

// TestBenchHelpFlagsExist: each flag bench milter's help lists is one the
// command accepts (the help is written by hand; the flags live in commands.go).
func TestBenchHelpFlagsExist(t *testing.T) {
	values := map[string]string{"N": "1", "BYTES": "1", "DURATION": "1s", "FILE": "x"}
	line := regexp.MustCompile(`(?m)^  (--?[a-z0-9-]+)(?: ([A-Z]+))?  `)
	found := line.FindAllStringSubmatch(subHelp["bench"], -1)
	if len(found) < 5 {
		t.Fatalf("found %d flag lines in the bench help", len(found))
	}
	for _, m := range found {
		flagName, arg := m[1], m[2]
		if flagName == "--socket" {
			continue
		}
		args := []string{"bench", "milter", flagName}
		if arg != "" {
			args = append(args, values[arg])
		}
		// A socket that does not parse stops the command right after its flags parsed.
		args = append(args, "--socket", "bogus")
		var out, errw bytes.Buffer
		run(args, &out, &errw)
		if strings.Contains(errw.String(), "not defined") || !strings.Contains(errw.String(), "--socket") {
			t.Errorf("%s: the help lists it but bench milter does not take it: %s", flagName, errw.String())
		}
	}
}
