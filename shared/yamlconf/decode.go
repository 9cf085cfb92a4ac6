package yamlconf

import (
	"encoding"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// maxSteps bounds the work of one Decode. Aliases let a small file describe
// an exponentially large tree ("billion laughs"); counting every visited node
// keeps decoding linear in what we are willing to expand. The bound grows with
// the input (a value takes at least two bytes without aliases), so a large
// rules file of 100,000 rules decodes while a small alias bomb still stops.
const maxSteps = 1 << 18

func stepLimit(inputLen int) int { return max(maxSteps, 2*inputLen) }

var (
	durationType    = reflect.TypeFor[time.Duration]()
	unmarshalerType = reflect.TypeFor[Unmarshaler]()
	textType        = reflect.TypeFor[encoding.TextUnmarshaler]()
)

type decoder struct {
	doc       *Doc
	steps     int
	limit     int
	exhausted bool
	// active holds the anchors being expanded, to catch an alias that
	// refers to the node containing it.
	active map[*yaml.Node]bool
	// at, when set, is the alias node through which the current subtree was
	// reached: positions inside an expansion point at the alias, where the
	// user wrote this path, rather than at the anchor.
	at *yaml.Node
	// root is the document node, and exhaustedShown whether the step limit's
	// problem has been reported (once, even when Doc.DecodeRest goes on).
	root           *yaml.Node
	exhaustedShown bool
}

// reportExhausted reports, once, that the step limit was reached.
func (d *decoder) reportExhausted() {
	if d.exhausted && !d.exhaustedShown {
		d.exhaustedShown = true
		d.doc.add(d.root, "", fmt.Sprintf("document too complex: more than %d values after expanding aliases", d.limit))
	}
}

func reflectValueOf(out any) reflect.Value {
	rv := reflect.ValueOf(out)
	if !rv.IsValid() || rv.Kind() != reflect.Pointer || rv.IsNil() {
		return reflect.Value{}
	}
	return rv.Elem()
}

// place returns the node whose position describes n for the user.
func (d *decoder) place(n *yaml.Node) *yaml.Node {
	if d.at != nil {
		return d.at
	}
	return n
}

func (d *decoder) record(path string, n *yaml.Node) {
	n = d.place(n)
	if _, ok := d.doc.pos[path]; !ok {
		d.doc.pos[path] = position{n.Line, n.Column}
	}
}

func (d *decoder) fail(n *yaml.Node, path, format string, args ...any) {
	d.doc.fail(d.place(n), path, fmt.Sprintf(format, args...))
}

func (d *decoder) problem(n *yaml.Node, path, format string, args ...any) {
	d.doc.add(d.place(n), path, fmt.Sprintf(format, args...))
}

func (d *decoder) step() bool {
	if d.exhausted {
		return false
	}
	d.steps++
	if d.steps > d.limit {
		d.exhausted = true
		return false
	}
	return true
}

// deref follows aliases. It returns the target node and a function to call
// when done with it, or ok=false after reporting a broken or cyclic alias.
func (d *decoder) deref(n *yaml.Node, path string) (target *yaml.Node, done func(), ok bool) {
	if n.Kind != yaml.AliasNode {
		return n, func() {}, true
	}
	t := n.Alias
	if t == nil {
		d.fail(n, path, "alias *%s refers to no anchor", n.Value)
		return nil, nil, false
	}
	if d.active[t] {
		d.fail(n, path, "alias *%s refers to a value containing itself", n.Value)
		return nil, nil, false
	}
	prevAt := d.at
	if d.at == nil {
		d.at = n
	}
	d.active[t] = true
	// The target may itself be an alias.
	inner, innerDone, ok := d.deref(t, path)
	if !ok {
		delete(d.active, t)
		d.at = prevAt
		return nil, nil, false
	}
	return inner, func() {
		innerDone()
		delete(d.active, t)
		d.at = prevAt
	}, true
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// describe names what the user wrote, for "expected X, got Y" messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if isNull(n) {
			return "nothing (null)"
		}
		v := n.Value
		if len(v) > 40 {
			v = v[:40] + "…"
		}
		return strconv.Quote(v)
	}
	return "an unsupported YAML node"
}

// value decodes n into v (settable) at path.
func (d *decoder) value(n *yaml.Node, v reflect.Value, path string) {
	if !d.step() {
		return
	}
	n, done, ok := d.deref(n, path)
	if !ok {
		return
	}
	defer done()

	if isNull(n) {
		// Like yaml.v3: null clears references, leaves plain values alone.
		switch v.Kind() {
		case reflect.Pointer, reflect.Map, reflect.Slice, reflect.Interface:
			v.SetZero()
		}
		return
	}
	if tag := n.Tag; strings.HasPrefix(tag, "!") && !strings.HasPrefix(tag, "!!") {
		d.fail(n, path, "unsupported YAML tag %s", tag)
		return
	}

	if v.CanAddr() {
		switch pv := v.Addr(); {
		case pv.Type().Implements(unmarshalerType):
			if s, ok := d.scalar(n, path, "a single value"); ok {
				if err := pv.Interface().(Unmarshaler).UnmarshalYAMLConf(s); err != nil {
					d.fail(n, path, "%s", err)
				}
			}
			return
		case pv.Type().Implements(textType):
			if s, ok := d.scalar(n, path, "a single value"); ok {
				if err := pv.Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(s)); err != nil {
					d.fail(n, path, "invalid value %q: %s", s, err)
				}
			}
			return
		}
	}
	if v.Type() == durationType {
		d.duration(n, v, path)
		return
	}

	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		d.value(n, v.Elem(), path)
	case reflect.Struct:
		d.structure(n, v, path)
	case reflect.Map:
		d.mapping(n, v, path)
	case reflect.Slice:
		d.sequence(n, v, path)
	case reflect.String:
		if s, ok := d.scalar(n, path, "a string"); ok {
			v.SetString(s)
		}
	case reflect.Bool:
		if _, ok := d.scalar(n, path, "true or false"); !ok {
			return
		}
		var b bool
		if n.ShortTag() != "!!bool" || n.Decode(&b) != nil {
			d.fail(n, path, "expected true or false, got %s", describe(n))
			return
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if _, ok := d.scalar(n, path, "an integer"); !ok {
			return
		}
		var i int64
		if n.ShortTag() == "!!str" || n.Decode(&i) != nil {
			d.fail(n, path, "expected an integer, got %s", describe(n))
			return
		}
		if v.OverflowInt(i) {
			d.fail(n, path, "integer %d is out of range", i)
			return
		}
		v.SetInt(i)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if _, ok := d.scalar(n, path, "a non-negative integer"); !ok {
			return
		}
		var u uint64
		if n.ShortTag() == "!!str" || n.Decode(&u) != nil {
			d.fail(n, path, "expected a non-negative integer, got %s", describe(n))
			return
		}
		if v.OverflowUint(u) {
			d.fail(n, path, "integer %d is out of range", u)
			return
		}
		v.SetUint(u)
	case reflect.Float32, reflect.Float64:
		if _, ok := d.scalar(n, path, "a number"); !ok {
			return
		}
		var f float64
		if n.ShortTag() == "!!str" || n.Decode(&f) != nil {
			d.fail(n, path, "expected a number, got %s", describe(n))
			return
		}
		if v.OverflowFloat(f) {
			d.fail(n, path, "number %v is out of range", f)
			return
		}
		v.SetFloat(f)
	default:
		// A programming error in the target type, but still a Problem rather
		// than a panic: the user sees it and nothing crashes.
		d.fail(n, path, "internal error: cannot decode into Go type %s", v.Type())
	}
}

// scalar returns the text of a scalar node, or reports that want was expected.
func (d *decoder) scalar(n *yaml.Node, path, want string) (string, bool) {
	if n.Kind != yaml.ScalarNode {
		d.fail(n, path, "expected %s, got %s", want, describe(n))
		return "", false
	}
	return n.Value, true
}

func (d *decoder) duration(n *yaml.Node, v reflect.Value, path string) {
	s, ok := d.scalar(n, path, "a duration such as 25ms or 2s")
	if !ok {
		return
	}
	if s == "0" {
		v.SetInt(0)
		return
	}
	dur, err := time.ParseDuration(s)
	if err != nil {
		d.fail(n, path, "invalid duration %q (want e.g. 25ms, 2s, 1m30s)", s)
		return
	}
	v.SetInt(int64(dur))
}

type entry struct {
	key, val *yaml.Node
	name     string
	at       *yaml.Node // alias through which a merged entry was reached
}

// entries lists the key/value pairs of a mapping node: its own keys first
// (duplicates reported and skipped), then keys brought in by merge keys
// (`<<: *base` or `<<: [*a, *b]`) that the mapping does not set itself.
func (d *decoder) entries(n *yaml.Node, path string) []entry {
	var own, merged []entry
	seen := make(map[string]*yaml.Node)
	for i := 0; i+1 < len(n.Content); i += 2 {
		if !d.step() {
			return nil
		}
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge" {
			merged = append(merged, d.merge(val, path)...)
			continue
		}
		kt, done, ok := d.deref(k, path)
		if !ok {
			continue
		}
		if kt.Kind != yaml.ScalarNode {
			d.problem(k, path, "a key must be a plain string, got %s", describe(kt))
			done()
			continue
		}
		name := kt.Value
		done()
		if first, dup := seen[name]; dup {
			d.problem(k, childPath(path, name), "duplicate key (first set at line %d)", first.Line)
			continue
		}
		seen[name] = d.place(k)
		own = append(own, entry{key: k, val: val, name: name, at: d.at})
	}
	for _, e := range merged {
		if _, dup := seen[e.name]; dup {
			continue // an explicit key or an earlier merge wins
		}
		seen[e.name] = e.key
		own = append(own, e)
	}
	return own
}

// merge expands the value of a merge key into entries.
func (d *decoder) merge(val *yaml.Node, path string) []entry {
	t, done, ok := d.deref(val, path)
	if !ok {
		return nil
	}
	defer done()
	switch t.Kind {
	case yaml.MappingNode:
		es := d.entries(t, path)
		for i := range es {
			if es[i].at == nil {
				es[i].at = d.at
			}
		}
		return es
	case yaml.SequenceNode:
		var es []entry
		for _, item := range t.Content {
			it, idone, ok := d.deref(item, path)
			if !ok {
				continue
			}
			if it.Kind != yaml.MappingNode {
				d.fail(item, path, "merge key << expects a mapping or a list of mappings, got %s", describe(it))
				idone()
				continue
			}
			sub := d.entries(it, path)
			for i := range sub {
				if sub[i].at == nil {
					sub[i].at = d.at
				}
			}
			es = append(es, sub...)
			idone()
		}
		return es
	}
	d.fail(val, path, "merge key << expects a mapping or a list of mappings, got %s", describe(t))
	return nil
}

// withAt runs f with positions taken from the alias e was reached through.
func (d *decoder) withAt(e entry, f func()) {
	prev := d.at
	if e.at != nil && d.at == nil {
		d.at = e.at
	}
	f()
	d.at = prev
}

type field struct {
	name  string
	index []int
}

// fieldsOf lists the keys a struct type accepts, in declaration order.
func fieldsOf(t reflect.Type) []field {
	var out []field
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		tag := sf.Tag.Get("yaml")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" || (!sf.IsExported() && !sf.Anonymous) || sf.Type == restType {
			continue
		}
		if strings.Contains(","+opts+",", ",inline,") && sf.Type.Kind() == reflect.Struct {
			for _, f := range fieldsOf(sf.Type) {
				out = append(out, field{name: f.name, index: append([]int{i}, f.index...)})
			}
			continue
		}
		if !sf.IsExported() {
			continue
		}
		if name == "" {
			name = strings.ToLower(sf.Name)
		}
		out = append(out, field{name: name, index: []int{i}})
	}
	return out
}

func (d *decoder) structure(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, "expected a mapping, got %s", describe(n))
		return
	}
	fields := fieldsOf(v.Type())
	var rest *Rest
	if i := restIndex(v.Type()); i >= 0 {
		rest = v.Field(i).Addr().Interface().(*Rest)
		*rest = Rest{dec: d, path: path, known: fields}
	}
	for _, e := range d.entries(n, path) {
		cp := childPath(path, e.name)
		d.withAt(e, func() {
			d.record(cp, e.key)
			f, ok := findField(fields, e.name)
			if !ok && rest != nil {
				if e.at == nil {
					e.at = d.at
				}
				rest.entries = append(rest.entries, e)
				return
			}
			if !ok {
				d.problem(e.key, cp, "%s", unknownKeyMsg(e.name, fields))
				return
			}
			d.value(e.val, v.FieldByIndex(f.index), cp)
		})
	}
}

func findField(fields []field, name string) (field, bool) {
	for _, f := range fields {
		if f.name == name {
			return f, true
		}
	}
	return field{}, false
}

func unknownKeyMsg(name string, fields []field) string {
	names := make([]string, len(fields))
	best, bestDist := "", 3
	for i, f := range fields {
		names[i] = f.name
		dist := editDistance(strings.ToLower(strings.ReplaceAll(name, "-", "_")), f.name)
		if dist < bestDist && dist <= len(f.name)/2 {
			best, bestDist = f.name, dist
		}
	}
	msg := "unknown key"
	if best != "" {
		msg += fmt.Sprintf(", did you mean %q?", best)
	}
	if len(names) == 0 {
		return msg + " (no keys allowed here)"
	}
	return msg + " (known: " + strings.Join(names, ", ") + ")"
}

// editDistance is the Levenshtein distance, for "did you mean" hints.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func (d *decoder) mapping(n *yaml.Node, v reflect.Value, path string) {
	if v.Type().Key().Kind() != reflect.String {
		d.fail(n, path, "internal error: map key type %s is not a string", v.Type().Key())
		return
	}
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, "expected a mapping, got %s", describe(n))
		return
	}
	if v.IsNil() {
		v.Set(reflect.MakeMap(v.Type()))
	}
	for _, e := range d.entries(n, path) {
		cp := childPath(path, e.name)
		d.withAt(e, func() {
			d.record(cp, e.key)
			elem := reflect.New(v.Type().Elem()).Elem()
			d.value(e.val, elem, cp)
			v.SetMapIndex(reflect.ValueOf(e.name).Convert(v.Type().Key()), elem)
		})
	}
}

func (d *decoder) sequence(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.SequenceNode {
		d.fail(n, path, "expected a list, got %s", describe(n))
		return
	}
	s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	for i, item := range n.Content {
		ip := path + "[" + strconv.Itoa(i) + "]"
		d.record(ip, item)
		d.value(item, s.Index(i), ip)
	}
	v.Set(s)
}

// childPath appends a mapping key to a path. Keys that would make the path
// ambiguous are written as ["quoted"].
func childPath(path, key string) string {
	if key == "" || strings.ContainsAny(key, ".[]\"' \t\r\n") || !isPrintable(key) {
		return path + "[" + strconv.Quote(key) + "]"
	}
	if path == "" {
		return key
	}
	return path + "." + key
}

func isPrintable(s string) bool {
	for _, r := range s {
		if !strconv.IsPrint(r) {
			return false
		}
	}
	return true
}

// parentPath undoes one childPath or index step.
func parentPath(path string) string {
	if strings.HasSuffix(path, "\"]") {
		for i := len(path) - 2; i >= 0; i-- {
			if path[i] == '[' {
				if _, err := strconv.Unquote(path[i+1 : len(path)-1]); err == nil {
					return path[:i]
				}
			}
		}
	}
	if strings.HasSuffix(path, "]") {
		if i := strings.LastIndexByte(path, '['); i >= 0 {
			return path[:i]
		}
	}
	if i := strings.LastIndexByte(path, '.'); i >= 0 {
		return path[:i]
	}
	return ""
}
