// Package configtest holds the test helpers shared by the config package
// and the milter packages that register their own options: broken config
// files checked against the exact output they must produce (NAME.yaml
// beside NAME.err), and the check that every key has a row in
// docs/configuration.md. Run `go test -update` to rewrite the .err files
// from the current output, and review the diff.
package configtest

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/geomilter/geomilter/shared/config"
)

var update = flag.Bool("update", false, "rewrite the .err files from the current output (review the diff!)")

// Golden compares got with the content of errFile, or writes it there
// under -update.
func Golden(t testing.TB, errFile, got string) {
	t.Helper()
	if *update {
		if err := os.WriteFile(errFile, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(errFile)
	if err != nil {
		t.Fatalf("missing %s (run go test -update and review it): %v", errFile, err)
	}
	if got != string(want) {
		t.Errorf("output:\n%s\nwant (%s):\n%s", got, errFile, want)
	}
}

// Broken runs check (config.CheckConfig, as check-config does) on every
// dir/*.yaml, of which there must be at least min: each must exit 1 with
// exactly the lines of its .err file, every one naming the file.
func Broken(t *testing.T, dir string, min int, check func(path string, w *bytes.Buffer) int) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(files) < min {
		t.Fatalf("want at least %d broken configs in %s, found %d (%v)", min, dir, len(files), err)
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".yaml"), func(t *testing.T) {
			var out bytes.Buffer
			if code := check(f, &out); code != 1 {
				t.Errorf("exit code %d, want 1", code)
			}
			Golden(t, strings.TrimSuffix(f, ".yaml")+".err", out.String())
			for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
				if !strings.HasPrefix(line, f+":") {
					t.Errorf("line does not name the file: %q", line)
				}
			}
		})
	}
}

// CheckConfig is config.CheckConfig in the form Broken takes.
func CheckConfig(path string, w *bytes.Buffer) int { return config.CheckConfig(path, w) }

// DocumentsOptions fails t unless docs/configuration.md (at docPath) has a
// row, "| `milters.<name>.key` |", for every key of the named milter's
// registered options.
func DocumentsOptions(t *testing.T, milter, docPath string) {
	t.Helper()
	doc, err := os.ReadFile(docPath)
	if err != nil {
		t.Fatalf("docs: %v", err)
	}
	var missing []string
	for _, k := range config.MilterOptionKeys(milter) {
		if !bytes.Contains(doc, []byte("| `"+k+"` |")) {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		t.Errorf("%s has no row for: %s", docPath, strings.Join(missing, ", "))
	}
}
