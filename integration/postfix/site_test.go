package postfix

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/geomilter/geomilter/shared/trail"
)

// milterNames in smtpd_milters order.
var milterNames = []string{"access", "policy", "archive", "encrypt"}

const (
	dalAddr  = "10.77.0.1"
	laxAddr  = "10.77.0.2"
	linkName = "gmlink" // the veth end's name inside each namespace
	sinkPort = 2526     // smtp-sink: the final destination (relayhost)
	encPort  = 10026    // smtp-sink standing in for the encryption gateway
)

// site is one site: a namespace with Postfix, Redis, geomilter and smtp-sink.
type site struct {
	h    *harness
	name string // dal, lax
	ns   string
	addr string // veth address
	peer *site

	dir      string // base/<name>
	pfEtc    string // Postfix config_directory
	pfQueue  string
	maillog  string
	sockDir  string
	gmConfig string

	primary *redis.Client // this site's primary (unix socket)
	replica *redis.Client // this site's replica of the peer's primary

	// N sites (sites_n_test.go): every other site, in order, and this
	// site's replica of each (ports 6380, 6381, … in that order). Two
	// sites leave peers nil: the peer is peer, its replica replica.
	peers    []*site
	replicas map[string]*redis.Client

	milters map[string]*proc
	master  *proc
	sink    atomic.Int64 // messages smtp-sink accepted (its -c counter)
	encSink atomic.Int64 // messages the encryption-gateway stand-in accepted

	// suiteMembers: in suite mode, the milters the site's one `geomilter
	// suite` process hosts, in chain order (suitemode_test.go).
	suiteMembers []string
}

// siteOpts selects what a site runs.
type siteOpts struct {
	withRedis   bool              // primary + replica of the peer + geomilter redis sink
	withMilters bool              // the four geomilter milters
	mainCf      map[string]string // main.cf overrides, appended after the snippet
	tls         bool              // smtpd offers STARTTLS with a throwaway certificate
	rulesFile   string            // rules_file content (standalone mode reads it)
	// policyYAML holds extra keys of milters.policy, one per line at the
	// left margin (greylist:, scoring:, …); writeGeomilterConfig indents them.
	policyYAML string
	// Drill (drill_*_test.go): milterYAML holds extra keys of any
	// milters.<name> section (as policyYAML, which comes first for policy);
	// topYAML top-level sections (dns:, …) at the left margin; trailSinks
	// more trail sink entries ("{name: x, type: http, url: …}").
	milterYAML map[string]string
	topYAML    string
	trailSinks []string
	// beforeMilters, if set, runs at each site once its namespace, link
	// and Redis are up and before its milters start (servers the
	// milters' config names: DNS, trail and journal receivers).
	beforeMilters func(s *site)
}

// twoSites builds dal and lax joined by a veth pair, each with everything.
func twoSites(t testing.TB) (dal, lax *site) {
	return twoSitesWith(t, siteOpts{withRedis: true, withMilters: true, tls: true})
}

// twoSitesWith is twoSites with the sites' options (Redis and the milters
// are always on; main.cf overrides and policy keys apply to both sites).
func twoSitesWith(t testing.TB, o siteOpts) (dal, lax *site) {
	h := newHarness(t)
	o.withRedis, o.withMilters = true, true
	dal = h.newSite("dal", dalAddr)
	lax = h.newSite("lax", laxAddr)
	dal.peer, lax.peer = lax, dal
	h.link(dal, lax)
	// Primaries first: each replica replicates the peer's primary across the veth.
	dal.startRedisPrimary()
	lax.startRedisPrimary()
	dal.startRedisReplica()
	lax.startRedisReplica()
	for _, s := range []*site{dal, lax} {
		if o.beforeMilters != nil {
			o.beforeMilters(s)
		}
		s.startMilters(o)
		s.startSinks()
		s.startPostfix(o)
	}
	for _, s := range []*site{dal, lax} {
		s := s
		waitFor(t, 20*time.Second, s.name+"'s replica of "+s.peer.name+" in sync", func() bool { return s.replicaLinkUp() })
	}
	// The tenant the test mail is for, applied at lax: dal gets it through
	// its replica of lax, which is also what the milters there merge.
	lax.applyRules(testRules)
	for _, s := range []*site{dal, lax} {
		s.waitRules("1 tenants")
	}
	return dal, lax
}

// testRules: mail to acme.example is inbound for the tenant; localhost is
// the tenant's relay (so test clients may also send elsewhere).
const testRules = `tenants:
  - id: acme
    domains: [acme.example]
    relay: {networks: [127.0.0.0/8]}
rules: []
`

// applyRules runs `geomilter ctl rules apply` at this site.
func (s *site) applyRules(yaml string) {
	f := filepath.Join(s.dir, fmt.Sprintf("apply-%d.yaml", time.Now().UnixNano()))
	if err := os.WriteFile(f, []byte(yaml), 0o644); err != nil {
		s.h.t.Fatal(err)
	}
	if out, err := inNS(s.ns, 30*time.Second, binPath, "ctl", "--config", s.gmConfig, "rules", "apply", "-f", f); err != nil {
		s.h.t.Fatalf("geomilter ctl rules apply at %s: %v\n%s", s.name, err, out)
	}
}

// metricsPort is each milter's metrics port (metrics.listen + offset); in
// suite mode that of the suite process hosting it (+4, suitemode_test.go).
func metricsPort(m string) int {
	for i, n := range milterNames {
		if n == m {
			if suiteMode {
				return 9464 + suiteMetricsOffset
			}
			return 9464 + i
		}
	}
	return 0
}

// metrics fetches a milter's /metrics inside the namespace.
func (s *site) metrics(m string) (string, error) {
	return inNS(s.ns, 10*time.Second, "curl", "-s", "--max-time", "5", fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort(m)))
}

// metricValue sums the samples of a metric whose labels contain every
// labelSub (e.g. `sink="site"`).
func metricValue(text, name string, labelSubs ...string) (float64, bool) {
	var sum float64
	found := false
	for _, l := range strings.Split(text, "\n") {
		if !strings.HasPrefix(l, name) || (len(l) > len(name) && l[len(name)] != '{' && l[len(name)] != ' ') {
			continue
		}
		ok := true
		for _, sub := range labelSubs {
			if !strings.Contains(l, sub) {
				ok = false
			}
		}
		f := strings.Fields(l)
		if !ok || len(f) < 2 {
			continue
		}
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			sum += v
			found = true
		}
	}
	return sum, found
}

// pendingTrail is the number of trail events not yet delivered to the
// redis sink, summed over the site's milters.
func (s *site) pendingTrail() (float64, error) {
	var total float64
	for _, m := range milterNames {
		text, err := s.metrics(m)
		if err != nil {
			return 0, err
		}
		// The milter label: in suite mode one page has every member's spool.
		v, ok := metricValue(text, "geomilter_spool_sink_pending_records", `sink="site"`, `milter="`+m+`"`)
		if !ok {
			return 0, fmt.Errorf("%s: no geomilter_spool_sink_pending_records{sink=\"site\"}", m)
		}
		total += v
	}
	return total, nil
}

// health fetches a milter's /healthz inside the namespace.
func (s *site) health(m string) (string, error) {
	return inNS(s.ns, 10*time.Second, "curl", "-s", "--max-time", "5", fmt.Sprintf("http://127.0.0.1:%d/healthz", metricsPort(m)))
}

// waitRules waits until every milter of the site reports want in its rules
// health detail.
func (s *site) waitRules(want string) {
	for _, m := range milterNames {
		m := m
		waitFor(s.h.t, 30*time.Second, fmt.Sprintf("%s %s milter to load the rules (%q)", s.name, m, want), func() bool {
			out, err := s.health(m)
			// memberCheck: in suite mode, this member's own rules check.
			return err == nil && strings.Contains(memberCheck(out, "rules", m), want)
		})
	}
}

func (h *harness) newSite(name, addr string) *site {
	s := &site{h: h, name: name, addr: addr, ns: h.netns(name), milters: map[string]*proc{}}
	s.dir = filepath.Join(h.base, name)
	s.pfEtc = filepath.Join(s.dir, "postfix")
	s.pfQueue = filepath.Join(s.dir, "queue")
	s.maillog = filepath.Join(s.dir, "maillog")
	s.sockDir = filepath.Join(s.dir, "run")
	for _, d := range []string{s.dir, s.pfEtc, s.pfQueue, s.sockDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			h.t.Fatal(err)
		}
	}
	h.dumpOnFailure(func() {
		h.t.Logf("--- %s maillog (last 40 lines):\n%s", name, tail(strings.Join(readLines(s.maillog), "\n"), 40))
	})
	return s
}

// link joins two sites with a veth pair created directly inside the
// namespaces, so nothing of it ever exists in the host's namespace.
func (h *harness) link(a, b *site) {
	h.mustRun("ip", "link", "add", linkName, "netns", a.ns, "type", "veth", "peer", "name", linkName, "netns", b.ns)
	for _, s := range []*site{a, b} {
		h.mustRun("ip", "-n", s.ns, "addr", "add", s.addr+"/24", "dev", linkName)
		h.mustRun("ip", "-n", s.ns, "link", "set", linkName, "up")
	}
}

// --- Redis -------------------------------------------------------------------

func (s *site) redisConf(role string) (conf, sock string) {
	return s.redisConfOf(role, s.peer, 6380)
}

// redisConfOf is redisConf for a replica of peer on port (N sites).
func (s *site) redisConfOf(role string, peer *site, port int) (conf, sock string) {
	dir := filepath.Join(s.dir, "redis-"+role)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		s.h.t.Fatal(err)
	}
	sock = filepath.Join(dir, "redis.sock")
	lines := []string{
		"dir " + dir, "logfile " + filepath.Join(dir, "redis.log"),
		`save ""`, "appendonly no", "protected-mode no", "daemonize no",
		"unixsocket " + sock, "unixsocketperm 700",
		// Room for a partial resync after an outage of a few minutes of trail.
		"repl-backlog-size 64mb", "repl-diskless-sync-delay 0",
	}
	switch role {
	case "primary":
		// The peer's replica connects over the veth.
		lines = append(lines, "port 6379", "bind 127.0.0.1 "+s.addr)
	default: // replica, replica-<peer>
		lines = append(lines, fmt.Sprintf("port %d", port), "bind 127.0.0.1",
			fmt.Sprintf("replicaof %s 6379", peer.addr),
			"replica-read-only yes", "replica-serve-stale-data yes")
	}
	conf = filepath.Join(dir, "redis.conf")
	if err := os.WriteFile(conf, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		s.h.t.Fatal(err)
	}
	s.h.dumpOnFailure(func() {
		b, _ := os.ReadFile(filepath.Join(dir, "redis.log"))
		s.h.t.Logf("--- %s redis %s log (last 15 lines):\n%s", s.name, role, tail(string(b), 15))
	})
	return conf, sock
}

func (s *site) startRedis(role string) *redis.Client {
	conf, sock := s.redisConf(role)
	return s.startRedisConf(role, conf, sock)
}

func (s *site) startRedisConf(role, conf, sock string) *redis.Client {
	c := redis.NewClient(&redis.Options{Network: "unix", Addr: sock, DialTimeout: time.Second, ReadTimeout: 5 * time.Second, PoolSize: 4})
	s.h.t.Cleanup(func() { c.Close() })
	s.h.start(s.name+" redis "+role, s.ns, procOpts{ready: func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return c.Ping(ctx).Err()
	}}, "redis-server", conf)
	return c
}

func (s *site) startRedisPrimary() { s.primary = s.startRedis("primary") }
func (s *site) startRedisReplica() { s.replica = s.startRedis("replica") }

// startRedisReplicas starts a replica of every peer (N sites); the first
// is also s.replica.
func (s *site) startRedisReplicas() {
	s.replicas = map[string]*redis.Client{}
	for i, p := range s.peers {
		role := "replica-" + p.name
		conf, sock := s.redisConfOf(role, p, 6380+i)
		s.replicas[p.name] = s.startRedisConf(role, conf, sock)
	}
	s.replica = s.replicas[s.peers[0].name]
}

// peerList is every peer of s (one with two sites).
func (s *site) peerList() []*site {
	if len(s.peers) > 0 {
		return s.peers
	}
	return []*site{s.peer}
}

// replicaLinkUp reports whether this site's replica of the peer is connected
// and synchronised.
func (s *site) replicaLinkUp() bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	info, err := s.replica.Info(ctx, "replication").Result()
	return err == nil && strings.Contains(info, "master_link_status:up") && !strings.Contains(info, "master_sync_in_progress:1")
}

// --- geomilter -----------------------------------------------------------------

func (s *site) writeGeomilterConfig(o siteOpts) {
	rules := filepath.Join(s.dir, "rules.yaml")
	content := o.rulesFile
	if content == "" {
		content = "tenants: []\nrules: []\n"
	}
	if err := os.WriteFile(rules, []byte(content), 0o644); err != nil {
		s.h.t.Fatal(err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "site: %s\nhost: mx1\n", s.name)
	if o.withRedis {
		b.WriteString("redis:\n  local: {addr: \"127.0.0.1:6379\"}\n  peers:\n")
		for i, p := range s.peerList() { // N sites (W): a local replica of each peer, 6380, 6381, …
			fmt.Fprintf(&b, "    %s: {addr: \"127.0.0.1:%d\"}\n", p.name, 6380+i)
		}
		b.WriteString("  timeout: 25ms\n")
	}
	fmt.Fprintf(&b, "rules_file: %s\nstate_dir: %s/state\nspool_dir: %s/spool\nlog: {level: info}\n", rules, s.dir, s.dir)
	b.WriteString(o.topYAML) // drill (W): extra top-level sections
	fmt.Fprintf(&b, "trail:\n  sync_every: 50ms\n  backoff: {min: 50ms, max: 1s}\n  sinks:\n")
	if o.withRedis {
		b.WriteString("    - {name: site, type: redis, maxlen: 1000000}\n")
	}
	fmt.Fprintf(&b, "    - {name: local, type: file, path: %s/trail.ndjson}\n", s.dir)
	for _, sk := range o.trailSinks { // drill (W): more sinks
		b.WriteString("    - " + sk + "\n")
	}
	b.WriteString("metrics: {listen: \"127.0.0.1:9464\"}\nmilters:\n")
	for _, m := range milterNames {
		extra := o.milterYAML[m] // drill (W): extra keys of any milter
		if m == "policy" && o.policyYAML != "" {
			extra = strings.TrimRight(o.policyYAML, "\n") + "\n" + extra
		}
		if extra != "" {
			fmt.Fprintf(&b, "  %s:\n    listen: \"unix:%s\"\n    shutdown_timeout: 5s\n", m, s.ownSocket(m))
			for _, l := range strings.Split(strings.TrimRight(extra, "\n"), "\n") {
				b.WriteString("    " + l + "\n")
			}
			continue
		}
		fmt.Fprintf(&b, "  %s: {listen: \"unix:%s\", shutdown_timeout: 5s}\n", m, s.ownSocket(m))
	}
	// Suite mode: all four in one process, in the order Postfix calls them.
	b.WriteString(s.suiteYAML(chainOrder(s.h.t)))
	s.gmConfig = filepath.Join(s.dir, "geomilter.yaml")
	if err := os.WriteFile(s.gmConfig, []byte(b.String()), 0o644); err != nil {
		s.h.t.Fatal(err)
	}
	if out, err := runCmd(20*time.Second, binPath, "check-config", "--config", s.gmConfig); err != nil {
		s.h.t.Fatalf("check-config %s: %v\n%s", s.gmConfig, err, out)
	}
}

// socket is milter m's socket; in suite mode, that of the suite hosting it.
func (s *site) socket(milter string) string {
	if suiteMode && slices.Contains(s.suiteMembers, milter) {
		return s.suiteSocket()
	}
	return s.ownSocket(milter)
}

func (s *site) startMilters(o siteOpts) {
	s.writeGeomilterConfig(o)
	if suiteMode {
		s.startSuite("")
		return
	}
	for _, m := range milterNames {
		s.startMilter(m)
	}
}

// startMilter runs one geomilter milter with group postfix, so its socket
// (mode 0660) is reachable by smtpd and cleanup, which run as user postfix.
// In suite mode it (re)starts the suite process hosting m, unless that runs.
func (s *site) startMilter(m string) {
	if suiteMode && slices.Contains(s.suiteMembers, m) {
		if p := s.milters[m]; p == nil || p.exited() {
			s.startSuite("start " + m)
		}
		return
	}
	gid, err := lookupID("group", "postfix")
	if err != nil {
		s.h.t.Fatal(err)
	}
	sock := s.socket(m)
	s.milters[m] = s.h.start(fmt.Sprintf("%s geomilter %s", s.name, m), s.ns, procOpts{gid: gid, ready: func() error {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
		}
		return err
	}}, binPath, m, "--config", s.gmConfig)
}

// --- smtp-sink -----------------------------------------------------------------

var mesgRe = regexp.MustCompile(`mesg=(\d+)`)

// startSinks runs smtp-sink as the final destination and as the encryption
// gateway's stand-in, counting messages (-c). It runs as user postfix with a
// parent-death signal re-armed after the privilege change.
func (s *site) startSinks() {
	for _, sk := range []struct {
		port    int
		counter *atomic.Int64
	}{{sinkPort, &s.sink}, {encPort, &s.encSink}} {
		counter := sk.counter
		addr := fmt.Sprintf("127.0.0.1:%d", sk.port)
		s.h.start(fmt.Sprintf("%s smtp-sink %d", s.name, sk.port), s.ns, procOpts{onLine: func(l string) {
			if m := mesgRe.FindStringSubmatch(l); m != nil {
				n, _ := strconv.ParseInt(m[1], 10, 64)
				counter.Store(n)
			}
		}}, "setpriv", "--reuid=postfix", "--regid=postfix", "--clear-groups", "--pdeathsig=KILL",
			"smtp-sink", "-c", addr, "256")
		// Ready when the port answers inside the namespace.
		waitFor(s.h.t, 10*time.Second, "smtp-sink "+addr, func() bool {
			out, err := inNS(s.ns, 5*time.Second, "bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/127.0.0.1/%d && head -c 3 <&3", sk.port))
			return err == nil && strings.HasPrefix(out, "220")
		})
	}
}

// --- Postfix -------------------------------------------------------------------

// repoFile reads a file of the repository (tests run in integration/postfix).
func repoFile(t testing.TB, rel string) string {
	b, err := os.ReadFile(filepath.Join("..", "..", rel))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// masterCf is the base master.cf of a test instance: the stock services,
// nothing chrooted (the milter sockets live in the test's temp dir).
const masterCf = `smtp      inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       10      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`

func (s *site) writePostfixConfig(o siteOpts) {
	t := s.h.t
	data := filepath.Join(s.dir, "pfdata")
	if err := os.MkdirAll(data, 0o700); err != nil {
		t.Fatal(err)
	}
	pfUID, _ := lookupID("passwd", "postfix")
	if err := os.Chown(data, pfUID, 0); err != nil {
		t.Fatal(err)
	}
	base := []string{
		"compatibility_level = 3.6",
		"queue_directory = " + s.pfQueue,
		"data_directory = " + data,
		"mail_owner = postfix",
		"myhostname = mx1." + s.name + ".test",
		"mydomain = " + s.name + ".test",
		"myorigin = $myhostname",
		"mydestination =",
		"local_recipient_maps =",
		"alias_maps =",
		"alias_database =",
		"inet_interfaces = " + strings.Trim("127.0.0.1, "+s.addr, ", "),
		"inet_protocols = ipv4",
		"mynetworks = 127.0.0.0/8, 10.77.0.0/24",
		fmt.Sprintf("relayhost = [127.0.0.1]:%d", sinkPort),
		"smtp_tls_security_level = none",
		"smtpd_tls_security_level = none",
		"maillog_file = " + s.maillog,
		"maillog_file_prefixes = " + s.h.base,
		"smtpd_banner = $myhostname ESMTP",
		"biff = no",
	}
	snippet := suiteSnippet(t, repoFile(t, "postfix/main.cf.snippet")) // one suite entry in suite mode
	snippet = strings.ReplaceAll(snippet, "/run/geomilter/", s.sockDir+"/")
	hc := filepath.Join(s.pfEtc, "milter_header_checks")
	snippet = strings.ReplaceAll(snippet, "/etc/postfix/geomilter/milter_header_checks", hc)
	if err := os.WriteFile(hc, []byte(repoFile(t, "postfix/milter_header_checks")), 0o644); err != nil {
		t.Fatal(err)
	}
	var over []string
	if o.tls {
		cert, key := writeSelfSigned(t, s.pfEtc, "mx1."+s.name+".test")
		over = append(over, "smtpd_tls_security_level = may", "smtpd_tls_cert_file = "+cert, "smtpd_tls_key_file = "+key)
	}
	keys := make([]string, 0, len(o.mainCf))
	for k := range o.mainCf {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		over = append(over, k+" = "+o.mainCf[k])
	}
	mainCf := strings.Join(base, "\n") + "\n\n# --- postfix/main.cf.snippet ---\n" + snippet
	// Postfix warns about a parameter defined twice: drop the earlier
	// definitions of the overridden ones.
	for _, l := range over {
		mainCf = dropParam(mainCf, strings.TrimSpace(strings.SplitN(l, "=", 2)[0]))
	}
	mainCf += "\n# --- test overrides ---\n" + strings.Join(over, "\n") + "\n"
	if err := os.WriteFile(filepath.Join(s.pfEtc, "main.cf"), []byte(mainCf), 0o644); err != nil {
		t.Fatal(err)
	}
	strip := filepath.Join(s.pfEtc, "strip_markers")
	if err := os.WriteFile(strip, []byte(repoFile(t, "postfix/strip_markers")), 0o644); err != nil {
		t.Fatal(err)
	}
	master := masterCf + "\n# --- postfix/master.cf.snippet ---\n" +
		strings.ReplaceAll(repoFile(t, "postfix/master.cf.snippet"), "/etc/postfix/geomilter/strip_markers", strip)
	if err := os.WriteFile(filepath.Join(s.pfEtc, "master.cf"), []byte(master), 0o644); err != nil {
		t.Fatal(err)
	}
}

// dropParam removes every definition of a main.cf parameter, with its
// continuation lines.
func dropParam(cf, name string) string {
	var out []string
	skipping := false
	for _, l := range strings.Split(cf, "\n") {
		if skipping && l != "" && (l[0] == ' ' || l[0] == '\t') {
			continue
		}
		skipping = false
		if f := strings.SplitN(l, "=", 2); len(f) == 2 && strings.TrimSpace(f[0]) == name && !strings.HasPrefix(l, "#") {
			skipping = true
			continue
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}

// startPostfix runs this site's own Postfix instance: `postfix check` creates
// the queue, then master runs in the foreground as a direct child (so it dies
// with the test binary; -e bounds its life in any case).
func (s *site) startPostfix(o siteOpts) {
	t := s.h.t
	s.writePostfixConfig(o)
	if out, err := inNS(s.ns, 60*time.Second, "postfix", "-c", s.pfEtc, "check"); err != nil {
		t.Fatalf("postfix -c %s check: %v\n%s\n%s", s.pfEtc, err, out, tail(strings.Join(readLines(s.maillog), "\n"), 20))
	}
	life := time.Hour
	if !binDeadline.IsZero() {
		life = time.Until(binDeadline) + 10*time.Second
	}
	// No Setpgid: master makes itself a session leader and refuses to run
	// as a process group leader already.
	s.master = s.h.start(s.name+" postfix master", s.ns, procOpts{ownSession: true, ready: func() error {
		for _, l := range readLines(s.maillog) {
			if strings.Contains(l, "daemon started") {
				return nil
			}
		}
		return fmt.Errorf("no 'daemon started' in %s", s.maillog)
	}}, filepath.Join(daemonDir, "master"), "-c", s.pfEtc, "-e", strconv.Itoa(int(life.Seconds())))
}

// postconf runs postconf against this instance.
func (s *site) postconf(args ...string) string {
	out, err := inNS(s.ns, 20*time.Second, append([]string{"postconf", "-c", s.pfEtc}, args...)...)
	if err != nil {
		s.h.t.Fatalf("postconf %v: %v\n%s", args, err, out)
	}
	return out
}

// queueSize is the number of messages in this instance's queue.
func (s *site) queueSize() (int, error) {
	out, err := inNS(s.ns, 20*time.Second, "postqueue", "-c", s.pfEtc, "-j")
	if err != nil {
		return 0, fmt.Errorf("postqueue: %v: %s", err, out)
	}
	n := 0
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "{") {
			n++
		}
	}
	return n, nil
}

var (
	smtpdQIDRe  = regexp.MustCompile(`postfix/smtpd\[\d+\]: ([0-9A-F]+): client=`)
	pickupQIDRe = regexp.MustCompile(`postfix/pickup\[\d+\]: ([0-9A-F]+): uid=`)
	activeQIDRe = regexp.MustCompile(`postfix/qmgr\[\d+\]: ([0-9A-F]+): from=<.*\(queue active\)`)
)

// queueIDs returns, from Postfix's log, the queue ids of the messages that
// were accepted into the queue (reached qmgr), SMTP and local submissions
// apart. A queue id that smtpd or pickup logged but whose message a milter
// refused never reaches qmgr and is not returned.
func (s *site) queueIDs() (smtp, local map[string]bool) {
	smtp, local = map[string]bool{}, map[string]bool{}
	from := map[string]string{}
	var active []string
	for _, l := range readLines(s.maillog) {
		if m := smtpdQIDRe.FindStringSubmatch(l); m != nil {
			from[m[1]] = "smtp"
		}
		if m := pickupQIDRe.FindStringSubmatch(l); m != nil {
			from[m[1]] = "local"
		}
		if m := activeQIDRe.FindStringSubmatch(l); m != nil {
			active = append(active, m[1])
		}
	}
	for _, id := range active {
		switch from[id] {
		case "smtp":
			smtp[id] = true
		case "local":
			local[id] = true
		}
	}
	return smtp, local
}

// --- mail injection ------------------------------------------------------------

// sourceResult is what smtp-source saw.
type sourceResult struct {
	out       string
	tempfails int // 4xx replies
	rejects   int // 5xx replies
	errors    int // other warnings (connection problems)
}

var replyRe = regexp.MustCompile(`: ([245])\d\d[ -]`)

// classify counts one smtp-source warning line.
func (r *sourceResult) classify(line string) {
	if !strings.Contains(line, "smtp-source: ") || !(strings.Contains(line, "warning") || strings.Contains(line, "fatal")) {
		return
	}
	switch m := replyRe.FindStringSubmatch(line); {
	case m != nil && m[1] == "4":
		r.tempfails++
	case m != nil && m[1] == "5":
		r.rejects++
	default:
		r.errors++
	}
}

// smtpSource runs a bounded smtp-source into this site's smtpd; -A keeps it
// going after a refusal so every refusal is counted.
func (s *site) smtpSource(within time.Duration, args ...string) sourceResult {
	full := append([]string{"smtp-source", "-A", "-M", "client." + s.name + ".test"}, args...)
	full = append(full, "127.0.0.1:25")
	out, err := inNS(s.ns, within, full...)
	r := sourceResult{out: out}
	for _, l := range strings.Split(out, "\n") {
		r.classify(l)
	}
	if err != nil && r.tempfails+r.rejects+r.errors == 0 {
		r.errors++
	}
	return r
}

// swaks sends one message with swaks and returns its transcript.
func (s *site) swaks(args ...string) (string, error) {
	full := append([]string{"swaks", "--server", "127.0.0.1:25", "--helo", "client." + s.name + ".test", "--timeout", "30"}, args...)
	return inNS(s.ns, 60*time.Second, full...)
}

// sendmail submits a message locally (sendmail -> postdrop -> pickup), the
// path non_smtpd_milters filter.
func (s *site) sendmail(from, to, subject string) error {
	msg := fmt.Sprintf("From: <%s>\nTo: <%s>\nSubject: %s\n\nlocal submission test\n", from, to, subject)
	cmd := []string{"ip", "netns", "exec", s.ns, "sendmail", "-C", s.pfEtc, "-f", from, to}
	out, err := runCmdInput(20*time.Second, msg, cmd...)
	if err != nil {
		return fmt.Errorf("sendmail: %v: %s", err, out)
	}
	return nil
}

// kickPickup makes pickup scan the maildrop queue now.
func (s *site) kickPickup() {
	_, _ = inNS(s.ns, 10*time.Second, "postkick", "-c", s.pfEtc, "public", "pickup", "W")
}

// --- the link --------------------------------------------------------------------

// cutLink makes the peer unresponsive as seen from this site: every packet on
// this site's veth end is dropped, in both directions (not refused: TCP peers
// see silence, as with a dark data centre).
func (s *site) cutLink() {
	for _, rule := range [][]string{{"INPUT", "-i"}, {"OUTPUT", "-o"}} {
		s.h.mustRun("ip", "netns", "exec", s.ns, "iptables", "-w", "-I", rule[0], rule[1], linkName, "-j", "DROP")
	}
}

// restoreLink removes the rules cutLink added.
func (s *site) restoreLink() {
	for _, rule := range [][]string{{"INPUT", "-i"}, {"OUTPUT", "-o"}} {
		s.h.mustRun("ip", "netns", "exec", s.ns, "iptables", "-w", "-D", rule[0], rule[1], linkName, "-j", "DROP")
	}
}

// --- the trail -------------------------------------------------------------------

// streamKey is the trail stream of a site.
func streamKey(site string) string { return "gm:{" + site + "}:trail" }

// trailEvents reads every event of a site's trail stream from c, deduplicated
// by event id (delivery is at least once), in stream order.
func trailEvents(c *redis.Client, site string) ([]trail.Event, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []trail.Event
	seen := map[string]bool{}
	start := "-"
	for {
		msgs, err := c.XRangeN(ctx, streamKey(site), start, "+", 5000).Result()
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			raw, _ := m.Values["event"].(string)
			var ev trail.Event
			if err := json.Unmarshal([]byte(raw), &ev); err != nil {
				return nil, fmt.Errorf("stream entry %s: %w", m.ID, err)
			}
			if !seen[ev.EventID] {
				seen[ev.EventID] = true
				out = append(out, ev)
			}
		}
		if len(msgs) < 5000 {
			return out, nil
		}
		start = "(" + msgs[len(msgs)-1].ID
	}
}

// streamState is a stream's length and last entry id, the replication check.
func streamState(c *redis.Client, site string) (int64, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	n, err := c.XLen(ctx, streamKey(site)).Result()
	if err != nil {
		return 0, "", err
	}
	last, err := c.XRevRangeN(ctx, streamKey(site), "+", "-", 1).Result()
	if err != nil || len(last) == 0 {
		return n, "", err
	}
	return n, last[0].ID, nil
}
