package postfix

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/resolver"
	"github.com/geomilter/geomilter/shared/trail"
)

// Helpers of the policy milter's part-2 tests (policy2_test.go).

// replyToRcpt is the server's reply to RCPT TO:<rcpt> in a swaks transcript
// ("" if the command is not in it).
func replyToRcpt(transcript, rcpt string) string {
	lines := strings.Split(strings.ReplaceAll(transcript, "\r", ""), "\n")
	cmd := "RCPT TO:<" + rcpt + ">"
	for i := 0; i+1 < len(lines); i++ {
		if strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(lines[i]), "->")) == cmd {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(lines[i+1]), "<**"))
		}
	}
	return ""
}

// policyEvent waits for the policy milter's trail event at site s (read
// from its own primary) that match accepts.
func policyEvent(t testing.TB, s *site, what string, match func(trail.Event) bool) trail.Event {
	t.Helper()
	var found trail.Event
	waitFor(t, 30*time.Second, fmt.Sprintf("%s's policy trail event for %s", s.name, what), func() bool {
		evs, err := trailEvents(s.primary, s.name)
		if err != nil {
			return false
		}
		for _, ev := range evs {
			if ev.Milter == "policy" && ev.Policy != nil && match(ev) {
				found = ev
				return true
			}
		}
		return false
	})
	return found
}

// fileEvent waits for the event of milter in a trail file (the local file
// sink, NDJSON) that match accepts.
func fileEvent(t testing.TB, path, milter, what string, match func(trail.Event) bool) trail.Event {
	t.Helper()
	var found trail.Event
	waitFor(t, 30*time.Second, fmt.Sprintf("%s trail event for %s in %s", milter, what, path), func() bool {
		for _, l := range readLines(path) {
			var ev trail.Event
			if json.Unmarshal([]byte(l), &ev) != nil || ev.Milter != milter {
				continue
			}
			if match(ev) {
				found = ev
				return true
			}
		}
		return false
	})
	return found
}

// greyOf is the greylisting outcome of rcpt in a policy section.
func greyOf(p *trail.PolicySection, rcpt string) (trail.GreylistResult, bool) {
	if p == nil {
		return trail.GreylistResult{}, false
	}
	for _, g := range p.Greylist {
		if strings.EqualFold(g.Rcpt, rcpt) {
			return g, true
		}
	}
	return trail.GreylistResult{}, false
}

// replOffset reads a replication offset field (master_repl_offset of a
// primary, slave_repl_offset of a replica) from INFO replication.
func replOffset(info, field string) (int64, bool) {
	for _, l := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), field+":"); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}

// waitReplicaCaughtUp waits until s's replica of its peer has everything
// the peer's primary had written when it was called: the link is up and
// the replica's offset reached the primary's.
func (s *site) waitReplicaCaughtUp(within time.Duration) {
	t := s.h.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	info, err := s.peer.primary.Info(ctx, "replication").Result()
	cancel()
	if err != nil {
		t.Fatalf("%s primary INFO replication: %v", s.peer.name, err)
	}
	want, ok := replOffset(info, "master_repl_offset")
	if !ok {
		t.Fatalf("%s primary: no master_repl_offset in\n%s", s.peer.name, info)
	}
	waitFor(t, within, fmt.Sprintf("%s's replica of %s at offset %d", s.name, s.peer.name, want), func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		info, err := s.replica.Info(ctx, "replication").Result()
		if err != nil || !strings.Contains(info, "master_link_status:up") {
			return false
		}
		got, ok := replOffset(info, "slave_repl_offset")
		return ok && got >= want
	})
}

// --- DNS -----------------------------------------------------------------------

// dnsblName is the name a list looks ip up under (RFC 5782 §2.1: IPv4
// octets reversed; §2.4: IPv6 nibbles reversed).
func dnsblName(ip net.IP, zone string) string {
	if v4 := ip.To4(); v4 != nil {
		return fmt.Sprintf("%d.%d.%d.%d.%s", v4[3], v4[2], v4[1], v4[0], zone)
	}
	name, err := dns.ReverseAddr(ip.String()) // x.x.….ip6.arpa.
	if err != nil {
		panic(err)
	}
	return strings.TrimSuffix(name, "ip6.arpa.") + zone
}

// zoneRouter sends the look-ups of names under one zone to another
// resolver (a dark server), the rest to the normal one: a list whose
// servers never answer, beside lists and records that do.
type zoneRouter struct {
	zone       string // lower case, no final dot
	dark, main resolver.Resolver
}

var _ resolver.Resolver = zoneRouter{}

func (z zoneRouter) pick(name string) resolver.Resolver {
	n := strings.TrimSuffix(strings.ToLower(name), ".")
	if n == z.zone || strings.HasSuffix(n, "."+z.zone) {
		return z.dark
	}
	return z.main
}

func (z zoneRouter) LookupTXT(ctx context.Context, name string) ([]string, error) {
	return z.pick(name).LookupTXT(ctx, name)
}

func (z zoneRouter) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	return z.pick(host).LookupIPAddr(ctx, host)
}

func (z zoneRouter) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	return z.pick(name).LookupMX(ctx, name)
}

func (z zoneRouter) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	return z.main.LookupAddr(ctx, addr)
}

// --- an in-process milter that records its transactions ----------------------

// txn is what the test keeps of one transaction of the in-process milter.
type txn struct {
	queueID, sender string
	client          string
	rcpts           []string
	final           milterrt.Decision
	section         *trail.PolicySection
	scores          map[string]float64
	degraded        []string
}

// txnLog collects the transactions of an in-process milter.
type txnLog struct {
	mu   sync.Mutex
	txns []txn
}

func (l *txnLog) record(st *milterrt.State) {
	tx := txn{queueID: st.QueueID(), sender: st.Sender, final: st.Final, degraded: append([]string(nil), st.Degraded...)}
	if st.ClientAddr != nil {
		tx.client = st.ClientAddr.String()
	}
	for _, r := range st.Rcpts {
		tx.rcpts = append(tx.rcpts, r.Addr)
	}
	if len(st.Scores) > 0 {
		tx.scores = make(map[string]float64, len(st.Scores))
		for k, v := range st.Scores {
			tx.scores[k] = v
		}
	}
	// The milter sets a new section per transaction: keeping it is safe.
	tx.section, _ = st.Section.(*trail.PolicySection)
	l.mu.Lock()
	l.txns = append(l.txns, tx)
	l.mu.Unlock()
}

// wait returns the first transaction match accepts, waiting for it.
func (l *txnLog) wait(t testing.TB, what string, match func(txn) bool) txn {
	t.Helper()
	var found txn
	waitFor(t, 30*time.Second, "the policy milter's transaction for "+what, func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, tx := range l.txns {
			if match(tx) {
				found = tx
				return true
			}
		}
		return false
	})
	return found
}

// serveRecorded serves m on a unix socket Postfix can reach, recording
// every transaction in the returned log, until the test ends.
func serveRecorded(t *testing.T, m milterrt.Milter, path string) *txnLog {
	t.Helper()
	log := &txnLog{}
	serveForPostfix(t, m, path, milterrt.Options{OnTransaction: log.record})
	return log
}

// headerValue is the first value of a header field (trimmed), and whether
// there is one.
func headerValue(hdr [][2]string, name string) (string, bool) {
	for _, f := range hdr {
		if strings.EqualFold(f[0], name) {
			return strings.TrimSpace(strings.Join(strings.Fields(f[1]), " ")), true
		}
	}
	return "", false
}

// headerCount is how many fields named name the header has.
func headerCount(hdr [][2]string, name string) int {
	n := 0
	for _, f := range hdr {
		if strings.EqualFold(f[0], name) {
			n++
		}
	}
	return n
}

// --- hostile messages ------------------------------------------------------------

// nestedBomb is a message of multiparts nested depth deep, each with one
// text part beside the next level.
func nestedBomb(depth int) string {
	var b strings.Builder
	b.WriteString("From: <bomb@sender.example>\r\nTo: <u@acme.example>\r\nSubject: nested\r\nMIME-Version: 1.0\r\n")
	fmt.Fprintf(&b, "Content-Type: multipart/mixed; boundary=\"b0\"\r\n\r\n")
	for i := 0; i < depth; i++ {
		fmt.Fprintf(&b, "--b%d\r\nContent-Type: text/plain\r\n\r\nlevel %d\r\n", i, i)
		fmt.Fprintf(&b, "--b%d\r\nContent-Type: multipart/mixed; boundary=\"b%d\"\r\n\r\n", i, i+1)
	}
	fmt.Fprintf(&b, "--b%d\r\nContent-Type: text/plain\r\n\r\nbottom\r\n--b%d--\r\n", depth, depth)
	for i := depth - 1; i >= 0; i-- {
		fmt.Fprintf(&b, "--b%d--\r\n", i)
	}
	return b.String()
}

// widePartsBomb is a message of one multipart with n tiny parts.
func widePartsBomb(n int) string {
	var b strings.Builder
	b.WriteString("From: <bomb@sender.example>\r\nTo: <u@acme.example>\r\nSubject: wide\r\nMIME-Version: 1.0\r\n")
	b.WriteString("Content-Type: multipart/mixed; boundary=\"w\"\r\n\r\n")
	for i := 0; i < n; i++ {
		b.WriteString("--w\r\n\r\nx\r\n")
	}
	b.WriteString("--w--\r\n")
	return b.String()
}

// windowsExe is the start of a Windows executable: the DOS header ("MZ")
// and, where e_lfanew points (0x80), the PE signature.
func windowsExe() []byte {
	exe := append([]byte("MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00"), bytes.Repeat([]byte{0}, 240)...)
	exe[0x3c] = 0x80
	copy(exe[0x80:], "PE\x00\x00")
	return exe
}

// zipHolding is a zip archive holding content under the name inner.
func zipHolding(t testing.TB, inner string, content []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	w, err := zw.Create(inner)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(content); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// --- processes -------------------------------------------------------------------

// signalGroup sends sig to p's process group (h.start puts each child in
// its own group, so a forking daemon's workers are reached too).
func signalGroup(p *proc, sig syscall.Signal) error {
	return syscall.Kill(-p.cmd.Process.Pid, sig)
}
