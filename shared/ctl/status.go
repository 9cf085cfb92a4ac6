package ctl

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/geomilter/geomilter/shared/config"
	"github.com/geomilter/geomilter/shared/rules"
	"github.com/geomilter/geomilter/shared/state"
)

func (t *tool) status(ctx context.Context, args []string) int {
	fs := t.flagSet("status")
	rest, err := parseArgs(fs, args)
	if err != nil {
		return t.parseFailed("status", fs, err)
	}
	if len(rest) > 0 {
		fmt.Fprintln(t.errw, "usage: geomilter ctl status")
		return ExitUsage
	}
	if !t.loadConfig() {
		return ExitProblems
	}
	var problems []string
	mode := "redis"
	if t.cfg.Standalone() {
		mode = "standalone"
	}
	fmt.Fprintf(t.out, "site %s, host %s, %s mode (config %s)\n", t.cfg.Site, t.cfg.Host, mode, t.cfgPath)
	if t.cfg.Standalone() {
		problems = append(problems, t.statusRulesFile()...)
	} else {
		problems = append(problems, t.statusRedis(ctx)...)
	}
	problems = append(problems, t.statusMilters(ctx)...)
	if len(problems) > 0 {
		fmt.Fprintf(t.out, "\nproblems:\n")
		for _, p := range problems {
			fmt.Fprintf(t.out, "  %s\n", p)
		}
		return ExitProblems
	}
	return ExitOK
}

func (t *tool) statusRulesFile() []string {
	fmt.Fprintf(t.out, "\nrules_file %s: ", t.cfg.RulesFile)
	set, err := rules.ParseFile(t.cfg.RulesFile)
	if err != nil {
		fmt.Fprintln(t.out, "INVALID (the milters keep the rules they have; see `geomilter ctl rules apply -f FILE --dry-run` for the problems)")
		return []string{"rules_file invalid: " + firstLine(err.Error())}
	}
	fmt.Fprintf(t.out, "%d tenants, %d rules\n", len(set.Tenants), len(set.Rules))
	return nil
}

func (t *tool) statusRedis(ctx context.Context) []string {
	st, err := t.openStore()
	if err != nil {
		return []string{err.Error()}
	}
	defer st.Close()
	var problems []string
	fmt.Fprintf(t.out, "\nredis instances:\n")
	tw := tabwriter.NewWriter(t.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  SITE\tROLE\tADDR\tSTATE\tREPLICATION")
	for _, s := range st.Status(ctx) {
		health, repl := "up", replicationLine(s)
		if s.Replication == nil {
			why := firstLine(strings.TrimPrefix(s.LastError, fmt.Sprintf("%s %s %s: ", s.Site, s.Role, s.Addr)))
			health, repl = "down", why
			problems = append(problems, fmt.Sprintf("%s %s %s unreachable: %s", s.Site, s.Role, s.Addr, why))
		} else if p := replicationProblem(s); p != "" {
			health = "degraded"
			problems = append(problems, p)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", s.Site, s.Role, s.Addr, health, repl)
	}
	tw.Flush()

	merged, srcs, err := st.LoadRules(ctx)
	if err != nil && !errors.Is(err, state.ErrUnavailable) {
		return append(problems, "load rules: "+err.Error())
	}
	var tenants, rulesN int
	for id := range merged {
		if rules.IsTenantDoc(id) {
			tenants++
		} else {
			rulesN++
		}
	}
	var vers []string
	for _, site := range st.Sites() {
		s := srcs[site]
		v := "?"
		if s.Available {
			v = strconv.FormatInt(s.Version, 10)
		}
		vers = append(vers, site+"="+v)
	}
	fmt.Fprintf(t.out, "\nrules (merged over the sites that answered): %d rules, %d tenants; versions %s\n",
		rulesN, tenants, strings.Join(vers, " "))
	return problems
}

func replicationLine(s state.InstanceStatus) string {
	r := s.Replication
	if r == nil {
		return ""
	}
	if s.Role == state.RolePrimary {
		return fmt.Sprintf("role %s, %d replicas attached", r.Role, r.ConnectedReplicas)
	}
	line := fmt.Sprintf("master_link_status %s, master_last_io_seconds_ago %d", r.MasterLinkStatus, r.MasterLastIOSecondsAgo)
	if r.MasterSyncInProgress {
		line += ", full sync in progress"
	}
	if r.MasterLinkDownSinceSecs >= 0 {
		line += fmt.Sprintf(", down for %ds", r.MasterLinkDownSinceSecs)
	}
	return line
}

// replicationProblem flags a primary that is not a primary and a peer copy
// that is not a replica or has lost its link.
func replicationProblem(s state.InstanceStatus) string {
	r := s.Replication
	switch {
	case s.Role == state.RolePrimary && r.Role != "master":
		return fmt.Sprintf("%s primary %s is a %s, not a master", s.Site, s.Addr, r.Role)
	case s.Role == state.RolePeerReplica && r.Role != "slave":
		return fmt.Sprintf("%s peer replica %s is a %s, not a replica", s.Site, s.Addr, r.Role)
	case s.Role == state.RolePeerReplica && r.MasterLinkStatus != "up":
		return fmt.Sprintf("%s peer replica %s: link to %s's primary is %s (rules and counts of %s are frozen at their last values)",
			s.Site, s.Addr, s.Site, r.MasterLinkStatus, s.Site)
	}
	return ""
}

// statusMilters reads each configured milter process's /metrics.
func (t *tool) statusMilters(ctx context.Context) []string {
	var problems []string
	fmt.Fprintf(t.out, "\nmilter processes:\n")
	tw := tabwriter.NewWriter(t.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  MILTER\tMETRICS\tSTATE\tRULES SOURCE\tAGE\tRULES\tREDIS (AS IT SEES THEM)\tTRAIL BACKLOG")
	for _, name := range config.MilterNames() {
		if _, ok := t.cfg.Milter(name); !ok {
			continue
		}
		// A member of milters.suite is served, metrics included, by the suite.
		label := name
		if t.cfg.ProcessOf(name) != name {
			label += " (suite)"
		}
		addr, err := t.cfg.MetricsListen(t.cfg.ProcessOf(name))
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", name, err))
			continue
		}
		ms, err := t.scrape(ctx, addr)
		if err != nil {
			fmt.Fprintf(tw, "  %s\t%s\tdown\t\t\t\t\t%s\n", label, addr, firstLine(err.Error()))
			problems = append(problems, fmt.Sprintf("%s: metrics at %s: %s", name, addr, firstLine(err.Error())))
			continue
		}
		ms = ms.of(name)
		source := "?"
		for _, s := range ms.all("geomilter_rules_snapshot_source") {
			if s.value == 1 {
				source = s.labels["source"]
			}
		}
		age, _ := ms.one("geomilter_rules_snapshot_age_seconds")
		n, _ := ms.one("geomilter_rules_snapshot_rules")
		backlog := trailBacklog(ms)
		breakers, notUp := breakerLine(ms)
		word := "up"
		if len(notUp) > 0 {
			word = "degraded"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%.0f\t%s\t%s\n", label, addr, word, source,
			(time.Duration(age * float64(time.Second))).Round(100*time.Millisecond), n, breakers, backlog)
		for _, o := range notUp {
			problems = append(problems, fmt.Sprintf("%s: Redis %s (decisions come from its rules snapshot and local counts)", name, o))
		}
		if source == "empty" {
			problems = append(problems, fmt.Sprintf("%s: no rules loaded (empty snapshot)", name))
		}
		for _, s := range ms.all("geomilter_rules_site_stale") {
			if s.value == 1 {
				problems = append(problems, fmt.Sprintf("%s: rules of site %s come from memory (its Redis did not answer)", name, s.labels["site"]))
			}
		}
	}
	tw.Flush()
	return problems
}

// breakerLine shows how a milter process sees each Redis instance, as
// "site:up", "site:failing" (calls fail but are still tried) or "site:down"
// (its circuit breaker is open: calls are skipped); each site is one
// instance: the own primary or the local replica of a peer. notUp words the
// ones that are not up, for the problems list.
func breakerLine(ms metricSet) (line string, notUp []string) {
	var parts []string
	for _, s := range ms.all("geomilter_redis_breaker_state") {
		st := "up"
		switch s.value {
		case 1:
			st = "failing"
			notUp = append(notUp, s.labels["site"]+" "+s.labels["role"]+" failing (calls fail but are still tried)")
		case 2:
			st = "down"
			notUp = append(notUp, s.labels["site"]+" "+s.labels["role"]+" down (calls skipped until it answers again)")
		}
		parts = append(parts, s.labels["site"]+":"+st)
	}
	sort.Strings(parts)
	sort.Strings(notUp)
	if len(parts) == 0 {
		return "-", nil
	}
	return strings.Join(parts, " "), notUp
}

func trailBacklog(ms metricSet) string {
	recs, ok := ms.one("geomilter_spool_records")
	if !ok {
		return "?"
	}
	if recs == 0 {
		return "0"
	}
	oldest, _ := ms.one("geomilter_spool_oldest_unsent_age_seconds")
	line := fmt.Sprintf("%.0f events, oldest %s", recs, time.Duration(oldest*float64(time.Second)).Round(time.Second))
	var sinks []string
	for _, s := range ms.all("geomilter_spool_sink_pending_records") {
		if s.value > 0 {
			sinks = append(sinks, fmt.Sprintf("%s %.0f", s.labels["sink"], s.value))
		}
	}
	sort.Strings(sinks)
	if len(sinks) > 0 {
		line += " (" + strings.Join(sinks, ", ") + ")"
	}
	return line
}

// scrape fetches a process's metrics. A wildcard listen address is scraped
// on loopback.
func (t *tool) scrape(ctx context.Context, addr string) (metricSet, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if port == "0" {
		return nil, errors.New("metrics port 0 (chosen at start): not known to ctl")
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
		if ip.To4() == nil {
			host = "::1"
		}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(host, port)+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := t.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("HTTP %s", resp.Status)
	}
	return parseMetrics(resp.Body)
}

// sample is one line of the Prometheus text format.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

type metricSet []sample

func (ms metricSet) all(name string) []sample {
	var out []sample
	for _, s := range ms {
		if s.name == name {
			out = append(out, s)
		}
	}
	return out
}

// of keeps the samples of one milter: those labelled milter=<name>, and the
// process's own (no milter label, or the suite's, such as its Redis watch),
// so a suite's scrape reads as each member's.
func (ms metricSet) of(milter string) metricSet {
	var out metricSet
	for _, s := range ms {
		if m, ok := s.labels["milter"]; !ok || m == milter || m == config.SuiteName {
			out = append(out, s)
		}
	}
	return out
}

// one returns the value of the first sample of name.
func (ms metricSet) one(name string) (float64, bool) {
	for _, s := range ms {
		if s.name == name {
			return s.value, true
		}
	}
	return 0, false
}

// parseMetrics reads the Prometheus text exposition format: comments are
// skipped, each other line is name{labels} value [timestamp].
func parseMetrics(r io.Reader) (metricSet, error) {
	var out metricSet
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		s, err := parseSample(line)
		if err != nil {
			return nil, fmt.Errorf("metrics line %q: %w", line, err)
		}
		out = append(out, s)
	}
	return out, sc.Err()
}

func parseSample(line string) (sample, error) {
	s := sample{labels: map[string]string{}}
	i := strings.IndexAny(line, "{ ")
	if i <= 0 {
		return s, errors.New("no value")
	}
	s.name = line[:i]
	rest := line[i:]
	if rest[0] == '{' {
		rest = rest[1:]
		for {
			rest = strings.TrimLeft(rest, ", ")
			if rest == "" {
				return s, errors.New("unterminated labels")
			}
			if rest[0] == '}' {
				rest = rest[1:]
				break
			}
			eq := strings.IndexByte(rest, '=')
			if eq <= 0 || eq+1 >= len(rest) || rest[eq+1] != '"' {
				return s, errors.New("bad label")
			}
			key := strings.TrimSpace(rest[:eq])
			rest = rest[eq+2:]
			var val strings.Builder
			j := 0
			for ; j < len(rest) && rest[j] != '"'; j++ {
				if rest[j] == '\\' && j+1 < len(rest) {
					j++
					switch rest[j] {
					case 'n':
						val.WriteByte('\n')
					default:
						val.WriteByte(rest[j])
					}
					continue
				}
				val.WriteByte(rest[j])
			}
			if j >= len(rest) {
				return s, errors.New("unterminated label value")
			}
			s.labels[key] = val.String()
			rest = rest[j+1:]
		}
	}
	fields := strings.Fields(rest)
	if len(fields) == 0 {
		return s, errors.New("no value")
	}
	v, err := strconv.ParseFloat(fields[0], 64)
	if err != nil {
		return s, err
	}
	s.value = v
	return s, nil
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " …"
	}
	return s
}
