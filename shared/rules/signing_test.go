package rules

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const signingFile = `
tenants:
  - {id: acme, domains: [acme.example]}
  - {id: globex, domains: [globex.example]}
signing:
  - {domain: Acme.Example., selector: Mail2026, key_file: /etc/geomilter/dkim/acme.example.mail2026.key}
  - {domain: globex.example, selector: s1.eu, key_file: /etc/geomilter/dkim/globex.key, algorithm: ed25519, subdomains: true}
  - {domain: shared.example, selector: s, key_file: /k/shared.key, tenant: acme, comment: "acme signs for its partner"}
  - {domain: open.example, selector: s, key_file: /k/open.key}
`

func parseSigningSet(t *testing.T) *Set {
	t.Helper()
	set, err := Parse("signing.yaml", []byte(signingFile))
	if err != nil {
		t.Fatal(err)
	}
	return set
}

func TestSigningParse(t *testing.T) {
	set := parseSigningSet(t)
	want := []Signing{
		{Domain: "acme.example", Selector: "mail2026", KeyFile: "/etc/geomilter/dkim/acme.example.mail2026.key"},
		{Domain: "globex.example", Selector: "s1.eu", KeyFile: "/etc/geomilter/dkim/globex.key", Algorithm: AlgEd25519SHA256, Subdomains: true},
		{Domain: "shared.example", Selector: "s", KeyFile: "/k/shared.key", Tenant: "acme", Comment: "acme signs for its partner"},
		{Domain: "open.example", Selector: "s", KeyFile: "/k/open.key"},
	}
	if len(set.Signing) != len(want) {
		t.Fatalf("got %d entries, want %d", len(set.Signing), len(want))
	}
	for i := range want {
		if set.Signing[i] != want[i] {
			t.Errorf("signing[%d] = %+v, want %+v", i, set.Signing[i], want[i])
		}
	}
}

func TestSigningFor(t *testing.T) {
	snap, err := Compile(parseSigningSet(t))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		from, domain, selector, tenant string
	}{
		{"acme.example", "acme.example", "mail2026", "acme"},
		{"ACME.example.", "acme.example", "mail2026", "acme"},
		{"sub.acme.example", "", "", ""}, // no subdomains: exact only
		{"globex.example", "globex.example", "s1.eu", "globex"},
		{"a.b.globex.example", "globex.example", "s1.eu", "globex"},
		{"xglobex.example", "", "", ""}, // whole labels only
		{"shared.example", "shared.example", "s", "acme"},
		{"open.example", "open.example", "s", ""},
		{"example", "", "", ""},
		{"", "", "", ""},
	}
	for _, c := range cases {
		g := snap.SigningFor(c.from)
		if c.domain == "" {
			if g != nil {
				t.Errorf("SigningFor(%q) = %+v, want nil", c.from, g)
			}
			continue
		}
		if g == nil {
			t.Errorf("SigningFor(%q) = nil, want %s", c.from, c.domain)
			continue
		}
		if g.Domain != c.domain || g.Selector != c.selector {
			t.Errorf("SigningFor(%q) = %s/%s, want %s/%s", c.from, g.Domain, g.Selector, c.domain, c.selector)
		}
		if got := snap.SigningTenant(g); got != c.tenant {
			t.Errorf("SigningTenant(%s) = %q, want %q", g.Domain, got, c.tenant)
		}
	}
	empty, err := Compile(&Set{})
	if err != nil {
		t.Fatal(err)
	}
	if g := empty.SigningFor("acme.example"); g != nil {
		t.Errorf("empty snapshot: %+v", g)
	}
}

// The entries travel as documents (Redis) and in saved snapshots: they
// round-trip, count in the checksum, and carry the key's path only.
func TestSigningDocsAndChecksum(t *testing.T) {
	set := parseSigningSet(t)
	docs, err := set.Docs()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, d := range docs {
		if IsSigningDoc(d.ID) {
			ids = append(ids, d.ID)
		}
	}
	if strings.Join(ids, " ") != "signing:acme.example signing:globex.example signing:open.example signing:shared.example" {
		t.Errorf("signing doc ids: %v", ids)
	}
	back, skipped := SetFromDocs(docs)
	if len(skipped) != 0 {
		t.Fatalf("skipped: %v", skipped)
	}
	a, err := Compile(set)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Compile(back)
	if err != nil {
		t.Fatal(err)
	}
	if a.Checksum() != b.Checksum() {
		t.Errorf("checksum after the document round trip: %s, want %s", b.Checksum(), a.Checksum())
	}

	changed := set.Clone()
	changed.Signing[0].Selector = "mail2027"
	c, err := Compile(changed)
	if err != nil {
		t.Fatal(err)
	}
	if c.Checksum() == a.Checksum() {
		t.Error("changing a selector does not change the checksum")
	}
	if set.Signing[0].Selector != "mail2026" {
		t.Error("Clone shares the signing list")
	}

	dir := t.TempDir()
	if err := a.Save(dir); err != nil {
		t.Fatal(err)
	}
	saved, err := os.ReadFile(filepath.Join(dir, SnapshotFile))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(saved, []byte(`"key_file":"/etc/geomilter/dkim/acme.example.mail2026.key"`)) {
		t.Errorf("saved snapshot lacks the key path:\n%s", saved)
	}
	loaded, info, err := LoadSaved(dir)
	if err != nil || len(info.Skipped) != 0 {
		t.Fatalf("LoadSaved: %v %v", err, info.Skipped)
	}
	if len(loaded.Signing) != len(set.Signing) || info.Checksum != a.Checksum() {
		t.Errorf("loaded %d entries, checksum %s; want %d, %s", len(loaded.Signing), info.Checksum, len(set.Signing), a.Checksum())
	}
}

func TestSigningFromDocs(t *testing.T) {
	tenant := Doc{ID: "tenant:acme", Body: []byte(`{"id":"acme","domains":["acme.example"]}`)}
	cases := []struct {
		name    string
		doc     Doc
		wantErr string // "" when the entry is used
	}{
		{"ok", Doc{"signing:acme.example", []byte(`{"domain":"acme.example","selector":"s","key_file":"/k"}`)}, ""},
		{"domain from id", Doc{"signing:acme.example", []byte(`{"selector":"s","key_file":"/k"}`)}, ""},
		{"other domain", Doc{"signing:acme.example", []byte(`{"domain":"globex.example","selector":"s","key_file":"/k"}`)}, `document says domain "globex.example"`},
		{"unknown key", Doc{"signing:acme.example", []byte(`{"selector":"s","key_file":"/k","key":"secret"}`)}, `unknown field "key"`},
		{"relative path", Doc{"signing:acme.example", []byte(`{"selector":"s","key_file":"k"}`)}, `is not absolute`},
		{"unknown tenant", Doc{"signing:acme.example", []byte(`{"selector":"s","key_file":"/k","tenant":"gone"}`)}, `unknown tenant "gone"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			set, skipped := SetFromDocs([]Doc{c.doc, tenant})
			if c.wantErr == "" {
				if len(skipped) != 0 || len(set.Signing) != 1 {
					t.Fatalf("skipped %v, entries %d", skipped, len(set.Signing))
				}
				return
			}
			if len(set.Signing) != 0 || len(skipped) != 1 || !strings.Contains(skipped[0].Error(), c.wantErr) {
				t.Fatalf("entries %d, skipped %v; want one error containing %q", len(set.Signing), skipped, c.wantErr)
			}
			if strings.Contains(skipped[0].Error(), "secret") {
				t.Errorf("error repeats a value: %v", skipped[0])
			}
		})
	}
}

func TestSigningValidate(t *testing.T) {
	set := &Set{Signing: []Signing{
		{Domain: "Acme.Example", Selector: "S1", KeyFile: "/k", Algorithm: "RSA"},
		{Domain: "acme.example", Selector: "s2", KeyFile: "/k2"},
	}}
	err := set.Validate()
	if err == nil || !strings.Contains(err.Error(), `signing[1].domain: domain "acme.example" already has a signing entry at signing[0]`) {
		t.Fatalf("Validate: %v", err)
	}
	if g := set.Signing[0]; g.Domain != "acme.example" || g.Selector != "s1" || g.Algorithm != AlgRSASHA256 {
		t.Errorf("not normalized: %+v", g)
	}
	if _, err := Compile(set); err == nil {
		t.Error("Compile accepted a domain signed twice")
	}
}
