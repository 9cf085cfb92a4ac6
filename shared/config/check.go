package config

import (
	"errors"
	"fmt"
	"io"

	"github.com/geomilter/geomilter/shared/yamlconf"
)

// CheckConfig implements `geomilter check-config --config FILE`: it loads
// path and writes "FILE: ok", or each problem on its own line
// ("FILE:LINE:COL: key.path: message"). It returns the exit code, 0 or 1.
func CheckConfig(path string, w io.Writer) int {
	_, err := Load(path)
	if err == nil {
		fmt.Fprintf(w, "%s: ok\n", path)
		return 0
	}
	var ps yamlconf.Problems
	if !errors.As(err, &ps) {
		ps = yamlconf.Problems{{File: path, Msg: err.Error()}}
	}
	for _, p := range ps {
		fmt.Fprintln(w, p.Error())
	}
	return 1
}
