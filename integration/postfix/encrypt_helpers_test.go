package postfix

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/geomilter/geomilter/shared/trail"
)

// Helpers of the encrypt milter's tests (encrypt_test.go): the real
// `geomilter encrypt` binary started with its own config (one process per
// inline method, each on its own socket), smtp-sink instances that dump every
// message (-d) as the final destination, the encryption gateway and a
// receiver without STARTTLS (the recipient keys come from package inlinetest).

const (
	encSiteAddr = "10.79.0.1" // the sending site's veth address
	encRxAddr   = "10.79.0.2" // the TLS-required partner's receiver
	// Client addresses that smtpd_milter_maps sends to the inline milters
	// (127.0.0.0/8 is all local on lo; the tenant relays from it all).
	encSMIMEClient = "127.0.0.2"
	encPGPClient   = "127.0.0.3"
)

// encSink is a real smtp-sink that writes each message to its own file
// (-d) and counts them (-c).
type encSink struct {
	name  string
	dir   string
	count atomic.Int64
	proc  *proc
}

// startEncSink runs smtp-sink on addr inside ns as user postfix, dumping
// into <dir>/dump-<name>.
func startEncSink(h *harness, ns, dir, name, addr string) *encSink {
	t := h.t
	k := &encSink{name: name, dir: filepath.Join(dir, "dump-"+name)}
	if err := os.MkdirAll(k.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	uid, err := lookupID("passwd", "postfix")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(k.dir, uid, 0); err != nil {
		t.Fatal(err)
	}
	k.proc = h.start("smtp-sink "+name, ns, procOpts{onLine: func(l string) {
		if m := mesgRe.FindStringSubmatch(l); m != nil {
			n, _ := strconv.ParseInt(m[1], 10, 64)
			k.count.Store(n)
		}
	}}, "setpriv", "--reuid=postfix", "--regid=postfix", "--clear-groups", "--pdeathsig=KILL",
		"smtp-sink", "-c", "-d", k.dir+"/%Y%m%d%H%M%S.", addr, "256")
	host, port, _ := strings.Cut(addr, ":")
	waitFor(t, 10*time.Second, "smtp-sink "+name+" at "+addr, func() bool {
		out, err := inNS(ns, 5*time.Second, "bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/%s/%s && head -c 3 <&3", host, port))
		return err == nil && strings.HasPrefix(out, "220")
	})
	return k
}

// encDump is one message smtp-sink dumped.
type encDump struct {
	file  string
	rcpts []string // RCPT TO arguments
	// msg is the message as received with LF line ends: smtp-sink drops
	// every CR byte and dot-unstuffs; its own Received: field is left out.
	msg []byte
}

// parseEncDump reads a dump: smtp-sink's X-* lines and its own (folded)
// Received: field, then the message, then the LF of the final ".\r\n".
func parseEncDump(path string) (encDump, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return encDump{}, err
	}
	d := encDump{file: path}
	rest := b
	sawReceived := false
	for len(rest) > 0 {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			return d, fmt.Errorf("dump %s: no end of smtp-sink's own lines", path)
		}
		line := string(rest[:i])
		if sawReceived && !strings.HasPrefix(line, "\t") {
			break
		}
		rest = rest[i+1:]
		switch {
		case strings.HasPrefix(line, "X-Rcpt-Args: "):
			d.rcpts = append(d.rcpts, strings.TrimPrefix(line, "X-Rcpt-Args: "))
		case strings.HasPrefix(line, "Received: from "):
			sawReceived = true
		}
	}
	if !sawReceived || !bytes.HasSuffix(rest, []byte("\n")) {
		return d, fmt.Errorf("dump %s: incomplete", path)
	}
	d.msg = rest[:len(rest)-1]
	return d, nil
}

// dumps parses every message the sink has completed; a file still being
// written does not parse and is skipped.
func (k *encSink) dumps() []encDump {
	ents, _ := os.ReadDir(k.dir)
	var out []encDump
	for _, e := range ents {
		if d, err := parseEncDump(filepath.Join(k.dir, e.Name())); err == nil {
			out = append(out, d)
		}
	}
	return out
}

// withMessageID returns the dumps whose Message-ID field is id.
func (k *encSink) withMessageID(id string) []encDump {
	var out []encDump
	for _, d := range k.dumps() {
		if encField(d.msg, "Message-ID") == id {
			out = append(out, d)
		}
	}
	return out
}

// encArrival waits until the message with Message-ID id is at one of the
// sinks and fails the test unless it is at want (so a message that took the
// wrong path fails at once, naming the path).
func encArrival(t testing.TB, id string, want *encSink, sinks ...*encSink) encDump {
	t.Helper()
	var at *encSink
	var d encDump
	waitFor(t, 45*time.Second, fmt.Sprintf("message %s at smtp-sink %s", id, want.name), func() bool {
		for _, k := range sinks {
			if got := k.withMessageID(id); len(got) > 0 {
				at, d = k, got[0]
				return true
			}
		}
		return false
	})
	if at != want {
		t.Fatalf("message %s arrived at smtp-sink %s, want %s", id, at.name, want.name)
	}
	return d
}

// encEvent waits for the encrypt trail event of queue id qid in a milter's
// file trail.
func encEvent(t testing.TB, m *encMilter, qid string) trail.Event {
	t.Helper()
	var found trail.Event
	waitFor(t, 20*time.Second, fmt.Sprintf("the %s milter's trail event for %s", m.name, qid), func() bool {
		for _, ev := range fileEvents(m.trail) {
			if ev.QueueID == qid && ev.Encrypt != nil {
				found = ev
				return true
			}
		}
		return false
	})
	return found
}

// encHeader is the header of a message with LF line ends (up to the first
// empty line).
func encHeader(msg []byte) string {
	h, _, _ := strings.Cut(string(msg), "\n\n")
	return h + "\n"
}

// encBody is the body of a message with LF line ends.
func encBody(msg []byte) string {
	_, b, _ := strings.Cut(string(msg), "\n\n")
	return b
}

// encField is the first value of a header field, unfolded and trimmed (""
// when absent).
func encField(msg []byte, name string) string {
	vals := encFields(msg, name)
	if len(vals) == 0 {
		return ""
	}
	return vals[0]
}

// encFields are every value of a header field, unfolded and trimmed.
func encFields(msg []byte, name string) []string {
	var out []string
	cur := -1
	for _, l := range strings.Split(strings.TrimSuffix(encHeader(msg), "\n"), "\n") {
		if (strings.HasPrefix(l, " ") || strings.HasPrefix(l, "\t")) && cur >= 0 {
			out[cur] += " " + strings.TrimSpace(l)
			continue
		}
		cur = -1
		n, v, ok := strings.Cut(l, ":")
		if ok && strings.EqualFold(n, name) {
			out = append(out, strings.TrimSpace(v))
			cur = len(out) - 1
		}
	}
	return out
}

// encMilter is one `geomilter encrypt` process with its own config.
type encMilter struct {
	name   string
	sock   string
	trail  string // its file trail sink
	health string // its /healthz URL
	proc   *proc
}

// startEncMilter writes a standalone config for one encrypt milter (own
// socket, spool, state, metrics port and trail file; the shared rules file)
// with the extra milters.encrypt keys in extra, checks it with check-config
// and runs the milter with group postfix (its socket, mode 0660, must be
// reachable by smtpd and cleanup) until the rules are loaded.
func startEncMilter(s *site, name, rulesFile, extra string, metricsPort int) *encMilter {
	t := s.h.t
	m := &encMilter{
		name:   name,
		sock:   filepath.Join(s.sockDir, "encrypt-"+name+".sock"),
		trail:  filepath.Join(s.dir, "trail-"+name+".ndjson"),
		health: fmt.Sprintf("http://127.0.0.1:%d/healthz", metricsPort),
	}
	own, cmd := m.sock, "encrypt"
	if suiteMode {
		// A suite of one per encrypt milter: the test's point is one
		// milter per client (smtpd_milter_maps), so each keeps its process;
		// Postfix reaches the suite's socket and its metrics are at +4.
		m.sock, cmd = filepath.Join(s.sockDir, "encrypt-"+name+"-suite.sock"), "suite"
		m.health = fmt.Sprintf("http://127.0.0.1:%d/healthz", metricsPort-3+suiteMetricsOffset)
	}
	d := filepath.Join(s.dir, "milter-"+name)
	var b strings.Builder
	fmt.Fprintf(&b, "site: %s\nhost: mx1\nrules_file: %s\nstate_dir: %s/state\nspool_dir: %s/spool\nlog: {level: info}\n", s.name, rulesFile, d, d)
	fmt.Fprintf(&b, "trail:\n  sync_every: 50ms\n  sinks:\n    - {name: local, type: file, path: %s}\n", m.trail)
	fmt.Fprintf(&b, "metrics: {listen: \"127.0.0.1:%d\"}\n", metricsPort-3) // encrypt's offset is +3
	fmt.Fprintf(&b, "milters:\n  encrypt:\n    listen: \"unix:%s\"\n    shutdown_timeout: 5s\n", own)
	for _, l := range strings.Split(strings.TrimSpace(extra), "\n") {
		if l != "" {
			b.WriteString("    " + l + "\n")
		}
	}
	if suiteMode {
		fmt.Fprintf(&b, "  suite: {listen: \"unix:%s\", members: [encrypt], shutdown_timeout: 5s}\n", m.sock)
	}
	cfg := filepath.Join(s.dir, "geomilter-"+name+".yaml")
	if err := os.WriteFile(cfg, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := runCmd(20*time.Second, binPath, "check-config", "--config", cfg); err != nil {
		t.Fatalf("check-config %s: %v\n%s\n%s", cfg, err, out, b.String())
	}
	gid, err := lookupID("group", "postfix")
	if err != nil {
		t.Fatal(err)
	}
	m.proc = s.h.start("geomilter encrypt "+name, s.ns, procOpts{gid: gid, ready: func() error {
		out, err := inNS(s.ns, 10*time.Second, "curl", "-s", "--max-time", "5", m.health)
		if err == nil && !strings.Contains(out, "1 tenants") {
			err = fmt.Errorf("rules not loaded: %s", out)
		}
		return err
	}}, binPath, cmd, "--config", cfg)
	return m
}

// encSentRe is a delivery of the sending Postfix: queue id, transport,
// recipient, relay, status and its text.
// The transports of master.cf.snippet log as postfix/<transport>/smtp
// (their syslog_name), the stock smtp transport as postfix/smtp.
var encSentRe = regexp.MustCompile(`postfix/(?:([a-z-]+)/)?smtp\[\d+\]: ([0-9A-F]+): to=<([^>]*)>, relay=([^,]*), .*status=([a-z]+) \((.*)\)$`)

// encDelivery is one delivery attempt logged by Postfix's smtp client.
type encDelivery struct {
	transport, rcpt, relay, status, text string
}

// deliveries returns the delivery attempts of queue id qid from the maillog.
func encDeliveries(s *site, qid string) []encDelivery {
	var out []encDelivery
	for _, l := range readLines(s.maillog) {
		if m := encSentRe.FindStringSubmatch(l); m != nil && m[2] == qid {
			if m[1] == "" {
				m[1] = "smtp"
			}
			out = append(out, encDelivery{transport: m[1], rcpt: m[3], relay: m[4], status: m[5], text: m[6]})
		}
	}
	return out
}

// encLogLines returns the maillog lines that mention qid and contain sub.
func encLogLines(s *site, qid, sub string) []string {
	var out []string
	for _, l := range readLines(s.maillog) {
		if strings.Contains(l, " "+qid+": ") && strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return out
}

// encSend sends one message (LF line ends in data; swaks sends CRLF) from
// the client address from into the site's smtpd and returns its queue id.
// swaks ends the data with CRLF "." CRLF after the file, so the file is
// written without data's final LF: Postfix receives data exactly.
func encSend(t testing.TB, s *site, from, sender string, rcpts []string, data string) string {
	t.Helper()
	file := filepath.Join(s.dir, fmt.Sprintf("send-%d.eml", time.Now().UnixNano()))
	if err := os.WriteFile(file, []byte(strings.TrimSuffix(data, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	out := swaksAt(s.ns, "127.0.0.1:25", "client.enc.test", "--local-interface", from,
		"--from", sender, "--to", strings.Join(rcpts, ","), "--data", "@"+file)
	qid := queuedAs(out)
	if qid == "" {
		t.Fatalf("not queued; swaks:\n%s", out)
	}
	return qid
}
