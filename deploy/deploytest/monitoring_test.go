package deploytest

import (
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// repoRoot is the module root, two levels above this package.
const repoRoot = "../.."

var (
	dashboardPath = filepath.Join(repoRoot, "deploy/grafana/geomilter.json")
	alertsPath    = filepath.Join(repoRoot, "deploy/prometheus/geomilter-alerts.yml")
	scrapePath    = filepath.Join(repoRoot, "deploy/prometheus/prometheus.yml")
)

// metricRef finds geomilter metric names in a PromQL expression.
var metricRef = regexp.MustCompile(`\bgeomilter_[a-z0-9_]+`)

// fullName is a complete geomilter metric name as a Go string literal holds it.
var fullName = regexp.MustCompile(`^geomilter_[a-z0-9_]+$`)

// knownMetrics is what the Go sources can export: complete names written as
// literals, and patterns for names built by concatenation
// ("geomilter_" + milter + "_rate_counts_total", prefix + "_sent_total").
type knownMetrics struct {
	names    map[string]bool
	patterns []*regexp.Regexp
}

// has reports whether name is exported, also as a histogram's series
// (NAME_bucket, NAME_sum, NAME_count).
func (k knownMetrics) has(name string) bool {
	for _, n := range []string{name, strings.TrimSuffix(name, "_bucket"), strings.TrimSuffix(name, "_sum"), strings.TrimSuffix(name, "_count")} {
		if k.names[n] {
			return true
		}
		for _, p := range k.patterns {
			if p.MatchString(n) {
				return true
			}
		}
	}
	return false
}

// scanSources reads every non-test Go file of the module (deploy/ aside) and
// collects the metric names it can export.
func scanSources(t *testing.T, root string) knownMetrics {
	t.Helper()
	k := knownMetrics{names: map[string]bool{}}
	var concats [][]ast.Expr
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch d.Name() {
			case ".git", "testdata", "deploy", "bin", "dist":
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return fmt.Errorf("parse %s: %w", path, err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.BasicLit:
				if s, ok := stringLit(n); ok && fullName.MatchString(s) {
					k.names[s] = true
				}
			case *ast.BinaryExpr:
				if n.Op == token.ADD {
					concats = append(concats, flatten(n))
					return false // the operands are literals or names; nested literals seen below
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// A concatenation makes a metric name when it starts with a "geomilter_"
	// literal, or with a variable and goes on with a "_suffix" literal (the
	// variable then holds one of the name literals, as drain's prefix does).
	var prefixes []string
	for n := range k.names {
		prefixes = append(prefixes, regexp.QuoteMeta(n))
	}
	sort.Strings(prefixes)
	anyPrefix := "(?:" + strings.Join(prefixes, "|") + ")"
	for _, parts := range concats {
		var re strings.Builder
		lits, first := 0, ""
		for i, p := range parts {
			s, ok := stringLit(p)
			if i == 0 {
				first = s
			}
			switch {
			case ok:
				lits++
				re.WriteString(regexp.QuoteMeta(s))
			case i == 0:
				re.WriteString(anyPrefix)
			default:
				re.WriteString(`[a-z0-9_]+`)
			}
		}
		last, _ := stringLit(parts[len(parts)-1])
		namey := strings.HasPrefix(first, "geomilter_") ||
			(first == "" && regexp.MustCompile(`^_[a-z0-9_]+$`).MatchString(last))
		if lits == 0 || !namey {
			continue
		}
		// A literal of the chain may also be a complete name on its own.
		for _, p := range parts {
			if s, ok := stringLit(p); ok && fullName.MatchString(s) {
				k.names[s] = true
			}
		}
		k.patterns = append(k.patterns, regexp.MustCompile("^"+re.String()+"$"))
	}
	if len(k.names) < 50 {
		t.Fatalf("found only %d metric names in the Go sources under %s: the scan is broken", len(k.names), root)
	}
	return k
}

func flatten(e ast.Expr) []ast.Expr {
	if b, ok := e.(*ast.BinaryExpr); ok && b.Op == token.ADD {
		return append(flatten(b.X), flatten(b.Y)...)
	}
	if p, ok := e.(*ast.ParenExpr); ok {
		return flatten(p.X)
	}
	return []ast.Expr{e}
}

func stringLit(e ast.Expr) (string, bool) {
	l, ok := e.(*ast.BasicLit)
	if !ok || l.Kind != token.STRING {
		return "", false
	}
	s, err := strconv.Unquote(l.Value)
	return s, err == nil
}

// unknownMetrics returns the geomilter metric names in exprs that k does not
// know, each with where it was used.
func unknownMetrics(k knownMetrics, exprs map[string]string) []string {
	var bad []string
	for where, e := range exprs {
		for _, name := range metricRef.FindAllString(e, -1) {
			if !k.has(name) {
				bad = append(bad, fmt.Sprintf("%s: unknown metric %s", where, name))
			}
		}
	}
	sort.Strings(bad)
	return bad
}

// dashboard is the part of the Grafana JSON model the checks read.
type dashboard struct {
	Title      string  `json:"title"`
	UID        string  `json:"uid"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		UID string `json:"uid"`
	} `json:"datasource"`
	GridPos struct{ H, W, X, Y int } `json:"gridPos"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // collapsed rows
}

func loadDashboard(t *testing.T) (dashboard, map[string]string) {
	t.Helper()
	b, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	exprs := map[string]string{}
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			for _, tg := range p.Targets {
				exprs[fmt.Sprintf("panel %d %q target %s", p.ID, p.Title, tg.RefID)] = tg.Expr
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	for _, v := range d.Templating.List {
		switch q := v.Query.(type) {
		case string:
			exprs["variable "+v.Name] = q
		case map[string]any:
			if s, ok := q["query"].(string); ok {
				exprs["variable "+v.Name] = s
			}
		}
	}
	return d, exprs
}

// rulesFile is the Prometheus rules file format.
type rulesFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func loadRules(t *testing.T) (rulesFile, map[string]string) {
	t.Helper()
	b, err := os.ReadFile(alertsPath)
	if err != nil {
		t.Fatal(err)
	}
	var rf rulesFile
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true) // a misspelt key (annotation:) is an error, as promtool makes it
	if err := dec.Decode(&rf); err != nil {
		t.Fatalf("%s: %v", alertsPath, err)
	}
	exprs := map[string]string{}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			exprs["alert "+r.Alert] = r.Expr
		}
	}
	return rf, exprs
}

func TestDashboardParsesAndIsComplete(t *testing.T) {
	d, exprs := loadDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Errorf("dashboard has no uid or title")
	}
	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
	}
	for _, v := range []string{"datasource", "mta_site", "host", "milter"} {
		if !vars[v] {
			t.Errorf("dashboard lacks the variable $%s", v)
		}
	}
	ids := map[int]string{}
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if prev, dup := ids[p.ID]; dup {
				t.Errorf("panel id %d used by %q and %q", p.ID, prev, p.Title)
			}
			ids[p.ID] = p.Title
			if p.GridPos.X+p.GridPos.W > 24 || p.GridPos.W <= 0 || p.GridPos.H <= 0 {
				t.Errorf("panel %q: gridPos %+v outside the 24-column grid", p.Title, p.GridPos)
			}
			if p.Type != "row" {
				if len(p.Targets) == 0 {
					t.Errorf("panel %q has no query", p.Title)
				}
				if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
					t.Errorf("panel %q does not use the $datasource variable", p.Title)
				}
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	for where, e := range exprs {
		if strings.TrimSpace(e) == "" {
			t.Errorf("%s: empty expression", where)
			continue
		}
		if !strings.HasPrefix(where, "variable") && strings.Contains(e, "geomilter_") &&
			!strings.Contains(e, `mta_site=~"$mta_site"`) {
			t.Errorf("%s: does not filter by the $mta_site/$host/$milter variables: %s", where, e)
		}
	}
	// What the brief asks to see, by the metric that shows it.
	all := strings.Join(values(exprs), "\n")
	for _, m := range []string{"geomilter_milter_transactions_total", "geomilter_milter_stage_duration_seconds_bucket",
		"geomilter_redis_breaker_state", "geomilter_redis_replica_last_io_seconds", "geomilter_spool_sink_pending_records",
		"geomilter_archive_target_backlog_records", "geomilter_policy_list_hits_total", "geomilter_policy_spam_actions_total",
		"geomilter_policy_scanner_requests_total", "geomilter_dns_budget_exhausted_total"} {
		if !strings.Contains(all, m) {
			t.Errorf("no dashboard panel shows %s", m)
		}
	}
}

func values(m map[string]string) []string {
	var v []string
	for _, s := range m {
		v = append(v, s)
	}
	return v
}

func TestAlertRulesAreWellFormed(t *testing.T) {
	rf, _ := loadRules(t)
	durRe := regexp.MustCompile(`^([0-9]+(ms|s|m|h|d|w|y))+$`) // Prometheus duration
	seen := map[string]bool{}
	n := 0
	for _, g := range rf.Groups {
		if g.Name == "" {
			t.Errorf("a rule group has no name")
		}
		for _, r := range g.Rules {
			n++
			where := fmt.Sprintf("group %s alert %q", g.Name, r.Alert)
			switch {
			case r.Alert == "":
				t.Errorf("group %s: a rule without alert: name", g.Name)
				continue
			case seen[r.Alert]:
				t.Errorf("%s: alert defined twice", where)
			}
			seen[r.Alert] = true
			if strings.TrimSpace(r.Expr) == "" {
				t.Errorf("%s: no expr", where)
			}
			if r.For != "" && !durRe.MatchString(r.For) {
				t.Errorf("%s: for: %q is not a duration", where, r.For)
			}
			if s := r.Labels["severity"]; s != "critical" && s != "warning" {
				t.Errorf("%s: severity %q, want critical or warning", where, s)
			}
			if r.Annotations["summary"] == "" || len(r.Annotations["description"]) < 40 {
				t.Errorf("%s: needs a summary and a description naming what to check", where)
			}
			if strings.Count(r.Expr, "(") != strings.Count(r.Expr, ")") || strings.Count(r.Expr, "{") != strings.Count(r.Expr, "}") {
				t.Errorf("%s: unbalanced brackets in %q", where, r.Expr)
			}
		}
	}
	// The situations issue 18 names must each have an alert.
	for _, a := range []string{"GeomilterMilterDown", "GeomilterNotServing", "GeomilterPeerSiteDark",
		"GeomilterPeerReplicaUnreachable", "GeomilterRedisPrimaryBreakerOpen", "GeomilterScannerBreakerOpen",
		"GeomilterTrailBacklogGrowing", "GeomilterArchiveBacklogGrowing", "GeomilterArchiveJournalFull",
		"GeomilterDNSDegradedHigh", "GeomilterGreylistDegraded"} {
		if !seen[a] {
			t.Errorf("no alert %s", a)
		}
	}
	t.Logf("%d alert rules", n)
}

func TestMetricNamesExistInCode(t *testing.T) {
	k := scanSources(t, repoRoot)
	_, dexprs := loadDashboard(t)
	_, rexprs := loadRules(t)
	exprs := map[string]string{}
	for w, e := range dexprs {
		exprs["dashboard "+w] = e
	}
	for w, e := range rexprs {
		exprs["rules "+w] = e
	}
	for _, bad := range unknownMetrics(k, exprs) {
		t.Error(bad)
	}
	// Series Prometheus makes itself, and the scrape jobs they come from.
	jobs := scrapeJobs(t)
	for where, e := range exprs {
		for _, m := range regexp.MustCompile(`job="([^"]+)"`).FindAllStringSubmatch(e, -1) {
			if !jobs[m[1]] {
				t.Errorf("%s: job %q is not in %s", where, m[1], scrapePath)
			}
		}
	}
}

// TestUnknownMetricsCheckCanFail shows the check above reports a misspelt or
// invented name, and accepts histogram series and concatenated names.
func TestUnknownMetricsCheckCanFail(t *testing.T) {
	k := scanSources(t, repoRoot)
	for _, tc := range []struct {
		expr string
		ok   bool
	}{
		{`rate(geomilter_milter_decisions_total[5m])`, true},
		{`rate(geomilter_milter_decision_total[5m])`, false},
		{`histogram_quantile(0.99, rate(geomilter_milter_stage_duration_seconds_bucket[5m]))`, true},
		{`rate(geomilter_trail_drain_sent_total[5m])`, true},             // prefix + "_sent_total"
		{`rate(geomilter_archive_journal_drain_failed_total[5m])`, true}, // another prefix
		{`rate(geomilter_trail_drain_snet_total[5m])`, false},
		{`rate(geomilter_access_rate_fallbacks_total[5m])`, true}, // "geomilter_" + milter + "_rate_fallbacks_total"
		{`geomilter_spool_records > 0 and geomilter_spool_recrods > 0`, false},
	} {
		bad := unknownMetrics(k, map[string]string{"x": tc.expr})
		if (len(bad) == 0) != tc.ok {
			t.Errorf("%s: unknown %v, want ok=%v", tc.expr, bad, tc.ok)
		}
	}
}

func scrapeJobs(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(scrapePath)
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		RuleFiles     []string `yaml:"rule_files"`
		ScrapeConfigs []struct {
			JobName string `yaml:"job_name"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatalf("%s: %v", scrapePath, err)
	}
	jobs := map[string]bool{}
	for _, s := range cfg.ScrapeConfigs {
		jobs[s.JobName] = true
	}
	found := false
	for _, f := range cfg.RuleFiles {
		found = found || filepath.Base(f) == filepath.Base(alertsPath)
	}
	if !found {
		t.Errorf("%s: rule_files does not load %s", scrapePath, filepath.Base(alertsPath))
	}
	return jobs
}

// TestPromtool runs Prometheus's own checker where it is installed (Debian:
// package prometheus, not installed by scripts/install-deps.sh: it is about
// 100 MB and starts a Prometheus server on install; PROMTOOL may name the
// binary): the rules and the scrape config, the alert unit tests
// (geomilter-alerts.test.yml), and every dashboard query, parsed as PromQL.
func TestPromtool(t *testing.T) {
	p := os.Getenv("PROMTOOL")
	if p == "" {
		var err error
		if p, err = exec.LookPath("promtool"); err != nil {
			t.Skip("promtool not installed (Debian package prometheus; or set PROMTOOL): TestAlertRulesAreWellFormed checks the rules' shape only")
		}
	}
	// The dashboard's queries as recording rules, with Grafana's variables
	// replaced, so promtool parses each one.
	_, exprs := loadDashboard(t)
	repl := strings.NewReplacer("$__rate_interval", "5m", "$mta_site", ".*", "$host", ".*", "$milter", ".*")
	var b strings.Builder
	b.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	keys := make([]string, 0, len(exprs))
	for where := range exprs {
		if !strings.HasPrefix(where, "variable") {
			keys = append(keys, where)
		}
	}
	sort.Strings(keys)
	for i, where := range keys {
		q, _ := json.Marshal(repl.Replace(exprs[where])) // a JSON string is a YAML string
		fmt.Fprintf(&b, "      - record: dashboard_query_%d  # %s\n        expr: %s\n", i, where, q)
	}
	dash := filepath.Join(t.TempDir(), "dashboard-rules.yml")
	if err := os.WriteFile(dash, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	testsPath := filepath.Join(repoRoot, "deploy/prometheus/geomilter-alerts.test.yml")
	for _, args := range [][]string{{"check", "rules", alertsPath}, {"check", "config", scrapePath},
		{"test", "rules", testsPath}, {"check", "rules", dash}} {
		out, err := exec.Command(p, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}
