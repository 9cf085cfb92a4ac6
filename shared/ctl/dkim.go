package ctl

import (
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/geomilter/geomilter/milters/policy/dkimcheck"
	"github.com/geomilter/geomilter/shared/rules"
)

// DefaultDKIMDir is where `dkim keygen` writes keys without --out or --dir.
const DefaultDKIMDir = "/etc/geomilter/dkim"

// dkimKeygen runs `geomilter ctl dkim keygen`: it makes a signing key,
// writes it (mode 0600, never over an existing file without --force), and
// prints the DNS record to publish and the rules entry that uses it. It
// needs no config and no Redis: the key stays on this host (the rules carry
// its path only), so run it on each host that signs, or copy the file.
func (t *tool) dkimKeygen(args []string) int {
	const name = "dkim keygen"
	fs := t.flagSet(name)
	domain := fs.String("domain", "", "the signing `DOMAIN` (d=), e.g. acme.example")
	selector := fs.String("selector", "", "the `SELECTOR` (s=), e.g. mail2026: the record goes to SELECTOR._domainkey.DOMAIN")
	algo := fs.String("algorithm", "rsa", "signing algorithm `NAME`: rsa (rsa-sha256, verified everywhere) or ed25519 (RFC 8463, not yet verified by every receiver)")
	bits := fs.Int("bits", dkimcheck.DefaultRSABits, "RSA key size in `BITS`, 1024 to 8192 (RFC 8301: 2048 or more)")
	out := fs.String("out", "", "write the key to `FILE` (default DIR/DOMAIN.SELECTOR.key)")
	dir := fs.String("dir", DefaultDKIMDir, "write the key into `DIR` as DOMAIN.SELECTOR.key")
	force := fs.Bool("force", false, "replace an existing key file: the policy milter signs with the new key from its next message on, so publish the new record first")
	rest, err := parseArgs(fs, args)
	if err != nil {
		return t.parseFailed(name, fs, err)
	}
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(t.errw, "geomilter ctl %s: %s\n", name, fmt.Sprintf(format, a...))
		fmt.Fprintf(t.errw, "geomilter ctl %s --help lists its flags\n", name)
		return ExitUsage
	}
	if len(rest) > 0 {
		return usageErr("unexpected argument %q", rest[0])
	}
	if *domain == "" || *selector == "" {
		return usageErr("--domain and --selector are required")
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["out"] && set["dir"] {
		return usageErr("give --out or --dir, not both")
	}

	algoName := strings.ToLower(strings.TrimSpace(*algo))
	keyBits := *bits
	switch algoName {
	case "rsa", dkimcheck.AlgRSASHA256:
	case "ed25519", dkimcheck.AlgEd25519SHA256:
		if !set["bits"] {
			keyBits = 0
		}
	default:
		return usageErr("unknown --algorithm %q (want rsa or ed25519)", *algo)
	}

	entry := rules.Signing{Domain: *domain, Selector: *selector}
	path := *out
	if path == "" {
		// The validated (lower-case) names make the default file name, so
		// Acme.Example and acme.example give the same file.
		probe := entry
		probe.KeyFile = "/x"
		if err := probe.Validate(); err != nil {
			t.errorf("%v", err)
			return ExitProblems
		}
		path = filepath.Join(*dir, probe.Domain+"."+probe.Selector+".key")
	}
	if path, err = filepath.Abs(path); err != nil {
		t.errorf("%v", err)
		return ExitProblems
	}
	entry.KeyFile = path
	if err := entry.Validate(); err != nil {
		t.errorf("%v", err)
		return ExitProblems
	}

	key, err := dkimcheck.GenerateKey(algoName, keyBits)
	if err != nil {
		t.errorf("%v", err)
		return ExitProblems
	}
	record, err := dkimcheck.DNSRecord(key.Public())
	if err != nil {
		t.errorf("%v", err)
		return ExitProblems
	}
	pemBytes, err := dkimcheck.MarshalKeyPEM(key)
	if err != nil {
		t.errorf("%v", err)
		return ExitProblems
	}
	if err := writeKeyFile(path, pemBytes, *force); err != nil {
		t.errorf("%v", err)
		return ExitProblems
	}
	_, keyAlgo, _ := dkimcheck.ParseKeyPEM(pemBytes)

	fmt.Fprintf(t.out, "wrote %s (%s, mode 0600)\n", path, keyAlgo)
	fmt.Fprintln(t.out, "  the policy milter must be able to read it: chown it to the user it runs as, or chgrp to its group and chmod 0640")
	fmt.Fprintf(t.out, "\npublish this DNS record first:\n%s._domainkey.%s. IN TXT %s\n", entry.Selector, entry.Domain, dkimcheck.ZoneTXT(record))
	fmt.Fprintf(t.out, "\nthen add this entry to the rules file and apply it (geomilter ctl rules apply -f FILE):\nsigning:\n  - {domain: %s, selector: %s, key_file: %s}\n",
		entry.Domain, entry.Selector, yamlScalar(path))
	return ExitOK
}

// writeKeyFile writes a private key with mode 0600, atomically: to a
// temporary file in the same directory, synced, then linked to path (which
// fails if path exists) or, with force, renamed over it. A reader never
// sees half a key, and the policy milter sees the replaced key as a new
// file. The directory is made (0700) when missing.
func writeKeyFile(path string, data []byte, force bool) (err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("key directory: %w", err)
	}
	if !force {
		if _, err := os.Lstat(path); err == nil {
			return fmt.Errorf("%s exists; choose another selector (rotation: a new selector and key, published before the rules use it) or pass --force", path)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		f.Close()
		os.Remove(tmp) // after the link or rename, or on failure
	}()
	// CreateTemp makes 0600 files; Chmod makes sure of it past any umask
	// before the key is written.
	if err := f.Chmod(0o600); err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if force {
		err = os.Rename(tmp, path)
	} else {
		err = os.Link(tmp, path)
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s exists (created meanwhile); pass --force to replace it", path)
		}
	}
	if err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync() // make the new name durable; the key is already
		d.Close()
	}
	return nil
}

// yamlScalar quotes a path for a YAML flow mapping when it needs it.
func yamlScalar(s string) string {
	if strings.ContainsAny(s, " :#,[]{}&*!|>'\"%@`") {
		return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
	}
	return s
}
