package pkg

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	unitPath   = "/lib/systemd/system/geomilter@.service"
	configPath = "/etc/geomilter/geomilter.yaml"
	sockDir    = "/var/spool/postfix/geomilter"
	accessSock = sockDir + "/access.sock"
)

// skip skips, or fails when the environment requires this test to run.
func skip(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("GEOMILTER_REQUIRE_PACKAGE") == "1" {
		t.Fatalf("GEOMILTER_REQUIRE_PACKAGE=1 but: %s", why)
	}
	t.Skip(why)
}

func TestDebInstallUpgradePurge(t *testing.T) {
	if os.Geteuid() != 0 {
		skip(t, "needs root (dpkg -i, a system user)")
	}
	for _, tool := range []string{"dpkg-deb", "dpkg", "setpriv"} {
		if _, err := exec.LookPath(tool); err != nil {
			skip(t, tool+" not found (a Debian machine is needed)")
		}
	}
	if _, err := user.LookupGroup("postfix"); err != nil {
		skip(t, "group postfix missing: the package depends on postfix (make deps installs it)")
	}
	if out, err := exec.Command("dpkg-query", "-W", "-f", "${Status}", "geomilter").Output(); err == nil && strings.Contains(string(out), "installed") {
		t.Fatalf("geomilter is already installed here (%s); purge it first (dpkg -P geomilter): this test installs and purges its own", out)
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()

	start := time.Now()
	deb1, v1 := buildDeb(t, root, work, "", "ETC=")
	t.Logf("built %s in %s", filepath.Base(deb1), time.Since(start).Round(time.Millisecond))
	t.Cleanup(func() { purge(t) })

	start = time.Now()
	dpkg(t, "-i", deb1)
	t.Logf("dpkg -i %s: %s", v1, time.Since(start).Round(time.Millisecond))
	checkInstalled(t, v1)
	verifyUnit(t, work)

	// The packaged config must be valid as installed, for the milters' user.
	if out, err := exec.Command("setpriv", "--reuid=geomilter", "--regid=geomilter", "--init-groups",
		"/usr/bin/geomilter", "check-config", "--config", configPath).CombinedOutput(); err != nil {
		t.Fatalf("geomilter check-config of the packaged config as user geomilter: %v\n%s", err, out)
	}

	start = time.Now()
	stop := startAccess(t)
	t.Logf("access milter answering after %s", time.Since(start).Round(time.Millisecond))
	fi, err := os.Stat(accessSock)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o660 || groupName(t, st.Gid) != "postfix" {
		t.Errorf("%s: mode %v group %s, want a socket 0660 group postfix (Postfix must connect)", accessSock, fi.Mode(), groupName(t, st.Gid))
	}
	milterTransaction(t)
	stop()

	// An admin's edit of a conffile survives an upgrade to a rebuilt package.
	edit := fmt.Sprintf("# admin edit %d\n", time.Now().UnixNano())
	appendFile(t, configPath, edit)
	start = time.Now()
	deb2, v2 := buildDeb(t, root, work, v1+"+upgrade1", "ETC=")
	t.Logf("built %s in %s", filepath.Base(deb2), time.Since(start).Round(time.Millisecond))
	start = time.Now()
	dpkg(t, "-i", deb2)
	t.Logf("dpkg -i %s (upgrade): %s", v2, time.Since(start).Round(time.Millisecond))
	if got := installedVersion(t); got != v2 {
		t.Fatalf("after the upgrade dpkg says version %q, want %q", got, v2)
	}
	if b, err := os.ReadFile(configPath); err != nil || !strings.HasSuffix(string(b), edit) {
		t.Errorf("%s after the upgrade: the admin's edit %q is gone (err %v)", configPath, edit, err)
	}
	// The packaged file did not change between the two builds, so dpkg keeps
	// the admin's without asking and leaves no copy of its own.
	for _, suffix := range []string{".dpkg-dist", ".dpkg-new", ".dpkg-old"} {
		if _, err := os.Stat(configPath + suffix); err == nil {
			t.Errorf("%s%s exists: dpkg treated the unchanged packaged config as changed", configPath, suffix)
		}
	}

	// When the packaged config changed too, dpkg keeps the admin's (here told
	// so, as a non-interactive upgrade must be) and puts the new one beside it.
	etc := filepath.Join(work, "etc")
	copyDir(t, filepath.Join(root, "packaging", "etc"), etc)
	packaged := fmt.Sprintf("# packaged change %d\n", time.Now().UnixNano())
	appendFile(t, filepath.Join(etc, "geomilter.yaml"), packaged)
	deb3, v3 := buildDeb(t, root, work, v1+"+upgrade2", "ETC="+etc)
	dpkg(t, "--force-confold", "-i", deb3)
	if got := installedVersion(t); got != v3 {
		t.Fatalf("after the second upgrade dpkg says version %q, want %q", got, v3)
	}
	if b, err := os.ReadFile(configPath); err != nil || !strings.HasSuffix(string(b), edit) {
		t.Errorf("%s after an upgrade with a changed packaged config: the admin's edit %q is gone (err %v)", configPath, edit, err)
	}
	want, _ := os.ReadFile(filepath.Join(etc, "geomilter.yaml"))
	if b, err := os.ReadFile(configPath + ".dpkg-dist"); err != nil || !bytes.Equal(b, want) {
		t.Errorf("%s.dpkg-dist: want the new packaged config (ending %q); err %v", configPath, packaged, err)
	}

	dpkg(t, "-r", "geomilter")
	for _, p := range []string{"/var/lib/geomilter", "/var/spool/geomilter", "/var/log/geomilter", configPath} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("dpkg -r removed %s (remove keeps data and conffiles): %v", p, err)
		}
	}
	if _, err := os.Stat("/usr/bin/geomilter"); err == nil {
		t.Errorf("dpkg -r left /usr/bin/geomilter")
	}
	dpkg(t, "-P", "geomilter")
	for _, p := range []string{"/var/lib/geomilter", "/var/spool/geomilter", "/var/log/geomilter", sockDir, "/etc/geomilter"} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("dpkg -P left %s", p)
		}
	}
	if _, err := user.Lookup("geomilter"); err == nil {
		t.Errorf("dpkg -P left the user geomilter")
	}
	if _, err := user.LookupGroup("geomilter"); err == nil {
		t.Errorf("dpkg -P left the group geomilter")
	}
}

// buildDeb runs scripts/package.sh for a .deb (version from git describe when
// version is empty) and returns the file and its version.
func buildDeb(t *testing.T, root, work, version string, env ...string) (string, string) {
	t.Helper()
	out := filepath.Join(work, "dist")
	cmd := exec.Command(filepath.Join(root, "scripts", "package.sh"))
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "OUT="+out, "FORMATS=deb", "BIN="+filepath.Join(work, "geomilter"), "VERSION="+version)
	cmd.Env = append(cmd.Env, env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("scripts/package.sh (VERSION=%q): %v\n%s", version, err, stderr.String())
	}
	deb := strings.TrimSpace(string(stdout))
	base := filepath.Base(deb)
	if !strings.HasPrefix(base, "geomilter_") || !strings.HasSuffix(base, "_amd64.deb") {
		t.Fatalf("scripts/package.sh printed %q, want one .../geomilter_<version>_amd64.deb", stdout)
	}
	v := strings.TrimSuffix(strings.TrimPrefix(base, "geomilter_"), "_amd64.deb")
	if version != "" && v != version {
		t.Fatalf("built version %q, asked for %q", v, version)
	}
	return deb, v
}

// dpkg runs dpkg with args, retrying while another dpkg/apt holds the lock.
func dpkg(t *testing.T, args ...string) {
	t.Helper()
	for attempt := 0; ; attempt++ {
		out, err := exec.Command("dpkg", args...).CombinedOutput()
		if err == nil {
			return
		}
		if strings.Contains(string(out), "lock") && attempt < 60 {
			time.Sleep(2 * time.Second)
			continue
		}
		t.Fatalf("dpkg %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// purge removes the package and what it made, whatever state the test left.
func purge(t *testing.T) {
	if out, err := exec.Command("dpkg-query", "-W", "-f", "${Status}", "geomilter").Output(); err != nil || strings.Contains(string(out), "not-installed") {
		return
	}
	if out, err := exec.Command("dpkg", "-P", "geomilter").CombinedOutput(); err != nil {
		t.Errorf("cleanup: dpkg -P geomilter: %v\n%s", err, out)
	}
}

func installedVersion(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("dpkg-query", "-W", "-f", "${Version}", "geomilter").Output()
	if err != nil {
		t.Fatalf("dpkg-query: %v", err)
	}
	return string(out)
}

func checkInstalled(t *testing.T, version string) {
	t.Helper()
	if got := installedVersion(t); got != version {
		t.Fatalf("dpkg says version %q, want %q", got, version)
	}
	for _, f := range []string{"/usr/bin/geomilter", unitPath, configPath, "/etc/geomilter/rules.yaml",
		"/usr/share/man/man8/geomilter.8.gz", "/usr/share/doc/geomilter/README.md",
		"/usr/share/doc/geomilter/main.cf.snippet.chroot", "/usr/share/doc/geomilter/postfix/main.cf.snippet",
		"/usr/share/doc/geomilter/docs/configuration.md", "/usr/share/doc/geomilter/examples/rules.yaml"} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("installed package lacks %s: %v", f, err)
		}
	}
	out, err := exec.Command("dpkg-query", "-W", "-f", "${Conffiles}", "geomilter").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{configPath, "/etc/geomilter/rules.yaml"} {
		if !strings.Contains(string(out), f+" ") {
			t.Errorf("%s is not a conffile (dpkg: %q)", f, out)
		}
	}
	u, err := user.Lookup("geomilter")
	if err != nil {
		t.Fatalf("no user geomilter after install: %v", err)
	}
	if u.HomeDir != "/var/lib/geomilter" {
		t.Errorf("user geomilter home %q, want /var/lib/geomilter", u.HomeDir)
	}
	if sh := passwdShell(t, "geomilter"); !strings.HasSuffix(sh, "nologin") {
		t.Errorf("user geomilter shell %q, want nologin", sh)
	}
	groups, err := u.GroupIds()
	if err != nil {
		t.Fatal(err)
	}
	pg, _ := user.LookupGroup("postfix")
	if !contains(groups, pg.Gid) {
		t.Errorf("user geomilter is not in group postfix (groups %v)", groups)
	}
	for _, d := range []struct {
		path, owner, group string
		mode               os.FileMode
	}{
		{"/var/lib/geomilter", "geomilter", "geomilter", 0o750},
		{"/var/spool/geomilter", "geomilter", "geomilter", 0o750},
		{"/var/log/geomilter", "geomilter", "geomilter", 0o750},
		{sockDir, "geomilter", "postfix", 0o750 | os.ModeSetgid},
	} {
		fi, err := os.Stat(d.path)
		if err != nil {
			t.Errorf("postinst did not create %s: %v", d.path, err)
			continue
		}
		st := fi.Sys().(*syscall.Stat_t)
		owner, group := userName(t, st.Uid), groupName(t, st.Gid)
		if !fi.IsDir() || fi.Mode()&(os.ModePerm|os.ModeSetgid) != d.mode || owner != d.owner || group != d.group {
			t.Errorf("%s: %v %s:%s, want a folder %v %s:%s", d.path, fi.Mode(), owner, group, d.mode, d.owner, d.group)
		}
	}
	for _, f := range []string{configPath, "/etc/geomilter/rules.yaml"} {
		fi, err := os.Stat(f)
		if err != nil {
			continue
		}
		if g := groupName(t, fi.Sys().(*syscall.Stat_t).Gid); fi.Mode().Perm() != 0o640 || g != "geomilter" {
			t.Errorf("%s: %v group %s, want 0640 group geomilter (it may hold a Redis password)", f, fi.Mode(), g)
		}
	}
}

// verifyUnit runs systemd-analyze verify on an instance of the template.
func verifyUnit(t *testing.T, work string) {
	t.Helper()
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Log("systemd-analyze not found: unit not verified")
		return
	}
	// verify wants an instance: the template under an instance's name.
	b, err := os.ReadFile(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	inst := filepath.Join(work, "geomilter@access.service")
	if err := os.WriteFile(inst, b, 0o644); err != nil {
		t.Fatal(err)
	}
	// --man=no: verify would run man(1) on Documentation=man:geomilter(8),
	// and a minimal Debian has no man-db (found by scripts/fresh-check.sh);
	// the page itself is among the files checked above.
	out, err := exec.Command("systemd-analyze", "verify", "--man=no", inst).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify %s: %v\n%s", unitPath, err, out)
	}
}

// unitService returns the [Service] settings of the installed unit (the last
// value of each key).
func unitService(t *testing.T) map[string]string {
	t.Helper()
	f, err := os.Open(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	kv := map[string]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if line[0] == '[' {
			section = line
			continue
		}
		if k, v, ok := strings.Cut(line, "="); ok && section == "[Service]" {
			kv[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return kv
}

// startAccess starts geomilter@access: with systemd when it is PID 1,
// otherwise the unit's ExecStart as its User/Group/SupplementaryGroups with
// its UMask and RuntimeDirectory. It returns once the socket answers, and a
// stop function that stops the milter and checks it ended cleanly.
func startAccess(t *testing.T) func() {
	t.Helper()
	if fi, err := os.Stat("/run/systemd/system"); err == nil && fi.IsDir() {
		if out, err := exec.Command("systemctl", "start", "geomilter@access").CombinedOutput(); err != nil {
			t.Fatalf("systemctl start geomilter@access: %v\n%s", err, out)
		}
		waitSocket(t, nil)
		return func() {
			if out, err := exec.Command("systemctl", "stop", "geomilter@access").CombinedOutput(); err != nil {
				t.Errorf("systemctl stop geomilter@access: %v\n%s", err, out)
			}
		}
	}
	svc := unitService(t)
	exe := svc["ExecStart"]
	if strings.ContainsAny(exe, `"'\$`) || exe == "" {
		t.Fatalf("unit ExecStart %q: this test runs a plain word list only", exe)
	}
	argv := strings.Fields(strings.ReplaceAll(exe, "%i", "access"))
	if rd := svc["RuntimeDirectory"]; rd != "" {
		dir := filepath.Join("/run", rd)
		mode, err := strconv.ParseUint(svc["RuntimeDirectoryMode"], 8, 32)
		if err != nil {
			mode = 0o755
		}
		if err := os.MkdirAll(dir, os.FileMode(mode)); err != nil {
			t.Fatal(err)
		}
		u, _ := user.Lookup(svc["User"])
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
	}
	umask := svc["UMask"]
	if umask == "" {
		umask = "0022"
	}
	priv := []string{"--reuid=" + svc["User"], "--regid=" + svc["Group"], "--inh-caps=-all"}
	if g := svc["SupplementaryGroups"]; g != "" {
		priv = append(priv, "--groups="+strings.Join(strings.Fields(g), ","))
	} else {
		priv = append(priv, "--clear-groups")
	}
	if svc["NoNewPrivileges"] == "yes" {
		priv = append(priv, "--no-new-privs")
	}
	script := "umask " + umask + " && exec setpriv \"$@\""
	cmd := exec.Command("sh", append([]string{"-c", script, "sh"}, append(append(priv, "--"), argv...)...)...)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	t.Logf("running the unit's ExecStart: umask %s; setpriv %s -- %s", umask, strings.Join(priv, " "), strings.Join(argv, " "))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		_ = cmd.Process.Signal(syscall.SIGTERM)
		if err := <-done; err != nil {
			t.Errorf("access milter after SIGTERM: %v\n%s", err, logs.String())
		}
	}
	t.Cleanup(func() {
		if !stopped {
			_ = cmd.Process.Kill()
			stopped = true
		}
	})
	waitSocket(t, func() error {
		select {
		case err := <-done:
			stopped = true
			return fmt.Errorf("the milter exited: %v\n%s", err, logs.String())
		default:
			return nil
		}
	})
	return stop
}

// waitSocket waits for the access socket to appear; exited reports a milter
// that ended first. The bound only stops a hung start, it asserts no speed.
func waitSocket(t *testing.T, exited func() error) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if fi, err := os.Stat(accessSock); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return
		}
		if exited != nil {
			if err := exited(); err != nil {
				t.Fatal(err)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not appear in 60s", accessSock)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// milterTransaction sends one milter transaction over the packaged socket
// with the installed binary's bench client and wants an answer.
func milterTransaction(t *testing.T) {
	t.Helper()
	out, err := exec.Command("/usr/bin/geomilter", "bench", "milter", "--socket", "unix:"+accessSock,
		"-n", "1", "-c", "1", "--timeout", "60s", "--json").CombinedOutput()
	if err != nil {
		t.Fatalf("geomilter bench milter over %s: %v\n%s", accessSock, err, out)
	}
	var res struct {
		Transactions int            `json:"transactions"`
		Errors       int            `json:"errors"`
		Actions      map[string]int `json:"actions"`
	}
	if err := json.Unmarshal(bytes.TrimSpace(out), &res); err != nil {
		t.Fatalf("bench milter output %q: %v", out, err)
	}
	if res.Transactions != 1 || res.Errors != 0 || len(res.Actions) == 0 {
		t.Fatalf("milter transaction over %s: %s, want 1 answered transaction", accessSock, out)
	}
	t.Logf("milter transaction over %s: actions %v", accessSock, res.Actions)
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	entries, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(to, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func appendFile(t *testing.T, path, text string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(text); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func passwdShell(t *testing.T, name string) string {
	t.Helper()
	out, err := exec.Command("getent", "passwd", name).Output()
	if err != nil {
		t.Fatalf("getent passwd %s: %v", name, err)
	}
	f := strings.Split(strings.TrimSpace(string(out)), ":")
	return f[len(f)-1]
}

func userName(t *testing.T, uid uint32) string {
	u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10))
	if err != nil {
		return strconv.FormatUint(uint64(uid), 10)
	}
	return u.Username
}

func groupName(t *testing.T, gid uint32) string {
	g, err := user.LookupGroupId(strconv.FormatUint(uint64(gid), 10))
	if err != nil {
		return strconv.FormatUint(uint64(gid), 10)
	}
	return g.Name
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
