package greylist_test

import (
	"bytes"
	"fmt"
	"os"
	"testing"

	"github.com/geomilter/geomilter/milters/policy/greylist"
	"github.com/geomilter/geomilter/shared/config/configtest"
	"github.com/geomilter/geomilter/shared/yamlconf"
)

// file is the part of a config file these tests decode: the greylist
// section alone, at the path it has in a real config.
type file struct {
	Milters struct {
		Policy struct {
			Greylist greylist.Settings `yaml:"greylist"`
		} `yaml:"policy"`
	} `yaml:"milters"`
}

// checkFile decodes path over the defaults and validates it, printing
// every problem as check-config does; 1 when there are problems.
func checkFile(path string, w *bytes.Buffer) int {
	data, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintf(w, "%s: %v\n", path, err)
		return 1
	}
	var f file
	f.Milters.Policy.Greylist = greylist.DefaultSettings()
	doc, probs := yamlconf.Decode(path, data, &f)
	if len(probs) == 0 {
		greylist.Validate(doc, "milters.policy.greylist", &f.Milters.Policy.Greylist)
		probs = doc.Problems()
	}
	for _, p := range probs {
		fmt.Fprintln(w, p.Error())
	}
	if len(probs) > 0 {
		return 1
	}
	return 0
}

// TestBrokenSettings: each testdata/broken/*.yaml gives exactly its .err.
func TestBrokenSettings(t *testing.T) {
	configtest.Broken(t, "testdata/broken", 4, checkFile)
}

func TestGoodSettings(t *testing.T) {
	for _, f := range []string{"testdata/good/defaults.yaml", "testdata/good/all.yaml"} {
		var out bytes.Buffer
		if code := checkFile(f, &out); code != 0 {
			t.Errorf("%s: %s", f, out.String())
		}
	}
}
