package rules

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Signing is one DKIM signing entry: mail from Domain (and, with
// Subdomains, from any name below it) is signed with d=Domain,
// s=Selector and the private key in KeyFile. The entry names the key file
// only: the key itself never enters a rules document, Redis, a saved
// snapshot or a log line; the policy milter reads the file on the host
// that signs (milters/policy keyring).
//
// One entry per domain: a domain rotating keys changes its selector and
// key file in place (publish the new selector's record first).
type Signing struct {
	Domain   string // lower-case, the d= tag (RFC 6376 §3.5)
	Selector string // lower-case, the s= tag (RFC 6376 §3.1)
	KeyFile  string // absolute path of a PEM private key
	// Algorithm is "rsa-sha256" or "ed25519-sha256" when the entry states
	// it (the key must then be of that kind); empty: derived from the key.
	Algorithm string
	// Subdomains extends the entry to mail from any name strictly below
	// Domain, still signed with d=Domain: DMARC's relaxed alignment
	// (RFC 7489 §3.1.1) accepts a d= that is an organisational parent of
	// the From domain.
	Subdomains bool
	// Tenant restricts signing to outbound mail relayed by that tenant, so
	// one tenant's relay cannot have mail signed as another's domain. Empty
	// in the file: the tenant owning Domain (Snapshot.SigningTenant gives
	// the effective one), or any outbound mail when no tenant owns it.
	Tenant  string
	Comment string
}

// SigningDocPrefix starts the document id of every signing entry; the rest
// is the domain ("signing:acme.example").
const SigningDocPrefix = "signing:"

// DocID is the id under which the state layer stores the entry's document.
func (s Signing) DocID() string { return SigningDocPrefix + s.Domain }

// IsSigningDoc reports whether a document id names a signing entry.
func IsSigningDoc(id string) bool { return strings.HasPrefix(id, SigningDocPrefix) }

// signingSpec is the written form of a Signing, in the file and in its
// document.
type signingSpec struct {
	Domain     string `yaml:"domain" json:"domain"`
	Selector   string `yaml:"selector" json:"selector"`
	KeyFile    string `yaml:"key_file" json:"key_file"`
	Algorithm  string `yaml:"algorithm" json:"algorithm,omitempty"`
	Subdomains bool   `yaml:"subdomains" json:"subdomains,omitempty"`
	Tenant     string `yaml:"tenant" json:"tenant,omitempty"`
	Comment    string `yaml:"comment" json:"comment,omitempty"`
}

// Algorithm names as the a= tag spells them (RFC 6376 §3.3, RFC 8463 §3).
const (
	AlgRSASHA256     = "rsa-sha256"
	AlgEd25519SHA256 = "ed25519-sha256"
)

// maxKeyPath bounds key_file: a path, not a document.
const maxKeyPath = 1024

func (s *signingSpec) toSigning() (Signing, problems) {
	g := Signing{
		Domain:     NormDomain(s.Domain),
		Selector:   strings.ToLower(strings.TrimSpace(s.Selector)),
		KeyFile:    strings.TrimSpace(s.KeyFile),
		Algorithm:  normAlgorithm(s.Algorithm),
		Subdomains: s.Subdomains,
		Tenant:     strings.TrimSpace(s.Tenant),
		Comment:    s.Comment,
	}
	return g, g.check()
}

func signingToSpec(g *Signing) signingSpec {
	return signingSpec{Domain: g.Domain, Selector: g.Selector, KeyFile: g.KeyFile, Algorithm: g.Algorithm,
		Subdomains: g.Subdomains, Tenant: g.Tenant, Comment: g.Comment}
}

// normAlgorithm accepts the short names too ("rsa", "ed25519"), as
// `ctl dkim keygen --algorithm` does.
func normAlgorithm(a string) string {
	switch a = strings.ToLower(strings.TrimSpace(a)); a {
	case "rsa":
		return AlgRSASHA256
	case "ed25519":
		return AlgEd25519SHA256
	}
	return a
}

func (g *Signing) normalize() {
	g.Domain = NormDomain(g.Domain)
	g.Selector = strings.ToLower(strings.TrimSpace(g.Selector))
	g.KeyFile = strings.TrimSpace(g.KeyFile)
	g.Algorithm = normAlgorithm(g.Algorithm)
	g.Tenant = strings.TrimSpace(g.Tenant)
}

// Validate normalizes g and reports what is wrong with it on its own (not
// against the rest of a set): for tools that make entries, such as
// `geomilter ctl dkim keygen`.
func (g *Signing) Validate() error {
	g.normalize()
	return g.check().err("")
}

// check validates a normalized entry on its own. Problems are relative to
// the entry.
func (g *Signing) check() problems {
	var ps problems
	if g.Domain == "" {
		ps.add("domain", "required (the d= domain, e.g. acme.example)")
	} else if err := checkDomain(g.Domain); err != nil {
		ps.add("domain", "%v", err)
	} else if !strings.Contains(g.Domain, ".") {
		ps.add("domain", "domain %q is a top-level name; sign with the organisation's domain", g.Domain)
	}
	if g.Selector == "" {
		ps.add("selector", "required (a DNS label such as mail2026; the key is published at SELECTOR._domainkey.DOMAIN)")
	} else if err := checkSelector(g.Selector); err != nil {
		ps.add("selector", "%v", err)
	} else if g.Domain != "" && len(g.Selector)+len("._domainkey.")+len(g.Domain) > 253 {
		ps.add("selector", "%s._domainkey.%s is longer than 253 characters", g.Selector, g.Domain)
	}
	switch {
	case g.KeyFile == "":
		ps.add("key_file", "required (the absolute path of the PEM private key, see geomilter ctl dkim keygen)")
	case len(g.KeyFile) > maxKeyPath:
		ps.add("key_file", "path is longer than %d characters", maxKeyPath)
	case strings.ContainsFunc(g.KeyFile, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		ps.add("key_file", "path %q contains a control character", g.KeyFile)
	case !filepath.IsAbs(g.KeyFile):
		// The milters run with another working directory than ctl, on
		// other hosts: a relative path would name another file there.
		ps.add("key_file", "path %q is not absolute", g.KeyFile)
	case filepath.Clean(g.KeyFile) != g.KeyFile:
		ps.add("key_file", "path %q is not in clean form (want %q)", g.KeyFile, filepath.Clean(g.KeyFile))
	}
	if g.Algorithm != "" && g.Algorithm != AlgRSASHA256 && g.Algorithm != AlgEd25519SHA256 {
		ps.add("algorithm", "unknown algorithm %q (known: rsa-sha256, ed25519-sha256; or leave it out to take the key's)", g.Algorithm)
	}
	if g.Tenant != "" {
		if err := checkID(g.Tenant); err != nil {
			ps.add("tenant", "tenant id %v", err)
		}
	}
	return ps
}

// checkSelector validates a selector: RFC 6376 §3.1, selector =
// sub-domain *( "." sub-domain ), sub-domain as in RFC 5321 §4.1.2
// (Let-dig [Ldh-str]: letters, digits and inner hyphens).
func checkSelector(s string) error {
	for _, label := range strings.Split(s, ".") {
		switch {
		case label == "":
			return fmt.Errorf("selector %q has an empty label", s)
		case len(label) > 63:
			return fmt.Errorf("selector %q has a label longer than 63 characters", s)
		case label[0] == '-' || label[len(label)-1] == '-':
			return fmt.Errorf("selector %q: a label may not start or end with '-' (RFC 6376 §3.1)", s)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("selector %q contains %q; letters, digits, '-' and '.' only (RFC 6376 §3.1)", s, c)
			}
		}
	}
	return nil
}

// signingChecker finds the problems between entries and with the tenants:
// a domain signed twice, a tenant that does not exist.
type signingChecker struct {
	at map[string]int // domain -> index of the first entry
}

func (c *signingChecker) add(i int, g *Signing, sc *setChecker) problems {
	var ps problems
	if c.at == nil {
		c.at = make(map[string]int)
	}
	if g.Domain != "" {
		if j, dup := c.at[g.Domain]; dup {
			ps.add("domain", "domain %q already has a signing entry at signing[%d] (one key per domain: change that entry's selector and key_file to rotate)", g.Domain, j)
		}
	}
	if g.Tenant != "" {
		if _, ok := sc.tenantAt[g.Tenant]; !ok {
			ps.add("tenant", "unknown tenant %q (%s)", g.Tenant, sc.knownTenants())
		} else if owner, owned := sc.domainOf[g.Domain]; owned && owner != g.Tenant {
			ps.add("tenant", "domain %q belongs to tenant %q, not %q", g.Domain, owner, g.Tenant)
		}
	}
	if len(ps) == 0 && g.Domain != "" {
		c.at[g.Domain] = i
	}
	return ps
}

// parseSigning is Parse's part for the signing list: it appends the
// entries to set and reports their problems positioned in the file.
// Call after the tenants have been registered with sc.
func parseSigning(specs []signingSpec, set *Set, sc *setChecker, report func(string, problems)) {
	var c signingChecker
	for i := range specs {
		prefix := "signing[" + strconv.Itoa(i) + "]"
		g, ps := specs[i].toSigning()
		report(prefix, ps)
		report(prefix, c.add(i, &g, sc))
		set.Signing = append(set.Signing, g)
	}
}

// validateSigning is Validate's part for the signing list.
func validateSigning(s *Set, sc *setChecker) error {
	var all []error
	var c signingChecker
	for i := range s.Signing {
		g := &s.Signing[i]
		g.normalize()
		ps := g.check()
		ps = append(ps, c.add(i, g, sc)...)
		if err := ps.err("signing[" + strconv.Itoa(i) + "]"); err != nil {
			all = append(all, err)
		}
	}
	return errors.Join(all...)
}

// MarshalDoc encodes g as its JSON document.
func (g Signing) MarshalDoc() (json.RawMessage, error) {
	b, err := marshalJSON(signingToSpec(&g))
	if err != nil {
		return nil, fmt.Errorf("signing %q: %w", g.Domain, err)
	}
	return b, nil
}

// SigningFromDoc decodes and validates a signing document stored under id
// ("signing:DOMAIN").
func SigningFromDoc(id string, doc json.RawMessage) (Signing, error) {
	dom, ok := strings.CutPrefix(id, SigningDocPrefix)
	if !ok {
		return Signing{}, fmt.Errorf("signing doc %q: id must start with %q", id, SigningDocPrefix)
	}
	var s signingSpec
	if err := decodeStrict(doc, &s); err != nil {
		return Signing{}, fmt.Errorf("signing doc %q: %w", id, err)
	}
	if s.Domain == "" {
		s.Domain = dom
	}
	g, ps := s.toSigning()
	if err := ps.err(""); err != nil {
		return Signing{}, fmt.Errorf("signing doc %q: %w", id, err)
	}
	if g.Domain != dom {
		return Signing{}, fmt.Errorf("signing doc %q: document says domain %q", id, g.Domain)
	}
	return g, nil
}

// cloneSigning copies a signing list (its entries hold no slices).
func cloneSigning(gs []Signing) []Signing { return slices.Clone(gs) }

// signingIndex is the compiled form: entries by exact domain, and the
// entries with Subdomains by their domain for the parent walk.
type signingIndex struct {
	exact map[string]*Signing
	sub   map[string]*Signing
}

// compileSigning indexes the set's entries.
func compileSigning(gs []Signing) signingIndex {
	var ix signingIndex
	if len(gs) == 0 {
		return ix
	}
	ix.exact = make(map[string]*Signing, len(gs))
	for i := range gs {
		g := &gs[i]
		ix.exact[g.Domain] = g
		if g.Subdomains {
			if ix.sub == nil {
				ix.sub = make(map[string]*Signing)
			}
			ix.sub[g.Domain] = g
		}
	}
	return ix
}

// SigningFor returns the signing entry for mail from domain (the From
// header's domain): the entry for exactly that domain, else the nearest
// parent entry with Subdomains; nil when there is none. Its Tenant is the
// entry's tenant or, when the entry names none, the tenant owning the
// entry's domain; the policy milter signs only outbound mail of that
// tenant. Shared; do not modify.
func (s *Snapshot) SigningFor(domain string) *Signing {
	if len(s.signing.exact) == 0 {
		return nil
	}
	d := NormDomain(domain)
	if g := s.signing.exact[d]; g != nil {
		return g
	}
	if len(s.signing.sub) == 0 {
		return nil
	}
	for p := parent(d); p != ""; p = parent(p) {
		if g := s.signing.sub[p]; g != nil {
			return g
		}
	}
	return nil
}

// SigningTenant is the tenant whose outbound mail g may sign: g.Tenant, or
// the tenant owning g.Domain, or "" (any) when neither exists.
func (s *Snapshot) SigningTenant(g *Signing) string {
	if g.Tenant != "" {
		return g.Tenant
	}
	if t := s.tenantByDomain[g.Domain]; t != nil {
		return t.ID
	}
	return ""
}
