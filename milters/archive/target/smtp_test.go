package target

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/geomilter/geomilter/milters/archive/journal"
	"github.com/geomilter/geomilter/shared/drain"
)

func smtpConfig(hosts ...string) Config {
	return Config{Name: "vault", Type: TypeSMTP, Hosts: hosts, To: "journal@archive.test",
		Helo: "mx1.test", ConnectTimeout: 2 * time.Second, Timeout: 10 * time.Second}
}

func lf(s string) string { return strings.ReplaceAll(s, "\r\n", "\n") }

// checkReport checks one smtp-sink dump: the envelope smtp-sink saw, the
// report's recipient lines and the original attached unaltered.
func checkReport(t *testing.T, dump, id, msg string, eightBit bool) {
	t.Helper()
	for _, want := range []string{
		"X-Mail-Args: <>", // the null sender
		"X-Rcpt-Args: <journal@archive.test>",
		"\nX-MS-Journal-Report:",
		"\nX-Geomilter-Journal-Id: " + id + "\n",
		"\nSender: alice@sender.example\n",
		"\nTo: bob@rcpt.example\n",
		"\nCc: carol@rcpt.example\n",
		"\nBcc: dave@rcpt.example\n",
	} {
		if !strings.Contains(dump, want) {
			t.Errorf("report %s lacks %q:\n%s", id, want, dump)
		}
	}
	if got := strings.Contains(dump, "BODY=8BITMIME"); got != eightBit {
		t.Errorf("report %s: BODY=8BITMIME sent = %v, want %v", id, got, eightBit)
	}
	cte := "7bit"
	if eightBit {
		cte = "8bit"
	}
	// smtp-sink stores lines with LF and undoes the dot-stuffing.
	part := "Content-Type: message/rfc822\nContent-Transfer-Encoding: " + cte + "\n\n" + lf(msg) + "\n--"
	if !strings.Contains(dump, part) {
		t.Errorf("report %s: the original is not attached unaltered (want %q):\n%s", id, part, dump)
	}
}

// TestSMTPDeliversJournalReports, with and without PIPELINING offered
// (smtp-sink -p): MAIL, RCPT and DATA in one write, or one by one.
func TestSMTPDeliversJournalReports(t *testing.T) {
	for _, opts := range [][]string{nil, {"-p"}} {
		t.Run(strings.Join(append([]string{"smtp-sink"}, opts...), " "), func(t *testing.T) { testSMTPDelivers(t, opts...) })
	}
}

func testSMTPDelivers(t *testing.T, sinkOpts ...string) {
	sink := startSMTPSink(t, sinkOpts...)
	dead, _ := newDead(t)
	ts := newTestSpool(t)
	ts.add(t, testHeader("lax-1", testMsg), testMsg)
	ts.add(t, testHeader("lax-2", testMsg8, "vault"), testMsg8)
	ts.add(t, testHeader("lax-3", testMsg, "files"), testMsg) // for another target: skipped
	tg := newTarget(t, smtpConfig(bracket(sink.addr)), dead)
	if err := tg.Send(sendCtx(t), ts.batch(t, 3)); err != nil {
		t.Fatalf("Send: %v", err)
	}
	dumps := sink.byID(t)
	if len(dumps) != 2 {
		t.Fatalf("smtp-sink got %d transactions, want 2", len(dumps))
	}
	checkReport(t, dumps["lax-1"], "lax-1", testMsg, false)
	checkReport(t, dumps["lax-2"], "lax-2", testMsg8, true)
	if st := dead.Status("vault"); st.Count != 0 {
		t.Errorf("dead letters: %+v, want none", st)
	}
}

func TestSMTPFailover(t *testing.T) {
	tests := []struct {
		name  string
		first func(t *testing.T) string // the host that fails
	}{
		{"connection refused", refusedHost},
		{"silent host: no greeting within connect_timeout", silentHost},
		{"4xx greeting", func(t *testing.T) string { return startSMTPSink(t, "-r", "CONNECT").addr }},
		{"4xx to EHLO and HELO", func(t *testing.T) string { return startSMTPSink(t, "-r", "EHLO,HELO").addr }},
		{"4xx to MAIL", func(t *testing.T) string { return startSMTPSink(t, "-r", "MAIL").addr }},
		{"4xx to RCPT", func(t *testing.T) string { return startSMTPSink(t, "-r", "RCPT").addr }},
		{"4xx at end of data", func(t *testing.T) string { return startSMTPSink(t, "-r", ".").addr }},
		{"disconnect after DATA", func(t *testing.T) string { return startSMTPSink(t, "-q", "DATA").addr }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			good := startSMTPSink(t)
			dead, _ := newDead(t)
			ts := newTestSpool(t)
			ts.add(t, testHeader("lax-1", testMsg), testMsg)
			ts.add(t, testHeader("lax-2", testMsg), testMsg)
			c := smtpConfig(tt.first(t), good.addr)
			c.ConnectTimeout = 300 * time.Millisecond
			tg := newTarget(t, c, dead)
			if err := tg.Send(sendCtx(t), ts.batch(t, 2)); err != nil {
				t.Fatalf("Send: %v", err)
			}
			dumps := good.byID(t)
			if len(dumps) != 2 {
				t.Fatalf("second host got %d transactions, want 2", len(dumps))
			}
			checkReport(t, dumps["lax-1"], "lax-1", testMsg, false)
			checkReport(t, dumps["lax-2"], "lax-2", testMsg, false)
		})
	}
}

func TestSMTPTemporaryFailures(t *testing.T) {
	tests := []struct {
		name  string
		hosts func(t *testing.T) []string
		mod   func(*Config)
		want  string
	}{
		{"every host 4xx", func(t *testing.T) []string {
			return []string{startSMTPSink(t, "-r", "RCPT").addr, startSMTPSink(t, "-r", "MAIL").addr}
		}, nil, "every host failed"},
		{"STARTTLS required, not offered", func(t *testing.T) []string {
			return []string{startSMTPSink(t).addr}
		}, func(c *Config) { c.StartTLS = StartTLSRequire }, "STARTTLS required but not offered"},
		{"refused", func(t *testing.T) []string { return []string{refusedHost(t)} }, nil, "connection refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dead, _ := newDead(t)
			ts := newTestSpool(t)
			ts.add(t, testHeader("lax-1", testMsg), testMsg)
			c := smtpConfig(tt.hosts(t)...)
			if tt.mod != nil {
				tt.mod(&c)
			}
			tg := newTarget(t, c, dead)
			err := tg.Send(sendCtx(t), ts.batch(t, 1))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Send = %v, want an error with %q", err, tt.want)
			}
			var pe *drain.PartialError
			if errors.As(err, &pe) {
				t.Fatalf("Send = %v: a PartialError with nothing delivered", err)
			}
			if st := dead.Status("vault"); st.Count != 0 {
				t.Fatalf("a temporary failure was dead-lettered: %+v", st)
			}
		})
	}
}

// A dark host costs at most the Send's deadline, however long the
// configured timeouts.
func TestSMTPSendBoundedByContext(t *testing.T) {
	dead, _ := newDead(t)
	ts := newTestSpool(t)
	ts.add(t, testHeader("lax-1", testMsg), testMsg)
	c := smtpConfig(silentHost(t))
	c.ConnectTimeout, c.Timeout = time.Hour, time.Hour
	tg := newTarget(t, c, dead)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err := tg.Send(ctx, ts.batch(t, 1))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Send = %v, want context.DeadlineExceeded", err)
	}
}

func TestSMTPPermanentRefusalIsDeadLettered(t *testing.T) {
	for _, tc := range []struct{ cmd, opts string }{{"MAIL", ""}, {"RCPT", ""}, {"DATA", ""}, {".", ""},
		{"MAIL", "-p"}, {"RCPT", "-p"}, {"DATA", "-p"}} {
		cmd := tc.cmd
		t.Run(cmd+tc.opts, func(t *testing.T) {
			args := []string{"-f", cmd}
			if tc.opts != "" {
				args = append(args, tc.opts)
			}
			refusing := startSMTPSink(t, args...)
			dead, reg := newDead(t)
			ts := newTestSpool(t)
			ts.add(t, testHeader("lax-1", testMsg), testMsg)
			ts.add(t, testHeader("lax-2", testMsg8), testMsg8)
			tg := newTarget(t, smtpConfig(refusing.addr), dead)
			if err := tg.Send(sendCtx(t), ts.batch(t, 2)); err != nil {
				t.Fatalf("Send = %v, want nil (refused records are dead letters)", err)
			}
			for _, tc := range []struct{ id, msg string }{{"lax-1", testMsg}, {"lax-2", testMsg8}} {
				checkDeadLetter(t, dead, "vault", tc.id, tc.msg, " 5")
			}
			st := dead.Status("vault")
			if st.Count != 2 || st.LastID != "lax-2" || !strings.Contains(st.LastError, " 5") {
				t.Fatalf("status %+v, want 2 dead letters, last lax-2 with a 5xx", st)
			}
			if got := counterValue(t, reg, "geomilter_archive_dead_letters_total", "vault"); got != 2 {
				t.Fatalf("dead letters metric = %v, want 2", got)
			}
		})
	}
}

func TestSMTPCorruptRecordIsDeadLetteredRaw(t *testing.T) {
	sink := startSMTPSink(t)
	dead, _ := newDead(t)
	ts := newTestSpool(t)
	ts.addRaw(t, "not a journal record")
	ts.add(t, testHeader("lax-2", testMsg), testMsg)
	recs := ts.batch(t, 2)
	tg := newTarget(t, smtpConfig(sink.addr), dead)
	if err := tg.Send(sendCtx(t), recs); err != nil {
		t.Fatalf("Send: %v", err)
	}
	if n := len(sink.dumps(t)); n != 1 {
		t.Fatalf("smtp-sink got %d transactions, want 1 (the good record)", n)
	}
	checkRawDeadLetter(t, dead, "vault", recs[0].Seq, "not a journal record")
}

// checkDeadLetter checks <dead>/<target>/<id>.eml holds msg and the .json
// the header and an error containing errPart.
func checkDeadLetter(t *testing.T, dead *DeadLetters, target, id, msg, errPart string) {
	t.Helper()
	dir := dead.Dir(target)
	eml, err := os.ReadFile(filepath.Join(dir, id+".eml"))
	if err != nil {
		t.Fatal(err)
	}
	if string(eml) != msg {
		t.Errorf("dead letter %s.eml = %q, want the original %q", id, eml, msg)
	}
	var got struct {
		journal.Header
		DeadLetter DeadInfo `json:"dead_letter"`
	}
	b, err := os.ReadFile(filepath.Join(dir, id+".json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("dead letter %s.json: %v", id, err)
	}
	if got.ID != id || len(got.Envelope.Rcpts) != len(testRcpts) {
		t.Errorf("dead letter %s.json header: %+v", id, got.Header)
	}
	if got.DeadLetter.Target != target || !strings.Contains(got.DeadLetter.Error, errPart) || got.DeadLetter.Time.IsZero() {
		t.Errorf("dead letter %s.json: %+v, want target %s and an error with %q", id, got.DeadLetter, target, errPart)
	}
}

func checkRawDeadLetter(t *testing.T, dead *DeadLetters, target string, seq uint64, raw string) {
	t.Helper()
	base := filepath.Join(dead.Dir(target), "seq-"+itoa(seq))
	b, err := os.ReadFile(base + ".rec")
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != raw {
		t.Errorf("raw dead letter = %q, want %q", b, raw)
	}
	var got struct {
		DeadLetter DeadInfo `json:"dead_letter"`
	}
	j, err := os.ReadFile(base + ".json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(j, &got); err != nil {
		t.Fatal(err)
	}
	if got.DeadLetter.Seq != seq || !strings.Contains(got.DeadLetter.Error, "bad journal record") {
		t.Errorf("raw dead letter json: %+v", got.DeadLetter)
	}
}

// TestSMTPKeepsSessionAcrossSends: the session kept open after a send is
// used by the next one; when the server has closed it meanwhile (smtp-sink
// -t 1: one second of silence ends a session), the next send opens a new
// one to the same host and delivers, without an error or a failover.
func TestSMTPKeepsSessionAcrossSends(t *testing.T) {
	sink := startSMTPSink(t, "-t", "1")
	dead, _ := newDead(t)
	ts := newTestSpool(t)
	for _, id := range []string{"lax-1", "lax-2", "lax-3"} {
		ts.add(t, testHeader(id, testMsg), testMsg)
	}
	tg := newTarget(t, smtpConfig(bracket(sink.addr)), dead)
	batch := ts.batch(t, 3)
	if err := tg.Send(sendCtx(t), batch[:1]); err != nil {
		t.Fatalf("first Send: %v", err)
	}
	if err := tg.Send(sendCtx(t), batch[1:2]); err != nil { // at once: the kept session
		t.Fatalf("second Send: %v", err)
	}
	time.Sleep(1500 * time.Millisecond) // the server ends the kept session
	if err := tg.Send(sendCtx(t), batch[2:]); err != nil {
		t.Fatalf("Send after the server closed the kept session: %v", err)
	}
	if got := len(sink.byID(t)); got != 3 {
		t.Fatalf("smtp-sink got %d reports, want 3", got)
	}
	if err := tg.Close(); err != nil {
		t.Fatal(err)
	}
}
