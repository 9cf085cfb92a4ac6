package integration

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-milter"

	"github.com/geomilter/geomilter/shared/redistest"
)

// msite is one site of a multi-site topology: its Redis primary, a local
// replica of every peer's primary, and one geomilter host (config, access
// milter socket, metrics address).
type msite struct {
	name     string
	site     *site // dir, config, socket, metrics (harness_test.go)
	primary  *redistest.Server
	replicas map[string]*redistest.Server // peer site -> local replica of its primary
	proc     *proc
}

// topology is a set of sites, each reading its own primary and its local
// copies of the others.
type topology struct {
	names []string
	sites map[string]*msite
}

// startTopology starts, for every site, a primary and a local replica of
// every other site's primary (n² redis-servers), waits until every replica
// is in sync, writes one config per site (redis.timeout = redisTimeout) and
// starts `geomilter access` at every site.
func startTopology(t testing.TB, redisTimeout string, names ...string) *topology {
	t.Helper()
	tp := &topology{names: names, sites: map[string]*msite{}}
	for n, rs := range redistest.Sites(t, names...) {
		tp.sites[n] = &msite{name: n, primary: rs.Primary, replicas: rs.Replicas}
	}
	for _, n := range names {
		s := tp.sites[n]
		s.site = writeSiteConfig(t, s, redisTimeout)
	}
	for _, n := range names {
		tp.sites[n].proc = tp.sites[n].site.start(t)
	}
	return tp
}

func writeSiteConfig(t testing.TB, s *msite, redisTimeout string) *site {
	t.Helper()
	dir := t.TempDir()
	st := &site{
		dir:     dir,
		config:  filepath.Join(dir, "geomilter.yaml"),
		socket:  filepath.Join(dir, "access.sock"),
		metrics: fmt.Sprintf("127.0.0.1:%d", freePort(t)),
	}
	var b strings.Builder
	fmt.Fprintf(&b, "site: %s\nhost: mta1\nstate_dir: %s/state\nspool_dir: %s/spool\n", s.name, dir, dir)
	fmt.Fprintf(&b, "redis:\n  local: {addr: %q}\n  timeout: %s\n  breaker: {failures: 3, open_for: 1s}\n  peers:\n", s.primary.Addr, redisTimeout)
	peers := make([]string, 0, len(s.replicas))
	for p := range s.replicas {
		peers = append(peers, p)
	}
	sort.Strings(peers)
	for _, p := range peers {
		fmt.Fprintf(&b, "    %s: {addr: %q}\n", p, s.replicas[p].Addr)
	}
	fmt.Fprintf(&b, "log: {level: info}\ntrail:\n  sinks:\n    - {name: local, type: file, path: %s/trail.ndjson}\n", dir)
	fmt.Fprintf(&b, "metrics: {listen: %q}\nmilters:\n  access: {listen: \"unix:%s\", shutdown_timeout: 5s}\n", st.metrics, st.socket)
	if err := os.WriteFile(st.config, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return st
}

// restartMilter stops the site's access milter (SIGTERM) and starts it again.
func (s *msite) restartMilter(t testing.TB) {
	t.Helper()
	if code := s.proc.signal(t, syscall.SIGTERM, 20*time.Second); code != 0 {
		t.Fatalf("%s: geomilter exited %d at SIGTERM:\n%s", s.name, code, tail(s.proc.stderr.String(), 20))
	}
	s.proc = s.site.start(t)
}

// ctl runs `geomilter ctl --config SITE …`.
func (s *msite) ctl(t testing.TB, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errw bytes.Buffer
	cmd := exec.Command(binPath, append([]string{"ctl", "--config", s.site.config}, args...)...)
	cmd.Stdout, cmd.Stderr = &out, &errw
	err := cmd.Run()
	if err != nil && cmd.ProcessState == nil {
		t.Fatalf("ctl: %v", err)
	}
	return cmd.ProcessState.ExitCode(), out.String(), errw.String()
}

// apply writes rulesYAML to a file and applies it at this site; it fails the
// test unless ctl exits 0.
func (s *msite) apply(t testing.TB, rulesYAML string) string {
	t.Helper()
	f, err := os.CreateTemp(s.site.dir, "rules-*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(rulesYAML); err != nil {
		t.Fatal(err)
	}
	f.Close()
	code, out, errs := s.ctl(t, "rules", "apply", "-f", f.Name())
	if code != 0 {
		t.Fatalf("%s: ctl rules apply: exit %d\n%s\n%s", s.name, code, out, errs)
	}
	return out
}

// list returns `ctl rules list` at this site, or "" with the error output
// when it fails.
func (s *msite) list(t testing.TB) (string, error) {
	code, out, errs := s.ctl(t, "rules", "list")
	if code != 0 {
		return "", fmt.Errorf("%s: ctl rules list: exit %d: %s", s.name, code, errs)
	}
	return out, nil
}

// metric returns the value of the first sample of name whose labels include
// every label in want ("k=v").
func (s *msite) metric(name string, want ...string) (float64, error) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + s.site.metrics + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		ok := true
		for _, w := range want {
			k, v, _ := strings.Cut(w, "=")
			ok = ok && strings.Contains(line, k+`="`+v+`"`)
		}
		if !ok {
			continue
		}
		f := strings.Fields(line)
		return strconv.ParseFloat(f[len(f)-1], 64)
	}
	return 0, fmt.Errorf("%s: no sample of %s %v", s.name, name, want)
}

// verdict is a milter's answer to one transaction: "continue" when it let
// MAIL and RCPT through, else the SMTP reply it gave at either.
type verdict struct {
	code int
	text string
}

func (v verdict) String() string {
	if v.code == 0 {
		return "continue"
	}
	return fmt.Sprintf("%d %s", v.code, v.text)
}

// decide runs CONNECT, HELO, MAIL FROM:<sender>, RCPT TO:<rcpt> against a
// milter socket and returns its verdict. The session is aborted afterwards:
// only the envelope decision is of interest.
func decide(socket, sender, rcpt string) (verdict, error) {
	// A protocol 2 offer: every action, every stage may be skipped, and every
	// event gets a reply (the verdict is read at each stage).
	cl := milter.NewClientWithOptions("unix", socket, milter.ClientOptions{
		ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second,
		ActionMask: milter.OptAddHeader | milter.OptChangeBody | milter.OptAddRcpt | milter.OptRemoveRcpt |
			milter.OptChangeHeader | milter.OptQuarantine,
		ProtocolMask: milter.OptNoConnect | milter.OptNoHelo | milter.OptNoMailFrom | milter.OptNoRcptTo |
			milter.OptNoBody | milter.OptNoHeaders | milter.OptNoEOH,
	})
	s, err := cl.Session()
	if err != nil {
		return verdict{}, err
	}
	defer s.Close()
	answer := func(act *milter.Action, err error) (verdict, bool, error) {
		if err != nil {
			return verdict{}, true, err
		}
		switch act.Code {
		case milter.ActContinue:
			return verdict{}, false, nil
		case milter.ActReplyCode:
			return verdict{code: act.SMTPCode, text: act.SMTPText}, true, nil
		case milter.ActReject:
			return verdict{code: 550, text: "reject"}, true, nil
		case milter.ActTempFail:
			return verdict{code: 451, text: "tempfail"}, true, nil
		}
		return verdict{code: -1, text: fmt.Sprintf("action %c", act.Code)}, true, nil
	}
	steps := []func() (*milter.Action, error){
		func() (*milter.Action, error) { return s.Conn("client.test", milter.FamilyInet, 40000, "192.0.2.99") },
		func() (*milter.Action, error) { return s.Helo("client.test") },
		func() (*milter.Action, error) { return s.Mail(sender, nil) },
		func() (*milter.Action, error) { return s.Rcpt(rcpt, nil) },
	}
	for _, step := range steps {
		if v, done, err := answer(step()); done {
			return v, err
		}
	}
	_ = s.Abort()
	return verdict{}, nil
}

// waitVerdict polls decide until the verdict's text contains want (or, for
// want == "", until it continues), and returns how long that took.
func waitVerdict(t testing.TB, within time.Duration, socket, sender, rcpt, want string) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(within)
	var last verdict
	var lastErr error
	for {
		v, err := decide(socket, sender, rcpt)
		if err == nil && ((want == "" && v.code == 0) || (want != "" && strings.Contains(v.text, want))) {
			return time.Since(start)
		}
		last, lastErr = v, err
		if time.Now().After(deadline) {
			t.Fatalf("after %s, %s from %s to %s: got %v (err %v), want %q", within, socket, sender, rcpt, last, lastErr, want)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// percentile returns the p-th percentile (nearest rank) of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(p/100*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// rulesFile builds a rules file: tenant "dest" (so mail to dest.test is
// inbound, never a relay attempt) and the given rule lines.
func rulesFile(ruleLines ...string) string {
	var b strings.Builder
	b.WriteString("tenants:\n  - {id: dest, domains: [dest.test]}\n")
	if len(ruleLines) == 0 {
		b.WriteString("rules: []\n")
		return b.String()
	}
	b.WriteString("rules:\n")
	for _, l := range ruleLines {
		b.WriteString("  - " + l + "\n")
	}
	return b.String()
}

// rejectRule is an access rule refusing one sender at MAIL FROM with a
// reply naming the rule.
func rejectRule(id, sender string) string {
	return fmt.Sprintf(`{id: %s, milter: access, scope: global, match: {sender: [%q]}, action: reject, reply: "550 5.7.1 refused by %s"}`, id, sender, id)
}

// waitSameLists waits until `ctl rules list` is identical at every site and
// returns it.
func waitSameLists(t testing.TB, tp *topology, within time.Duration) string {
	t.Helper()
	var last map[string]string
	var lastErr error
	deadline := time.Now().Add(within)
	for {
		lists := map[string]string{}
		var wg sync.WaitGroup
		var mu sync.Mutex
		lastErr = nil
		for _, n := range tp.names {
			wg.Add(1)
			go func(n string) {
				defer wg.Done()
				l, err := tp.sites[n].list(t)
				mu.Lock()
				defer mu.Unlock()
				lists[n] = l
				if err != nil {
					lastErr = err
				}
			}(n)
		}
		wg.Wait()
		same := lastErr == nil
		for _, n := range tp.names[1:] {
			same = same && lists[n] == lists[tp.names[0]]
		}
		if same {
			return lists[tp.names[0]]
		}
		last = lists
		if time.Now().After(deadline) {
			t.Fatalf("after %s the merged views differ (%v):\n%v", within, lastErr, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
