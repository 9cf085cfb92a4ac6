package drain

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/geomilter/geomilter/shared/spool"
)

// receiver is an NDJSON endpoint that counts events by id. While hang is
// set, requests block until the client gives up (like a receiver whose
// process is wedged but whose socket still accepts).
type receiver struct {
	mu       sync.Mutex
	ids      map[string]int
	requests int
	hang     atomic.Bool
	failN    atomic.Int32 // answer 500 to this many more requests
	srv      *httptest.Server
	lastHdr  http.Header
}

func newReceiver(t *testing.T) *receiver {
	rc := &receiver{ids: map[string]int{}}
	rc.srv = httptest.NewServer(http.HandlerFunc(rc.serve))
	t.Cleanup(func() {
		rc.hang.Store(false)
		rc.srv.CloseClientConnections()
		rc.srv.Close()
	})
	return rc
}

func (rc *receiver) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rc.mu.Lock()
	rc.requests++
	rc.lastHdr = r.Header.Clone()
	rc.mu.Unlock()
	if rc.hang.Load() {
		<-r.Context().Done()
		return
	}
	if rc.failN.Add(-1) >= 0 {
		http.Error(w, "ingester overloaded: "+strings.Repeat("x", 500), http.StatusInternalServerError)
		return
	}
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(nil, 1<<20)
	rc.mu.Lock()
	defer rc.mu.Unlock()
	for sc.Scan() {
		rc.ids[EventID(spool.Record{Data: sc.Bytes()})]++
	}
	w.WriteHeader(http.StatusNoContent)
}

func (rc *receiver) distinct() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return len(rc.ids)
}

func TestHTTPSinkSend(t *testing.T) {
	tests := []struct {
		name    string
		failN   int32
		hang    bool
		wantErr []string // substrings of the error; nil = success
	}{
		{"2xx acknowledges", 0, false, nil},
		{"500 fails with status and body", 1, false, []string{"500", "ingester overloaded"}},
		{"hang fails at the deadline", 0, true, []string{"deadline exceeded"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc := newReceiver(t)
			rc.failN.Store(tt.failN)
			rc.hang.Store(tt.hang)
			s := NewHTTPSink("h", rc.srv.URL, map[string]string{"Authorization": "Bearer t0k"}, nil)
			defer s.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			batch := []spool.Record{
				{Seq: 1, Data: []byte(`{"event_id":"a"}`)},
				{Seq: 2, Data: []byte("{\"event_id\":\n\"b\"}")}, // a raw newline must not split the record
			}
			err := s.Send(ctx, batch)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("Send: %v", err)
				}
				if rc.distinct() != 2 || rc.ids["a"] != 1 || rc.ids["b"] != 1 {
					t.Fatalf("receiver got %v, want a and b once", rc.ids)
				}
				if ct := rc.lastHdr.Get("Content-Type"); ct != "application/x-ndjson" {
					t.Errorf("Content-Type %q", ct)
				}
				if a := rc.lastHdr.Get("Authorization"); a != "Bearer t0k" {
					t.Errorf("Authorization %q", a)
				}
				return
			}
			if err == nil {
				t.Fatal("Send succeeded, want error")
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if len(err.Error()) > 600 {
				t.Errorf("error is %d bytes; the body excerpt must be bounded", len(err.Error()))
			}
		})
	}
}

func TestHTTPDrainRetriesAfter500(t *testing.T) {
	sp := openSpool(t, spool.GroupCommit, "h")
	rc := newReceiver(t)
	rc.failN.Store(3)
	o := Options{BatchSize: 50, MinBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
		SendTimeout: 2 * time.Second, Pending: pendingFor(sp, "h")}
	d := New(reader(t, sp, "h"), NewHTTPSink("h", rc.srv.URL, nil, nil), o)
	runDrainer(t, d)
	appendEvents(t, sp, "ev", 300)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := rc.distinct(); got != 300 {
		t.Fatalf("receiver has %d distinct events, want 300", got)
	}
}

// TestUnresponsiveSinkDoesNotHoldBackOthers is the promise of this package:
// one sink that accepts connections but never answers only delays itself.
func TestUnresponsiveSinkDoesNotHoldBackOthers(t *testing.T) {
	sp := openSpool(t, spool.GroupCommit, "hung", "healthy")
	hung, healthy := newReceiver(t), newReceiver(t)
	hung.hang.Store(true)
	m := NewMetrics(nil, "test")
	opts := func(sink string) Options {
		return Options{BatchSize: 100, MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
			SendTimeout: 300 * time.Millisecond, Metrics: m, Pending: pendingFor(sp, sink)}
	}
	dHung := New(reader(t, sp, "hung"), NewHTTPSink("hung", hung.srv.URL, nil, nil), opts("hung"))
	dHealthy := New(reader(t, sp, "healthy"), NewHTTPSink("healthy", healthy.srv.URL, nil, nil), opts("healthy"))
	runDrainer(t, dHung)
	runDrainer(t, dHealthy)

	const n = 2000
	appendEvents(t, sp, "ev", n)
	eventually(t, "healthy sink receives everything while the other hangs", 10*time.Second,
		func() bool { return healthy.distinct() == n })
	eventually(t, "hung sink's drainer backing off", 5*time.Second, func() bool {
		return value(m.retrying.WithLabelValues("hung")) == 1
	})
	if got := hung.distinct(); got != 0 {
		t.Fatalf("hung receiver recorded %d events", got)
	}
	if p := sp.Stats().PerSink["hung"].Pending; p != n {
		t.Fatalf("hung sink pending = %d, want %d (kept for later)", p, n)
	}

	hung.hang.Store(false)
	eventually(t, "recovered sink receives everything", 15*time.Second, func() bool { return hung.distinct() == n })
	eventually(t, "recovered sink committed", 5*time.Second, func() bool {
		return sp.Stats().PerSink["hung"].Pending == 0 && value(m.retrying.WithLabelValues("hung")) == 0
	})
}
