package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	milter "github.com/emersion/go-milter"

	"github.com/geomilter/geomilter/shared/dnstest"
	"github.com/geomilter/geomilter/shared/milterrt/miltertest"
	"github.com/geomilter/geomilter/shared/redistest"
	"github.com/geomilter/geomilter/shared/service"
)

// suiteHost is a host whose config runs all four milters as one suite
// (geomilter suite), standalone: rules from a file, DNS from an in-process
// server, the trail to a file sink, the archive journal to a directory.
type suiteHost struct {
	dir, cfgPath, sock string
}

// newSuiteHost writes the host; extra is added to the config's top level
// (a redis section).
func newSuiteHost(t *testing.T, extra string) *suiteHost {
	t.Helper()
	dir := t.TempDir()
	// Socket paths are limited to 108 bytes, which t.TempDir can exceed.
	sockDir, err := os.MkdirTemp("", "gms")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	dns := dnstest.Start(t, `
example.org. 300 IN SOA ns.example.org. h.example.org. 1 3600 600 86400 300
example.org. 300 IN TXT "v=spf1 ip4:198.51.100.0/24 -all"
`)
	h := &suiteHost{dir: dir, cfgPath: filepath.Join(dir, "geomilter.yaml"), sock: filepath.Join(sockDir, "suite.sock")}
	write(t, filepath.Join(dir, "rules.yaml"), `
tenants:
  - {id: acme, domains: [acme.example]}
rules:
  - {id: block-spammer, milter: access, scope: global, match: {sender: [spam@example.org]}, action: reject, reply: "550 5.7.1 Go away"}
`)
	write(t, h.cfgPath, `site: lax
host: mx1
`+extra+`
rules_file: `+dir+`/rules.yaml
state_dir: `+dir+`/state
spool_dir: `+dir+`/spool
log: {level: warn}
dns: {servers: ["`+dns.Addr()+`"]}
trail:
  sync_every: 10ms
  sinks:
    - {name: local, type: file, path: `+dir+`/trail.ndjson}
metrics: {listen: "127.0.0.1:0"}
milters:
  access: {}
  policy: {authserv_id: mx1.acme.example}
  encrypt: {}
  archive: {journal: {targets: [{name: files, type: dir, path: `+dir+`/archive}]}}
  suite:
    listen: "unix:`+h.sock+`"
    metrics_listen: "`+freeAddr(t)+`"
    members: [access, policy, encrypt, archive]
`)
	return h
}

// freeAddr is a free 127.0.0.1 port, for a metrics address the ops tools
// can find in the config (port 0 would be chosen at start, unknown to them).
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// suiteTxn is one transaction on its own connection, with the queue id
// Postfix would send at MAIL, so the trail events can be told apart.
func suiteTxn(queueID, sender, body string) miltertest.Transaction {
	return miltertest.Transaction{
		Peer:   &miltertest.Peer{Host: "mail.example.org", Family: milter.FamilyInet, Port: 40000, Addr: "198.51.100.7", Helo: "mail.example.org"},
		Sender: sender,
		Rcpts:  []miltertest.Rcpt{{Addr: "alice@acme.example"}},
		Macros: map[milter.Code][]string{milter.CodeMail: {"i", queueID}},
		Headers: []miltertest.Header{
			{Name: "From", Value: " <" + strings.Trim(sender, "<>") + ">"},
			{Name: "To", Value: " <alice@acme.example>"},
			{Name: "Subject", Value: " suite " + queueID},
			{Name: "Message-ID", Value: " <" + queueID + "@example.org>"},
		},
		Body: strings.NewReader(body),
	}
}

// TestSuite starts `geomilter suite` from a config with all four milters as
// members and drives it as Postfix would: one socket serves them all; each
// member writes its trail events to its own spool (the same directory as
// when it runs alone); a refusal by an earlier member stops the later ones
// (the archive journals only the accepted message); the members' metrics
// share one registry without colliding, and /healthz names the per-member
// checks.
func TestSuite(t *testing.T) {
	h := newSuiteHost(t, "")
	var logs bytes.Buffer
	p, err := service.StartSuite(h.cfgPath, factories, &logs)
	if err != nil {
		t.Fatalf("StartSuite: %v\n%s", err, logs.String())
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			if err := p.Stop(); err != nil {
				t.Errorf("Stop: %v", err)
			}
		}
	}
	t.Cleanup(stop)
	if got := strings.Join(p.Members(), ","); got != "access,policy,encrypt,archive" {
		t.Errorf("members %s", got)
	}
	// One listener: the suite's socket; the members have none of their own.
	if a := p.Addr().String(); a != h.sock {
		t.Errorf("listening on %s, want %s", a, h.sock)
	}
	socks, _ := filepath.Glob(filepath.Join(filepath.Dir(h.sock), "*"))
	if len(socks) != 1 {
		t.Errorf("sockets %v, want only the suite's", socks)
	}

	srv := &miltertest.Server{Network: "unix", Addr: h.sock}
	gtube := "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n"
	for _, tc := range []struct {
		queueID, sender, body string
		stage                 string
		code                  milter.ActionCode
	}{
		{"QOK", "bob@example.org", "Hello Alice.\r\n", "eom", milter.ActAccept},
		{"QACCESS", "spam@example.org", "Hello Alice.\r\n", "mail", milter.ActReplyCode}, // access: the sender rule
		{"QPOLICY", "bob@example.org", gtube, "eom", milter.ActReplyCode},                // policy: GTUBE scores past reject
	} {
		c := srv.Dial(t)
		res := c.Send(t, suiteTxn(tc.queueID, tc.sender, tc.body))
		if res.Stage != tc.stage || res.Reply.Code != tc.code {
			t.Errorf("%s: %s, want %c at %s", tc.queueID, res, tc.code, tc.stage)
		}
		if err := c.Close(); err != nil {
			t.Errorf("%s: close: %v", tc.queueID, err)
		}
	}

	// The metrics of four members on one registry, each under its label.
	metrics := get(t, "http://"+p.MetricsAddr()+"/metrics")
	for _, want := range []string{
		`geomilter_milter_sessions_total{milter="suite"} 3`,
		`geomilter_archive_messages_total{result="journaled"} 1`,
		`geomilter_trail_events_total{milter="access"`,
		`geomilter_trail_events_total{milter="policy"`,
		`geomilter_trail_events_total{milter="encrypt"`,
		`geomilter_trail_events_total{milter="archive"`,
		`geomilter_spool_records{milter="policy"}`,
		`geomilter_rules_snapshot_rules{milter="access"}`,
		`geomilter_rules_snapshot_rules{milter="archive"}`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	var health struct {
		Status string            `json:"status"`
		Checks map[string]string `json:"checks"`
	}
	if err := json.Unmarshal([]byte(get(t, "http://"+p.MetricsAddr()+"/healthz")), &health); err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"milter", "trail:access", "trail:policy", "trail:encrypt", "trail:archive", "rules:access", "rules:archive", "journal"} {
		if _, ok := health.Checks[c]; !ok {
			t.Errorf("/healthz lacks the check %q: %+v", c, health)
		}
	}
	if status := get(t, "http://"+p.MetricsAddr()+"/status"); !strings.Contains(status, "suite (access, policy, encrypt, archive)") {
		t.Errorf("/status does not name the suite and its members")
	}
	// The ops tools find the members in the suite's process.
	var out, errw bytes.Buffer
	run([]string{"ctl", "--config", h.cfgPath, "status"}, &out, &errw)
	for _, m := range p.Members() {
		if !regexp.MustCompile(`(?m)^  ` + m + ` \(suite\) +` + regexp.QuoteMeta(p.MetricsAddr()) + ` +up `).MatchString(out.String()) {
			t.Errorf("ctl status has no up row for %s in the suite:\n%s%s", m, out.String(), errw.String())
		}
	}
	out.Reset()
	errw.Reset()
	if code := run([]string{"ctl", "--config", h.cfgPath, "archive", "status"}, &out, &errw); code != 0 || !strings.Contains(out.String(), "files") {
		t.Errorf("ctl archive status: exit %d\n%s%s", code, out.String(), errw.String())
	}
	stop() // syncs every spool and flushes the file sink
	if strings.Contains(logs.String(), "not registered") || strings.Contains(logs.String(), `"level":"error"`) {
		t.Errorf("the suite logged errors:\n%s", logs.String())
	}

	// Each member's trail spool is where it is when the milter runs alone.
	for _, m := range p.Members() {
		if fi, err := os.Stat(filepath.Join(h.dir, "spool", m, "trail")); err != nil || !fi.IsDir() {
			t.Errorf("no trail spool for %s: %v", m, err)
		}
	}
	// Trail events by queue id and member.
	events := map[string]map[string][]string{} // queue id -> milter -> actions
	f, err := os.Open(filepath.Join(h.dir, "trail.ndjson"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var ev struct {
			Milter  string `json:"milter"`
			QueueID string `json:"queue_id"`
			Action  string `json:"action"`
		}
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("trail line %q: %v", sc.Text(), err)
		}
		if events[ev.QueueID] == nil {
			events[ev.QueueID] = map[string][]string{}
		}
		events[ev.QueueID][ev.Milter] = append(events[ev.QueueID][ev.Milter], ev.Action)
	}
	for _, want := range []struct {
		queueID, milter, actions string
	}{
		{"QOK", "access", "accept"}, {"QOK", "policy", "accept"}, {"QOK", "encrypt", "accept"}, {"QOK", "archive", "accept"},
		{"QACCESS", "access", "reject"},
		{"QPOLICY", "policy", "reject"},
	} {
		if got := strings.Join(events[want.queueID][want.milter], ","); got != want.actions {
			t.Errorf("%s: %s trail events %q, want %q (all: %v)", want.queueID, want.milter, got, want.actions, events)
		}
	}
	// Members after the one that refused never saw the message.
	for _, q := range []string{"QACCESS", "QPOLICY"} {
		for _, a := range events[q]["archive"] {
			if a == "accept" {
				t.Errorf("%s: the archive accepted a message an earlier member refused: %v", q, events[q])
			}
		}
	}
	// The journal has the accepted message only.
	var journaled []string
	filepath.WalkDir(filepath.Join(h.dir, "archive"), func(path string, d os.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(path, ".eml") {
			b, _ := os.ReadFile(path)
			for _, q := range []string{"QOK", "QACCESS", "QPOLICY"} {
				if bytes.Contains(b, []byte("<"+q+"@example.org>")) {
					journaled = append(journaled, q)
				}
			}
		}
		return nil
	})
	if strings.Join(journaled, ",") != "QOK" {
		t.Errorf("journaled %v, want [QOK]", journaled)
	}
}

// TestSuiteMemberAlone: a suite member without its own listen does not run
// alone, and says why; one with a listen does (the same config serves both
// shapes).
func TestSuiteMemberAlone(t *testing.T) {
	h := newSuiteHost(t, "")
	var logs bytes.Buffer
	_, err := service.Start("policy", h.cfgPath, factories["policy"], &logs)
	if err == nil || !strings.Contains(err.Error(), "milters.policy has no listen: policy runs in the suite here (geomilter suite)") {
		t.Errorf("policy alone: err = %v", err)
	}
	cfg, _ := os.ReadFile(h.cfgPath)
	alone := filepath.Join(filepath.Dir(h.sock), "access.sock")
	write(t, h.cfgPath, strings.Replace(string(cfg), "  access: {}", `  access: {listen: "unix:`+alone+`"}`, 1))
	p, err := service.Start("access", h.cfgPath, factories["access"], &logs)
	if err != nil {
		t.Fatalf("access alone: %v\n%s", err, logs.String())
	}
	defer p.Stop()
	c := (&miltertest.Server{Network: "unix", Addr: alone}).Dial(t)
	if res := c.Send(t, suiteTxn("QA", "spam@example.org", "x\r\n")); res.Stage != "mail" || res.Reply.Code != milter.ActReplyCode {
		t.Errorf("access alone: %s, want its sender rule at mail", res)
	}
}

// TestSuiteStartErrors: what stops `geomilter suite` before it listens says
// what to fix.
func TestSuiteStartErrors(t *testing.T) {
	h := newSuiteHost(t, "")
	cfg, _ := os.ReadFile(h.cfgPath)
	noSuite := filepath.Join(h.dir, "nosuite.yaml")
	write(t, noSuite, string(cfg[:bytes.Index(cfg, []byte("milters:"))])+"milters:\n  access: {listen: \"unix:/run/geomilter/access.sock\"}\n")
	for _, tt := range []struct {
		name, cfgPath string
		factories     map[string]service.Factory
		want          string
	}{
		{"no suite section", noSuite, factories, "no milters.suite section: add one (listen, members)"},
		{"a member this program lacks", h.cfgPath, map[string]service.Factory{"access": factories["access"]}, `milters.suite.members: no milter "policy" in this program`},
		{"an invalid config", filepath.Join(h.dir, "missing.yaml"), factories, "cannot read config"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var logs bytes.Buffer
			p, err := service.StartSuite(tt.cfgPath, tt.factories, &logs)
			if err == nil {
				p.Stop()
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

// TestSuiteReload: SIGHUP's reload reaches every member: the rules file is
// re-read for each, and the next transaction is decided by the new rules.
func TestSuiteReload(t *testing.T) {
	h := newSuiteHost(t, "")
	var logs bytes.Buffer
	p, err := service.StartSuite(h.cfgPath, factories, &logs)
	if err != nil {
		t.Fatalf("StartSuite: %v\n%s", err, logs.String())
	}
	defer p.Stop()
	srv := &miltertest.Server{Network: "unix", Addr: h.sock}
	if res := srv.Dial(t).Send(t, suiteTxn("Q1", "bob@example.org", "Hello.\r\n")); res.Reply.Code != milter.ActAccept {
		t.Fatalf("before the reload: %s", res)
	}
	rules, _ := os.ReadFile(filepath.Join(h.dir, "rules.yaml"))
	write(t, filepath.Join(h.dir, "rules.yaml"), string(rules)+
		"  - {id: no-bob, milter: access, scope: global, match: {sender: [bob@example.org]}, action: reject, reply: \"550 5.7.1 Not bob\"}\n")
	p.Reload()
	res := srv.Dial(t).Send(t, suiteTxn("Q2", "bob@example.org", "Hello.\r\n"))
	if res.Reply.Code != milter.ActReplyCode || res.Reply.SMTPCode != 550 || !strings.Contains(res.Reply.SMTPText, "Not bob") {
		t.Errorf("after the reload: %s, want the new access rule", res)
	}
	metrics := get(t, "http://"+p.MetricsAddr()+"/metrics")
	for _, m := range p.Members() { // the start and the reload, each member's own syncer
		for _, want := range []string{
			`geomilter_rules_reloads_total{milter="` + m + `",result="changed"} 2`,
			`geomilter_rules_snapshot_rules{milter="` + m + `"} 2`,
		} {
			if !strings.Contains(metrics, want) {
				t.Errorf("/metrics lacks %s", want)
			}
		}
	}
}

// TestSuiteRedis: with a redis section the members share the process's
// store and Redis watch; their metrics (rate counters, greylisting, breakers)
// still register on one registry without colliding, and the trail reaches
// the site's stream from every member.
func TestSuiteRedis(t *testing.T) {
	rs := redistest.Start(t)
	h := newSuiteHost(t, "redis: {local: {addr: \""+rs.Addr+"\"}}")
	var logs bytes.Buffer
	p, err := service.StartSuite(h.cfgPath, factories, &logs)
	if err != nil {
		t.Fatalf("StartSuite: %v\n%s", err, logs.String())
	}
	defer p.Stop()
	c := (&miltertest.Server{Network: "unix", Addr: h.sock}).Dial(t)
	c.Send(t, suiteTxn("QR", "spam@example.org", "x\r\n")) // no rules in Redis yet: the outcome is not the point
	metrics := get(t, "http://"+p.MetricsAddr()+"/metrics")
	for _, want := range []string{`geomilter_redis_up{milter="suite"`, `geomilter_rules_snapshot_source{milter="policy"`, `geomilter_milter_sessions_total{milter="suite"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if health := get(t, "http://"+p.MetricsAddr()+"/healthz"); !strings.Contains(health, `"redis"`) || !strings.Contains(health, `"rules:encrypt"`) {
		t.Errorf("/healthz: %s", health)
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	cl := &http.Client{Timeout: 10 * time.Second}
	resp, err := cl.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
