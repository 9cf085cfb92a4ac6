package milterrt_test

import (
	"sync"
	"testing"
	"time"

	milter "github.com/emersion/go-milter"

	. "github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/milterrt/miltertest"
)

// State.Busy is the time the MTA waited on the milter (trail busy_ms), not
// the transaction's span: the client's pauses between events are left out,
// the milter's own work is in, and each transaction starts from zero. In a
// suite each member has its own share.
func TestBusyIsTheMilterOwnTime(t *testing.T) {
	const work, pause = 400 * time.Millisecond, 300 * time.Millisecond
	slowEOM := func(st *State, _ Modifier) Decision {
		if st.Sender == "slow@example.org" {
			time.Sleep(work)
		}
		return Continue()
	}
	type txn struct {
		sender     string
		busy, span time.Duration
	}
	var mu sync.Mutex
	got := map[string][]txn{}
	record := func(name string) func(*State) {
		return func(st *State) {
			mu.Lock()
			got[name] = append(got[name], txn{st.Sender, st.Busy, time.Since(st.TxnStart)})
			mu.Unlock()
		}
	}
	drive := func(t *testing.T, srv *miltertest.Server) {
		c := srv.Dial(t)
		c.Envelope(t, "slow@example.org", "b@example.net")
		time.Sleep(pause) // the client, not the milter
		c.EndExpect(t, milter.ActAccept, 0, "")
		c.Txn(t, "quick@example.org", "b@example.net")
		c.EndExpect(t, milter.ActAccept, 0, "")
		c.Close()
	}
	check := func(t *testing.T, name string, slow bool) {
		t.Helper()
		var ts []txn
		miltertest.WaitFor(t, name+"'s two transactions", func() bool {
			mu.Lock()
			defer mu.Unlock()
			ts = append(ts[:0], got[name]...)
			return len(ts) >= 2
		})
		first, second := ts[0], ts[1]
		if first.span-first.busy < pause {
			t.Errorf("%s: busy %s within a span of %s: the client's %s pause was counted", name, first.busy, first.span, pause)
		}
		if slow && first.busy < work {
			t.Errorf("%s: busy %s, want at least its %s of work", name, first.busy, work)
		}
		if !slow && first.busy >= work {
			t.Errorf("%s: busy %s: another member's %s of work was counted", name, first.busy, work)
		}
		if second.busy >= work {
			t.Errorf("%s: second transaction busy %s: the first one's was carried over", name, second.busy)
		}
	}

	t.Run("one milter", func(t *testing.T) {
		m := &testMilter{mk: func() *funcSession { return &funcSession{eom: slowEOM} }}
		drive(t, start(t, m, Options{OnTransaction: record("alone")}, false))
		check(t, "alone", true)
	})
	t.Run("suite", func(t *testing.T) {
		slow := &member{name: "slow", stages: AllStages, mk: func() *funcSession { return &funcSession{eom: slowEOM} }}
		quick := &member{name: "quick", stages: AllStages, mk: func() *funcSession { return &funcSession{} }}
		s := NewSuite("suite", []SuiteMember{
			{Milter: slow.milter(), OnTransaction: record("slow")},
			{Milter: quick.milter(), OnTransaction: record("quick")},
		}, SuiteOptions{})
		drive(t, miltertest.Serve(t, s, Options{}))
		check(t, "slow", true)
		check(t, "quick", false)
	})
}
