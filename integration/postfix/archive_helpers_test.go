package postfix

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/geomilter/geomilter/milters/archive/journal"
	"github.com/geomilter/geomilter/shared/ctl"
)

// Helpers of the archive milter's tests (archive_test.go): a site whose
// Postfix has the archive milter (the real binary, `geomilter archive`) as its
// only milter; real smtp-sink instances that dump every transaction (-d), as
// the final destination and as SMTP journal targets; a directory target; and
// darkening a target by dropping its packets.

const (
	arcJournalTo   = "journal@archive.example"
	arcJournalFrom = "postmaster@mx1.arc.test"
	// arcTargetPort is the first SMTP journal target's port; the next ones
	// follow.
	arcTargetPort = 2601
)

// arcSink is a real smtp-sink that writes each transaction to its own file
// in dir (-d) and counts messages (-c).
type arcSink struct {
	name  string
	port  int
	dir   string
	count atomic.Int64
}

// startArcSink runs smtp-sink on 127.0.0.1:port inside the site's
// namespace, as user postfix (like the harness's sinks), dumping into
// <site dir>/dump-<name>.
func (s *site) startArcSink(name string, port int) *arcSink {
	t := s.h.t
	d := &arcSink{name: name, port: port, dir: filepath.Join(s.dir, "dump-"+name)}
	if err := os.MkdirAll(d.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	pfUID, err := lookupID("passwd", "postfix")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(d.dir, pfUID, 0); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	s.h.start(fmt.Sprintf("%s smtp-sink %s", s.name, name), s.ns, procOpts{onLine: func(l string) {
		if m := mesgRe.FindStringSubmatch(l); m != nil {
			n, _ := strconv.ParseInt(m[1], 10, 64)
			d.count.Store(n)
		}
	}}, "setpriv", "--reuid=postfix", "--regid=postfix", "--clear-groups", "--pdeathsig=KILL",
		"smtp-sink", "-c", "-d", d.dir+"/%Y%m%d%H%M%S.", addr, "256")
	waitFor(t, 10*time.Second, "smtp-sink "+name+" at "+addr, func() bool {
		out, err := inNS(s.ns, 5*time.Second, "bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/127.0.0.1/%d && head -c 3 <&3", port))
		return err == nil && strings.HasPrefix(out, "220")
	})
	return d
}

// arcDump is one transaction smtp-sink dumped.
type arcDump struct {
	file  string
	helo  string
	mail  string   // MAIL FROM argument, <addr> and parameters
	rcpts []string // RCPT TO arguments
	msg   []byte   // the message as received, with CRLF line ends
}

// parseArcDump reads an smtp-sink dump: its X-* lines, its own three-line
// Received: field, then the message with every CR removed (smtp-sink drops
// CR bytes) and dot-unstuffed, then the LF of the final ".\r\n". The message
// is returned with CRLF line ends again: exact for messages without bare
// CR or LF, which is what these tests send.
func parseArcDump(path string) (arcDump, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return arcDump{}, err
	}
	d := arcDump{file: path}
	rest := b
	sawReceived := false
	for len(rest) > 0 {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			return d, fmt.Errorf("dump %s: no end of smtp-sink's header lines", path)
		}
		line := string(rest[:i])
		if sawReceived && !strings.HasPrefix(line, "\t") {
			break // the message starts here
		}
		rest = rest[i+1:]
		switch {
		case strings.HasPrefix(line, "X-Helo-Args: "):
			d.helo = strings.TrimPrefix(line, "X-Helo-Args: ")
		case strings.HasPrefix(line, "X-Mail-Args: "):
			d.mail = strings.TrimPrefix(line, "X-Mail-Args: ")
		case strings.HasPrefix(line, "X-Rcpt-Args: "):
			d.rcpts = append(d.rcpts, strings.TrimPrefix(line, "X-Rcpt-Args: "))
		case strings.HasPrefix(line, "Received: from "):
			sawReceived = true
		}
	}
	if !sawReceived || !bytes.HasSuffix(rest, []byte("\n")) {
		return d, fmt.Errorf("dump %s: incomplete (received line %v, %d message bytes)", path, sawReceived, len(rest))
	}
	rest = rest[:len(rest)-1]
	d.msg = bytes.ReplaceAll(rest, []byte("\n"), []byte("\r\n"))
	return d, nil
}

// dumps parses every transaction the sink has completed. smtp-sink closes a
// transaction's file before it counts the message, and removes the file of
// an aborted one; a file still being written fails to parse and is skipped
// (an error only when fewer dumps parse than the sink counted).
func (d *arcSink) dumps() ([]arcDump, error) {
	ents, err := os.ReadDir(d.dir)
	if err != nil {
		return nil, err
	}
	var out []arcDump
	var firstErr error
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		sd, err := parseArcDump(filepath.Join(d.dir, e.Name()))
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		out = append(out, sd)
	}
	if int64(len(out)) < d.count.Load() && firstErr != nil {
		return out, firstErr
	}
	return out, nil
}

// waitDumps waits until the sink counted at least n messages and has n
// complete dumps, and returns them.
func (d *arcSink) waitDumps(t testing.TB, within time.Duration, n int) []arcDump {
	t.Helper()
	var got []arcDump
	var err error
	waitFor(t, within, fmt.Sprintf("%d message(s) at smtp-sink %s", n, d.name), func() bool {
		if d.count.Load() < int64(n) {
			return false
		}
		got, err = d.dumps()
		return err == nil && len(got) >= n
	})
	return got
}

// arcField returns the first value of a header field of a message (""
// when absent or unparsable).
func arcField(msg []byte, name string) string {
	m, err := mail.ReadMessage(bytes.NewReader(msg))
	if err != nil {
		return ""
	}
	return m.Header.Get(name)
}

// arcMessageIDs are the Message-ID values of dumped messages, counted.
func arcMessageIDs(ds []arcDump) map[string]int {
	out := map[string]int{}
	for _, d := range ds {
		out[arcField(d.msg, "Message-Id")]++
	}
	return out
}

// arcReport is an envelope journal report as a journal target received
// it.
type arcReport struct {
	id         string   // X-Geomilter-Journal-Id
	hasMSField bool     // an X-MS-Journal-Report: field is present
	lines      []string // the text part, line by line
	original   []byte   // the message/rfc822 part, raw
}

// parseArcReport parses the report dumped by a journal target: a
// multipart/mixed message (RFC 2046 §5.1) whose first part is text/plain
// and whose second is message/rfc822 (RFC 2046 §5.2.1), read raw.
func parseArcReport(d arcDump) (arcReport, error) {
	var r arcReport
	m, err := mail.ReadMessage(bytes.NewReader(d.msg))
	if err != nil {
		return r, fmt.Errorf("report %s: %w", d.file, err)
	}
	_, r.hasMSField = m.Header["X-Ms-Journal-Report"]
	r.id = m.Header.Get("X-Geomilter-Journal-Id")
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/mixed" || params["boundary"] == "" {
		return r, fmt.Errorf("report %s: Content-Type %q (%v), want multipart/mixed with a boundary", d.file, m.Header.Get("Content-Type"), err)
	}
	mr := multipart.NewReader(m.Body, params["boundary"])
	for i := 0; ; i++ {
		p, err := mr.NextRawPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			return r, fmt.Errorf("report %s: part %d: %w", d.file, i+1, err)
		}
		body, err := io.ReadAll(p)
		if err != nil {
			return r, fmt.Errorf("report %s: part %d: %w", d.file, i+1, err)
		}
		ct := p.Header.Get("Content-Type")
		switch {
		case strings.HasPrefix(strings.ToLower(ct), "text/plain"):
			if strings.EqualFold(p.Header.Get("Content-Transfer-Encoding"), "quoted-printable") {
				if body, err = io.ReadAll(quotedprintable.NewReader(bytes.NewReader(body))); err != nil {
					return r, fmt.Errorf("report %s: text part: %w", d.file, err)
				}
			}
			for _, l := range strings.Split(string(body), "\r\n") {
				if l = strings.TrimSpace(l); l != "" {
					r.lines = append(r.lines, l)
				}
			}
		case strings.HasPrefix(strings.ToLower(ct), "message/rfc822"):
			r.original = body
		}
	}
	if r.original == nil {
		return r, fmt.Errorf("report %s: no message/rfc822 part", d.file)
	}
	return r, nil
}

// archiveOpts select what an archive site runs.
type archiveOpts struct {
	smtpTargets []string // SMTP journal target names, at ports arcTargetPort, +1, …
	dirTarget   bool     // a directory target named "files"
	journal     []string // more milters.archive.journal keys, one "key: value" each
	// connectTimeout of the SMTP targets (a dark one costs this per try).
	connectTimeout time.Duration
	// chain, if set, starts more milters before Postfix starts and returns
	// their smtpd_milters entries before and after the archive milter.
	chain func(a *archiveSite) (before, after []string)
}

// archiveSite is a site whose Postfix has the archive milter as its only
// milter (default_action=tempfail, as the snippet sets it) unless
// archiveOpts.chain adds others, with a dumping smtp-sink as the final
// destination.
type archiveSite struct {
	*site
	opts     archiveOpts
	delivery *arcSink
	targets  map[string]*arcSink // SMTP journal targets by name
	filesDir string              // the directory target's path
	journal  string              // the journal spool directory
}

// newArchiveSite builds the namespace, the sinks, the archive milter and
// Postfix.
func newArchiveSite(t testing.TB, o archiveOpts) *archiveSite {
	t.Helper()
	h := newHarness(t)
	a := &archiveSite{site: h.newSite("arc", ""), opts: o, targets: map[string]*arcSink{}}
	a.delivery = a.startArcSink("delivery", sinkPort)
	for i, name := range o.smtpTargets {
		a.targets[name] = a.startArcSink(name, arcTargetPort+i)
	}
	a.writeArchiveConfig()
	a.startMilter("archive")
	list := []string{"{ unix:" + a.socket("archive") + ", default_action=tempfail }"}
	if o.chain != nil {
		before, after := o.chain(a)
		list = append(append(before, list...), after...)
	}
	a.startPostfix(siteOpts{mainCf: map[string]string{
		"smtpd_milters":     strings.Join(list, ", "),
		"non_smtpd_milters": "",
	}})
	h.dumpOnFailure(func() {
		if st, err := a.archiveStatus(); err == nil {
			t.Logf("--- archive status:\n%s", st)
		}
	})
	return a
}

func (a *archiveSite) writeArchiveConfig() {
	t := a.h.t
	rules := filepath.Join(a.dir, "rules.yaml")
	if err := os.WriteFile(rules, []byte("tenants: []\nrules: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	a.journal = filepath.Join(a.dir, "journal")
	a.filesDir = filepath.Join(a.dir, "archive-files")
	ct := a.opts.connectTimeout
	if ct == 0 {
		ct = 2 * time.Second
	}
	var b strings.Builder
	fmt.Fprintf(&b, "site: %s\nhost: mx1\n", a.name)
	fmt.Fprintf(&b, "rules_file: %s\nstate_dir: %s/state\nspool_dir: %s/spool\nlog: {level: info}\n", rules, a.dir, a.dir)
	fmt.Fprintf(&b, "trail:\n  sync_every: 50ms\n  backoff: {min: 50ms, max: 1s}\n  sinks:\n")
	fmt.Fprintf(&b, "    - {name: local, type: file, path: %s/trail.ndjson}\n", a.dir)
	b.WriteString("metrics: {listen: \"127.0.0.1:9464\"}\nmilters:\n  archive:\n")
	fmt.Fprintf(&b, "    listen: \"unix:%s\"\n    shutdown_timeout: 5s\n    journal:\n", a.ownSocket("archive"))
	fmt.Fprintf(&b, "      dir: %s\n      batch: 10\n      backoff: {min: 100ms, max: 1s}\n", a.journal)
	for _, l := range a.opts.journal {
		fmt.Fprintf(&b, "      %s\n", l)
	}
	b.WriteString("      targets:\n")
	for i, name := range a.opts.smtpTargets {
		fmt.Fprintf(&b, "        - {name: %s, type: smtp, hosts: [\"[127.0.0.1]:%d\"], to: %q, from: %q, helo: mx1.%s.test, starttls: \"off\", timeout: 10s, connect_timeout: %s}\n",
			name, arcTargetPort+i, arcJournalTo, arcJournalFrom, a.name, ct)
	}
	if a.opts.dirTarget {
		fmt.Fprintf(&b, "        - {name: files, type: dir, path: %s}\n", a.filesDir)
	}
	// Suite mode: the archive milter hosted as a suite of one (the other
	// milters of a chain are recorders in this test process).
	b.WriteString(a.suiteYAML([]string{"archive"}))
	a.gmConfig = filepath.Join(a.dir, "geomilter.yaml")
	if err := os.WriteFile(a.gmConfig, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := runCmd(20*time.Second, binPath, "check-config", "--config", a.gmConfig); err != nil {
		t.Fatalf("check-config %s: %v\n%s\n%s", a.gmConfig, err, out, b.String())
	}
}

// killArchive SIGKILLs the archive milter (no shutdown, no socket removal)
// and waits for it to be gone.
func (a *archiveSite) killArchive() {
	p := a.milters["archive"]
	// ip netns exec execs the milter: the child is the milter itself, the
	// leader of its own process group.
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// archiveStatus is GET /archive/status on the archive milter's metrics
// listener.
func (a *archiveSite) archiveStatus() (string, error) {
	return inNS(a.ns, 10*time.Second, "curl", "-sf", "--max-time", "5", fmt.Sprintf("http://127.0.0.1:%d/archive/status", metricsPort("archive")))
}

// darken drops every packet to a journal target's port (silence, not
// refusal: a connection attempt times out), in the site's own namespace.
func (a *archiveSite) darken(name string) {
	a.h.mustRun("ip", "netns", "exec", a.ns, "iptables", "-w", "-I", "INPUT", "-p", "tcp", "--dport", strconv.Itoa(a.targets[name].port), "-j", "DROP")
}

// brighten removes the rule darken added.
func (a *archiveSite) brighten(name string) {
	a.h.mustRun("ip", "netns", "exec", a.ns, "iptables", "-w", "-D", "INPUT", "-p", "tcp", "--dport", strconv.Itoa(a.targets[name].port), "-j", "DROP")
}

// arcDirRecord is one record the directory target wrote: the journal header
// (.json) and the message (.eml).
type arcDirRecord struct {
	hdr journal.Header
	eml []byte
}

// dirRecords reads the directory target's complete pairs (the .json is
// written after the .eml, so a .json means a complete pair), by journal id.
func (a *archiveSite) dirRecords() (map[string]arcDirRecord, error) {
	out := map[string]arcDirRecord{}
	err := filepath.WalkDir(a.filesDir, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && path == a.filesDir {
				return fs.SkipAll
			}
			return err
		}
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".json") || strings.HasPrefix(e.Name(), ".") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		var rec arcDirRecord
		if err := json.Unmarshal(b, &rec.hdr); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if rec.eml, err = os.ReadFile(strings.TrimSuffix(path, ".json") + ".eml"); err != nil {
			return fmt.Errorf("the .eml beside %s: %w", path, err)
		}
		if rec.hdr.ID == "" || int64(len(rec.eml)) != rec.hdr.Size {
			return fmt.Errorf("%s: id %q, size %d, .eml has %d bytes", path, rec.hdr.ID, rec.hdr.Size, len(rec.eml))
		}
		out[rec.hdr.ID] = rec
		return nil
	})
	return out, err
}

// arcDirMessageIDs counts the directory target's records by the Message-ID of
// their .eml.
func arcDirMessageIDs(recs map[string]arcDirRecord) map[string]int {
	out := map[string]int{}
	for _, r := range recs {
		out[arcField(r.eml, "Message-Id")]++
	}
	return out
}

// arcReportMessageIDs counts a journal target's reports by the Message-ID of
// the original they carry, and by journal id.
func arcReportMessageIDs(ds []arcDump) (byMsgID map[string]int, byJournalID map[string]int, err error) {
	byMsgID, byJournalID = map[string]int{}, map[string]int{}
	for _, d := range ds {
		r, err := parseArcReport(d)
		if err != nil {
			return nil, nil, err
		}
		byMsgID[arcField(r.original, "Message-Id")]++
		byJournalID[r.id]++
	}
	return byMsgID, byJournalID, nil
}

// arcMissing lists the keys of want that have lacks, sorted.
func arcMissing(want, have map[string]int) []string {
	var out []string
	for k := range want {
		if have[k] == 0 {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// arcDirBytes is the size of the regular files under dir.
func arcDirBytes(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, e fs.DirEntry, err error) error {
		if err == nil && e.Type().IsRegular() {
			if fi, err := e.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// archiveStatusJSON is GET /archive/status decoded.
func (a *archiveSite) archiveStatusJSON() (ctl.ArchiveStatus, error) {
	var st ctl.ArchiveStatus
	out, err := a.archiveStatus()
	if err != nil {
		return st, fmt.Errorf("archive status: %v: %s", err, out)
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return st, fmt.Errorf("archive status: %w: %s", err, out)
	}
	return st, nil
}

// archiveBacklog is the number of journal records not yet delivered to a
// target, from GET /archive/status.
func (a *archiveSite) archiveBacklog(target string) (int64, error) {
	st, err := a.archiveStatusJSON()
	if err != nil {
		return 0, err
	}
	for _, t := range st.Targets {
		if t.Name == target {
			return t.BacklogRecords, nil
		}
	}
	return 0, fmt.Errorf("archive status: no target %q in %+v", target, st.Targets)
}

// missingReports waits up to within for the journal target name to have
// received a report of every Message-ID in want, and returns those still
// missing at the end (nil when none is).
func (a *archiveSite) missingReports(t testing.TB, name string, want map[string]int, within time.Duration) []string {
	t.Helper()
	var lost []string
	eventually(within, func() bool {
		ds, err := a.targets[name].dumps()
		if err != nil {
			return false
		}
		got, _, err := arcReportMessageIDs(ds)
		if err != nil {
			t.Fatal(err)
		}
		lost = arcMissing(want, got)
		return len(lost) == 0
	})
	return lost
}
