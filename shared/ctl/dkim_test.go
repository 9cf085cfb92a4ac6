package ctl

import (
	"bytes"
	"context"
	"crypto"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/geomilter/geomilter/milters/policy/dkimcheck"
	"github.com/geomilter/geomilter/shared/redistest"
	"github.com/geomilter/geomilter/shared/rules"
)

func runCtl(args ...string) (code int, stdout, stderr string) {
	var out, errw bytes.Buffer
	code = Run(context.Background(), args, &out, &errw)
	return code, out.String(), errw.String()
}

// txtRecord joins the character-strings of the printed zone line, as a
// verifier joins a TXT record's strings (RFC 6376 §3.6.2.2).
func txtRecord(t *testing.T, out, owner string) string {
	t.Helper()
	i := strings.Index(out, owner+" IN TXT ")
	if i < 0 {
		t.Fatalf("no record for %s in:\n%s", owner, out)
	}
	rest := out[i+len(owner+" IN TXT "):]
	if strings.HasPrefix(rest, "(") {
		rest = rest[:strings.Index(rest, ")")]
	} else {
		rest = rest[:strings.Index(rest, "\n")]
	}
	var b strings.Builder
	for _, m := range regexp.MustCompile(`"((?:[^"\\]|\\.)*)"`).FindAllStringSubmatch(rest, -1) {
		if len(m[1]) > 255 {
			t.Errorf("character-string of %d bytes (at most 255)", len(m[1]))
		}
		b.WriteString(m[1])
	}
	return b.String()
}

func TestDKIMKeygen(t *testing.T) {
	cases := []struct {
		name, algo, bits, wantAlgo, wantK string
	}{
		{"ed25519", "ed25519", "", dkimcheck.AlgEd25519SHA256, "ed25519"},
		{"rsa", "rsa", "2048", dkimcheck.AlgRSASHA256, "rsa"},
		{"rsa default", "", "", dkimcheck.AlgRSASHA256, "rsa"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "dkim") // made by keygen
			args := []string{"dkim", "keygen", "--domain", "Acme.Example", "--selector", "mail2026", "--dir", dir}
			if c.algo != "" {
				args = append(args, "--algorithm", c.algo)
			}
			if c.bits != "" {
				args = append(args, "--bits", c.bits)
			}
			code, out, errw := runCtl(args...)
			if code != ExitOK {
				t.Fatalf("exit %d: %s", code, errw)
			}
			path := filepath.Join(dir, "acme.example.mail2026.key")
			st, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != 0o600 {
				t.Errorf("mode %04o, want 0600", st.Mode().Perm())
			}
			key, algo, err := dkimcheck.LoadKey(path)
			if err != nil {
				t.Fatal(err)
			}
			if algo != c.wantAlgo {
				t.Errorf("key is %s, want %s", algo, c.wantAlgo)
			}
			want, err := dkimcheck.DNSRecord(key.Public())
			if err != nil {
				t.Fatal(err)
			}
			got := txtRecord(t, out, "mail2026._domainkey.acme.example.")
			if got != want || !strings.HasPrefix(got, "v=DKIM1; k="+c.wantK+"; p=") {
				t.Errorf("printed record\n%s\nis not the key's\n%s", got, want)
			}

			// The printed entry is a rules file that parses, naming the key.
			i := strings.Index(out, "signing:\n")
			if i < 0 {
				t.Fatalf("no signing entry in:\n%s", out)
			}
			set, err := rules.Parse("printed", []byte(out[i:]))
			if err != nil {
				t.Fatalf("printed entry does not parse: %v\n%s", err, out[i:])
			}
			if g := set.Signing[0]; g.Domain != "acme.example" || g.Selector != "mail2026" || g.KeyFile != path {
				t.Errorf("printed entry: %+v", g)
			}
			if bytes.Contains([]byte(out+errw), mustRead(t, path)[30:60]) {
				t.Error("the key's bytes are printed")
			}
		})
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// An existing key is never overwritten without --force; with it the file
// is replaced by a new one (a new inode, which the policy milter notices).
func TestDKIMKeygenOverwrite(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "k.pem")
	args := []string{"dkim", "keygen", "--domain", "acme.example", "--selector", "s1", "--algorithm", "ed25519", "--out", path}
	if code, _, errw := runCtl(args...); code != ExitOK {
		t.Fatalf("exit %d: %s", code, errw)
	}
	first := mustRead(t, path)
	code, _, errw := runCtl(args...)
	if code != ExitProblems || !strings.Contains(errw, "exists") {
		t.Fatalf("second run: exit %d, %q; want a refusal", code, errw)
	}
	if !bytes.Equal(mustRead(t, path), first) {
		t.Fatal("the key was overwritten without --force")
	}
	if code, _, errw := runCtl(append(args, "--force")...); code != ExitOK {
		t.Fatalf("--force: exit %d: %s", code, errw)
	}
	second := mustRead(t, path)
	if bytes.Equal(second, first) {
		t.Fatal("--force kept the old key")
	}
	var k1, k2 crypto.Signer
	var err error
	if k1, _, err = dkimcheck.ParseKeyPEM(first); err != nil {
		t.Fatal(err)
	}
	if k2, _, err = dkimcheck.LoadKey(path); err != nil {
		t.Fatal(err)
	}
	if k1.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(k2.Public()) {
		t.Error("same key after --force")
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".*tmp*")); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

func TestDKIMKeygenErrors(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no domain", []string{"--selector", "s"}, ExitUsage, "--domain and --selector are required"},
		{"bad algorithm", []string{"--domain", "a.example", "--selector", "s", "--algorithm", "dsa"}, ExitUsage, `unknown --algorithm "dsa"`},
		{"out and dir", []string{"--domain", "a.example", "--selector", "s", "--out", "/x", "--dir", "/y"}, ExitUsage, "not both"},
		{"extra argument", []string{"--domain", "a.example", "--selector", "s", "extra"}, ExitUsage, `unexpected argument "extra"`},
		{"bad selector", []string{"--domain", "a.example", "--selector", "s_1", "--dir", dir}, ExitProblems, `selector "s_1" contains '_'`},
		{"bad domain", []string{"--domain", "a..example", "--selector", "s", "--dir", dir}, ExitProblems, "empty label"},
		{"small rsa", []string{"--domain", "a.example", "--selector", "s", "--bits", "512", "--dir", dir}, ExitProblems, "512 bits"},
		{"ed25519 bits", []string{"--domain", "a.example", "--selector", "s", "--algorithm", "ed25519", "--bits", "2048", "--dir", dir}, ExitProblems, "256 bits"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, _, errw := runCtl(append([]string{"dkim", "keygen"}, c.args...)...)
			if code != c.code || !strings.Contains(errw, c.want) {
				t.Errorf("exit %d, stderr %q; want exit %d with %q", code, errw, c.code, c.want)
			}
		})
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("failed runs left files: %v", entries)
	}
	code, out, _ := runCtl("dkim", "keygen", "--help")
	if code != ExitOK || !strings.Contains(out, "usage: geomilter ctl dkim keygen") || !strings.Contains(out, "--selector SELECTOR") {
		t.Errorf("--help: exit %d\n%s", code, out)
	}
}

// Signing entries travel like rules: apply writes them as documents
// ("signing:DOMAIN", the key's path only), list shows them, export writes
// them back as a signing: list that applies without changes.
func TestRulesWithSigning(t *testing.T) {
	srv := redistest.Start(t)
	dir := t.TempDir()
	cfg := write(t, dir, "c.yaml", fmt.Sprintf("site: a\nhost: h\nstate_dir: %s/st\nspool_dir: %s/sp\nredis:\n  local: {addr: %q}\nmilters:\n  access: {listen: \"unix:%s/a.sock\"}\nmetrics: {listen: \"127.0.0.1:1\"}\n",
		dir, dir, srv.Addr, dir))
	file := write(t, dir, "r.yaml", rulesV1+`signing:
  - {domain: acme.example, selector: mail2026, key_file: /etc/geomilter/dkim/acme.example.mail2026.key}
  - {domain: other.example, selector: s1, key_file: /etc/geomilter/dkim/other.key, subdomains: true}
`)
	code, out, errs := run("--config", cfg, "rules", "apply", "-f", file)
	if code != ExitOK || !strings.Contains(out, "+ signing:acme.example") || !strings.Contains(out, "+ signing:other.example") {
		t.Fatalf("apply: exit %d\n%s\n%s", code, out, errs)
	}
	code, list, errs := run("--config", cfg, "rules", "list")
	if code != ExitOK || !regexp.MustCompile(`signing:acme.example +signing +- +s=mail2026 /etc/geomilter/dkim/acme.example.mail2026.key`).MatchString(list) {
		t.Fatalf("list: exit %d\n%s\n%s", code, list, errs)
	}
	code, exported, errs := run("--config", cfg, "rules", "export")
	if code != ExitOK || !strings.Contains(exported, "\nsigning:\n") {
		t.Fatalf("export: exit %d\n%s\n%s", code, exported, errs)
	}
	ex := write(t, dir, "export.yaml", exported)
	set, err := rules.ParseFile(ex)
	if err != nil || len(set.Signing) != 2 || !set.Signing[1].Subdomains {
		t.Fatalf("export: %v\n%s", err, exported)
	}
	if code, out, errs := run("--config", cfg, "rules", "apply", "-f", ex); code != ExitOK || strings.TrimSpace(out) != "no changes" {
		t.Fatalf("apply of the export: exit %d\n%s\n%s", code, out, errs)
	}
	// A signing entry keeps its tenant: deleting the tenant is refused.
	file2 := write(t, dir, "r2.yaml", "tenants:\n  - {id: acme, domains: [acme.example]}\nsigning:\n  - {domain: x.example, selector: s, key_file: /k, tenant: acme}\n")
	if code, out, errs := run("--config", cfg, "rules", "apply", "-f", file2); code != ExitOK {
		t.Fatalf("apply: exit %d\n%s\n%s", code, out, errs)
	}
	if code, _, errs := run("--config", cfg, "rules", "delete", "tenant:acme", "acme-rate"); code != ExitProblems || !strings.Contains(errs, `signing doc "signing:x.example"`) {
		t.Fatalf("delete of a tenant a signing entry names: exit %d\n%s", code, errs)
	}
}
