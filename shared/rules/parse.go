package rules

import (
	"fmt"
	"os"
	"strconv"

	"github.com/geomilter/geomilter/shared/yamlconf"
)

// ParseFile reads and parses a rules file. On failure the error is a
// yamlconf.Problems naming file, line and key path of every problem.
func ParseFile(path string) (*Set, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("rules file: %w", err)
	}
	return Parse(path, data)
}

// Parse parses a rules file's content; file is used in messages only. It
// reports all problems at once (as yamlconf.Problems): unknown keys, values
// of the wrong type, unknown milters and actions, bad networks, replies whose
// code does not fit the action, duplicate ids, scopes naming unknown tenants.
// A Set is returned only when there is no problem at all.
func Parse(file string, data []byte) (*Set, error) {
	var spec fileSpec
	doc, decodeProblems := yamlconf.Decode(file, data, &spec)
	for _, p := range decodeProblems {
		if p.Path == "" {
			// The document as a whole failed (syntax, too complex): what
			// was decoded is partial, and checking it would only add
			// misleading "required" noise.
			return nil, decodeProblems
		}
	}
	set := &Set{Tenants: make([]Tenant, 0, len(spec.Tenants)), Rules: make([]Rule, 0, len(spec.Rules))}
	report := func(prefix string, ps problems) {
		for _, p := range ps {
			doc.Problemf(joinPath(prefix, p.path), "%s", p.msg)
		}
	}
	c := newSetChecker()
	for i := range spec.Tenants {
		prefix := "tenants[" + strconv.Itoa(i) + "]"
		t, ps := spec.Tenants[i].toTenant()
		report(prefix, ps)
		report(prefix, c.tenantConflicts(&t))
		c.registerTenant(i, &t)
		set.Tenants = append(set.Tenants, t)
	}
	for i := range spec.Rules {
		prefix := "rules[" + strconv.Itoa(i) + "]"
		r, ps := spec.Rules[i].toRule()
		report(prefix, ps)
		if r.ID != "" {
			report(prefix, c.addRule(i, &r))
		}
		set.Rules = append(set.Rules, r)
	}
	parseSigning(spec.Signing, set, c, report)
	if err := doc.Problems().Err(); err != nil {
		return nil, err
	}
	return set, nil
}
