package scanner

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/geomilter/geomilter/shared/yamlconf"
)

type file struct {
	Scanners []Config `yaml:"scanners"`
}

func load(name string) (file, yamlconf.Problems, error) {
	var f file
	data, err := os.ReadFile(name)
	if err != nil {
		return f, nil, err
	}
	// Semantic problems are reported beside the decode ones, all at once.
	doc, _ := yamlconf.Decode(name, data, &f)
	Validate(doc, "scanners", f.Scanners)
	return f, doc.Problems(), nil
}

// TestBrokenConfigs: each testdata/broken/NAME.yaml gives exactly the lines
// of NAME.err.
func TestBrokenConfigs(t *testing.T) {
	files, _ := filepath.Glob("testdata/broken/*.yaml")
	if len(files) < 4 {
		t.Fatalf("want at least 4 broken configs, found %d", len(files))
	}
	for _, name := range files {
		t.Run(filepath.Base(name), func(t *testing.T) {
			_, ps, err := load(name)
			if err != nil {
				t.Fatal(err)
			}
			want, err := os.ReadFile(strings.TrimSuffix(name, ".yaml") + ".err")
			if err != nil {
				t.Fatal(err)
			}
			if got := ps.Error(); got != strings.TrimSpace(string(want)) {
				t.Errorf("got:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

// TestDefaults: absent keys get the defaults; a written 0 weight stays.
func TestDefaults(t *testing.T) {
	f, ps, err := load("testdata/good/all.yaml")
	if err != nil || len(ps) > 0 {
		t.Fatalf("%v %v", err, ps)
	}
	want := []Config{
		{Type: TypeRspamd, Address: "http://127.0.0.1:11333", Budget: 1500 * time.Millisecond, Weight: 0.5, MaxSize: 20 << 20,
			Breaker: BreakerConfig{Failures: 5, OpenFor: time.Minute}, Password: "secret"},
		{Type: TypeSpamd, Address: "127.0.0.1:783", Budget: DefaultBudget, Weight: 0, MaxSize: DefaultMaxSize,
			Breaker: BreakerConfig{Failures: DefaultFailures, OpenFor: DefaultOpenFor}},
		{Type: TypeSpamd, Address: "/run/spamd/spamd.sock", Budget: DefaultBudget, Weight: DefaultWeight, MaxSize: DefaultMaxSize,
			Breaker: BreakerConfig{Failures: DefaultFailures, OpenFor: DefaultOpenFor}},
	}
	if len(f.Scanners) != len(want) {
		t.Fatalf("%d scanners", len(f.Scanners))
	}
	for i := range want {
		if f.Scanners[i] != want[i] {
			t.Errorf("scanners[%d] = %+v\nwant %+v", i, f.Scanners[i], want[i])
		}
	}
}
