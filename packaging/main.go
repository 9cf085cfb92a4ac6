// Command packaging builds geomilter's .deb and .rpm with nfpm (as a library),
// from nfpm.yaml in this folder, and generates the geomilter(8) man page from
// the binary's own --help texts so the page never drifts from the program.
//
//	go run . --root .. --bin ../bin/geomilter --version 0.0~git412.570c324 --out ../dist
//
// scripts/package.sh (make package) and integration/pkg call it this way.
package main

import (
	"bytes"
	"compress/gzip"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/goreleaser/nfpm/v2"
	_ "github.com/goreleaser/nfpm/v2/deb" // registers the deb packager
	_ "github.com/goreleaser/nfpm/v2/rpm" // registers the rpm packager
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "packaging:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("packaging", flag.ContinueOnError)
	root := fs.String("root", "..", "the repository's top folder")
	bin := fs.String("bin", "", "the built geomilter binary (linux/amd64) (required)")
	version := fs.String("version", "", "package version, Debian-valid, e.g. 0.0~git412.570c324 (required)")
	out := fs.String("out", "dist", "output folder")
	formats := fs.String("formats", "deb,rpm", "comma-separated packagers: deb, rpm")
	etc := fs.String("etc", "", "folder with the packaged geomilter.yaml and rules.yaml (default ROOT/packaging/etc; tests give a changed copy)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *bin == "" || *version == "" {
		return errors.New("--bin and --version are required")
	}
	if err := checkVersion(*version); err != nil {
		return err
	}
	absRoot, err := filepath.Abs(*root)
	if err != nil {
		return fmt.Errorf("root %s: %w", *root, err)
	}
	absBin, err := filepath.Abs(*bin)
	if err != nil {
		return fmt.Errorf("bin %s: %w", *bin, err)
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return fmt.Errorf("output folder: %w", err)
	}

	tmp, err := os.MkdirTemp("", "geomilter-pkg-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	page, err := manPage(absBin, *version, time.Now().UTC())
	if err != nil {
		return fmt.Errorf("man page: %w", err)
	}
	man := filepath.Join(tmp, "geomilter.8.gz")
	if err := writeGzip(man, page); err != nil {
		return fmt.Errorf("man page: %w", err)
	}

	etcDir := filepath.Join(absRoot, "packaging", "etc")
	if *etc != "" {
		if etcDir, err = filepath.Abs(*etc); err != nil {
			return fmt.Errorf("etc %s: %w", *etc, err)
		}
	}
	env := map[string]string{"ROOT": absRoot, "BIN": absBin, "MAN": man, "VERSION": *version, "ETC": etcDir}
	cfgPath := filepath.Join(absRoot, "packaging", "nfpm.yaml")
	cfg, err := parseConfig(cfgPath, env)
	if err != nil {
		return err
	}
	for _, format := range strings.Split(*formats, ",") {
		target, err := build(cfg, strings.TrimSpace(format), *version, *out)
		if err != nil {
			return fmt.Errorf("%s: %w", format, err)
		}
		fmt.Fprintln(stdout, target)
	}
	return nil
}

// parseConfig reads the nfpm config with ${NAME} replaced from env everywhere
// (nfpm itself expands only some fields: not scripts, not contents without
// expand: true). An unknown name is an error, not an empty string.
func parseConfig(path string, env map[string]string) (nfpm.Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nfpm.Config{}, err
	}
	var unknown []string
	text := os.Expand(string(raw), func(k string) string {
		v, ok := env[k]
		if !ok {
			unknown = append(unknown, k)
		}
		return v
	})
	if len(unknown) > 0 {
		return nfpm.Config{}, fmt.Errorf("%s: unknown variables %v (known: ROOT BIN MAN VERSION ETC)", path, unknown)
	}
	cfg, err := nfpm.ParseWithEnvMapping(strings.NewReader(text), func(k string) string { return env[k] })
	if err != nil {
		return nfpm.Config{}, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

// debVersion is what dpkg accepts as an upstream version without a revision
// (deb-version(7)): a digit first, then alphanumerics and . + ~ (no hyphen:
// nfpm's version has no Debian revision, so a hyphen would start one).
var debVersion = regexp.MustCompile(`^[0-9][A-Za-z0-9.+~]*$`)

func checkVersion(v string) error {
	if !debVersion.MatchString(v) {
		return fmt.Errorf("version %q: must start with a digit and hold only A-Z a-z 0-9 . + ~ (deb-version(7); scripts/package.sh turns git describe into one)", v)
	}
	return nil
}

// fileName is the package's name in dist/: Debian's name_version_arch.deb and
// RPM's name-version.arch.rpm (no release: the version is the whole identity).
func fileName(format, version string) (string, error) {
	switch format {
	case "deb":
		return "geomilter_" + version + "_amd64.deb", nil
	case "rpm":
		return "geomilter-" + version + ".x86_64.rpm", nil
	}
	return "", fmt.Errorf("unknown format %q (deb, rpm)", format)
}

func build(cfg nfpm.Config, format, version, out string) (string, error) {
	name, err := fileName(format, version)
	if err != nil {
		return "", err
	}
	info, err := cfg.Get(format)
	if err != nil {
		return "", err
	}
	info = nfpm.WithDefaults(info)
	if err := nfpm.Validate(info); err != nil {
		return "", err
	}
	pkg, err := nfpm.Get(format)
	if err != nil {
		return "", err
	}
	target := filepath.Join(out, name)
	info.Target = target
	f, err := os.Create(target)
	if err != nil {
		return "", err
	}
	if err := pkg.Package(info, f); err != nil {
		f.Close()
		os.Remove(target)
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return target, nil
}

func writeGzip(path string, data []byte) error {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return err
	}
	if _, err := zw.Write(data); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

// helpOf runs bin with args and returns its standard output when it exits 0.
func helpOf(bin string, args ...string) (string, error) {
	cmd := exec.Command(bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s %s: %w: %s", bin, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}
