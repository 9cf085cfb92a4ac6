package verdict

import (
	"testing"
	"time"

	"github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/rules"
)

func TestFromRule(t *testing.T) {
	global := rules.Scope{}
	dom := rules.Scope{Kind: rules.ScopeDomain, Name: "acme.example"}
	rate := &rules.Rate{Key: rules.RateClientIP, Limit: 5, Per: time.Minute}
	tests := []struct {
		name   string
		milter string
		r      rules.Rule
		want   milterrt.Decision
	}{
		{"reject default", "access", rules.Rule{ID: "r1", Scope: global, Action: rules.ActionReject},
			milterrt.Decision{Action: milterrt.ActionReject, Code: "550", Enhanced: "5.7.1", Text: "Access denied", RuleID: "r1", Reason: "access rule r1 (global): reject"}},
		{"reject own reply", "access", rules.Rule{ID: "r2", Scope: dom, Action: rules.ActionReject, Reply: rules.Reply{Code: 554, Enhanced: "5.7.0", Text: "Go away"}},
			milterrt.Decision{Action: milterrt.ActionReject, Code: "554", Enhanced: "5.7.0", Text: "Go away", RuleID: "r2", Reason: "access rule r2 (domain:acme.example): reject"}},
		{"reply code without enhanced code", "access", rules.Rule{ID: "r3", Scope: global, Action: rules.ActionReject, Reply: rules.Reply{Code: 553}},
			milterrt.Decision{Action: milterrt.ActionReject, Code: "553", Text: "Access denied", RuleID: "r3", Reason: "access rule r3 (global): reject"}},
		{"tempfail rate", "access", rules.Rule{ID: "rl", Scope: global, Action: rules.ActionTempfail, Rate: rate},
			milterrt.Decision{Action: milterrt.ActionTempFail, Code: "451", Enhanced: "4.7.1", Text: "Rate limit exceeded", RuleID: "rl", Reason: "access rule rl (global): tempfail (rate limit exceeded)"}},
		{"relay deny", "access", rules.Rule{ID: "rd", Scope: global, Action: rules.ActionRelayDeny},
			milterrt.Decision{Action: milterrt.ActionReject, Code: "554", Enhanced: "5.7.1", Text: "Relay access denied", RuleID: "rd", Reason: "access rule rd (global): relay_deny"}},
		{"greylist", "policy", rules.Rule{ID: "g", Scope: global, Action: rules.ActionGreylist},
			milterrt.Decision{Action: milterrt.ActionTempFail, Code: "451", Enhanced: "4.7.1", Text: "Greylisted, try again later", RuleID: "g", Reason: "policy rule g (global): greylist"}},
		{"discard", "policy", rules.Rule{ID: "d", Scope: global, Action: rules.ActionDiscard},
			milterrt.Decision{Action: milterrt.ActionDiscard, RuleID: "d", Reason: "policy rule d (global): discard"}},
		{"quarantine", "policy", rules.Rule{ID: "q", Scope: global, Action: rules.ActionQuarantine},
			milterrt.Quarantine("policy rule q").WithRule("q").WithReason("policy rule q (global): quarantine")},
		{"allow is no refusal", "access", rules.Rule{ID: "a", Scope: global, Action: rules.ActionAllow},
			milterrt.Decision{Action: milterrt.ActionContinue, RuleID: "a", Reason: "access rule a (global): allow"}},
		{"encrypt is no refusal", "encrypt", rules.Rule{ID: "e", Scope: global, Action: rules.ActionEncrypt},
			milterrt.Decision{Action: milterrt.ActionContinue, RuleID: "e", Reason: "encrypt rule e (global): encrypt"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := FromRule(tc.milter, &tc.r); got != tc.want {
				t.Errorf("FromRule =\n %+v\nwant\n %+v", got, tc.want)
			}
		})
	}
}
