package deploytest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/geomilter/geomilter/shared/redistest"
)

// exposition is what one /metrics page exports: metric names, and the label
// names each carries.
type exposition map[string]map[string]bool

// sampleLine is one sample of the Prometheus text format: name{labels} value.
var sampleLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? `)
var labelName = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="(?:[^"\\]|\\.)*"`)

func parseExposition(r io.Reader) (exposition, error) {
	e := exposition{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		m := sampleLine.FindStringSubmatch(line)
		if m == nil {
			return nil, fmt.Errorf("not a sample line: %q", line)
		}
		if e[m[1]] == nil {
			e[m[1]] = map[string]bool{}
		}
		for _, l := range labelName.FindAllStringSubmatch(m[2], -1) {
			e[m[1]][l[1]] = true
		}
	}
	return e, sc.Err()
}

// freeAddrs returns n distinct loopback addresses that were free a moment
// ago (all held open together, so no two are the same port).
func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	var addrs []string
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		addrs = append(addrs, l.Addr().String())
	}
	return addrs
}

// TestLiveMetricsAreKnown runs the four milters of one site (real binary, real
// redis-servers for two sites) and scrapes them: every metric they export must
// be one the source scan knows (so the scan behind TestMetricNamesExistInCode
// misses nothing), and the series the alerts join on must carry the labels the
// rules use.
func TestLiveMetricsAreKnown(t *testing.T) {
	if testing.Short() {
		t.Skip("starts redis-servers and four milter processes")
	}
	sites := redistest.Sites(t, "lax", "dal")
	dir := t.TempDir()
	bin := os.Getenv("GEOMILTER_BIN") // as in integration/: a binary built already
	if bin == "" {
		bin = filepath.Join(dir, "geomilter")
		build := exec.Command("go", "build", "-o", bin, "github.com/geomilter/geomilter/milters")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build geomilter: %v\n%s", err, out)
		}
	}
	milters := []string{"access", "policy", "archive", "encrypt"}
	addrs := map[string]string{}
	free := freeAddrs(t, len(milters))
	var b strings.Builder
	fmt.Fprintf(&b, "site: lax\nhost: h1\nstate_dir: %s/state\nspool_dir: %s/spool\n", dir, dir)
	fmt.Fprintf(&b, "redis:\n  local: {addr: %q}\n  peers:\n    dal: {addr: %q}\n", sites["lax"].Primary.Addr, sites["lax"].Replicas["dal"].Addr)
	fmt.Fprintf(&b, "trail:\n  sinks:\n    - {name: site, type: redis}\n    - {name: local, type: file, path: %s/trail.ndjson}\n", dir)
	fmt.Fprintf(&b, "milters:\n")
	for i, m := range milters {
		addrs[m] = free[i]
		fmt.Fprintf(&b, "  %s: {listen: \"unix:%s/%s.sock\", metrics_listen: %q}\n", m, dir, m, addrs[m])
	}
	cfg := filepath.Join(dir, "geomilter.yaml")
	if err := os.WriteFile(cfg, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	exited := map[string]chan struct{}{}
	for _, m := range milters {
		cmd := exec.Command(bin, m, "--config", cfg)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		exited[m] = done
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			<-done
			if t.Failed() {
				t.Logf("%s stderr:\n%s", m, stderr.String())
			}
		})
	}

	k := scanSources(t, repoRoot)
	labels := map[string]map[string]bool{} // metric -> label names, over all four
	for _, m := range milters {
		// The Redis gauges are filled by a background refresh: wait for them
		// (bounded; not a speed assertion).
		var e exposition
		deadline := time.Now().Add(30 * time.Second)
		for {
			var err error
			e, err = scrape("http://" + addrs[m] + "/metrics")
			if err == nil && e["geomilter_redis_breaker_state"] != nil && e["geomilter_redis_replica_link_up"] != nil {
				break
			}
			select {
			case <-exited[m]:
				t.Fatalf("%s exited at start", m)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: /metrics at %s without the Redis gauges after 30s (last error %v)", m, addrs[m], err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		var unknown []string
		for name, ls := range e {
			if !strings.HasPrefix(name, "geomilter_") {
				continue
			}
			if !k.has(name) {
				unknown = append(unknown, name)
			}
			if labels[name] == nil {
				labels[name] = map[string]bool{}
			}
			for l := range ls {
				labels[name][l] = true
			}
		}
		sort.Strings(unknown)
		for _, n := range unknown {
			t.Errorf("%s exports %s, which the source scan does not find: teach scanSources how the name is built", m, n)
		}
		t.Logf("%s: %d metric names exported", m, len(e))
	}
	// Labels the alert rules and the dashboard group or match by.
	for _, c := range []struct{ metric, label string }{
		{"geomilter_redis_breaker_state", "site"},
		{"geomilter_redis_breaker_state", "role"},
		{"geomilter_redis_replica_link_up", "site"},
		{"geomilter_redis_replica_last_io_seconds", "site"},
		{"geomilter_milter_transactions_total", "action"},
		{"geomilter_milter_decisions_total", "action"},
		{"geomilter_milter_stage_duration_seconds_bucket", "stage"},
		{"geomilter_spool_sink_pending_records", "sink"},
		{"geomilter_spool_sink_oldest_unsent_age_seconds", "sink"},
		{"geomilter_trail_drain_sent_total", "sink"},
		{"geomilter_rules_snapshot_source", "source"},
		{"geomilter_rules_snapshot_info", "checksum"},
	} {
		if !labels[c.metric][c.label] {
			t.Errorf("%s: no label %q in the scrape (labels %v)", c.metric, c.label, labels[c.metric])
		}
	}
	if p := os.Getenv("PROMETHEUS"); p != "" {
		queryDashboardAndRules(t, p, dir, addrs)
	} else {
		t.Log("PROMETHEUS (a prometheus binary) not set: the dashboard and rule queries are not run against the live milters")
	}
	// The scrape config adds mta_site, host and milter to every series; a
	// process must not export mta_site or host itself (honor_labels: true
	// would then let it override the target's).
	for name, ls := range labels {
		if ls["mta_site"] || ls["host"] {
			t.Errorf("%s exports a label mta_site or host, which the scrape config sets", name)
		}
	}
}

func scrape(url string) (exposition, error) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", url, resp.Status)
	}
	return parseExposition(resp.Body)
}

// queryDashboardAndRules runs a real Prometheus (binary bin) scraping the
// milters at addrs with the labels of deploy/prometheus/prometheus.yml, then
// runs every dashboard query and every alert expression: none may fail (a
// bad vector match, a duplicate series after a division), and the queries of
// the parts this site runs must return data.
func queryDashboardAndRules(t *testing.T, bin, dir string, addrs map[string]string) {
	t.Helper()
	web := freeAddrs(t, 1)[0]
	var cfg strings.Builder
	cfg.WriteString("global: {scrape_interval: 1s, evaluation_interval: 1s}\nscrape_configs:\n  - job_name: geomilter\n    honor_labels: true\n    static_configs:\n")
	for m, a := range addrs {
		fmt.Fprintf(&cfg, "      - {targets: [%q], labels: {mta_site: lax, host: h1, milter: %s}}\n", a, m)
	}
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config.file="+cfgPath, "--storage.tsdb.path="+filepath.Join(dir, "tsdb"),
		"--web.listen-address="+web, "--log.level=warn")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("prometheus stderr:\n%s", tail(stderr.String(), 30))
		}
	})
	// Wait (bounded) until rates over every process can be computed: two
	// scrapes of each.
	deadline := time.Now().Add(60 * time.Second)
	for {
		n, err := promQuery(web, `count(rate(geomilter_milter_sessions_total[1m]))`)
		if err == nil && n == 1 {
			if v, _ := promValue(web, `count(rate(geomilter_milter_sessions_total[1m]))`); v == float64(len(addrs)) {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus at %s: not every milter scraped twice after 60s (last error %v)", web, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	_, dexprs := loadDashboard(t)
	_, rexprs := loadRules(t)
	repl := strings.NewReplacer("$__rate_interval", "1m", "$mta_site", ".*", "$host", ".*", "$milter", ".*")
	var empty []string
	queries := 0
	for where, e := range dexprs {
		if strings.HasPrefix(where, "variable") {
			continue
		}
		queries++
		n, err := promQuery(web, repl.Replace(e))
		if err != nil {
			t.Errorf("dashboard %s: %v\n%s", where, err, e)
		} else if n == 0 {
			empty = append(empty, where)
		}
	}
	for where, e := range rexprs {
		queries++
		if _, err := promQuery(web, e); err != nil {
			t.Errorf("rules %s: %v\n%s", where, err, e)
		}
	}
	sort.Strings(empty)
	t.Logf("%d queries run; %d dashboard queries without data on this idle site (features not configured or no traffic): %s",
		queries, len(empty), strings.Join(empty, "; "))
	// What this site runs must show.
	for _, q := range []string{
		`up{job="geomilter"} == 1`,
		`max by (mta_site, site) (geomilter_redis_replica_link_up) == 1`,
		`geomilter_spool_sink_pending_records{sink="site"}`,
		`histogram_quantile(0.5, sum by (milter, stage, le) (rate(geomilter_milter_stage_duration_seconds_bucket[1m])))`,
	} {
		if n, err := promQuery(web, q); err != nil || n == 0 {
			t.Errorf("%s: %d series, error %v; want data", q, n, err)
		}
	}
}

// promQuery runs an instant query and returns how many series it gave.
func promQuery(web, q string) (int, error) {
	r, err := promAPI(web, q)
	if err != nil {
		return 0, err
	}
	return len(r), nil
}

// promValue runs an instant query returning one series and gives its value.
func promValue(web, q string) (float64, error) {
	r, err := promAPI(web, q)
	if err != nil || len(r) != 1 {
		return 0, fmt.Errorf("%s: %d series, %v", q, len(r), err)
	}
	var v float64
	_, err = fmt.Sscan(r[0].Value[1].(string), &v)
	return v, err
}

type promSeries struct {
	Metric map[string]string `json:"metric"`
	Value  []any             `json:"value"`
}

func promAPI(web, q string) ([]promSeries, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + web + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, fmt.Errorf("query %q: %w", q, err)
	}
	if body.Status != "success" {
		return nil, fmt.Errorf("query %q: %s", q, body.Error)
	}
	if body.Data.ResultType != "vector" {
		return nil, fmt.Errorf("query %q: result type %s, want vector", q, body.Data.ResultType)
	}
	var r []promSeries
	if err := json.Unmarshal(body.Data.Result, &r); err != nil {
		return nil, fmt.Errorf("query %q: %w", q, err)
	}
	return r, nil
}

func tail(s string, lines int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}
