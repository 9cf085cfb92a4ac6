package yamlconf

import (
	"fmt"
	"sort"
	"strings"
)

// Problem is one thing wrong with a configuration file, placed where the user
// has to look: file, line, column and the key path inside the document.
type Problem struct {
	File   string
	Line   int // 1-based; 0 when the problem has no place in the file (e.g. an empty file)
	Column int // 1-based; 0 when unknown
	Path   string
	Msg    string
}

// Error formats the problem as "FILE:LINE:COL: PATH: MSG", leaving out the
// parts that are unknown, so editors and terminals can jump to the place.
func (p Problem) Error() string {
	var b strings.Builder
	b.WriteString(p.File)
	if p.Line > 0 {
		fmt.Fprintf(&b, ":%d", p.Line)
		if p.Column > 0 {
			fmt.Fprintf(&b, ":%d", p.Column)
		}
	}
	if b.Len() > 0 {
		b.WriteString(": ")
	}
	if p.Path != "" {
		b.WriteString(p.Path)
		b.WriteString(": ")
	}
	b.WriteString(p.Msg)
	return b.String()
}

// Problems is every problem found in one file. It implements error with one
// problem per line.
type Problems []Problem

// Error joins the problems, one per line.
func (ps Problems) Error() string {
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = p.Error()
	}
	return strings.Join(lines, "\n")
}

// Err returns ps as an error, or nil when there is no problem. Returning a
// nil Problems through an error interface would give a non-nil error, so
// callers return ps.Err() instead.
func (ps Problems) Err() error {
	if len(ps) == 0 {
		return nil
	}
	return ps
}

// sorted returns a copy ordered by position in the file; problems without a
// position come first, ties keep the order in which they were found.
func (ps Problems) sorted() Problems {
	if len(ps) == 0 {
		return nil
	}
	out := append(Problems(nil), ps...)
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Line != out[j].Line {
			return out[i].Line < out[j].Line
		}
		return out[i].Column < out[j].Column
	})
	return out
}
