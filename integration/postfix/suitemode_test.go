package postfix

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/shared/milterrt"
)

// Suite mode (GEOMILTER_TEST_SUITE=1, the second pass of `make
// integration`): the same tests, with the milters hosted as a suite (issue
// 20). Per site, the geomilter milters the site would have started run in
// ONE `geomilter suite` process, members in the order of the smtpd_milters
// list the test uses, and Postfix gets one smtpd_milters entry for it
// (default_action=tempfail, as the snippet gives each milter). What
// addresses a milter keeps its meaning for the process that hosts it:
//   - s.socket(m) is the suite's socket, s.milters[m] the suite process (so
//     stopping or killing "the archive milter" stops the suite: isolation of
//     one milter is what suite mode gives up, docs/postfix.md);
//   - metricsPort(m) is the suite's metrics listener (metrics.listen + 4,
//     config.MetricsListen), where every member's metrics carry milter=<m>;
//   - a milter the tests build in process (serveForPostfix: the policy
//     milter, the capturing milter) is served as a one-member suite through
//     milterrt.NewSuite, its OnTransaction hook as the member's.

// suiteMode reports whether the tests host the milters as a suite.
var suiteMode = os.Getenv("GEOMILTER_TEST_SUITE") == "1"

// suiteMetricsOffset is the suite process's metrics port offset from
// metrics.listen (after access +0 … encrypt +3; config.ProcessNames).
const suiteMetricsOffset = 4

// suiteSocket is the socket of the site's suite process.
func (s *site) suiteSocket() string { return filepath.Join(s.sockDir, "suite.sock") }

// ownSocket is where milter m listens when it runs alone (its config
// section keeps that listen in suite mode too; the suite does not use it).
func (s *site) ownSocket(m string) string { return filepath.Join(s.sockDir, m+".sock") }

// suiteYAML records members (chain order) as the site's suite and returns
// the milters.suite section for its config (indented under milters:), or
// "" outside suite mode.
func (s *site) suiteYAML(members []string) string {
	if !suiteMode {
		return ""
	}
	s.suiteMembers = slices.Clone(members)
	return fmt.Sprintf("  suite: {listen: \"unix:%s\", members: [%s], shutdown_timeout: 5s}\n", s.suiteSocket(), strings.Join(members, ", "))
}

// snippetMilterRe finds a geomilter socket of postfix/main.cf.snippet.
var snippetMilterRe = regexp.MustCompile(`unix:/run/geomilter/([a-z]+)\.sock`)

// chainOrder is the order in which Postfix calls the four milters: that of
// smtpd_milters in postfix/main.cf.snippet (access, policy, encrypt,
// archive: not milterNames' metrics-port order).
func chainOrder(t testing.TB) []string {
	value := paramValue(repoFile(t, "postfix/main.cf.snippet"), "smtpd_milters")
	var out []string
	for _, m := range snippetMilterRe.FindAllStringSubmatch(value, -1) {
		if slices.Contains(milterNames, m[1]) && !slices.Contains(out, m[1]) {
			out = append(out, m[1])
		}
	}
	if len(out) != len(milterNames) {
		t.Fatalf("postfix/main.cf.snippet: smtpd_milters lists %v, want the %d geomilter milters", out, len(milterNames))
	}
	return out
}

// paramValue is the value of a main.cf parameter with its continuation
// lines ("" if it is not defined).
func paramValue(cf, name string) string {
	var b strings.Builder
	in := false
	for _, l := range strings.Split(cf, "\n") {
		if in && l != "" && (l[0] == ' ' || l[0] == '\t') {
			b.WriteString(" " + strings.TrimSpace(l))
			continue
		}
		in = false
		if f := strings.SplitN(l, "=", 2); len(f) == 2 && strings.TrimSpace(f[0]) == name && !strings.HasPrefix(l, "#") {
			in = true
			b.WriteString(strings.TrimSpace(f[1]))
		}
	}
	return b.String()
}

// suiteSnippet is postfix/main.cf.snippet as the harness installs it: in
// suite mode its smtpd_milters (four entries) becomes the one entry of the
// suite's socket, with the same default_action; non_smtpd_milters follows
// it ($smtpd_milters).
func suiteSnippet(t testing.TB, snippet string) string {
	if !suiteMode {
		return snippet
	}
	// The suite's one entry keeps the snippet's default_action: check that
	// it is still the one this entry states.
	if value := paramValue(snippet, "smtpd_milters"); strings.Count(value, "default_action=tempfail") != len(milterNames) {
		t.Fatalf("postfix/main.cf.snippet: smtpd_milters %q: want default_action=tempfail on each of the %d milters", value, len(milterNames))
	}
	return dropParam(snippet, "smtpd_milters") +
		"\n# GEOMILTER_TEST_SUITE=1: the four milters hosted as one suite, one socket.\n" +
		"smtpd_milters = { unix:/run/geomilter/suite.sock, default_action=tempfail }\n"
}

// startSuite runs the site's `geomilter suite` (members from suiteYAML)
// with group postfix, so its socket (mode 0660) is reachable by smtpd and
// cleanup; every member's s.milters entry is the suite process. why is
// logged: in suite mode "start the archive milter" starts the suite.
func (s *site) startSuite(why string) *proc {
	t := s.h.t
	t.Helper()
	if len(s.suiteMembers) == 0 {
		t.Fatalf("%s: suite mode, but the site's config has no suite (suiteYAML not called)", s.name)
	}
	gid, err := lookupID("group", "postfix")
	if err != nil {
		t.Fatal(err)
	}
	if why != "" {
		t.Logf("suite mode: %s: starting %s's geomilter suite (members %s)", why, s.name, strings.Join(s.suiteMembers, ", "))
	}
	sock := s.suiteSocket()
	p := s.h.start(fmt.Sprintf("%s geomilter suite (%s)", s.name, strings.Join(s.suiteMembers, ", ")), s.ns, procOpts{gid: gid, ready: func() error {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
		}
		return err
	}}, binPath, "suite", "--config", s.gmConfig)
	for _, m := range s.suiteMembers {
		s.milters[m] = p
	}
	return p
}

// hostOf names what runs milter m at this site, for log lines: "the archive
// milter", or in suite mode "the suite process hosting archive (access,
// policy, encrypt, archive)".
func (s *site) hostOf(m string) string {
	if suiteMode && slices.Contains(s.suiteMembers, m) {
		return fmt.Sprintf("the suite process hosting %s (%s)", m, strings.Join(s.suiteMembers, ", "))
	}
	return "the " + m + " milter"
}

// newTestServer is the server of serveForPostfix: m itself, or in suite
// mode m as the one member of a suite (milterrt.NewSuite), with o's
// OnTransaction as the member's hook (the suite calls it with the member's
// own State).
func newTestServer(m milterrt.Milter, o milterrt.Options) *milterrt.Server {
	if !suiteMode {
		return milterrt.New(m, o)
	}
	member := milterrt.SuiteMember{Milter: m, OnTransaction: o.OnTransaction}
	o.OnTransaction = nil
	return milterrt.New(milterrt.NewSuite("suite", []milterrt.SuiteMember{member}, milterrt.SuiteOptions{Logger: zerolog.Nop()}), o)
}

// memberCheck is, from a /healthz answer, the state of member m's check
// named check: "<check>:<m>" in a suite, plain "<check>" for a milter alone
// (shared/service). The whole answer if it is not JSON or has neither, so a
// caller's Contains still sees what there is.
func memberCheck(healthz, check, m string) string {
	var rep struct {
		Checks map[string]string `json:"checks"`
	}
	if json.Unmarshal([]byte(healthz), &rep) != nil {
		return healthz
	}
	if v, ok := rep.Checks[check+":"+m]; ok {
		return v
	}
	if v, ok := rep.Checks[check]; ok {
		return v
	}
	return healthz
}

// TestSuiteModeHarness: what Postfix is given is what the mode says. Alone:
// four smtpd_milters entries, one socket and process per milter. Suite mode:
// one entry, the suite's socket, one process for all four, whose /healthz
// has each member's own checks and no member's own socket exists.
func TestSuiteModeHarness(t *testing.T) {
	h := newHarness(t)
	s := h.newSite("sui", "")
	o := siteOpts{withMilters: true}
	s.startMilters(o)
	s.startPostfix(o)
	entries := regexp.MustCompile(`\{\s*unix:([^,\s]+)\s*,\s*default_action=tempfail\s*\}`).FindAllStringSubmatch(s.postconf("-h", "smtpd_milters"), -1)
	var socks []string
	for _, e := range entries {
		socks = append(socks, e[1])
	}
	if !suiteMode {
		want := []string{}
		for _, m := range chainOrder(t) {
			want = append(want, s.ownSocket(m))
		}
		if !slices.Equal(socks, want) {
			t.Fatalf("smtpd_milters sockets %v, want %v", socks, want)
		}
		for _, m := range milterNames {
			if s.milters[m] == nil || (m != "access" && s.milters[m] == s.milters["access"]) {
				t.Fatalf("milter %s: no process of its own", m)
			}
		}
		return
	}
	if !slices.Equal(socks, []string{s.suiteSocket()}) {
		t.Fatalf("suite mode: smtpd_milters sockets %v, want only %s", socks, s.suiteSocket())
	}
	if want := chainOrder(t); !slices.Equal(s.suiteMembers, want) {
		t.Fatalf("suite members %v, want Postfix's chain order %v", s.suiteMembers, want)
	}
	for _, m := range milterNames {
		if s.milters[m] == nil || s.milters[m] != s.milters["access"] || s.socket(m) != s.suiteSocket() {
			t.Fatalf("suite mode: milter %s is not hosted by the suite process", m)
		}
		if _, err := os.Stat(s.ownSocket(m)); !os.IsNotExist(err) {
			t.Fatalf("suite mode: %s's own socket exists (%v): a separate process listens", m, err)
		}
		out, err := s.health(m)
		if err != nil {
			t.Fatal(err)
		}
		var rep struct {
			Checks map[string]string `json:"checks"`
		}
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("/healthz of the suite: %v\n%s", err, out)
		}
		if _, ok := rep.Checks["rules:"+m]; !ok {
			t.Fatalf("suite /healthz has no rules:%s check: %s", m, out)
		}
	}
	t.Logf("suite mode: Postfix has one milter, %s, hosting %s", s.suiteSocket(), strings.Join(s.suiteMembers, ", "))
}
