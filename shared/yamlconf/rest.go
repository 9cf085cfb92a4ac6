package yamlconf

import (
	"fmt"
	"reflect"
	"strings"
)

// Rest holds the keys of a mapping that its struct does not declare itself,
// for another package to decode: a struct field of type Rest tagged
// `yaml:",rest"` collects them instead of reporting them as unknown, and the
// owner of those keys takes them with Doc.DecodeRest. This is how a host
// config's milters.<name> section carries the common keys (declared by
// package config) and the milter's own options (declared by the milter's
// package, which config cannot import).
//
// A Rest nobody decodes hides its keys; whoever declares a ",rest" field
// must call DecodeRest on every decoded value of it (with an empty struct
// when nothing else may be there, so the keys are reported as unknown).
type Rest struct {
	dec     *decoder
	path    string
	known   []field // the declaring struct's own keys, for "did you mean"
	entries []entry
}

// Len returns the number of keys held.
func (r *Rest) Len() int { return len(r.entries) }

var restType = reflect.TypeFor[Rest]()

// restIndex returns the index of t's ",rest" field, or -1.
func restIndex(t reflect.Type) int {
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		if sf.Type == restType && sf.IsExported() {
			if _, opts, _ := strings.Cut(sf.Tag.Get("yaml"), ","); strings.Contains(","+opts+",", ",rest,") {
				return i
			}
		}
	}
	return -1
}

// DecodeRest decodes the keys held in r into out (a non-nil pointer to a
// struct) as strictly as Decode: a key out does not declare is an unknown
// key, and its "did you mean" considers the declaring struct's keys too, so
// a typo of a common key is still caught. Fields of out the keys do not
// mention keep their values (preset defaults). Problems go to d, at the
// positions of the keys in the file.
func (d *Doc) DecodeRest(r *Rest, out any) {
	rv := reflectValueOf(out)
	if !rv.IsValid() || rv.Kind() != reflect.Struct {
		d.add(nil, r.path, fmt.Sprintf("internal error: DecodeRest needs a non-nil pointer to a struct, got %T", out))
		return
	}
	if r.dec == nil {
		return // nothing was left over
	}
	if r.dec.doc != d {
		d.add(nil, r.path, "internal error: DecodeRest with a Rest of another document")
		return
	}
	dec := r.dec
	fields := fieldsOf(rv.Type())
	all := append(append([]field(nil), r.known...), fields...)
	for _, e := range r.entries {
		cp := childPath(r.path, e.name)
		dec.withAt(e, func() {
			f, ok := findField(fields, e.name)
			if !ok {
				dec.problem(e.key, cp, "%s", unknownKeyMsg(e.name, all))
				return
			}
			dec.value(e.val, rv.FieldByIndex(f.index), cp)
		})
	}
	dec.reportExhausted()
}
