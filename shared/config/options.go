package config

import (
	"fmt"
	"reflect"
	"sort"
	"strings"
	"sync"

	"github.com/geomilter/geomilter/shared/yamlconf"
)

// A milter's own options sit in its section beside the common keys
// (milters.policy.authserv_id beside milters.policy.listen). Package config
// cannot import the milter packages (they import shared/service, which
// imports config), so each milter package registers its options type in
// init; the geomilter binary imports all four, so Parse and check-config
// see every one. A registration is code, not configuration: the values
// still come from the file, through Config.MilterOptions.

// optionsSpec says how to decode and check one milter's own options.
type optionsSpec struct {
	defaults func(c *Config) any                            // a new pointer to the options, defaults set
	check    func(doc *yamlconf.Doc, path string, opts any) // adds a Problem per invalid value
	typ      reflect.Type                                   // the options struct type
}

// registry holds the registered milter options. Parse uses the process's
// registry; tests use their own.
type registry struct {
	mu    sync.RWMutex
	specs map[string]optionsSpec
}

var registered = &registry{specs: make(map[string]optionsSpec)}

// RegisterMilterOptions tells config how to decode and check the options of
// milters.<name> beyond the common keys. defaults returns a new value with
// every default set (it may depend on the rest of the config, e.g. on
// host); keys present in the file overwrite it, strictly (unknown keys are
// problems, with a "did you mean" among the common keys and T's). check
// adds a Problem to doc for every invalid value, at path + ".key" (path is
// "milters.<name>"). Call it from the milter package's init. It panics on a
// programming error: an unknown milter name, a second registration, or T
// declaring a key the common section already has.
func RegisterMilterOptions[T any](name string, defaults func(c *Config) *T, check func(doc *yamlconf.Doc, path string, opts *T)) {
	registered.register(name, optionsSpec{
		defaults: func(c *Config) any { return defaults(c) },
		check:    func(doc *yamlconf.Doc, path string, opts any) { check(doc, path, opts.(*T)) },
		typ:      reflect.TypeFor[T](),
	})
}

func (r *registry) register(name string, s optionsSpec) {
	if !isMilterName(name) {
		panic(fmt.Sprintf("config.RegisterMilterOptions: unknown milter %q", name))
	}
	if s.typ.Kind() != reflect.Struct {
		panic(fmt.Sprintf("config.RegisterMilterOptions(%s): options type %s is not a struct", name, s.typ))
	}
	common := make(map[string]bool)
	for _, k := range topKeys(reflect.TypeFor[MilterConfig]()) {
		common[k] = true
	}
	for _, k := range topKeys(s.typ) {
		if common[k] {
			panic(fmt.Sprintf("config.RegisterMilterOptions(%s): key %q is a common milter key", name, k))
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.specs[name]; dup {
		panic(fmt.Sprintf("config.RegisterMilterOptions: %s registered twice", name))
	}
	r.specs[name] = s
}

func (r *registry) spec(name string) (optionsSpec, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	s, ok := r.specs[name]
	return s, ok
}

func isMilterName(name string) bool {
	for _, n := range MilterNames() {
		if n == name {
			return true
		}
	}
	return false
}

// MilterOptions returns the decoded options of milters.<name> (defaults
// applied, validated), a pointer of the type registered for name; nil when
// the milter's section is absent or nothing is registered for it. A milter
// package wraps it in a typed function (policy.ConfigFrom).
func (c *Config) MilterOptions(name string) any {
	return c.options[name]
}

// decodeMilterOptions decodes each configured milter's own keys (the rest
// of its section) into its registered type, or reports them as unknown
// when nothing is registered, and runs the registered check. It runs after
// applyDefaults, so defaults may use the config (host).
func decodeMilterOptions(c *Config, doc *yamlconf.Doc, reg *registry) {
	for _, name := range MilterNames() {
		m, ok := c.Milter(name)
		if !ok {
			continue
		}
		p := "milters." + name
		spec, ok := reg.spec(name)
		if !ok {
			doc.DecodeRest(&m.Rest, &struct{}{}) // every leftover key is unknown
			m.Rest = yamlconf.Rest{}
			continue
		}
		opts := spec.defaults(c)
		doc.DecodeRest(&m.Rest, opts)
		m.Rest = yamlconf.Rest{} // the nodes are not needed any more
		spec.check(doc, p, opts)
		if c.options == nil {
			c.options = make(map[string]any)
		}
		c.options[name] = opts
	}
}

// MilterOptionKeys lists the key paths of the options registered for the
// named milter (milters.<name>.key, milters.<name>.section.key), sorted: for
// the test that every key has a row in docs/configuration.md.
func MilterOptionKeys(name string) []string { return registered.keys(name) }

func (r *registry) keys(name string) []string {
	spec, ok := r.spec(name)
	if !ok {
		return nil
	}
	var keys []string
	var walk func(t reflect.Type, path string)
	walk = func(t reflect.Type, path string) {
		for i := 0; i < t.NumField(); i++ {
			sf := t.Field(i)
			key, opts, _ := strings.Cut(sf.Tag.Get("yaml"), ",")
			if key == "-" || !sf.IsExported() {
				continue
			}
			if strings.Contains(","+opts+",", ",inline,") && sf.Type.Kind() == reflect.Struct {
				walk(sf.Type, path) // its keys sit beside the others (yamlconf decodes them so)
				continue
			}
			if key == "" {
				key = strings.ToLower(sf.Name)
			}
			ft := sf.Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct && !isScalarStruct(ft) {
				walk(ft, path+"."+key)
				continue
			}
			keys = append(keys, path+"."+key)
		}
	}
	walk(spec.typ, "milters."+name)
	sort.Strings(keys)
	return keys
}

// isScalarStruct reports struct types written as one YAML scalar (a type
// with its own parser, such as netip.Prefix).
func isScalarStruct(t reflect.Type) bool {
	pt := reflect.PointerTo(t)
	return pt.Implements(reflect.TypeFor[yamlconf.Unmarshaler]()) ||
		pt.Implements(reflect.TypeFor[interface{ UnmarshalText([]byte) error }]())
}

// topKeys lists the keys a struct type declares at its own level.
func topKeys(t reflect.Type) []string {
	var keys []string
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		key, _, _ := strings.Cut(sf.Tag.Get("yaml"), ",")
		if key == "-" || !sf.IsExported() || sf.Type == reflect.TypeFor[yamlconf.Rest]() {
			continue
		}
		if key == "" {
			key = strings.ToLower(sf.Name)
		}
		keys = append(keys, key)
	}
	return keys
}
