package rules

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
)

// Doc is one stored document: a rule (ID is the rule id) or a tenant (ID is
// "tenant:" + tenant id). The state layer replicates each one opaquely.
type Doc struct {
	ID   string
	Body json.RawMessage
}

// IsTenantDoc reports whether a document id names a tenant.
func IsTenantDoc(id string) bool { return strings.HasPrefix(id, TenantDocPrefix) }

// MarshalDoc encodes r as its JSON document, in canonical form (the same
// keys as the rules file), so equal rules give equal bytes.
func (r Rule) MarshalDoc() (json.RawMessage, error) {
	b, err := marshalJSON(ruleToSpec(&r))
	if err != nil {
		return nil, fmt.Errorf("rule %q: %w", r.ID, err)
	}
	return b, nil
}

// MarshalDoc encodes t as its JSON document.
func (t Tenant) MarshalDoc() (json.RawMessage, error) {
	b, err := marshalJSON(tenantToSpec(&t))
	if err != nil {
		return nil, fmt.Errorf("tenant %q: %w", t.ID, err)
	}
	return b, nil
}

// marshalJSON encodes without HTML escaping, so "<>" stays readable in
// documents and saved snapshots.
func marshalJSON(v any) (json.RawMessage, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// decodeStrict decodes one JSON object, rejecting unknown keys: a document
// from a newer version may carry a condition this version does not know,
// and dropping it would make the rule match more mail than its author meant.
func decodeStrict(doc json.RawMessage, out any) error {
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.DisallowUnknownFields()
	if err := dec.Decode(out); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("trailing data after the document")
	}
	return nil
}

// RuleFromDoc decodes and validates a rule document stored under id. A
// document without "id" takes the given id; one with a different id is an
// error. The rule is validated on its own; Compile (or SetFromDocs) checks
// it against the rest of the set.
func RuleFromDoc(id string, doc json.RawMessage) (Rule, error) {
	var s ruleSpec
	if err := decodeStrict(doc, &s); err != nil {
		return Rule{}, fmt.Errorf("rule doc %q: %w", id, err)
	}
	if s.ID == "" {
		s.ID = id
	} else if s.ID != id {
		return Rule{}, fmt.Errorf("rule doc %q: document says id %q", id, s.ID)
	}
	r, ps := s.toRule()
	if err := ps.err(""); err != nil {
		return Rule{}, fmt.Errorf("rule doc %q: %w", id, err)
	}
	if r.ID != id {
		// Validation normalises ids (trims space); a stored id that is not
		// already canonical would not round-trip, so it is refused.
		return Rule{}, fmt.Errorf("rule doc %q: id is not canonical (would be %q)", id, r.ID)
	}
	return r, nil
}

// TenantFromDoc decodes and validates a tenant document stored under id
// ("tenant:ID").
func TenantFromDoc(id string, doc json.RawMessage) (Tenant, error) {
	tid, ok := strings.CutPrefix(id, TenantDocPrefix)
	if !ok {
		return Tenant{}, fmt.Errorf("tenant doc %q: id must start with %q", id, TenantDocPrefix)
	}
	var s tenantSpec
	if err := decodeStrict(doc, &s); err != nil {
		return Tenant{}, fmt.Errorf("tenant doc %q: %w", id, err)
	}
	if s.ID == "" {
		s.ID = tid
	} else if s.ID != tid {
		return Tenant{}, fmt.Errorf("tenant doc %q: document says id %q", id, s.ID)
	}
	t, ps := s.toTenant()
	if err := ps.err(""); err != nil {
		return Tenant{}, fmt.Errorf("tenant doc %q: %w", id, err)
	}
	if t.ID != tid {
		return Tenant{}, fmt.Errorf("tenant doc %q: id is not canonical (would be %q)", id, t.ID)
	}
	return t, nil
}

// Docs encodes every tenant and rule of s as documents, ordered by id.
func (s *Set) Docs() ([]Doc, error) {
	docs := make([]Doc, 0, len(s.Tenants)+len(s.Rules))
	for i := range s.Tenants {
		b, err := s.Tenants[i].MarshalDoc()
		if err != nil {
			return nil, err
		}
		docs = append(docs, Doc{ID: s.Tenants[i].DocID(), Body: b})
	}
	for i := range s.Rules {
		b, err := s.Rules[i].MarshalDoc()
		if err != nil {
			return nil, err
		}
		docs = append(docs, Doc{ID: s.Rules[i].DocID(), Body: b})
	}
	for i := range s.Signing {
		b, err := s.Signing[i].MarshalDoc()
		if err != nil {
			return nil, err
		}
		docs = append(docs, Doc{ID: s.Signing[i].DocID(), Body: b})
	}
	sort.Slice(docs, func(i, j int) bool { return docs[i].ID < docs[j].ID })
	return docs, nil
}

// SetFromDocs builds a valid Set from stored documents (rules, "tenant:ID"
// and "signing:DOMAIN"). A document that is invalid — unreadable, written
// by another version with keys this one does not know, conflicting with
// another tenant, scoped to a tenant that does not exist, a duplicate id — is
// skipped and reported in the returned
// errors; the rest is used. Tenants are considered in id order, so which of
// two conflicting tenants wins is the same on every node.
func SetFromDocs(docs []Doc) (*Set, []error) {
	var skipped []error
	sorted := make([]Doc, len(docs))
	copy(sorted, docs)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].ID < sorted[j].ID })

	set := &Set{}
	c := newSetChecker()
	seen := make(map[string]bool, len(sorted))
	rules := make([]Rule, 0, len(sorted)) // Rule is large: growing by append would copy it over and over
	var signing []Signing
	for _, d := range sorted {
		if seen[d.ID] {
			skipped = append(skipped, fmt.Errorf("doc %q: duplicate id, skipped", d.ID))
			continue
		}
		seen[d.ID] = true
		if IsSigningDoc(d.ID) {
			g, err := SigningFromDoc(d.ID, d.Body)
			if err != nil {
				skipped = append(skipped, fmt.Errorf("%w; skipped", err))
				continue
			}
			signing = append(signing, g)
			continue
		}
		if !IsTenantDoc(d.ID) {
			r, err := RuleFromDoc(d.ID, d.Body)
			if err != nil {
				skipped = append(skipped, fmt.Errorf("%w; skipped", err))
				continue
			}
			rules = append(rules, r)
			continue
		}
		t, err := TenantFromDoc(d.ID, d.Body)
		if err != nil {
			skipped = append(skipped, fmt.Errorf("%w; skipped", err))
			continue
		}
		if err := c.tenantConflicts(&t).err(""); err != nil {
			skipped = append(skipped, fmt.Errorf("tenant doc %q: %w; skipped", d.ID, err))
			continue
		}
		c.registerTenant(len(set.Tenants), &t)
		set.Tenants = append(set.Tenants, t)
	}
	set.Rules = make([]Rule, 0, len(rules))
	for i := range rules {
		if err := c.addRule(len(set.Rules), &rules[i]).err(""); err != nil {
			skipped = append(skipped, fmt.Errorf("rule doc %q: %w; skipped", rules[i].ID, err))
			continue
		}
		set.Rules = append(set.Rules, rules[i])
	}
	var sc signingChecker
	for i := range signing {
		if err := sc.add(len(set.Signing), &signing[i], c).err(""); err != nil {
			skipped = append(skipped, fmt.Errorf("signing doc %q: %w; skipped", signing[i].DocID(), err))
			continue
		}
		set.Signing = append(set.Signing, signing[i])
	}
	return set, skipped
}
