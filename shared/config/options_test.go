package config

import (
	"reflect"
	"strings"
	"testing"

	"github.com/geomilter/geomilter/shared/yamlconf"
)

// testOptions stands for a milter package's options (the real ones are
// tested in milters/<name>, which this package cannot import).
type testOptions struct {
	AuthservID string `yaml:"authserv_id"`
	DKIM       struct {
		MaxSignatures int `yaml:"max_signatures"`
	} `yaml:"dkim"`
	Tags []string `yaml:"tags"`
}

func testRegistry() *registry {
	r := &registry{specs: make(map[string]optionsSpec)}
	register(r, "policy", func(c *Config) *testOptions {
		o := &testOptions{AuthservID: c.Host, Tags: []string{"[secure]"}}
		o.DKIM.MaxSignatures = 8
		return o
	}, func(doc *yamlconf.Doc, path string, o *testOptions) {
		if o.DKIM.MaxSignatures < 1 {
			doc.Problemf(path+".dkim.max_signatures", "must be at least 1, got %d", o.DKIM.MaxSignatures)
		}
	})
	register(r, "access", func(*Config) *struct{} { return &struct{}{} }, func(*yamlconf.Doc, string, *struct{}) {})
	return r
}

// register is RegisterMilterOptions into r.
func register[T any](r *registry, name string, defaults func(c *Config) *T, check func(doc *yamlconf.Doc, path string, opts *T)) {
	r.register(name, optionsSpec{
		defaults: func(c *Config) any { return defaults(c) },
		check:    func(doc *yamlconf.Doc, path string, opts any) { check(doc, path, opts.(*T)) },
		typ:      reflect.TypeFor[T](),
	})
}

const optionsBase = "site: lax\nhost: mx1.example.net\nrules_file: /r.yaml\nstate_dir: /s\nspool_dir: /q\n"

func TestMilterOptions(t *testing.T) {
	in := optionsBase + `milters:
  policy:
    listen: "unix:/run/p.sock"
    dkim: {max_signatures: 3}
  access: {listen: "unix:/run/a.sock"}
`
	cfg, err := parse("o.yaml", []byte(in), testRegistry())
	if err != nil {
		t.Fatal(err)
	}
	o, ok := cfg.MilterOptions("policy").(*testOptions)
	if !ok || o.AuthservID != "mx1.example.net" || o.DKIM.MaxSignatures != 3 || !reflect.DeepEqual(o.Tags, []string{"[secure]"}) {
		t.Errorf("policy options = %#v", cfg.MilterOptions("policy"))
	}
	if _, ok := cfg.MilterOptions("access").(*struct{}); !ok {
		t.Errorf("access options = %#v", cfg.MilterOptions("access"))
	}
	if cfg.MilterOptions("archive") != nil {
		t.Error("options of an absent section")
	}
	if m, _ := cfg.Milter("policy"); m.Rest.Len() != 0 {
		t.Error("the rest of the section is kept after decoding")
	}
}

// Every problem of the own options comes with the rest of the file's, in
// file order, with "did you mean" over the common and the own keys.
func TestMilterOptionsProblems(t *testing.T) {
	in := optionsBase + `milters:
  policy:
    listen: "unix:/run/p.sock"
    authserv_idd: x
    lisen: y
    dkim: {max_signatures: 0}
    tags: "[secure]"
  access: {listen: "unix:/run/a.sock", idle_timeout: 0s, tag: x}
  archive: {listen: "unix:/run/r.sock", journal: {}}
`
	_, err := parse("o.yaml", []byte(in), testRegistry())
	want := strings.Join([]string{
		`o.yaml:9:5: milters.policy.authserv_idd: unknown key, did you mean "authserv_id"? (known: listen, metrics_listen, max_sessions, idle_timeout, shutdown_timeout, max_procs, message_dir, message_memory, authserv_id, dkim, tags)`,
		`o.yaml:10:5: milters.policy.lisen: unknown key, did you mean "listen"? (known: listen, metrics_listen, max_sessions, idle_timeout, shutdown_timeout, max_procs, message_dir, message_memory, authserv_id, dkim, tags)`,
		`o.yaml:11:12: milters.policy.dkim.max_signatures: must be at least 1, got 0`,
		`o.yaml:12:11: milters.policy.tags: expected a list, got "[secure]"`,
		`o.yaml:13:40: milters.access.idle_timeout: must be more than 0 and at most 24h0m0s, got 0s`,
		`o.yaml:13:58: milters.access.tag: unknown key (known: listen, metrics_listen, max_sessions, idle_timeout, shutdown_timeout, max_procs, message_dir, message_memory)`,
		`o.yaml:14:41: milters.archive.journal: unknown key (known: listen, metrics_listen, max_sessions, idle_timeout, shutdown_timeout, max_procs, message_dir, message_memory)`,
	}, "\n")
	if err == nil || err.Error() != want {
		t.Errorf("problems:\n%v\nwant:\n%s", err, want)
	}
}

func TestRegisterMilterOptionsMistakes(t *testing.T) {
	type listenAgain struct {
		Listen string `yaml:"listen"`
	}
	for name, f := range map[string]func(r *registry){
		"unknown milter": func(r *registry) {
			register(r, "spam", func(*Config) *struct{} { return nil }, func(*yamlconf.Doc, string, *struct{}) {})
		},
		"twice": func(r *registry) {
			register(r, "policy", func(*Config) *struct{} { return nil }, func(*yamlconf.Doc, string, *struct{}) {})
		},
		"common key": func(r *registry) {
			register(r, "archive", func(*Config) *listenAgain { return nil }, func(*yamlconf.Doc, string, *listenAgain) {})
		},
		"not a struct": func(r *registry) {
			register(r, "encrypt", func(*Config) *int { return nil }, func(*yamlconf.Doc, string, *int) {})
		},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: no panic", name)
				}
			}()
			f(testRegistry())
		}()
	}
}

func TestMilterOptionKeys(t *testing.T) {
	got := testRegistry().keys("policy")
	want := []string{"milters.policy.authserv_id", "milters.policy.dkim.max_signatures", "milters.policy.tags"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("keys = %q, want %q", got, want)
	}
	if keys := testRegistry().keys("archive"); keys != nil {
		t.Errorf("unregistered: %q", keys)
	}
}
