package target

import (
	"encoding/json"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/geomilter/geomilter/milters/archive/journal"
	"github.com/geomilter/geomilter/shared/drain"
)

// journalServer is a real HTTP server that parses what the target POSTs
// and answers status[id] (200 if absent).
type journalServer struct {
	mu     sync.Mutex
	status map[string]int
	got    map[string]string // journal id -> message/rfc822 part
	hdrs   map[string]*journal.Header
	errs   []string
	auth   []string
}

func newJournalServer(t *testing.T, status map[string]int) (*journalServer, string) {
	js := &journalServer{status: status, got: map[string]string{}, hdrs: map[string]*journal.Header{}}
	srv := httptest.NewServer(http.HandlerFunc(js.serve))
	t.Cleanup(srv.Close)
	return js, srv.URL + "/journal"
}

func (js *journalServer) fail(format string) {
	js.errs = append(js.errs, format)
}

func (js *journalServer) serve(w http.ResponseWriter, r *http.Request) {
	js.mu.Lock()
	defer js.mu.Unlock()
	id := r.Header.Get("X-Geomilter-Journal-Id")
	js.auth = append(js.auth, r.Header.Get("Authorization"))
	if code, ok := js.status[id]; ok {
		w.WriteHeader(code)
		return
	}
	mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/mixed" || r.Method != http.MethodPost {
		js.fail("bad request: " + r.Method + " " + r.Header.Get("Content-Type"))
		w.WriteHeader(400)
		return
	}
	mr := multipart.NewReader(r.Body, params["boundary"])
	p1, err := mr.NextPart()
	if err != nil || p1.Header.Get("Content-Type") != "application/json" {
		js.fail("first part not application/json")
		w.WriteHeader(400)
		return
	}
	var h journal.Header
	if err := json.NewDecoder(p1).Decode(&h); err != nil || h.ID != id {
		js.fail("bad json part or id mismatch")
		w.WriteHeader(400)
		return
	}
	p2, err := mr.NextPart()
	if err != nil || p2.Header.Get("Content-Type") != "message/rfc822" {
		js.fail("second part not message/rfc822")
		w.WriteHeader(400)
		return
	}
	msg, err := io.ReadAll(p2)
	if err != nil {
		js.fail("reading the message part: " + err.Error())
		w.WriteHeader(400)
		return
	}
	if _, err := mr.NextPart(); err != io.EOF {
		js.fail("more than two parts")
	}
	js.got[id] = string(msg)
	js.hdrs[id] = &h
	w.WriteHeader(http.StatusAccepted)
}

func TestHTTPPostsMultipart(t *testing.T) {
	js, url := newJournalServer(t, nil)
	dead, _ := newDead(t)
	ts := newTestSpool(t)
	big := testMsg8 + strings.Repeat("x", 300<<10) // a body file
	ts.add(t, testHeader("lax-1", testMsg), testMsg)
	ts.add(t, testHeader("lax-2", big, "ingest"), big)
	ts.add(t, testHeader("lax-3", testMsg, "files"), testMsg) // not for this target
	tg := newTarget(t, Config{Name: "ingest", Type: TypeHTTP, URL: url,
		Headers: map[string]string{"Authorization": "Bearer x"}}, dead)
	if err := tg.Send(sendCtx(t), ts.batch(t, 3)); err != nil {
		t.Fatalf("Send: %v", err)
	}
	js.mu.Lock()
	defer js.mu.Unlock()
	if len(js.errs) > 0 {
		t.Fatalf("server saw: %v", js.errs)
	}
	if len(js.got) != 2 || js.got["lax-1"] != testMsg || js.got["lax-2"] != big {
		t.Fatalf("server got %d messages (lax-1 equal: %v, lax-2 equal: %v), want the 2 originals",
			len(js.got), js.got["lax-1"] == testMsg, js.got["lax-2"] == big)
	}
	if h := js.hdrs["lax-1"]; len(h.Envelope.Rcpts) != 3 || h.Envelope.Rcpts[2].Addr != "dave@rcpt.example" {
		t.Errorf("json part envelope: %+v", h.Envelope)
	}
	for _, a := range js.auth {
		if a != "Bearer x" {
			t.Errorf("Authorization %q, want the configured header", a)
		}
	}
}

func TestHTTPStatusClasses(t *testing.T) {
	tests := []struct {
		status    int
		permanent bool
	}{
		{400, true}, {404, true}, {413, true}, {415, true}, {422, true},
		{408, false}, {429, false}, {500, false}, {503, false},
		{302, false}, // not followed: a GET would "acknowledge" nothing
	}
	for _, tt := range tests {
		t.Run(http.StatusText(tt.status), func(t *testing.T) {
			js, url := newJournalServer(t, map[string]int{"lax-2": tt.status})
			dead, reg := newDead(t)
			ts := newTestSpool(t)
			for _, id := range []string{"lax-1", "lax-2", "lax-3"} {
				ts.add(t, testHeader(id, testMsg), testMsg)
			}
			tg := newTarget(t, Config{Name: "ingest", Type: TypeHTTP, URL: url}, dead)
			err := tg.Send(sendCtx(t), ts.batch(t, 3))
			js.mu.Lock()
			defer js.mu.Unlock()
			if tt.permanent {
				if err != nil {
					t.Fatalf("Send = %v, want nil (refused record dead-lettered)", err)
				}
				checkDeadLetter(t, dead, "ingest", "lax-2", testMsg, http.StatusText(tt.status))
				if len(js.got) != 2 {
					t.Fatalf("server acknowledged %d, want lax-1 and lax-3", len(js.got))
				}
				if got := counterValue(t, reg, "geomilter_archive_dead_letters_total", "ingest"); got != 1 {
					t.Fatalf("dead letters metric = %v, want 1", got)
				}
				return
			}
			var pe *drain.PartialError
			if !errors.As(err, &pe) || pe.Done != 1 || !strings.Contains(err.Error(), http.StatusText(tt.status)) {
				t.Fatalf("Send = %v, want a PartialError, Done 1, naming the status", err)
			}
			if st := dead.Status("ingest"); st.Count != 0 {
				t.Fatalf("temporary failure dead-lettered: %+v", st)
			}
			if _, ok := js.got["lax-3"]; ok {
				t.Fatal("record after the failed one was sent in the same batch")
			}
		})
	}
}

func TestHTTPServerDown(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	dead, _ := newDead(t)
	ts := newTestSpool(t)
	ts.add(t, testHeader("lax-1", testMsg), testMsg)
	tg := newTarget(t, Config{Name: "ingest", Type: TypeHTTP, URL: url}, dead)
	err := tg.Send(sendCtx(t), ts.batch(t, 1))
	if err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("Send = %v, want connection refused", err)
	}
	if st := dead.Status("ingest"); st.Count != 0 {
		t.Fatalf("network failure dead-lettered: %+v", st)
	}
}
