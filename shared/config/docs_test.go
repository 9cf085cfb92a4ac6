package config

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

// docPaths maps key paths to the form docs/configuration.md uses for them
// ("" = covered by the parent's row, e.g. peers have "the same fields as
// redis.local").
var docPaths = map[string]string{
	"milters.access":  "milters.<name>",
	"milters.policy":  "",
	"milters.archive": "",
	"milters.encrypt": "",
	"redis.local":     "",
	"redis.peers":     "redis.peers.<site>",
	"trail.sinks":     "trail.sinks[]",
}

// TestDocsCoverEveryKey fails when a config key is added without a row in
// docs/configuration.md. A milter's own options (milters.<name>.<key>) are
// checked by that milter's package, which registers them
// (configtest.DocumentsOptions in milters/<name>/config_test.go).
func TestDocsCoverEveryKey(t *testing.T) {
	doc, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Skipf("docs not found: %v", err)
	}
	var missing []string
	var walk func(t reflect.Type, path string)
	walk = func(typ reflect.Type, path string) {
		for typ.Kind() == reflect.Pointer {
			typ = typ.Elem()
		}
		switch typ.Kind() {
		case reflect.Map:
			if typ.Elem().Kind() == reflect.String {
				if !strings.Contains(string(doc), "`"+path+".<") {
					missing = append(missing, path+".<…>")
				}
				return
			}
		case reflect.Slice:
			walk(typ.Elem(), path)
			return
		}
		if typ.Kind() != reflect.Struct || typ.PkgPath() != reflect.TypeFor[Config]().PkgPath() {
			return
		}
		for i := 0; i < typ.NumField(); i++ {
			name, opts, _ := strings.Cut(typ.Field(i).Tag.Get("yaml"), ",")
			if name == "-" {
				continue
			}
			if strings.Contains(","+opts+",", ",inline,") {
				walk(typ.Field(i).Type, path) // its keys sit beside the others
				continue
			}
			p := name
			if path != "" {
				p = path + "." + name
			}
			if alias, ok := docPaths[p]; ok {
				if alias == "" {
					continue
				}
				p = alias
			}
			ft := typ.Field(i).Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			leaf := ft.Kind() != reflect.Struct && ft.Kind() != reflect.Map && ft.Kind() != reflect.Slice
			if ft.Kind() == reflect.Slice && ft.Elem().Kind() != reflect.Struct {
				leaf = true
			}
			if leaf && !strings.Contains(string(doc), "`"+p+"`") {
				missing = append(missing, p)
			}
			if !leaf {
				walk(typ.Field(i).Type, p)
			}
		}
	}
	walk(reflect.TypeFor[Config](), "")
	// Instance fields are documented once, relative to the instance.
	for _, f := range []string{"addr", "username", "password_file", "tls.ca_file", "tls.cert_file", "tls.key_file", "tls.server_name",
		"sentinel.master_name", "sentinel.addrs", "sentinel.username", "sentinel.password_file"} {
		if !strings.Contains(string(doc), "| `"+f+"` |") {
			missing = append(missing, "instance "+f)
		}
	}
	if len(missing) > 0 {
		t.Errorf("docs/configuration.md has no row for: %s", strings.Join(missing, ", "))
	}
}
