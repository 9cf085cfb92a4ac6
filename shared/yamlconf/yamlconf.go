// Package yamlconf decodes YAML configuration files strictly and tells the
// user exactly where each problem is.
//
// yaml.v3's own strict mode stops at the first error and does not say which
// key path is wrong; an operator fixing a config on a live host wants every
// problem at once, each with file, line and key path. So Decode parses the
// file into a yaml.Node tree and walks it against the target struct with
// reflection, collecting Problems instead of stopping. The returned Doc keeps
// the position of every key, so later semantic checks (Doc.Problemf) can point
// at the line too.
//
// Supported targets: structs (keys from `yaml:"name"` tags, `,inline`, and a
// `,rest` field of type Rest that keeps undeclared keys for Doc.DecodeRest),
// pointers, slices, maps with string keys, strings, bools, integers, floats,
// time.Duration ("25ms"), Size ("64MiB"), and types implementing Unmarshaler
// or encoding.TextUnmarshaler for scalar values. Aliases are expanded (with a
// bound on total work, so an alias bomb cannot blow up memory) and merge keys
// (`<<: *base`) are honoured; only one YAML document per file is accepted.
package yamlconf

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// Unmarshaler is implemented by types that parse themselves from a scalar
// value (the raw text of the YAML scalar). The returned error's text becomes
// the Problem message, so it should say what was expected.
type Unmarshaler interface {
	UnmarshalYAMLConf(value string) error
}

type position struct{ line, col int }

// Doc remembers where each key path of a decoded file is, and collects the
// problems found in it. It is not safe for concurrent use.
type Doc struct {
	file     string
	hasRoot  bool
	pos      map[string]position
	failed   []string // paths whose value could not be decoded
	problems Problems
	dropped  int // problems beyond maxProblems
}

// maxProblems bounds the list shown to the user: past a few hundred, more
// lines do not help, and a hostile file could otherwise make millions.
const maxProblems = 200

func newDoc(file string) *Doc {
	return &Doc{file: file, pos: make(map[string]position)}
}

// File returns the file name given to Decode.
func (d *Doc) File() string { return d.file }

// Has reports whether the key path is present in the file. Has("") reports
// whether the document has any (non-null) content at all.
func (d *Doc) Has(path string) bool {
	if path == "" {
		return d.hasRoot
	}
	_, ok := d.pos[path]
	return ok
}

// Position returns the line and column of path, or of its nearest parent
// present in the file; 0, 0 when none is.
func (d *Doc) Position(path string) (line, column int) {
	for {
		if p, ok := d.pos[path]; ok {
			return p.line, p.col
		}
		if path == "" {
			return 0, 0
		}
		path = parentPath(path)
	}
}

// Problemf adds a semantic problem at path's position (or its nearest present
// parent's, for a missing key). A problem under a path whose value already
// failed to decode is dropped: the decode problem already explains it, and a
// second "required" or "invalid" message for the same key would be noise.
func (d *Doc) Problemf(path, format string, args ...any) {
	for _, f := range d.failed {
		if isSelfOrAncestor(f, path) {
			return
		}
	}
	line, col := d.Position(path)
	d.append(Problem{File: d.file, Line: line, Column: col, Path: path, Msg: fmt.Sprintf(format, args...)})
}

// Problems returns all problems found so far (decode and semantic), ordered
// by position in the file; nil if there are none.
func (d *Doc) Problems() Problems {
	ps := d.problems.sorted()
	if d.dropped > 0 {
		ps = append(ps, Problem{File: d.file, Msg: fmt.Sprintf("%d more problems not shown", d.dropped)})
	}
	return ps
}

func (d *Doc) append(p Problem) {
	if len(d.problems) >= maxProblems {
		d.dropped++
		return
	}
	d.problems = append(d.problems, p)
}

func (d *Doc) add(n *yaml.Node, path, msg string) {
	p := Problem{File: d.file, Path: path, Msg: msg}
	if n != nil {
		p.Line, p.Column = n.Line, n.Column
	}
	d.append(p)
}

// fail records a problem with the value at path and remembers that the path
// could not be decoded (see Problemf).
func (d *Doc) fail(n *yaml.Node, path, msg string) {
	d.add(n, path, msg)
	if len(d.failed) < maxProblems {
		d.failed = append(d.failed, path)
	}
}

func isSelfOrAncestor(anc, path string) bool {
	if anc == "" || anc == path {
		return true
	}
	return strings.HasPrefix(path, anc) && (path[len(anc)] == '.' || path[len(anc)] == '[')
}

// Decode decodes the YAML in data into out, which must be a non-nil pointer,
// strictly: unknown keys, duplicate keys and values of the wrong type are
// Problems, and all of them are collected. Fields of out that the file does
// not mention keep their values, so callers may preset defaults. file is
// used only in messages.
func Decode(file string, data []byte, out any) (*Doc, Problems) {
	d := newDoc(file)
	rv := reflectValueOf(out)
	if !rv.IsValid() {
		d.add(nil, "", fmt.Sprintf("internal error: Decode needs a non-nil pointer, got %T", out))
		return d, d.Problems()
	}
	root, ok := parse(d, data)
	if !ok || root == nil {
		return d, d.Problems()
	}
	if isNull(root) {
		return d, nil // "~" or a bare "---": as empty as an empty file
	}
	d.pos[""] = position{root.Line, root.Column}
	d.hasRoot = true
	dec := &decoder{doc: d, limit: stepLimit(len(data)), active: make(map[*yaml.Node]bool), root: root}
	dec.value(root, rv, "")
	dec.reportExhausted()
	return d, d.Problems()
}

var lineErr = regexp.MustCompile(`^line (\d+): (.*)$`)

// parse reads exactly one YAML document. Syntax errors become Problems at
// the line of the error.
func parse(d *Doc, data []byte) (*yaml.Node, bool) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, true // empty file: a null document
		}
		syntaxProblem(d, data, err)
		return nil, false
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case errors.Is(err, io.EOF):
	case err != nil:
		syntaxProblem(d, data, err)
		return nil, false
	default:
		d.fail(&extra, "", "only one YAML document is allowed per file (found a second one after \"---\")")
		return nil, false
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return nil, true
	}
	return doc.Content[0], true
}

// parserErrors are the messages of yaml.v3's parser stage. For them yaml.v3
// reports a 0-based line (only its scanner errors are made 1-based), and no
// line at all for line 1; see gopkg.in/yaml.v3 decode.go (*parser).fail.
var parserErrors = map[string]bool{
	"did not find expected ',' or ']'":       true,
	"did not find expected ',' or '}'":       true,
	"did not find expected <document start>": true,
	"did not find expected <stream-start>":   true,
	"did not find expected '-' indicator":    true,
	"did not find expected key":              true,
	"did not find expected node content":     true,
	"found duplicate %YAML directive":        true,
	"found duplicate %TAG directive":         true,
	"found incompatible YAML document":       true,
	"found undefined tag handle":             true,
}

var unknownAnchor = regexp.MustCompile(`^unknown anchor '(.*)' referenced$`)

func syntaxProblem(d *Doc, data []byte, err error) {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if m := lineErr.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	}
	switch {
	case parserErrors[msg]:
		line++
	case line == 0:
		// Reader errors (bad UTF-8, control characters) and unknown
		// anchors carry no position; find it in the data ourselves.
		if m := unknownAnchor.FindStringSubmatch(msg); m != nil {
			line = lineOf(data, bytes.Index(data, []byte("*"+m[1])))
		} else if off := firstNonPrintable(data); off >= 0 {
			line = lineOf(data, off)
		} else if strings.HasPrefix(msg, "found ") || strings.HasPrefix(msg, "did not find ") ||
			strings.HasPrefix(msg, "could not find ") || strings.HasSuffix(msg, "not allowed in this context") {
			line = 1 // a scanner error on the first line
		}
	}
	if strings.Contains(msg, "tab character") || hasTabIndent(data, line) {
		msg += " (YAML indentation must use spaces, not tabs)"
	}
	d.append(Problem{File: d.file, Line: line, Msg: "invalid YAML: " + msg})
	d.failed = append(d.failed, "")
}

// lineOf returns the 1-based line of byte offset off, or 0 if off < 0.
func lineOf(data []byte, off int) int {
	if off < 0 || off > len(data) {
		return 0
	}
	return bytes.Count(data[:off], []byte("\n")) + 1
}

// firstNonPrintable returns the offset of the first byte that is not valid
// UTF-8 or is a character YAML does not allow in a stream, or -1.
func firstNonPrintable(data []byte) int {
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		ok := r == '\t' || r == '\n' || r == '\r' || (r >= 0x20 && r <= 0x7e) || r == 0x85 ||
			(r >= 0xa0 && r <= 0xd7ff) || (r >= 0xe000 && r <= 0xfffd && !(r == 0xfeff && i > 0)) ||
			(r >= 0x10000 && r <= 0x10ffff)
		if (r == utf8.RuneError && size <= 1) || !ok {
			return i
		}
		i += size
	}
	return -1
}

// hasTabIndent reports whether the given 1-based line, or the one before it
// (yaml.v3 often reports the line after the culprit), starts with a tab in its
// indentation.
func hasTabIndent(data []byte, line int) bool {
	if line <= 0 {
		return false
	}
	lines := bytes.Split(data, []byte("\n"))
	for _, l := range []int{line - 1, line - 2} {
		if l < 0 || l >= len(lines) {
			continue
		}
		indent := lines[l][:len(lines[l])-len(bytes.TrimLeft(lines[l], " \t"))]
		if bytes.IndexByte(indent, '\t') >= 0 {
			return true
		}
	}
	return false
}
