package archive_test

import (
	"bytes"
	"encoding/json"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	milter "github.com/emersion/go-milter"
	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/milters/archive"
	"github.com/geomilter/geomilter/milters/archive/journal"
	"github.com/geomilter/geomilter/shared/config"
	"github.com/geomilter/geomilter/shared/ctl"
	"github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/milterrt/miltertest"
	"github.com/geomilter/geomilter/shared/rules"
	"github.com/geomilter/geomilter/shared/service"
)

type fixedRules struct{ s *rules.Snapshot }

func (f fixedRules) Current() *rules.Snapshot { return f.s }

// harness is an archive milter with a directory target, served over the
// milter protocol.
type harness struct {
	m     milterrt.Milter
	srv   *miltertest.Server
	files string // the dir target
	cfg   *config.Config
	env   *service.Env
}

func newHarness(t testing.TB, rulesYAML, journalYAML string) *harness {
	t.Helper()
	// 1 KiB in memory: most test messages are in a spill file when journaled.
	return newHarnessMem(t, rulesYAML, journalYAML, 1024)
}

// newHarnessMem is newHarness with the message memory given (0: the
// runtime's default, 256 KiB).
func newHarnessMem(t testing.TB, rulesYAML, journalYAML string, memory int64) *harness {
	t.Helper()
	dir := t.TempDir()
	files := filepath.Join(dir, "files")
	if journalYAML == "" {
		journalYAML = "{batch: 5, backoff: {min: 10ms, max: 50ms}, targets: [{name: files, type: dir, path: " + files + "}]}"
	}
	cfg, err := config.Parse("a.yaml", []byte("site: lax\nhost: mx1.lax.example\nrules_file: /r.yaml\nstate_dir: "+dir+
		"\nspool_dir: "+dir+"/spool\nmilters: {archive: {listen: \"unix:"+dir+"/a.sock\", journal: "+journalYAML+"}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	set, err := rules.Parse("rules.yaml", []byte(rulesYAML))
	if err != nil {
		t.Fatal(err)
	}
	snap, err := rules.Compile(set)
	if err != nil {
		t.Fatal(err)
	}
	env := service.NewEnv(archive.Name, cfg, zerolog.Nop(), fixedRules{snap})
	m, err := archive.New(env)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{m: m, files: files, cfg: cfg, env: env}
	t.Cleanup(func() {
		if err := m.(io.Closer).Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	h.srv = miltertest.Serve(t, m, milterrt.Options{MessageDir: filepath.Join(dir, "messages"), MessageMemory: memory})
	return h
}

const msg = "From: Alice <alice@sender.example>\r\n" +
	"To: Bob <bob@rcpt.example>, group: carol@rcpt.example;\r\n" +
	"Cc: \"Dave D.\" <DAVE@rcpt.example>\r\n" +
	"Subject: quarterly figures\r\n" +
	"Message-ID: <q1@sender.example>\r\n" +
	"\r\n" +
	"Body line 1\r\n.leading dot\r\n"

func (h *harness) send(t *testing.T, body string, rcpts ...string) miltertest.Result {
	t.Helper()
	c := h.srv.Dial(t)
	defer c.Close()
	tx := miltertest.Transaction{
		Peer:   &miltertest.Peer{Host: "client.example", Family: milter.FamilyInet, Port: 4567, Addr: "192.0.2.10", Helo: "client.example"},
		Sender: "alice@sender.example", MailArgs: []string{"SIZE=1000", "BODY=8BITMIME"},
		Macros:  map[milter.Code][]string{milter.CodeEOB: {"i", "4XyZ1"}},
		Message: strings.NewReader(body),
	}
	for _, r := range rcpts {
		tx.Rcpts = append(tx.Rcpts, miltertest.Rcpt{Addr: r})
	}
	return c.Send(t, tx)
}

// waitFiles waits until the dir target holds n .eml files and returns them.
func waitFiles(t *testing.T, dir string, n int) []string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var got []string
		filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err == nil && strings.HasSuffix(p, ".json") {
				got = append(got, strings.TrimSuffix(p, ".json"))
			}
			return nil
		})
		if len(got) >= n || time.Now().After(deadline) {
			if len(got) != n {
				t.Fatalf("dir target has %d records, want %d", len(got), n)
			}
			return got
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestJournalsMessageAndEnvelope(t *testing.T) {
	h := newHarness(t, "rules: []\n", "")
	// Larger than MessageMemory: the message is in a spill file when journaled.
	body := msg + strings.Repeat("filler line of the body\r\n", 200)
	res := h.send(t, body, "bob@rcpt.example", "dave@rcpt.example", "erin@hidden.example")
	if res.Reply == nil || res.Reply.Code != milter.ActAccept && res.Reply.Code != milter.ActContinue {
		t.Fatalf("reply %v, want accept", res)
	}
	files := waitFiles(t, h.files, 1)
	eml, err := os.ReadFile(files[0] + ".eml")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(eml, []byte(body)) {
		t.Errorf("journaled message differs from the message sent:\n%q\nwant\n%q", eml[:min(len(eml), 300)], body[:300])
	}
	var hdr journal.Header
	b, err := os.ReadFile(files[0] + ".json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &hdr); err != nil {
		t.Fatal(err)
	}
	env := hdr.Envelope
	var rcpts []string
	for _, r := range env.Rcpts {
		rcpts = append(rcpts, r.Addr)
	}
	if got := strings.Join(rcpts, ","); got != "bob@rcpt.example,dave@rcpt.example,erin@hidden.example" {
		t.Errorf("envelope recipients %q", got)
	}
	if env.Sender != "alice@sender.example" || env.Client.Addr != "192.0.2.10" || env.Helo != "client.example" || env.QueueID != "4XyZ1" {
		t.Errorf("envelope %+v", env)
	}
	if hdr.Site != "lax" || hdr.Host != "mx1.lax.example" || hdr.MessageID != "<q1@sender.example>" || hdr.Direction != "inbound" || hdr.Size != int64(len(body)) {
		t.Errorf("journal header %+v", hdr)
	}
	if !strings.HasPrefix(filepath.Base(files[0]), hdr.ID) {
		t.Errorf("file %s is not named after the journal id %s", files[0], hdr.ID)
	}
	txns := h.srv.WaitTxns(t, 1)
	st := txns[0]
	if st.Final.Action != milterrt.ActionAccept {
		t.Errorf("final %v", st.Final)
	}
}

func TestSkipRulesAndTargets(t *testing.T) {
	dir := t.TempDir()
	rulesYAML := `
tenants:
  - {id: acme, domains: [acme.example]}
rules:
  - {id: no-journal-for-lists, milter: archive, scope: global, match: {rcpt: [lists.example]}, action: skip}
  - {id: acme-to-vault, milter: archive, scope: tenant:acme, action: archive, targets: [vault]}
`
	journalYAML := "{batch: 5, backoff: {min: 10ms, max: 50ms}, targets: [{name: files, type: dir, path: " + dir + "/files}, {name: vault, type: dir, path: " + dir + "/vault}]}"
	h := newHarness(t, rulesYAML, journalYAML)
	// Every recipient skipped: not journaled, still accepted.
	h.send(t, msg, "x@lists.example")
	// acme's mail goes to the vault only.
	h.send(t, strings.Replace(msg, "q1@", "q2@", 1), "bob@acme.example")
	// One recipient skipped, one not: journaled (whole envelope) everywhere.
	h.send(t, strings.Replace(msg, "q1@", "q3@", 1), "x@lists.example", "y@other.example")
	waitFiles(t, dir+"/vault", 2)
	files := waitFiles(t, dir+"/files", 1)
	b, _ := os.ReadFile(files[0] + ".json")
	if !bytes.Contains(b, []byte("q3@sender.example")) || !bytes.Contains(b, []byte("x@lists.example")) {
		t.Errorf("files target got %s", b)
	}
	txns := h.srv.WaitTxns(t, 3)
	if sec := txns[0].Section; sec == nil || !strings.Contains(toJSON(sec), `"journaled":false`) || !strings.Contains(toJSON(sec), "skip rule") {
		t.Errorf("skipped message's trail section: %s", toJSON(sec))
	}
	if sec := toJSON(txns[1].Section); !strings.Contains(sec, `"journaled":true`) || !strings.Contains(sec, `"vault"`) || strings.Contains(sec, `"files"`) {
		t.Errorf("acme message's trail section: %s", sec)
	}
}

func toJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// TestFullJournalTempfails: at journal.max_bytes new messages are answered
// with a temporary failure, never accepted without their record.
func TestFullJournalTempfails(t *testing.T) {
	// An HTTP target that always fails temporarily keeps every record
	// pending; the journal holds about two messages.
	fail := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "busy", http.StatusServiceUnavailable)
	}))
	defer fail.Close()
	h := newHarness(t, "rules: []\n", "{max_message_size: 3KiB, max_bytes: 6KiB, backoff: {min: 1s, max: 2s}, targets: [{name: web, type: http, url: \""+fail.URL+"\"}]}")
	body := msg + strings.Repeat("x", 2000) + "\r\n"
	var tempfails int
	for i := range 6 {
		res := h.send(t, strings.Replace(body, "q1@", "q"+string(rune('a'+i))+"@", 1), "bob@rcpt.example")
		if res.Reply != nil && res.Reply.Code == milter.ActReplyCode && res.Reply.SMTPCode/100 == 4 {
			tempfails++
		}
	}
	if tempfails == 0 || tempfails == 6 {
		t.Fatalf("%d of 6 messages tempfailed; want the first ones journaled, then tempfail at the bound", tempfails)
	}
	// Too large for the journal: tempfail too.
	res := h.send(t, msg+strings.Repeat("y", 4000)+"\r\n", "bob@rcpt.example")
	if res.Reply == nil || res.Reply.SMTPCode != 452 {
		t.Errorf("over max_message_size: reply %v, want 452", res)
	}
}

// TestStatusAndReplay: /archive/status reports the targets; a replay sends
// delivered records again, and ctl's types read the answers.
func TestStatusAndReplay(t *testing.T) {
	h := newHarness(t, "rules: []\n", "")
	h.send(t, msg, "bob@rcpt.example")
	h.send(t, strings.Replace(msg, "q1@", "q2@", 1), "bob@rcpt.example")
	files := waitFiles(t, h.files, 2)
	for _, f := range files {
		os.Remove(f + ".json")
		os.Remove(f + ".eml")
	}
	mux := h.env.Routes()
	status := func() ctl.ArchiveStatus {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/archive/status", nil))
		var st ctl.ArchiveStatus
		if err := json.Unmarshal(rec.Body.Bytes(), &st); err != nil {
			t.Fatalf("status %d %s: %v", rec.Code, rec.Body, err)
		}
		return st
	}
	st := status()
	if len(st.Targets) != 1 || st.Targets[0].Name != "files" || st.Targets[0].Failing {
		t.Errorf("status %+v", st)
	}
	req := httptest.NewRequest(http.MethodPost, "/archive/replay?target=files&since="+time.Now().Add(-time.Hour).UTC().Format(time.RFC3339), nil)
	req.RemoteAddr = "127.0.0.1:5555"
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, req)
	if rec.Code != http.StatusAccepted {
		t.Fatalf("replay: %d %s", rec.Code, rec.Body)
	}
	waitFiles(t, h.files, 2)
	// From another host: refused.
	req = httptest.NewRequest(http.MethodPost, "/archive/replay?target=files&since="+time.Now().UTC().Format(time.RFC3339), nil)
	req.RemoteAddr = "192.0.2.1:5555"
	rec = httptest.NewRecorder()
	mux.ServeHTTP(rec, req)
	if rec.Code != http.StatusForbidden {
		t.Errorf("replay from a remote address: %d", rec.Code)
	}
	// An unknown target.
	req = httptest.NewRequest(http.MethodPost, "/archive/replay?target=nope&since="+time.Now().UTC().Format(time.RFC3339), nil)
	req.RemoteAddr = "[::1]:5555"
	rec = httptest.NewRecorder()
	mux.ServeHTTP(rec, req)
	if rec.Code != http.StatusNotFound {
		t.Errorf("replay to an unknown target: %d", rec.Code)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		st = status()
		if len(st.Replays) == 1 && st.Replays[0].Done || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(st.Replays) != 1 || !st.Replays[0].Done || st.Replays[0].Error != "" || st.Replays[0].Sent != 2 {
		t.Errorf("replays %+v", st.Replays)
	}
}
