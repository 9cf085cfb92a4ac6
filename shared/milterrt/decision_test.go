package milterrt

import (
	"strings"
	"testing"

	milter "github.com/emersion/go-milter"
	"github.com/prometheus/client_golang/prometheus"
)

func TestToResponse(t *testing.T) {
	long := strings.Repeat("x", 600)
	cases := []struct {
		name  string
		stage Stages
		d     Decision
		code  milter.ActionCode
		data  string // without the trailing NUL
	}{
		{"continue", StageRcpt, Continue(), milter.ActContinue, ""},
		{"continue at eom is accept", StageEOM, Continue(), milter.ActAccept, ""},
		{"accept", StageMail, Accept(), milter.ActAccept, ""},
		{"discard", StageEOM, Discard(), milter.ActDiscard, ""},
		{"quarantine before eom continues", StageRcpt, Quarantine("x"), milter.ActContinue, ""},
		{"quarantine at eom accepts", StageEOM, Quarantine("x"), milter.ActAccept, ""},
		{"reject defaults", StageRcpt, Reject("", "", ""), milter.ActReplyCode, "550 5.7.1 Message rejected"},
		{"tempfail defaults", StageMail, TempFail("", "", ""), milter.ActReplyCode, "451 4.7.1 Try again later"},
		{"reject as given", StageRcpt, Reject("554", "5.7.26", "DMARC policy"), milter.ActReplyCode, "554 5.7.26 DMARC policy"},
		{"reject with a 4xx code gets the default", StageRcpt, Reject("451", "4.7.1", "x"), milter.ActReplyCode, "550 5.7.1 x"},
		{"tempfail with a 5xx enhanced code", StageRcpt, TempFail("421", "5.7.1", "x"), milter.ActReplyCode, "421 4.7.1 x"},
		{"malformed codes", StageRcpt, Reject("55", "5.7", "x"), milter.ActReplyCode, "550 5.7.1 x"},
		{"enhanced code with letters", StageRcpt, Reject("550", "5.a.1", "x"), milter.ActReplyCode, "550 5.7.1 x"},
		{"CR LF NUL and UTF-8 become ?", StageRcpt, Reject("550", "5.7.1", "a\r\nb\x00c é"), milter.ActReplyCode, "550 5.7.1 a??b?c ?"},
		{"percent doubled for Postfix", StageRcpt, Reject("550", "5.7.1", "100% spam"), milter.ActReplyCode, "550 5.7.1 100%% spam"},
		{"text capped", StageRcpt, Reject("550", "5.7.1", long), milter.ActReplyCode, "550 5.7.1 " + long[:MaxReplyText]},
		{"blank text gets the default", StageRcpt, TempFail("450", "4.2.0", "  "), milter.ActReplyCode, "450 4.2.0 Try again later"},
		{"unknown action tempfails", StageMail, Decision{Action: 42}, milter.ActReplyCode, "451 4.3.0 Temporary failure"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := toResponse(tc.stage, tc.d.normalised())
			msg := struct {
				Code byte
				Data []byte
			}{r.code, r.data}
			want := tc.data
			if want != "" {
				want += "\x00"
			}
			if milter.ActionCode(msg.Code) != tc.code || string(msg.Data) != want {
				t.Fatalf("got %c %q, want %c %q", msg.Code, msg.Data, tc.code, want)
			}
			if tc.code == milter.ActReplyCode {
				// What Postfix's milter8 checks before accepting a reply.
				b := msg.Data
				if (b[0] != '4' && b[0] != '5') || b[3] != ' ' || b[4] != b[0] {
					t.Fatalf("Postfix would reject %q as malformed", b)
				}
			}
		})
	}
}

func TestDecisionReply(t *testing.T) {
	if got := Reject("", "", "").Reply(); got != "550 5.7.1 Message rejected" {
		t.Errorf("Reply() = %q", got)
	}
	if got := Accept().Reply(); got != "" {
		t.Errorf("Accept().Reply() = %q", got)
	}
	d := Reject("550", "5.7.1", "no").WithReason("listed").WithRule("r1")
	if d.Reason != "listed" || d.RuleID != "r1" || !d.IsFailure() {
		t.Errorf("%+v", d)
	}
}

func TestStagesProtocol(t *testing.T) {
	const always = milter.OptNoData | milter.OptNoUnknown
	const content = milter.OptNoHeaderReply | milter.OptNoEOHReply | milter.OptNoBodyReply
	envelope := envelopeStages | StageEOM
	cases := []struct {
		name       string
		s, decides Stages
		want       milter.OptProtocol
	}{
		{"nothing but end of message", 0, envelope, always | 0x7f},
		{"every stage, decides at envelope stages", AllStages, envelope, always | content},
		{"access-like", StageConnect | StageRcpt, envelope,
			always | milter.OptNoHelo | milter.OptNoMailFrom | milter.OptNoBody | milter.OptNoHeaders | milter.OptNoEOH},
		{"archive-like: observes everything, decides at the end", AllStages, StageEOM,
			always | content | milter.OptNoConnReply | milter.OptNoHeloReply | milter.OptNoMailReply | milter.OptNoRcptReply},
		{"body only", StageBody, envelope, always | 0x7f&^milter.OptNoBody | milter.OptNoBodyReply},
	}
	for _, tc := range cases {
		if got := tc.s.protocol(tc.decides); got != tc.want {
			t.Errorf("%s: protocol %#x, want %#x", tc.name, got, tc.want)
		}
	}
	if got := (StageConnect | StageEOM).String(); got != "connect+eom" {
		t.Errorf("String() = %q", got)
	}
	acts := MayAddHeader | MayChangeHeader | MayQuarantine | MayAddRcpt | MayDelRcpt | MayChangeBody
	if got := acts.optAction(); got != 0x3f {
		t.Errorf("all actions = %#x, want 0x3f", got)
	}
}

func TestStateHelpers(t *testing.T) {
	st := &State{Macros: map[string]string{"i": "4ABC", "{auth_authen}": "bob", "j": "mx"}}
	for name, want := range map[string]string{"i": "4ABC", "auth_authen": "bob", "{auth_authen}": "bob", "{j}": "mx", "nope": ""} {
		if got := st.Macro(name); got != want {
			t.Errorf("Macro(%q) = %q, want %q", name, got, want)
		}
	}
	if st.QueueID() != "4ABC" || !st.Local() {
		t.Errorf("QueueID %q Local %v", st.QueueID(), st.Local())
	}
	st.MarkDegraded("redis")
	st.MarkDegraded("redis")
	st.AddRuleID("a")
	st.AddRuleID("a")
	st.AddScore("spam", 1.5)
	st.AddScore("spam", 2)
	st.AddReason("x")
	if len(st.Degraded) != 1 || len(st.RuleIDs) != 1 || st.Scores["spam"] != 3.5 || len(st.Reasons) != 1 {
		t.Errorf("%+v", st)
	}
	st.Rcpts = []*Recipient{{Addr: "a", Decision: Reject("", "", "")}, {Addr: "b"}, {Addr: "c", Decision: Quarantine("")}}
	if got := st.AcceptedRcpts(); len(got) != 2 || got[0] != "b" || got[1] != "c" {
		t.Errorf("AcceptedRcpts = %v", got)
	}
	st.resetTxn(map[string]string{"j": "mx"})
	if len(st.Macros) != 1 || st.Rcpts != nil || st.Degraded != nil || st.Scores != nil {
		t.Errorf("after reset: %+v", st)
	}
}

// A second server for the same milter on the same registry shares the metrics.
func TestMetricsSharedOnOneRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	s1 := New(NoopMilter{}, Options{Registerer: reg})
	s2 := New(NoopMilter{}, Options{Registerer: reg})
	if s2.met.sessions != s1.met.sessions {
		t.Error("second server did not reuse the registered collectors")
	}
}
