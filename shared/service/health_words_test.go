package service

import (
	"testing"
	"time"

	"github.com/geomilter/geomilter/shared/state"
)

// TestDegradedText: the redis check's /healthz words say up (""), down (since …)
// or failing, never breaker states (issue 12: "lax primary closed" read as down).
func TestDegradedText(t *testing.T) {
	now := time.Date(2026, 12, 7, 2, 41, 42, 0, time.UTC)
	closed, suspect, open := state.BreakerClosed.String(), state.BreakerSuspect.String(), state.BreakerOpen.String()
	linkUp := &state.ReplicationInfo{Role: "slave", MasterLinkStatus: "up", MasterLinkDownSinceSecs: -1}
	tests := []struct {
		name string
		st   []state.InstanceStatus
		want string
	}{
		{"all up", []state.InstanceStatus{
			{Site: "lax", Role: state.RolePrimary, Breaker: closed, Up: true, Replication: &state.ReplicationInfo{Role: "master"}},
			{Site: "dal", Role: state.RolePeerReplica, Breaker: closed, Up: true, Replication: linkUp},
		}, ""},
		{"peer replica down", []state.InstanceStatus{
			{Site: "lax", Role: state.RolePrimary, Breaker: closed, Up: true},
			{Site: "dal", Role: state.RolePeerReplica, Breaker: open, OpenSince: now.Add(-35 * time.Second)},
		}, "dal peer-replica down (since 02:41:07 UTC, 35s)"},
		{"primary failing", []state.InstanceStatus{
			{Site: "lax", Role: state.RolePrimary, Breaker: suspect, LastError: "i/o timeout\nmore"},
		}, "lax primary failing (calls still tried; last error: i/o timeout)"},
		{"replication link down", []state.InstanceStatus{
			{Site: "dal", Role: state.RolePeerReplica, Breaker: closed, Up: true,
				Replication: &state.ReplicationInfo{Role: "slave", MasterLinkStatus: "down", MasterLinkDownSinceSecs: 46}},
		}, "dal peer-replica: replication link from dal's primary down for 46s (its rules and counts are frozen)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := degradedText(tc.st, now); got != tc.want {
				t.Errorf("got  %q\nwant %q", got, tc.want)
			}
		})
	}
}
