package milterrt

import (
	"net"
	"strings"
	"time"

	milter "github.com/emersion/go-milter"

	"github.com/geomilter/geomilter/shared/message"
)

// Stages is a set of milter stages. A milter lists the stages it needs; the
// runtime asks Postfix to skip the others. End of message always happens.
type Stages uint

const (
	StageConnect Stages = 1 << iota
	StageHelo
	StageMail
	StageRcpt
	StageHeaders
	StageEOH
	StageBody
	StageEOM // always on; listed so a single stage can be named (State.FinalStage, metrics)

	// AllStages is every stage.
	AllStages = StageConnect | StageHelo | StageMail | StageRcpt | StageHeaders | StageEOH | StageBody | StageEOM
)

const numStages = 8

var stageNames = [numStages]string{"connect", "helo", "mail", "rcpt", "header", "eoh", "body", "eom"}

// String names a single stage ("connect", "rcpt", …) as used in metrics labels;
// a set of several stages is written joined by '+'.
func (s Stages) String() string {
	if s == 0 {
		return "none"
	}
	out := ""
	for i := 0; i < numStages; i++ {
		if s&(1<<i) != 0 {
			if out != "" {
				out += "+"
			}
			out += stageNames[i]
		}
	}
	return out
}

// index of a single stage, for metric arrays.
func (s Stages) index() int {
	for i := 0; i < numStages; i++ {
		if s == 1<<i {
			return i
		}
	}
	return numStages - 1
}

// envelopeStages are the stages where a milter's decision reaches the SMTP
// client at once; at the content stages (headers, end of headers, body) Postfix
// answers the client only after the whole message, whatever the stage.
const envelopeStages = StageConnect | StageHelo | StageMail | StageRcpt

var stageFlags = []struct {
	st           Stages
	skip, noRepl milter.OptProtocol
}{
	{StageConnect, milter.OptNoConnect, milter.OptNoConnReply},
	{StageHelo, milter.OptNoHelo, milter.OptNoHeloReply},
	{StageMail, milter.OptNoMailFrom, milter.OptNoMailReply},
	{StageRcpt, milter.OptNoRcptTo, milter.OptNoRcptReply},
	{StageHeaders, milter.OptNoHeaders, milter.OptNoHeaderReply},
	{StageEOH, milter.OptNoEOH, milter.OptNoEOHReply},
	{StageBody, milter.OptNoBody, milter.OptNoBodyReply},
}

// protocol returns the protocol flags a milter asks for: skip every stage not
// in s, and DATA and unknown commands, which no milter here handles; send no
// reply at the stages of s not in decides (the MTA then does not wait). The
// MTA grants the subset it offers.
func (s Stages) protocol(decides Stages) milter.OptProtocol {
	p := milter.OptNoData | milter.OptNoUnknown | s.SkipFlags()
	for _, x := range stageFlags {
		if s&x.st != 0 && decides&x.st == 0 {
			p |= x.noRepl
		}
	}
	return p
}

// SkipFlags returns the protocol flags (SMFIP_NOCONNECT …, all known to
// protocol 2) that skip every stage not in s.
func (s Stages) SkipFlags() milter.OptProtocol {
	var p milter.OptProtocol
	for _, x := range stageFlags {
		if s&x.st == 0 {
			p |= x.skip
		}
	}
	return p
}

// noReplyFlag is the SMFIP_NR_* flag of a single stage; 0 for end of message,
// which always has a reply.
func noReplyFlag(stage Stages) milter.OptProtocol {
	for _, x := range stageFlags {
		if x.st == stage {
			return x.noRepl
		}
	}
	return 0
}

// Modifications is the set of message modifications a milter may request at end of
// message. Postfix offers all of them; a milter lists only those it uses.
type Modifications uint

const (
	MayAddHeader    Modifications = 1 << iota // Modifier.AddHeader, Modifier.InsertHeader
	MayChangeHeader                           // Modifier.ChangeHeader
	MayQuarantine                             // Modifier.Quarantine, Quarantine decisions
	MayAddRcpt                                // Modifier.AddRcpt
	MayDelRcpt                                // Modifier.DelRcpt
	MayChangeBody                             // Modifier.ReplaceBody
)

// actionFlags pairs each Modifications bit with its SMFIF_* flag.
var actionFlags = []struct {
	a Modifications
	o milter.OptAction
}{
	{MayAddHeader, milter.OptAddHeader}, {MayChangeHeader, milter.OptChangeHeader},
	{MayQuarantine, milter.OptQuarantine}, {MayAddRcpt, milter.OptAddRcpt},
	{MayDelRcpt, milter.OptRemoveRcpt}, {MayChangeBody, milter.OptChangeBody},
}

func (a Modifications) optAction() milter.OptAction {
	var o milter.OptAction
	for _, x := range actionFlags {
		if a&x.a != 0 {
			o |= x.o
		}
	}
	return o
}

// actionsOf is the inverse of optAction for the bits it knows.
func actionsOf(o milter.OptAction) Modifications {
	var a Modifications
	for _, x := range actionFlags {
		if o&x.o != 0 {
			a |= x.a
		}
	}
	return a
}

// Recipient is one RCPT TO of the transaction with this milter's verdict on it
// (Continue when the milter let it through).
type Recipient struct {
	Addr     string // without <>
	Params   Params // ESMTP parameters of the RCPT command (NOTIFY, ORCPT, …)
	Decision Decision
}

// HeaderField is one header field of the message (../rfc/5322 2.2).
type HeaderField struct {
	// Name as written, without the colon (Postfix drops whitespace between
	// name and colon).
	Name string
	// Raw is the value byte for byte as the SMTP client sent it: everything
	// after the colon, leading space or tab included, folded lines joined by
	// "\r\n", no final line end; Name + ":" + Raw + "\r\n" is the header line
	// as received. It is exact when the MTA sends leading whitespace
	// (SMFIP_HDR_LEADSPC, negotiated whenever offered; Postfix offers it).
	// Without it (a protocol 2 MTA) Postfix has removed one space after the
	// colon, if there was one, and Raw is " " + what it sent: right for the
	// usual "Name: value", one space too many for "Name:value".
	Raw string
	// Value is Raw unfolded (../rfc/5322 2.2.3: every CRLF removed) with
	// leading whitespace removed, e.g. for matching.
	Value string
}

// NewHeaderField builds a HeaderField from a name and a raw value (folds
// as "\n" or "\r\n").
func NewHeaderField(name, raw string) HeaderField {
	raw = crlf(raw)
	return HeaderField{Name: name, Raw: raw, Value: strings.TrimLeft(strings.ReplaceAll(raw, "\r\n", ""), " \t")}
}

// crlf turns every line end, bare LF or CRLF, into CRLF.
func crlf(s string) string {
	if !strings.Contains(s, "\n") {
		return s
	}
	return strings.ReplaceAll(strings.ReplaceAll(s, "\r\n", "\n"), "\n", "\r\n")
}

// State is what the runtime knows of a milter connection and its current
// transaction. It is owned by the session goroutine; the runtime reuses it for
// the next transaction after OnTransaction returns, so copy what you keep.
type State struct {
	Milter    string // Milter.Name()
	SessionID string // unique per milter connection (= Postfix SMTP session), 12 hex chars
	TxnID     string // "SESSIONID.N", unique per transaction; "" between transactions

	// Connection: kept across the transactions of the connection.
	ClientHost string // as Postfix sends it: the client name, or "[addr]" when unknown
	ClientAddr net.IP // nil for local submissions (family "unix") and unknown peers
	ClientPort uint16
	Family     string // "tcp4", "tcp6", "unix", "unknown", or "local" for a Postfix local submission (127.0.0.1 port 0); "" if Connect is not negotiated
	Helo       string
	ConnStart  time.Time

	// Transaction: reset when it ends.
	TxnStart time.Time
	// Busy is how long the MTA waited on this milter in the transaction:
	// for each event, from its arrival to the reply written (or, for an
	// event with no reply, to the end of its handling). Connect and HELO
	// count in the connection's first transaction. Unlike the span from
	// TxnStart, it leaves out the time the client and the MTA took between
	// events, so it is the milter's own cost on the mail path.
	Busy   time.Duration
	Sender string // without <>; "" for the null sender
	// MailParams are the ESMTP parameters of MAIL FROM (SIZE, BODY,
	// SMTPUTF8, RET, ENVID, AUTH, …); see also Envelope.
	MailParams Params
	Rcpts      []*Recipient
	Headers    []HeaderField // arrival order
	BodyBytes  int64
	// Message is the message as received so far, for a milter that is a
	// MessageUser (nil for others): header fields byte-exact, then the body.
	// Read it whole at end of message (Message.Reader, HeaderReader,
	// BodyReader). The runtime closes it, removing its file, when the
	// transaction ends: do not keep it or its readers past that.
	Message *message.Message
	// Macros merges the macros of every stage so far: connection-level ones
	// (sent with connect and helo) persist across transactions, the others are
	// dropped when the transaction ends. Names are as Postfix sends them ("i",
	// "{auth_authen}"); use Macro to look one up with or without braces.
	Macros map[string]string

	// Filled by milters for the trail.
	Reasons  []string
	RuleIDs  []string
	Scores   map[string]float64
	Degraded []string
	// Section is the milter's typed trail section for the transaction (a
	// *trail.AccessSection, *trail.PolicySection, …): the milter sets a new
	// one per transaction, the process puts it into the trail event.
	Section any

	// Set by the runtime when the transaction ends, before OnTransaction.
	Final      Decision // at end of message a continue is reported as accept
	FinalStage Stages   // the stage that decided (StageEOM for a completed message)
	Aborted    bool     // ended by ABORT, a new MAIL, or a lost connection rather than by a decision
}

// Macro returns a macro's value; name may be given with or without braces
// ("auth_authen" finds "{auth_authen}").
func (st *State) Macro(name string) string {
	if v, ok := st.Macros[name]; ok {
		return v
	}
	if len(name) > 1 && name[0] != '{' {
		return st.Macros["{"+name+"}"]
	}
	if len(name) > 2 && name[0] == '{' && name[len(name)-1] == '}' {
		return st.Macros[name[1:len(name)-1]]
	}
	return ""
}

// QueueID returns Postfix's queue id (macro "i"), "" until Postfix has one.
func (st *State) QueueID() string { return st.Macros["i"] }

// Local reports whether the client has no IP address (a local submission).
func (st *State) Local() bool { return st.ClientAddr == nil }

// AddReason records why the milter decided as it did.
func (st *State) AddReason(reason string) { st.Reasons = append(st.Reasons, reason) }

// AddRuleID records a rule that matched; duplicates are dropped.
func (st *State) AddRuleID(id string) {
	for _, x := range st.RuleIDs {
		if x == id {
			return
		}
	}
	st.RuleIDs = append(st.RuleIDs, id)
}

// AddScore adds v to the named score.
func (st *State) AddScore(name string, v float64) {
	if st.Scores == nil {
		st.Scores = make(map[string]float64)
	}
	st.Scores[name] += v
}

// MarkDegraded records that a check ran in degraded mode (e.g. "redis"), once.
func (st *State) MarkDegraded(what string) {
	for _, x := range st.Degraded {
		if x == what {
			return
		}
	}
	st.Degraded = append(st.Degraded, what)
}

// AcceptedRcpts returns the addresses of the recipients this milter did not
// reject or tempfail.
func (st *State) AcceptedRcpts() []string {
	var out []string
	for _, r := range st.Rcpts {
		if !r.Decision.IsFailure() {
			out = append(out, r.Addr)
		}
	}
	return out
}

// resetTxn drops the transaction part, keeping the connection part.
func (st *State) resetTxn(connMacros map[string]string) {
	st.TxnID = ""
	st.TxnStart = time.Time{}
	st.Busy = 0
	st.Sender = ""
	st.MailParams = nil
	st.Rcpts = nil
	st.Headers = nil
	st.BodyBytes = 0
	st.Message = nil
	st.Macros = make(map[string]string, len(connMacros)+4)
	for k, v := range connMacros {
		st.Macros[k] = v
	}
	st.Reasons = nil
	st.RuleIDs = nil
	st.Scores = nil
	st.Degraded = nil
	st.Section = nil
	st.Final = Decision{}
	st.FinalStage = 0
	st.Aborted = false
}
