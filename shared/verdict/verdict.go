// Package verdict turns a decisive rule into the runtime's decision, once for
// every milter: the rule's action picks the milterrt action, the rule's reply
// (or the default reply of the action) the SMTP reply, and the decision names
// the rule and says why for the trail. It sits between package rules (plain
// data) and package milterrt (the protocol), which know nothing of each other.
package verdict

import (
	"strconv"

	"github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/rules"
	"github.com/geomilter/geomilter/shared/trail"
)

// Reply is an SMTP reply: code, RFC 3463 enhanced code, text.
type Reply struct {
	Code, Enhanced, Text string
}

// defaultReplies are the replies of the actions that answer with an SMTP
// error when the rule has no reply of its own. The client sees only this
// short text; the details go to the trail.
var defaultReplies = map[rules.Action]Reply{
	rules.ActionReject:    {"550", "5.7.1", "Access denied"},
	rules.ActionTempfail:  {"451", "4.7.1", "Try again later"},
	rules.ActionRelayDeny: {"554", "5.7.1", "Relay access denied"},
	// RFC 6647 §2.1: greylisting answers a temporary failure.
	rules.ActionGreylist: {"451", "4.7.1", "Greylisted, try again later"},
}

// DefaultReply returns the reply action a answers with when its rule has
// none; ok is false for an action that sends no SMTP error.
func DefaultReply(a rules.Action) (r Reply, ok bool) {
	r, ok = defaultReplies[a]
	return r, ok
}

// RateLimitText is the default reply text of a rate rule that tripped.
const RateLimitText = "Rate limit exceeded"

// FromRule returns the decision a decisive rule r of milter takes:
//
//   - reject, relay_deny: a 5xx reject; tempfail, greylist: a 4xx temporary
//     failure — with r.Reply when set (an empty enhanced code in it gets the
//     runtime's default of the class), else DefaultReply (for a rate rule
//     the text is RateLimitText);
//   - discard: discard; quarantine: quarantine with the reason
//     "MILTER rule ID" (what Postfix logs and shows in the hold queue);
//   - any other action (allow, relay_permit, archive, encrypt, skip) is not a
//     refusal: Continue.
//
// The decision carries r.ID (WithRule) and a reason for the trail:
// "MILTER rule ID (SCOPE): ACTION", with " (rate limit exceeded)" for a
// rate rule.
func FromRule(milter string, r *rules.Rule) milterrt.Decision {
	reason := milter + " rule " + r.ID + " (" + r.Scope.String() + "): " + string(r.Action)
	if r.IsRate() {
		reason += " (rate limit exceeded)"
	}
	var d milterrt.Decision
	switch r.Action {
	case rules.ActionReject, rules.ActionRelayDeny:
		d = reply(milterrt.ActionReject, r)
	case rules.ActionTempfail, rules.ActionGreylist:
		d = reply(milterrt.ActionTempFail, r)
	case rules.ActionDiscard:
		d = milterrt.Discard()
	case rules.ActionQuarantine:
		d = milterrt.Quarantine(milter + " rule " + r.ID)
	default:
		d = milterrt.Continue()
	}
	return d.WithRule(r.ID).WithReason(reason)
}

// reply builds a reject or tempfail with the rule's reply or the default of
// its action.
func reply(a milterrt.Action, r *rules.Rule) milterrt.Decision {
	def := defaultReplies[r.Action]
	code, enh, text := def.Code, def.Enhanced, def.Text
	if r.IsRate() {
		text = RateLimitText
	}
	if r.Reply.Code != 0 {
		code, enh = strconv.Itoa(r.Reply.Code), r.Reply.Enhanced
	}
	if r.Reply.Text != "" {
		text = r.Reply.Text
	}
	return milterrt.Decision{Action: a, Code: code, Enhanced: enh, Text: text}
}

// Hit is the trail's record of rule r applied at stage (for rcpt, "" for
// the whole transaction): the same fields in every milter's section.
func Hit(r *rules.Rule, stage, rcpt string) trail.RuleHit {
	return trail.RuleHit{ID: r.ID, Scope: r.Scope.String(), Action: string(r.Action), Stage: stage, Rcpt: rcpt}
}
