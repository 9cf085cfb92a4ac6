package service

import (
	"net"
	"reflect"
	"testing"
	"time"

	"github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/trail"
)

func TestEventFromState(t *testing.T) {
	t0 := time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC)
	rejectEve := milterrt.Reject("550", "5.7.1", "Recipient refused").WithRule("block-eve").WithReason("listed")
	tests := []struct {
		name string
		st   milterrt.State
		want trail.Event
	}{
		{
			name: "accepted message, one recipient rejected",
			st: milterrt.State{
				SessionID: "s1", TxnID: "s1.1", ClientHost: "mail.example.net", ClientAddr: net.ParseIP("203.0.113.9"), ClientPort: 4000,
				Helo: "mail.example.net", TxnStart: t0, Sender: "alice@example.net",
				Rcpts: []*milterrt.Recipient{
					{Addr: "bob@acme.example", Decision: milterrt.Continue()},
					{Addr: "eve@acme.example", Decision: rejectEve},
				},
				Headers:    []milterrt.HeaderField{{Name: "Subject", Value: "hi"}, {Name: "Message-ID", Value: " <m1@example.net>"}},
				Macros:     map[string]string{"i": "4XkQ", "{auth_authen}": "relay1"},
				BodyBytes:  42,
				Final:      milterrt.Continue(),
				FinalStage: milterrt.StageEOM,
			},
			want: trail.Event{
				SessionID: "s1", TxnID: "s1.1", QueueID: "4XkQ", MessageID: "<m1@example.net>",
				ClientIP: "203.0.113.9", ClientName: "mail.example.net", ClientPort: 4000, Helo: "mail.example.net",
				SASLUser: "relay1", Sender: "alice@example.net",
				Rcpts: []trail.Rcpt{
					{Addr: "bob@acme.example", Action: "accept"},
					{Addr: "eve@acme.example", Action: "reject", Reply: "550 5.7.1 Recipient refused", Reason: "listed", RuleID: "block-eve"},
				},
				Stage: "eom", Action: "accept", Size: 42, LatencyMS: 1500,
			},
		},
		{
			name: "rejected at MAIL, null sender, local submission",
			st: milterrt.State{
				SessionID: "s2", TxnID: "s2.1", ClientHost: "localhost", TxnStart: t0, Sender: "",
				Final:      milterrt.TempFail("451", "4.7.1", "Slow down").WithRule("rate-1"),
				FinalStage: milterrt.StageMail,
				RuleIDs:    []string{"rate-1"},
				Degraded:   []string{"redis"},
			},
			want: trail.Event{
				SessionID: "s2", TxnID: "s2.1", ClientName: "localhost", Sender: "", Rcpts: []trail.Rcpt{},
				Stage: "mail", Action: "tempfail", Reply: "451 4.7.1 Slow down", RuleIDs: []string{"rate-1"},
				Degraded: []string{"redis"}, LatencyMS: 1500,
			},
		},
		{
			name: "connection refused before any transaction",
			st: milterrt.State{
				SessionID: "s3", ClientAddr: net.ParseIP("2001:db8::1"), ConnStart: t0,
				Final: milterrt.Reject("554", "5.7.1", "Go away"), FinalStage: milterrt.StageConnect,
			},
			want: trail.Event{
				SessionID: "s3", ClientIP: "2001:db8::1", NoSender: true, Rcpts: []trail.Rcpt{},
				Stage: "connect", Action: "reject", Reply: "554 5.7.1 Go away", LatencyMS: 1500,
			},
		},
		{
			name: "aborted by the client",
			st: milterrt.State{
				SessionID: "s4", TxnID: "s4.2", TxnStart: t0, Sender: "a@b.example", Aborted: true,
				Final: milterrt.Continue(),
			},
			want: trail.Event{
				SessionID: "s4", TxnID: "s4.2", Sender: "a@b.example", Rcpts: []trail.Rcpt{},
				Stage: "abort", Action: "continue", LatencyMS: 1500,
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			now := t0.Add(1500 * time.Millisecond)
			got := eventFromState(&tc.st, now)
			tc.want.Time = now
			if !reflect.DeepEqual(*got, tc.want) {
				t.Fatalf("got  %+v\nwant %+v", *got, tc.want)
			}
		})
	}
}
