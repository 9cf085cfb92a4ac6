package statuspage

import (
	"context"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/geomilter/geomilter/shared/metrics"
	"github.com/geomilter/geomilter/shared/rulesync"
	"github.com/geomilter/geomilter/shared/spool"
	"github.com/geomilter/geomilter/shared/state"
)

var t0 = time.Date(2026, 12, 7, 2, 41, 30, 0, time.UTC)

func fixed() time.Time { return t0 }

func primary(site string) state.InstanceStatus {
	return state.InstanceStatus{Site: site, Role: state.RolePrimary, Addr: "127.0.0.1:6379", Up: true,
		Breaker: state.BreakerClosed.String(), Replication: &state.ReplicationInfo{Role: "master", ConnectedReplicas: 1, MasterLinkDownSinceSecs: -1}}
}

func replica(site, link string, downFor int64) state.InstanceStatus {
	return state.InstanceStatus{Site: site, Role: state.RolePeerReplica, Addr: "127.0.0.1:6380", Up: true,
		Breaker: state.BreakerClosed.String(), Replication: &state.ReplicationInfo{Role: "slave", MasterLinkStatus: link,
			MasterLastIOSecondsAgo: 1 + downFor, MasterLinkDownSinceSecs: downFor}}
}

func darkInstance(site string, since time.Time) state.InstanceStatus {
	return state.InstanceStatus{Site: site, Role: state.RolePeerReplica, Addr: "127.0.0.1:6380",
		Breaker: state.BreakerOpen.String(), OpenSince: since, LastError: "dial tcp 127.0.0.1:6380: i/o timeout"}
}

func get(t *testing.T, src Sources) string {
	t.Helper()
	rec := httptest.NewRecorder()
	Handler(src).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/status", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d", rec.Code)
	}
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
		t.Fatalf("content type %q", ct)
	}
	return rec.Body.String()
}

// rowOf finds the table row of one site's instance and its state.
func rowOf(body, site string) (class, state string, ok bool) {
	m := regexp.MustCompile(`<tr class="(site[^"]*)" data-site="` + regexp.QuoteMeta(site) + `" data-state="([^"]*)">`).FindStringSubmatch(body)
	if m == nil {
		return "", "", false
	}
	return m[1], m[2], true
}

func TestPageSites(t *testing.T) {
	tests := []struct {
		name      string
		instances []state.InstanceStatus
		wantState string // of dal's row
		wantBad   bool
		wantText  []string
		pageState string
	}{
		{"both up", []state.InstanceStatus{primary("lax"), replica("dal", "up", -1)}, "up", false,
			[]string{"lax (this site)", "1 replicas attached"}, "up"},
		{"link down", []state.InstanceStatus{primary("lax"), replica("dal", "down", 95)}, "link down", true,
			[]string{"2026-12-07 02:39:55 UTC (1m35s ago)", "dal&#39;s rules and counts here are frozen"}, "degraded"},
		{"silent link", []state.InstanceStatus{primary("lax"), replica("dal", "up", 40)}, "silent", true,
			[]string{"nothing heard from dal&#39;s primary for 41s"}, "degraded"},
		{"not answering", []state.InstanceStatus{primary("lax"), {Site: "dal", Role: state.RolePeerReplica, Addr: "127.0.0.1:6380",
			Up: true, Breaker: state.BreakerClosed.String(), StatusError: "i/o timeout"}}, "not answering", true,
			[]string{"i/o timeout"}, "degraded"},
		{"dark instance", []state.InstanceStatus{primary("lax"), darkInstance("dal", t0.Add(-42*time.Second))}, "dark", true,
			[]string{"2026-12-07 02:40:48 UTC (42s ago)", "i/o timeout", "dal peer-replica 127.0.0.1:6380: breaker open"}, "degraded"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			body := get(t, Sources{Site: "lax", Host: "mx1", Milter: "access", Now: fixed,
				Instances: func() []state.InstanceStatus { return tc.instances },
				Versions:  func(context.Context) map[string]int64 { return map[string]int64{"lax": 7} },
			})
			class, st, ok := rowOf(body, "dal")
			if !ok {
				t.Fatalf("no row for dal:\n%s", body)
			}
			if st != tc.wantState || strings.Contains(class, "bad") != tc.wantBad {
				t.Errorf("dal row: state %q class %q, want %q bad=%v", st, class, tc.wantState, tc.wantBad)
			}
			if _, st, _ := rowOf(body, "lax"); st != "up" {
				t.Errorf("lax row state %q", st)
			}
			for _, w := range tc.wantText {
				if !strings.Contains(body, w) {
					t.Errorf("page lacks %q:\n%s", w, body)
				}
			}
			if !strings.Contains(body, `id="state" class="state `) || !strings.Contains(body, ">"+tc.pageState+"</span>") {
				t.Errorf("page state is not %q", tc.pageState)
			}
			// dal did not answer the version look-up; lax did.
			if !regexp.MustCompile(`<td>7</td>`).MatchString(body) || !strings.Contains(body, "<td>?</td>") {
				t.Errorf("versions: want lax 7 and dal ?")
			}
		})
	}
}

func TestPageEscapes(t *testing.T) {
	evil := `<script>alert(1)</script>`
	body := get(t, Sources{Site: evil, Host: `mx"1`, Milter: "access", Now: fixed,
		Instances: func() []state.InstanceStatus {
			in := darkInstance(evil, t0)
			in.LastError = "<b>boom</b>"
			return []state.InstanceStatus{in}
		},
		Rules:  func() rulesync.Status { return rulesync.Status{Source: "redis", LastError: "<img src=x>"} },
		Checks: []metrics.Check{{Name: "x", Degraded: func() string { return "<i>y</i>" }}},
	})
	for _, raw := range []string{evil, "<b>boom", "<img", "<i>y", `mx"1`} {
		if strings.Contains(body, raw) {
			t.Errorf("page holds %q unescaped", raw)
		}
	}
	if !strings.Contains(body, "&lt;script&gt;alert(1)&lt;/script&gt;") {
		t.Errorf("escaped site name missing:\n%s", body)
	}
}

func TestPageNoOutsideAssets(t *testing.T) {
	body := get(t, Sources{Site: "lax", Now: fixed})
	for _, bad := range []string{"http://", "https://", "<script", "<link", "src="} {
		if strings.Contains(body, bad) {
			t.Errorf("page contains %q", bad)
		}
	}
	if !strings.Contains(body, `<meta http-equiv="refresh" content="10">`) {
		t.Error("no 10 s refresh")
	}
}

func TestPageBacklogAndChecks(t *testing.T) {
	arch := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(`{"journal":{},"targets":[{"name":"vault","type":"smtp","backlog_records":12,
			"oldest_unsent":"2026-12-07T02:40:30Z","failing":true,"last_error":"connection refused","dead_letters":2}]}`))
	})
	body := get(t, Sources{Site: "lax", Milter: "archive", Now: fixed,
		Trail: func() spool.Stats {
			return spool.Stats{PerSink: map[string]spool.SinkStats{"site": {Pending: 3, OldestUnsent: t0.Add(-5 * time.Second)}, "local": {}}}
		},
		Archive: ArchiveFromHandler(arch),
		Checks: []metrics.Check{
			{Name: "milter"},
			{Name: "trail", Func: func() error { return context.DeadlineExceeded }},
		},
	})
	for _, w := range []string{
		`<td>site</td><td class="n">3</td><td>5s</td>`,
		`<td>local</td><td class="n">0</td>`,
		`archive target (smtp)</td><td>vault</td><td class="n">12</td><td>1m0s</td><td>failing: connection refused (2 dead letters)`,
		`<td>trail</td><td>down</td><td>context deadline exceeded</td>`,
		`>down</span>`,
	} {
		if !strings.Contains(body, w) {
			t.Errorf("page lacks %q:\n%s", w, body)
		}
	}
}

func TestDecisionsRing(t *testing.T) {
	now := t0
	d := NewDecisions(func() time.Time { return now })
	d.Record("accept")
	d.Record("accept")
	d.Record("reject")
	now = now.Add(time.Minute)
	d.Record("tempfail")
	now = now.Add(time.Duration(Window) * time.Minute) // the first minute fell out, the second is the oldest kept
	d.Record("accept")
	mins, actions := d.Recent()
	if len(mins) != Window+1 {
		t.Fatalf("%d minutes", len(mins))
	}
	if got := strings.Join(actions, ","); got != "accept,tempfail" {
		t.Errorf("actions %s", got)
	}
	if mins[0].Total != 1 || mins[0].Counts["accept"] != 1 {
		t.Errorf("current minute %+v", mins[0])
	}
	if last := mins[len(mins)-1]; last.Counts["tempfail"] != 1 || last.Total != 1 {
		t.Errorf("oldest minute %+v", last)
	}

	body := get(t, Sources{Site: "lax", Now: func() time.Time { return now }, Decisions: d})
	if !strings.Contains(body, `<tr><th>accept</th><td class="n">1</td><td class="n">0</td>`) ||
		!strings.Contains(body, "<tr><th>tempfail</th>") || !strings.Contains(body, "<th>02:52 (so far)</th>") {
		t.Errorf("decision table header missing:\n%s", body)
	}
}

// TestDecisionsBounded: free-text actions cannot grow a minute past maxActions.
func TestDecisionsBounded(t *testing.T) {
	d := NewDecisions(fixed)
	for i := 0; i < 100; i++ {
		d.Record(strings.Repeat("x", i+1))
	}
	mins, actions := d.Recent()
	if len(actions) != maxActions+1 || mins[0].Counts["other"] != 100-maxActions {
		t.Errorf("%d actions, other=%d", len(actions), mins[0].Counts["other"])
	}
}

// TestPageDoesNotWait: a version look-up that never answers is cut at the
// probe bound; the page still renders.
func TestPageDoesNotWait(t *testing.T) {
	done := make(chan struct{})
	body := get(t, Sources{Site: "lax", Now: fixed, ProbeTimeout: 50 * time.Millisecond,
		Instances: func() []state.InstanceStatus { return []state.InstanceStatus{primary("lax")} },
		Versions: func(ctx context.Context) map[string]int64 {
			<-ctx.Done()
			close(done)
			return nil
		},
	})
	select {
	case <-done:
	default:
		t.Fatal("versions probe not cancelled")
	}
	if _, st, ok := rowOf(body, "lax"); !ok || st != "up" {
		t.Errorf("lax row missing")
	}
}
