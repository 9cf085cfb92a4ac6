package ctl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/geomilter/geomilter/shared/rules"
	"github.com/geomilter/geomilter/shared/state"
	"github.com/geomilter/geomilter/shared/yamlconf"
)

// change is one line of an apply's diff.
type change struct {
	op  byte // '+', '~', '-'
	id  string
	doc json.RawMessage // new document ('+', '~') or the deleted one ('-')
	cur state.RuleDoc   // version in force ('~', '-')
}

func (t *tool) rulesApply(ctx context.Context, args []string) int {
	fs := t.flagSet("rules apply")
	file := fs.String("f", "", "rules `FILE` to apply (also --file)")
	fs.StringVar(file, "file", "", "rules `FILE` to apply (also -f)")
	dry := fs.Bool("dry-run", false, "show the changes, write nothing")
	prune := fs.Bool("prune", false, "delete rules and tenants that are in force but not in the file")
	rest, err := parseArgs(fs, args)
	if err != nil {
		return t.parseFailed("rules apply", fs, err)
	}
	if *file == "" || len(rest) > 0 {
		fmt.Fprintln(t.errw, "usage: geomilter ctl rules apply -f FILE [--dry-run] [--prune]")
		return ExitUsage
	}
	if !t.loadConfig() {
		return ExitProblems
	}
	// Everything is validated before anything is read or written.
	set, err := rules.ParseFile(*file)
	if err != nil {
		printProblems(t, err)
		return ExitProblems
	}
	docs, err := set.Docs()
	if err != nil {
		t.errorf("%s: %v", *file, err)
		return ExitProblems
	}
	if t.cfg.Standalone() {
		fmt.Fprintf(t.out, "%s: ok, %d tenants, %d rules\n", *file, len(set.Tenants), len(set.Rules))
		fmt.Fprintf(t.out, "standalone mode (no redis section): install it as rules_file (%s) and send SIGHUP to the milters "+
			"(systemctl reload 'geomilter@*')\n", t.cfg.RulesFile)
		return ExitOK
	}

	st, merged, ok := t.openMerged(ctx)
	if !ok {
		return ExitProblems
	}
	defer st.Close()

	changes := diff(merged, docs, *prune)
	if msgs := newConflicts(merged, changes); len(msgs) > 0 {
		t.errorf("refused: with these changes the merged rules would be inconsistent (nothing written):")
		for _, m := range msgs {
			fmt.Fprintln(t.errw, "  "+m)
		}
		return ExitProblems
	}
	if len(changes) == 0 {
		fmt.Fprintln(t.out, "no changes")
		return ExitOK
	}
	printChanges(t, changes)
	if *dry {
		fmt.Fprintln(t.out, "dry run: nothing written")
		return ExitOK
	}

	var puts []state.RuleDoc
	var dels []string
	for _, c := range changes {
		if c.op == '-' {
			dels = append(dels, c.id)
		} else {
			puts = append(puts, state.RuleDoc{ID: c.id, Doc: c.doc})
		}
	}
	var written, deleted []string
	if len(puts) > 0 {
		if written, err = st.PutRules(ctx, puts); err != nil {
			t.errorf("write: %v", err)
			return ExitProblems
		}
	}
	if len(dels) > 0 {
		if deleted, err = st.DeleteRules(ctx, dels); err != nil {
			t.errorf("delete: %v (the other changes were written)", err)
			return ExitProblems
		}
	}
	fmt.Fprintf(t.out, "applied at site %s: %d written, %d deleted\n", st.Site(), len(written), len(deleted))
	return ExitOK
}

// diff compares the file's documents with the merged view. With prune,
// documents in force but absent from the file are deleted.
func diff(merged map[string]state.RuleDoc, docs []rules.Doc, prune bool) []change {
	var out []change
	inFile := make(map[string]bool, len(docs))
	for _, d := range docs {
		inFile[d.ID] = true
		cur, ok := merged[d.ID]
		switch {
		case !ok:
			out = append(out, change{op: '+', id: d.ID, doc: d.Body})
		case !jsonEqual(cur.Doc, d.Body):
			out = append(out, change{op: '~', id: d.ID, doc: d.Body, cur: cur})
		}
	}
	if prune {
		for id, cur := range merged {
			if !inFile[id] {
				out = append(out, change{op: '-', id: id, doc: cur.Doc, cur: cur})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out
}

// jsonEqual compares documents by value: the same document may be stored
// with other escapes ("\u003c" for "<": encoding/json escapes HTML
// characters in a RawMessage it marshals) or spacing.
func jsonEqual(a, b []byte) bool {
	var va, vb any
	if json.Unmarshal(a, &va) != nil || json.Unmarshal(b, &vb) != nil {
		return bytes.Equal(a, b)
	}
	return reflect.DeepEqual(va, vb)
}

// newConflicts returns the problems the merged rules would have after the
// changes that they do not have now: a tenant claiming another tenant's
// domain, a rule scoped to a deleted tenant. The milters would skip those
// documents; refusing here tells the operator instead.
func newConflicts(merged map[string]state.RuleDoc, changes []change) []string {
	before := make(map[string]json.RawMessage, len(merged))
	for id, d := range merged {
		before[id] = d.Doc
	}
	after := make(map[string]json.RawMessage, len(merged)+len(changes))
	for id, d := range before {
		after[id] = d
	}
	for _, c := range changes {
		if c.op == '-' {
			delete(after, c.id)
		} else {
			after[c.id] = c.doc
		}
	}
	had := make(map[string]bool)
	for _, e := range skippedDocs(before) {
		had[e] = true
	}
	var out []string
	for _, e := range skippedDocs(after) {
		if !had[e] {
			out = append(out, e)
		}
	}
	return out
}

func skippedDocs(m map[string]json.RawMessage) []string {
	docs := make([]rules.Doc, 0, len(m))
	for id, b := range m {
		docs = append(docs, rules.Doc{ID: id, Body: b})
	}
	_, errs := rules.SetFromDocs(docs)
	out := make([]string, len(errs))
	for i, e := range errs {
		out[i] = e.Error()
	}
	return out
}

// summary is the part of a document shown in listings.
type summary struct {
	ID      string   `json:"id"`
	Milter  string   `json:"milter"`
	Scope   string   `json:"scope"`
	Action  string   `json:"action"`
	Domains []string `json:"domains"`
	// signing entries
	Selector string `json:"selector"`
	KeyFile  string `json:"key_file"`
	Tenant   string `json:"tenant"`
}

func summarize(id string, doc json.RawMessage) (milter, scope, action string) {
	var s summary
	if err := json.Unmarshal(doc, &s); err != nil {
		return "?", "?", "(unreadable)"
	}
	if rules.IsTenantDoc(id) {
		return "tenant", "-", strings.Join(s.Domains, ",")
	}
	if rules.IsSigningDoc(id) {
		// The key's path, never the key: documents hold nothing else.
		scope = "-"
		if s.Tenant != "" {
			scope = "tenant:" + s.Tenant
		}
		return "signing", scope, "s=" + s.Selector + " " + s.KeyFile
	}
	return s.Milter, s.Scope, s.Action
}

func printChanges(t *tool, changes []change) {
	tw := tabwriter.NewWriter(t.out, 0, 4, 2, ' ', 0)
	for _, c := range changes {
		milter, scope, action := summarize(c.id, c.doc)
		line := fmt.Sprintf("%c %s\t%s\t%s\t%s", c.op, c.id, milter, scope, action)
		if c.op != '+' {
			line += fmt.Sprintf("\t(in force: written at %s %s)", c.cur.Site, hlcTime(c.cur.HLC))
		}
		fmt.Fprintln(tw, line)
	}
	tw.Flush()
}

// hlcTime shows the physical part of an HLC stamp.
func hlcTime(h string) string {
	p, err := state.ParseHLC(h)
	if err != nil {
		return "?"
	}
	return p.Time().UTC().Format("2006-01-02T15:04:05.000Z")
}

func printProblems(t *tool, err error) {
	var ps yamlconf.Problems
	if errors.As(err, &ps) {
		for _, p := range ps {
			fmt.Fprintln(t.errw, p.Error())
		}
		fmt.Fprintf(t.errw, "%d problems; nothing applied\n", len(ps))
		return
	}
	t.errorf("%v", err)
}

// loadView returns the merged rules (Redis) or the rules file's documents
// (standalone, attributed to site "file").
func (t *tool) loadView(ctx context.Context) (map[string]state.RuleDoc, bool) {
	if t.cfg.Standalone() {
		set, err := rules.ParseFile(t.cfg.RulesFile)
		if err != nil {
			printProblems(t, err)
			return nil, false
		}
		docs, err := set.Docs()
		if err != nil {
			t.errorf("%v", err)
			return nil, false
		}
		m := make(map[string]state.RuleDoc, len(docs))
		for _, d := range docs {
			m[d.ID] = state.RuleDoc{ID: d.ID, Doc: d.Body, Site: "file"}
		}
		return m, true
	}
	st, merged, ok := t.openMerged(ctx)
	if !ok {
		return nil, false
	}
	st.Close()
	return merged, true
}

// openMerged opens the site's store and reads the merged rules of every site
// it can reach, refusing (ok false, the error said) when the sources are not
// good enough to act on. The caller closes the store.
func (t *tool) openMerged(ctx context.Context) (st *state.Store, merged map[string]state.RuleDoc, ok bool) {
	st, err := t.openStore()
	if err != nil {
		t.errorf("%v", err)
		return nil, nil, false
	}
	merged, srcs, err := st.LoadRules(ctx)
	if err != nil && !errors.Is(err, state.ErrUnavailable) {
		t.errorf("load rules: %v", err)
		st.Close()
		return nil, nil, false
	}
	if !t.checkSources(srcs, st.Site()) {
		st.Close()
		return nil, nil, false
	}
	return st, merged, true
}

// viewCommand is the common start of the read-only rules commands, which take
// no arguments: parse flags, load the config, read the merged view. When ok is
// false the command stops with the returned exit code.
func (t *tool) viewCommand(ctx context.Context, name, usage string, args []string) (view map[string]state.RuleDoc, code int, ok bool) {
	fs := t.flagSet(name)
	rest, err := parseArgs(fs, args)
	if err != nil {
		return nil, t.parseFailed(name, fs, err), false
	}
	if len(rest) > 0 {
		fmt.Fprintln(t.errw, "usage: "+usage)
		return nil, ExitUsage, false
	}
	if !t.loadConfig() {
		return nil, ExitProblems, false
	}
	if view, ok = t.loadView(ctx); !ok {
		return nil, ExitProblems, false
	}
	return view, ExitOK, true
}

func sortedIDs(m map[string]state.RuleDoc) []string {
	ids := make([]string, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

func (t *tool) rulesList(ctx context.Context, args []string) int {
	view, code, ok := t.viewCommand(ctx, "rules list", "geomilter ctl rules list", args)
	if !ok {
		return code
	}
	tw := tabwriter.NewWriter(t.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tMILTER\tSCOPE\tACTION\tSITE\tWRITTEN")
	for _, id := range sortedIDs(view) {
		d := view[id]
		milter, scope, action := summarize(id, d.Doc)
		written := "-"
		if d.HLC != "" {
			written = hlcTime(d.HLC)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", id, milter, scope, action, d.Site, written)
	}
	tw.Flush()
	return ExitOK
}

func (t *tool) rulesDelete(ctx context.Context, args []string) int {
	fs := t.flagSet("rules delete")
	dry := fs.Bool("dry-run", false, "show what would be deleted, write nothing")
	ids, err := parseArgs(fs, args)
	if err != nil {
		return t.parseFailed("rules delete", fs, err)
	}
	if len(ids) == 0 {
		fmt.Fprintln(t.errw, "usage: geomilter ctl rules delete ID... (tenants as tenant:ID)")
		return ExitUsage
	}
	if !t.loadConfig() {
		return ExitProblems
	}
	if t.cfg.Standalone() {
		t.errorf("standalone mode: the rules are in rules_file (%s); edit it and send SIGHUP to the milters", t.cfg.RulesFile)
		return ExitProblems
	}
	st, merged, ok := t.openMerged(ctx)
	if !ok {
		return ExitProblems
	}
	defer st.Close()
	var changes []change
	var unknown []string
	seen := map[string]bool{}
	for _, id := range ids {
		if seen[id] {
			continue
		}
		seen[id] = true
		cur, ok := merged[id]
		if !ok {
			unknown = append(unknown, id)
			continue
		}
		changes = append(changes, change{op: '-', id: id, doc: cur.Doc, cur: cur})
	}
	if msgs := newConflicts(merged, changes); len(msgs) > 0 {
		t.errorf("refused: after this delete the merged rules would be inconsistent (nothing deleted):")
		for _, m := range msgs {
			fmt.Fprintln(t.errw, "  "+m)
		}
		return ExitProblems
	}
	code := ExitOK
	for _, id := range unknown {
		t.errorf("no rule or tenant %q in force", id)
		code = ExitProblems
	}
	if len(changes) == 0 {
		return code
	}
	printChanges(t, changes)
	if *dry {
		fmt.Fprintln(t.out, "dry run: nothing written")
		return code
	}
	del := make([]string, len(changes))
	for i, c := range changes {
		del[i] = c.id
	}
	deleted, err := st.DeleteRules(ctx, del)
	if err != nil {
		t.errorf("delete: %v", err)
		return ExitProblems
	}
	fmt.Fprintf(t.out, "deleted at site %s: %d\n", st.Site(), len(deleted))
	return code
}

func (t *tool) rulesExport(ctx context.Context, args []string) int {
	view, code, ok := t.viewCommand(ctx, "rules export", "geomilter ctl rules export > rules.yaml", args)
	if !ok {
		return code
	}
	docs := make([]rules.Doc, 0, len(view))
	for _, id := range sortedIDs(view) {
		docs = append(docs, rules.Doc{ID: id, Body: view[id].Doc})
	}
	// Only documents this version can read are exported, so the file applies
	// again as it is.
	set, skipped := rules.SetFromDocs(docs)
	for _, e := range skipped {
		t.warnf("not exported: %v", e)
	}
	header := fmt.Sprintf("geomilter rules exported from site %s at %s: %d tenants, %d rules.\nApply with: geomilter ctl rules apply -f FILE",
		t.cfg.Site, t.now().UTC().Format(time.RFC3339), len(set.Tenants), len(set.Rules))
	out, err := exportYAML(set, header)
	if err != nil {
		t.errorf("export: %v", err)
		return ExitProblems
	}
	if _, err := t.out.Write(out); err != nil {
		t.errorf("export: %v", err)
		return ExitProblems
	}
	if len(skipped) > 0 {
		return ExitProblems
	}
	return ExitOK
}
