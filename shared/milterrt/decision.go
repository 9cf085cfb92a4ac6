package milterrt

import (
	"strings"

	milter "github.com/emersion/go-milter"
)

// Action is what a Decision asks for.
type Action uint8

const (
	ActionContinue   Action = iota // go on to the next stage (at end of message: accept)
	ActionAccept                   // accept; this milter sees nothing more of the message (or connection, at connect/helo)
	ActionReject                   // 5xx: the recipient (at RCPT), else the message or connection
	ActionTempFail                 // 4xx: likewise
	ActionDiscard                  // accept and silently drop the message
	ActionQuarantine               // accept and hold the message in Postfix's hold queue
	numActions
)

var actionNames = [numActions]string{"continue", "accept", "reject", "tempfail", "discard", "quarantine"}

// String returns the lower-case name used in metrics labels and trail events.
func (a Action) String() string {
	if a < numActions {
		return actionNames[a]
	}
	return "unknown"
}

// Decision is a stage's verdict. Code, Enhanced and Text matter for reject and
// tempfail only; Reason and RuleID never reach the SMTP client (they are for the
// trail).
type Decision struct {
	Action           Action
	Code             string // "550"; must start with 5 (reject) or 4 (tempfail), else the default is used
	Enhanced         string // "5.7.1"; its class must match Code's, else the default is used
	Text             string // short text the SMTP client sees; printable ASCII, at most MaxReplyText bytes
	QuarantineReason string
	Reason           string // internal, for the trail
	RuleID           string
}

// Defaults applied by the runtime when a reject or tempfail leaves Code,
// Enhanced or Text empty (or invalid).
const (
	DefaultRejectCode       = "550"
	DefaultRejectEnhanced   = "5.7.1"
	DefaultRejectText       = "Message rejected"
	DefaultTempFailCode     = "451"
	DefaultTempFailEnhanced = "4.7.1"
	DefaultTempFailText     = "Try again later"
	DefaultQuarantineReason = "held by milter"
	// MaxReplyText bounds the text of a reply so that the SMTP line stays well
	// under RFC 5321's 512-octet limit (../rfc/5321 4.5.3.1.5).
	MaxReplyText = 400
)

// Continue lets the message go on to the next stage.
func Continue() Decision { return Decision{Action: ActionContinue} }

// Accept accepts the message (or, at connect/helo, the connection) without
// further calls to this milter.
func Accept() Decision { return Decision{Action: ActionAccept} }

// Reject answers a permanent failure. At RCPT it rejects only that recipient.
// Empty arguments take the defaults (550 5.7.1 "Message rejected").
func Reject(code, enhanced, text string) Decision {
	return Decision{Action: ActionReject, Code: code, Enhanced: enhanced, Text: text}
}

// TempFail answers a temporary failure. At RCPT it fails only that recipient.
// Empty arguments take the defaults (451 4.7.1 "Try again later").
func TempFail(code, enhanced, text string) Decision {
	return Decision{Action: ActionTempFail, Code: code, Enhanced: enhanced, Text: text}
}

// Discard accepts the message and silently drops it. At connect or helo it
// applies to every message of the connection (Postfix refuses a discard there).
func Discard() Decision { return Decision{Action: ActionDiscard} }

// Quarantine accepts the message into Postfix's hold queue. The hold is applied
// at end of message, whatever stage returns it (Postfix accepts the request only
// there); at connect or helo it applies to every message of the connection.
// The milter must declare MayQuarantine.
func Quarantine(reason string) Decision {
	return Decision{Action: ActionQuarantine, QuarantineReason: reason}
}

// WithReason returns d with its internal reason set.
func (d Decision) WithReason(reason string) Decision { d.Reason = reason; return d }

// WithRule returns d with the id of the rule that produced it.
func (d Decision) WithRule(id string) Decision { d.RuleID = id; return d }

// IsFailure reports whether d rejects or tempfails.
func (d Decision) IsFailure() bool {
	return d.Action == ActionReject || d.Action == ActionTempFail
}

// Reply returns the SMTP reply line the client sees for a reject or tempfail
// ("550 5.7.1 Message rejected"), after normalisation; "" for other actions.
func (d Decision) Reply() string {
	d = d.normalised()
	if !d.IsFailure() {
		return ""
	}
	return d.Code + " " + d.Enhanced + " " + d.Text
}

// normalised fills defaults and makes the reply safe to hand to Postfix, which
// treats a malformed SMFIR_REPLYCODE as a milter configuration error and then
// applies milter_default_action to every later message.
func (d Decision) normalised() Decision {
	switch d.Action {
	case ActionReject:
		d.Code, d.Enhanced, d.Text = fixReply('5', d.Code, d.Enhanced, d.Text,
			DefaultRejectCode, DefaultRejectEnhanced, DefaultRejectText)
	case ActionTempFail:
		d.Code, d.Enhanced, d.Text = fixReply('4', d.Code, d.Enhanced, d.Text,
			DefaultTempFailCode, DefaultTempFailEnhanced, DefaultTempFailText)
	case ActionQuarantine:
		d.QuarantineReason = sanitizeText(d.QuarantineReason, MaxReplyText)
		if d.QuarantineReason == "" {
			d.QuarantineReason = DefaultQuarantineReason
		}
	case ActionContinue, ActionAccept, ActionDiscard:
	default:
		// An Action outside the enum is a programming error in the milter; failing
		// temporarily keeps the message instead of guessing.
		d = TempFail("451", "4.3.0", "Temporary failure").WithReason("invalid decision action")
		d.Code, d.Enhanced, d.Text = fixReply('4', d.Code, d.Enhanced, d.Text,
			DefaultTempFailCode, DefaultTempFailEnhanced, DefaultTempFailText)
	}
	return d
}

func fixReply(class byte, code, enh, text, defCode, defEnh, defText string) (string, string, string) {
	if !validCode(code, class) {
		code = defCode
	}
	if !validEnhanced(enh, class) {
		enh = defEnh
	}
	text = sanitizeText(text, MaxReplyText)
	if text == "" {
		text = defText
	}
	return code, enh, text
}

// validCode: three digits, the first being the class (Postfix checks this).
func validCode(code string, class byte) bool {
	return len(code) == 3 && code[0] == class &&
		code[1] >= '0' && code[1] <= '9' && code[2] >= '0' && code[2] <= '9'
}

// validEnhanced: class.subject.detail (RFC 3463), class matching the reply code;
// Postfix rejects a reply whose 5th byte differs from its first.
func validEnhanced(enh string, class byte) bool {
	parts := strings.Split(enh, ".")
	if len(parts) != 3 || len(parts[0]) != 1 || parts[0][0] != class {
		return false
	}
	for _, p := range parts[1:] {
		if len(p) < 1 || len(p) > 3 {
			return false
		}
		for i := 0; i < len(p); i++ {
			if p[i] < '0' || p[i] > '9' {
				return false
			}
		}
	}
	return true
}

// sanitizeText keeps printable ASCII only (CR, LF, NUL and 8-bit bytes would
// break the SMTP reply or the milter packet), collapses the rest to '?', and
// caps the length.
func sanitizeText(s string, max int) string {
	clean := true
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			clean = false
			break
		}
	}
	if clean {
		s = strings.TrimSpace(s)
		if len(s) > max {
			s = strings.TrimSpace(s[:max])
		}
		return s
	}
	b := make([]byte, 0, len(s))
	for _, r := range s { // one '?' per rune, not per byte of a UTF-8 sequence
		if r < 0x20 || r > 0x7e {
			r = '?'
		}
		b = append(b, byte(r))
	}
	return sanitizeText(string(b), max)
}

// escapePercent doubles '%': Postfix reads SMFIR_REPLYCODE text the way
// Sendmail does, turning "%%" into "%" and dropping a lone '%'.
func escapePercent(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	return strings.ReplaceAll(s, "%", "%%")
}

// toResponse turns a decision, already normalised, into the reply for stage.
// Reject and tempfail travel as SMFIR_REPLYCODE so the client sees our text; at
// RCPT that fails only the recipient. At end of message a continue is an accept;
// a quarantine is an accept here (the quarantine request itself is sent by the
// caller through the modifier just before), and a continue before that.
func toResponse(stage Stages, d Decision) *response {
	switch d.Action {
	case ActionAccept:
		return respAccept
	case ActionDiscard:
		return respDiscard
	case ActionReject, ActionTempFail:
		line := d.Code + " " + d.Enhanced + " " + escapePercent(d.Text) + "\x00"
		return &response{code: byte(milter.ActReplyCode), data: []byte(line)}
	default: // continue, quarantine
		if stage == StageEOM {
			return respAccept
		}
		return respContinue
	}
}
