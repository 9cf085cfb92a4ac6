package postfix

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/geomilter/geomilter/milters/policy/dkimcheck"
	"github.com/geomilter/geomilter/shared/dnstest"
)

// The drill's world (issue 19): what the four milters work on and what
// they talk to. At every site: its own DNS resolver stand-in with the
// senders' zones (SPF, DKIM keys, DMARC), a journal target (smtp-sink
// dumping every report) and the harness's delivery and encryption-gateway
// sinks. At dal, the site that goes dark, also what lax's milters depend
// on there: the DNSBL zone's DNS server (lax's resolver stand-in refuses
// that zone, so the resolver asks dal's server next), an HTTP trail sink
// (NDJSON receiver) and the second journal target — besides its Redis
// primary, of which lax has a replica. They are all in dal's namespace,
// behind the veth the outage cuts, so they go dark at once.

const (
	drillDNSPort     = 5300 // each site's local resolver stand-in, 127.0.0.1
	drillDalDNSPort  = 5301 // the DNSBL zone's server at dal, on dal's veth address
	drillTrailPort   = 8088 // the HTTP trail sink at dal
	drillLocalJPort  = 2601 // each site's own journal target, 127.0.0.1
	drillDalJPort    = 2602 // the journal target at dal, on dal's veth address
	drillClientNet   = "10.80.0."
	drillClients     = 8 // inbound clients 10.80.0.1 … .8 on lo at every site (one /24: a greylist retry at the other site has the same triplet)
	drillGreyDelay   = 5 * time.Second
	drillSenderDom   = "sender.example" // DKIM-signed, SPF and DMARC p=reject
	drillGreyDom     = "grey.example"   // greylisted by a policy rule
	drillPartnerDom  = "partner.example"
	drillDNSBLZone   = "bl.drill.test"
	drillJournalTo   = "journal@archive.example"
	drillJournalFrom = "postmaster@mx1.drill.test"
)

// drillRules is applied at lax once the sites run: the tenant (relaying
// from 127.0.0.0/8, the outbound clients), access rules — one refusing a
// network nothing uses, a rate limit per client generous enough not to
// trip at the drill's pace, and one with a small limit for the three-site
// rate check's sender domain (drill_rate_test.go) — and policy rules: greylisting for one sender
// domain, a content rule scoring a phrase, DMARC enforcement.
const drillRules = `tenants:
  - id: acme
    domains: [acme.example]
    relay: {networks: [127.0.0.0/8]}
rules:
  - {id: drill-block-net, milter: access, scope: global, match: {client_ip: [198.51.100.0/24]}, action: reject, reply: "550 5.7.1 drill: blocked network"}
  - {id: drill-rate, milter: access, scope: tenant:acme, rate: {key: client_ip, limit: 1000000, per: 1m}, action: tempfail, reply: "451 4.7.1 drill: rate exceeded"}
  - {id: drill-grey, milter: policy, scope: tenant:acme, match: {sender: [` + drillGreyDom + `]}, action: greylist}
  - {id: drill-content, milter: policy, scope: tenant:acme, match: {body: ["/wire (the )?transfer/"]}, score: 2}
  - {id: drill-dmarc, milter: policy, scope: tenant:acme, match: {dmarc: [fail]}, action: reject}
  - {id: drill-rate-probe, milter: access, scope: tenant:acme, match: {sender: [` + drillRateDom + `]}, rate: {key: sender, limit: 6, per: 168h}, action: tempfail, reply: "451 4.7.1 drill: rate probe limit"}
`

// drillWorld holds the drill's servers and the DKIM key of the senders.
type drillWorld struct {
	key      ed25519.PrivateKey
	zones    string
	workers  map[string]*nsWorker // per site
	dalDNS   *dnstest.Server
	localDNS map[string]*dnstest.Server
	trail    *trailReceiver
	journal  map[string]*arcSink // each site's own target, by site
	dalJ     *encSink            // the target at dal
	dnsblTTL time.Duration       // TTL of the DNSBL zone's answers
}

func newDrillWorld(t testing.TB, dnsblTTL time.Duration) *drillWorld {
	priv, rec := newDKIMKey(t)
	soa := func(z string) string {
		return fmt.Sprintf("%s. 300 IN SOA ns.%s. h.%s. 1 3600 600 86400 300\n", z, z, z)
	}
	var z strings.Builder
	for _, d := range []string{drillSenderDom, drillGreyDom, drillRateDom} {
		z.WriteString(soa(d))
		fmt.Fprintf(&z, "%s. 300 IN TXT \"v=spf1 ip4:%s0/24 -all\"\n", d, drillClientNet)
		fmt.Fprintf(&z, "_dmarc.%s. 300 IN TXT \"v=DMARC1; p=reject\"\n", d)
		fmt.Fprintf(&z, "sel._domainkey.%s. 300 IN TXT %s\n", d, dkimcheck.ZoneTXT(rec))
	}
	return &drillWorld{key: priv, zones: z.String(), workers: map[string]*nsWorker{}, localDNS: map[string]*dnstest.Server{},
		journal: map[string]*arcSink{}, dnsblTTL: dnsblTTL}
}

// siteOpts are the sites' options for the drill: every milter with real
// work and the remote dependencies at dal.
func (w *drillWorld) siteOpts(t testing.TB) siteOpts {
	dal := dalAddr
	return siteOpts{
		tls:    true,
		mainCf: map[string]string{"relay_domains": "acme.example"},
		topYAML: fmt.Sprintf("dns: {servers: [\"127.0.0.1:%d\", \"%s:%d\"], timeout: 500ms, message_budget: 1s}\n",
			drillDNSPort, dal, drillDalDNSPort),
		trailSinks: []string{fmt.Sprintf("{name: central, type: http, url: \"http://%s:%d/ingest\", timeout: 5s}", dal, drillTrailPort)},
		policyYAML: fmt.Sprintf("greylist: {enabled: false, delay: %s, retry_window: 10m, auto_allowlist: 0}\n"+
			"dnsbl:\n  - {zone: %s, weight: 1}\n", drillGreyDelay, drillDNSBLZone),
		milterYAML: map[string]string{
			"archive": fmt.Sprintf("journal:\n  batch: 20\n  backoff: {min: 100ms, max: 2s}\n  targets:\n"+
				"    - {name: local, type: smtp, hosts: [\"[127.0.0.1]:%d\"], to: %q, from: %q, helo: mx1.drill.test, starttls: \"off\", timeout: 10s, connect_timeout: 2s}\n"+
				"    - {name: dal, type: smtp, hosts: [\"[%s]:%d\"], to: %q, from: %q, helo: mx1.drill.test, starttls: \"off\", timeout: 10s, connect_timeout: 2s}\n",
				drillLocalJPort, drillJournalTo, drillJournalFrom, dal, drillDalJPort, drillJournalTo, drillJournalFrom),
		},
		beforeMilters: func(s *site) { w.startSite(t, s) },
	}
}

// startSite starts, in s's namespace, what its milters talk to.
func (w *drillWorld) startSite(t testing.TB, s *site) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	nw, err := newNSWorker(ctx, s.ns, 4)
	if err != nil {
		t.Fatal(err)
	}
	w.workers[s.name] = nw
	for i := 1; i <= drillClients+1; i++ {
		s.h.mustRun("ip", "-n", s.ns, "addr", "add", fmt.Sprintf("%s%d/32", drillClientNet, i), "dev", "lo")
	}
	// The site's resolver stand-in: the senders' zones; REFUSED for the
	// DNSBL zone, so the resolver asks the next server, dal's.
	pc, err := nw.listenPacket(fmt.Sprintf("127.0.0.1:%d", drillDNSPort))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := nw.listen(fmt.Sprintf("127.0.0.1:%d", drillDNSPort))
	if err != nil {
		t.Fatal(err)
	}
	w.localDNS[s.name] = dnstest.StartOn(t, w.zones, pc, ln)
	w.journal[s.name] = s.startArcSink("journal-local", drillLocalJPort)
	if s.name != "dal" {
		return
	}
	// dal's own: the DNSBL zone (one listed address nothing uses; the
	// clients' look-ups are NXDOMAIN with the SOA, cached for dnsblTTL:
	// by default 10 s, so the answers expire during the outage and lax's
	// resolver must do without dal's server: docs/drill.md).
	ttl := int(w.dnsblTTL.Seconds())
	bl := fmt.Sprintf("%s. %d IN SOA ns.%s. h.%s. 1 3600 600 86400 %d\n250.0.80.10.%s. %d IN A 127.0.0.2\n",
		drillDNSBLZone, ttl, drillDNSBLZone, drillDNSBLZone, ttl, drillDNSBLZone, ttl)
	addr := fmt.Sprintf("%s:%d", s.addr, drillDalDNSPort)
	if pc, err = nw.listenPacket(addr); err != nil {
		t.Fatal(err)
	}
	if ln, err = nw.listen(addr); err != nil {
		t.Fatal(err)
	}
	w.dalDNS = dnstest.StartOn(t, bl, pc, ln)
	tl, err := nw.listen(fmt.Sprintf("%s:%d", s.addr, drillTrailPort))
	if err != nil {
		t.Fatal(err)
	}
	w.trail = startTrailReceiver(t, tl)
	w.dalJ = startEncSink(s.h, s.ns, s.dir, "journal-dal", fmt.Sprintf("%s:%d", s.addr, drillDalJPort))
}

// --- the HTTP trail sink at dal -------------------------------------------------

// trailReceiver is an HTTP NDJSON trail sink (docs/sinks.md): it keeps
// every event id it received, by site, and counts duplicates.
type trailReceiver struct {
	mu     sync.Mutex
	ids    map[string]map[string]bool // site -> event id
	posts  int
	dups   int
	server *http.Server
}

func startTrailReceiver(t testing.TB, ln net.Listener) *trailReceiver {
	r := &trailReceiver{ids: map[string]map[string]bool{}}
	r.server = &http.Server{Handler: http.HandlerFunc(r.serve), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = r.server.Serve(ln) }()
	t.Cleanup(func() { r.server.Close() })
	return r
}

func (r *trailReceiver) serve(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	type ev struct {
		EventID string `json:"event_id"`
		Site    string `json:"site"`
	}
	var got []ev
	sc := bufio.NewScanner(req.Body)
	sc.Buffer(make([]byte, 1<<20), 8<<20)
	for sc.Scan() {
		if len(strings.TrimSpace(sc.Text())) == 0 {
			continue
		}
		var e ev
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil || e.EventID == "" {
			http.Error(w, "bad event line", http.StatusBadRequest)
			return
		}
		got = append(got, e)
	}
	if err := sc.Err(); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	r.posts++
	for _, e := range got {
		m := r.ids[e.Site]
		if m == nil {
			m = map[string]bool{}
			r.ids[e.Site] = m
		}
		if m[e.EventID] {
			r.dups++
		}
		m[e.EventID] = true
	}
	r.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

// count is the number of distinct events of a site received.
func (r *trailReceiver) count(site string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.ids[site])
}

// dupsCount is how many events arrived more than once.
func (r *trailReceiver) dupsCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.dups
}

// missing lists the ids of want not received (at most 5 named).
func (r *trailReceiver) missing(site string, want []string) (n int, some []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, id := range want {
		if !r.ids[site][id] {
			n++
			if len(some) < 5 {
				some = append(some, id)
			}
		}
	}
	return n, some
}

// --- the journal targets ----------------------------------------------------------

// journaledMessageIDs is the Message-ID of the original in every report a
// target received, counted. Reports still being written are skipped.
func journaledMessageIDs(dir string) (map[string]int, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := map[string]int{}
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		d, err := parseArcDump(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		r, err := parseArcReport(d)
		if err != nil {
			continue
		}
		out[arcField(r.original, "Message-Id")]++
	}
	return out, nil
}
