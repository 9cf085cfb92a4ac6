package target

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/milters/archive/journal"
	"github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/spool"
)

// testMsg is a message to a To, a Cc and (in the envelope only) a Bcc
// recipient, with a line starting with "." (dot-stuffing) and CRLF ends.
const testMsg = "From: Alice <alice@sender.example>\r\n" +
	"To: Bob <bob@rcpt.example>\r\n" +
	"Cc: carol@rcpt.example\r\n" +
	"Subject: quarterly numbers\r\n" +
	"Message-ID: <m1@sender.example>\r\n" +
	"\r\n" +
	"Hello Bob,\r\n" +
	".a line starting with a dot\r\n" +
	".\r\n" +
	"bye\r\n"

// testMsg8 is the same with 8-bit bytes in the body.
var testMsg8 = strings.Replace(testMsg, "bye", "tschüss, café", 1)

var testRcpts = []string{"bob@rcpt.example", "carol@rcpt.example", "dave@rcpt.example"}

func testHeader(id string, msg string, targets ...string) *journal.Header {
	h := &journal.Header{
		ID: id, Site: "lax", Host: "mx1.test", Time: time.Date(2026, 12, 7, 5, 15, 0, 0, time.UTC),
		Direction: "inbound", Targets: targets, Size: int64(len(msg)), MessageID: "<m1@sender.example>",
		Envelope: milterrt.Envelope{SessionID: "s1", Sender: "alice@sender.example",
			Client: milterrt.EnvelopeClient{Host: "client.example", Addr: "192.0.2.1"}},
	}
	for _, r := range testRcpts {
		h.Envelope.Rcpts = append(h.Envelope.Rcpts, milterrt.EnvelopeRcpt{Addr: r, Action: "continue"})
	}
	return h
}

// testSpool is a real journal spool with one sink cursor.
type testSpool struct {
	sp *spool.Spool
	r  *spool.Reader
}

func newTestSpool(t testing.TB) *testSpool {
	t.Helper()
	sp, err := spool.Open(spool.Options{Dir: t.TempDir(), Sinks: []string{"t"}, Durability: spool.Durable})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sp.Close() })
	r, err := sp.Reader("t")
	if err != nil {
		t.Fatal(err)
	}
	return &testSpool{sp: sp, r: r}
}

// add journals msg under h.
func (s *testSpool) add(t testing.TB, h *journal.Header, msg string) {
	t.Helper()
	h.Size = int64(len(msg))
	r, n, err := journal.Encode(h, strings.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.sp.AppendFrom(r, n); err != nil {
		t.Fatal(err)
	}
}

// addRaw appends bytes that are not a journal record.
func (s *testSpool) addRaw(t testing.TB, data string) {
	t.Helper()
	if err := s.sp.Append([]byte(data)); err != nil {
		t.Fatal(err)
	}
}

// batch returns every record appended so far.
func (s *testSpool) batch(t testing.TB, n int) []spool.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var out []spool.Record
	for len(out) < n {
		recs, err := s.r.Next(ctx, n-len(out))
		if err != nil {
			t.Fatalf("spool Next: %v", err)
		}
		out = append(out, recs...)
	}
	return out
}

func newDead(t testing.TB) (*DeadLetters, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	d, err := NewDeadLetters(filepath.Join(t.TempDir(), "dead"), zerolog.Nop(), reg)
	if err != nil {
		t.Fatal(err)
	}
	return d, reg
}

func newTarget(t testing.TB, c Config, dead *DeadLetters) interface {
	Send(context.Context, []spool.Record) error
	Close() error
} {
	t.Helper()
	s, err := New(c, dead, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func sendCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// smtpSink runs Postfix's smtp-sink on a free loopback port, dumping each
// transaction into a file of dir; extra are more options (-f RCPT, …).
type smtpSink struct {
	addr string
	dir  string
}

func startSMTPSink(t testing.TB, extra ...string) *smtpSink {
	t.Helper()
	return startSMTPSinkDump(t, true, extra...)
}

// startSMTPSinkDump is startSMTPSink, without dump files unless dump.
func startSMTPSinkDump(t testing.TB, dump bool, extra ...string) *smtpSink {
	t.Helper()
	bin := "/usr/sbin/smtp-sink"
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("Postfix smtp-sink not installed: %v", err)
	}
	dir := t.TempDir()
	// smtp-sink run as root must drop to a user (-u), who must write dir.
	for d := dir; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o777); err != nil {
			t.Fatal(err)
		}
	}
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	args := []string{"-u", "nobody"}
	if dump {
		args = append(args, "-d", dir+"/%Y%m%d%H%M%S.")
	}
	args = append(args, extra...)
	args = append(args, addr, "10")
	cmd := exec.Command(bin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-exited:
			t.Fatalf("smtp-sink %v exited: %s", args, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("smtp-sink on %s not answering: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return &smtpSink{addr: addr, dir: dir}
}

// byID returns the transactions smtp-sink wrote by journal id.
func (s *smtpSink) byID(t testing.TB) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, d := range s.dumps(t) {
		_, rest, ok := strings.Cut(d, "\nX-Geomilter-Journal-Id: ")
		id, _, _ := strings.Cut(rest, "\n")
		if !ok || out[id] != "" {
			t.Fatalf("smtp-sink dump without a journal id, or a second with id %q:\n%s", id, d)
		}
		out[id] = d
	}
	return out
}

// dumps returns the transactions smtp-sink wrote (file names hold the
// second and a random number: not in order).
func (s *smtpSink) dumps(t testing.TB) []string {
	t.Helper()
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	var out []string
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(s.dir, n))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, string(b))
	}
	return out
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// silentHost listens and never says a word: the TCP handshake completes
// (the kernel's backlog) but no greeting ever comes.
func silentHost(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l.Addr().String()
}

// refusedHost is a loopback port nothing listens on.
func refusedHost(t *testing.T) string {
	return fmt.Sprintf("127.0.0.1:%d", freePort(t))
}

func bracket(addr string) string {
	h, p, _ := net.SplitHostPort(addr)
	return "[" + h + "]:" + p
}

func itoa(n uint64) string { return fmt.Sprint(n) }

// counterValue reads one labelled counter from reg.
func counterValue(t testing.TB, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetValue() == label {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
