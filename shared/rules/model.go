package rules

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Set is a whole rule set: what a rules file, the replicated state or a saved
// snapshot holds. It is plain data; Compile turns it into a Snapshot.
type Set struct {
	Tenants []Tenant
	Rules   []Rule
	// Signing lists the DKIM signing entries, one per domain (signing.go).
	Signing []Signing
	// Version is an opaque label chosen by whoever assembled the set (the
	// state layer's clock, a saved snapshot's version); Snapshot.Version
	// reports it. Empty means "use the checksum".
	Version string
}

// Tenant is a customer: the domains it receives mail for and how its
// outbound relays are recognised.
type Tenant struct {
	ID      string
	Domains []string // lower-case, exact domains (no subdomains)
	Relay   Relay
	Comment string
}

// Relay says which clients relay outbound mail for a tenant.
type Relay struct {
	Networks  []netip.Prefix
	SASLUsers []string // lower-case
}

// Rule is one ops rule. Rules returned by a Snapshot are shared between
// concurrent readers and must not be modified.
type Rule struct {
	ID       string
	Milter   string // access, policy, archive or encrypt
	Scope    Scope
	Match    Match
	Action   Action
	Reply    Reply // zero: the milter's default reply for the action
	Rate     *Rate // non-nil: a rate rule; Action applies once the limit is exceeded
	Priority int   // lower first, within a scope
	// Score is what a matching policy rule with action score adds to the
	// message's spam score (negative lowers it); |Score| <= MaxScore.
	Score   float64
	Enabled bool
	Comment string
	// Targets names the archive targets (milters.archive.journal.targets)
	// a matching archive rule journals to; empty means every target.
	// Archive rules with action archive only.
	Targets []string
}

// IsRate reports whether r is a rate rule: the caller counts and applies
// r.Action only when r.Rate.Limit is exceeded within r.Rate.Per.
func (r *Rule) IsRate() bool { return r.Rate != nil }

// Restrictive reports whether r's action is of the deny type (reject,
// tempfail, discard, quarantine, relay_deny, …), which at equal scope and
// priority is ordered before permissive actions.
func (r *Rule) Restrictive() bool {
	info, ok := lookupAction(r.Milter, r.Action)
	return ok && info.restrictive
}

// Match holds a rule's conditions. Every non-empty key must be satisfied
// (AND); within one key any value may match (OR). A rule without conditions
// matches everything in its scope.
type Match struct {
	// ClientIP: single addresses are stored as /32 or /128 prefixes.
	ClientIP []netip.Prefix
	// ClientName and Helo: "host.example" matches exactly, ".example"
	// matches any name strictly below example.
	ClientName []string
	Helo       []string
	// Sender and Rcpt: "user@example.com" (that address), "example.com" or
	// "@example.com" (any address at exactly that domain), ".example.com"
	// (any address in a subdomain of example.com), and for Sender "<>" (the
	// null sender).
	Sender []string
	Rcpt   []string
	// SenderDomain and RcptDomain: "example.com" exactly or ".example.com"
	// for subdomains.
	SenderDomain []string
	RcptDomain   []string
	SASLUser     []string
	Direction    Direction // DirectionUnknown: either direction
	// Subject and Header are content conditions for the policy, archive and
	// encrypt milters (an error in an access rule: it decides before the
	// content exists). Snapshot.Match evaluates them when Facts carry the
	// content. A value "/re/" is a case-insensitive RE2 regular expression,
	// anything else a case-insensitive substring; Header values are
	// "Name: pattern". See content.go.
	Subject []string
	Header  []string
	// SPF and DMARC are conditions on the policy milter's check results
	// (policy rules only): the message's SPF result (RFC 7208 §2.6: pass,
	// fail, softfail, neutral, none, temperror, permerror) or DMARC result
	// (RFC 7489 §11.2: pass, fail, none, temperror, permerror) is one of
	// the values. They say what a tenant does with a result
	// (docs/policy.md); Facts without a result never satisfy them.
	SPF   []string
	DMARC []string
	// Detect is a condition on the encrypt milter's content detectors
	// (encrypt rules only): "card", "iban" or the name of a pattern in
	// milters.encrypt.detect.patterns. It holds when any of the named
	// detectors fired on the message (Facts.Detected); the milter runs its
	// detectors only when an enabled rule has this key.
	Detect []string
	// Body, Attachment, Size and URLDomain are the scan keys (policy rules
	// only), decided from one pass over the message body (Scanner, scan.go):
	// Body patterns (the subject pattern language) match within one decoded
	// text line; Attachment values are file name globs ("*.exe") or a name
	// extension or sniffed type ("exe"); Size values are comparisons on the
	// message size (">5MB"), all of which must hold; URLDomain values are
	// domains a URL's host equals or lies below. Facts without a Scan
	// satisfy none of them.
	Body       []string
	Attachment []string
	Size       []string
	URLDomain  []string
}

// HasScan reports whether m has a scan key (body, attachment, size,
// url_domain), which only a Scan of the message can satisfy.
func (m *Match) HasScan() bool {
	return len(m.Body) > 0 || len(m.Attachment) > 0 || len(m.Size) > 0 || len(m.URLDomain) > 0
}

// IsEmpty reports whether m has no condition at all.
func (m *Match) IsEmpty() bool {
	return len(m.ClientIP) == 0 && len(m.ClientName) == 0 && len(m.Helo) == 0 &&
		len(m.Sender) == 0 && len(m.Rcpt) == 0 && len(m.SenderDomain) == 0 &&
		len(m.RcptDomain) == 0 && len(m.SASLUser) == 0 && m.Direction == DirectionUnknown &&
		len(m.Subject) == 0 && len(m.Header) == 0 && !m.HasResults() && len(m.Detect) == 0 && !m.HasScan()
}

// HasResults reports whether m has conditions on check results (spf,
// dmarc), which the policy milter evaluates once it has them.
func (m *Match) HasResults() bool { return len(m.SPF) > 0 || len(m.DMARC) > 0 }

// HasContent reports whether m has conditions on message content (subject,
// header), which match only once the content is known (Facts.ContentKnown).
func (m *Match) HasContent() bool { return len(m.Subject) > 0 || len(m.Header) > 0 }

// Direction is the direction of a message relative to the site.
type Direction uint8

const (
	// DirectionUnknown in Facts lets the Snapshot infer the direction
	// (outbound when the client is a tenant's relay); in a Match it means
	// "either direction".
	DirectionUnknown Direction = iota
	Inbound
	Outbound
)

func (d Direction) String() string {
	switch d {
	case Inbound:
		return "inbound"
	case Outbound:
		return "outbound"
	}
	return ""
}

// ParseDirection parses "inbound" or "outbound".
func ParseDirection(s string) (Direction, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "inbound":
		return Inbound, nil
	case "outbound":
		return Outbound, nil
	}
	return DirectionUnknown, fmt.Errorf("unknown direction %q (known: inbound, outbound)", s)
}

// ScopeKind orders scopes by specificity: a lower kind is less specific.
type ScopeKind uint8

const (
	ScopeGlobal ScopeKind = iota
	ScopeTenant
	ScopeDomain
)

// Scope says to which mail a rule applies: all of it (global), a tenant's
// (tenant:ID) or one domain's (domain:DOMAIN). See docs/rules.md.
type Scope struct {
	Kind ScopeKind
	Name string // tenant id or lower-case domain; empty for global
}

func (s Scope) String() string {
	switch s.Kind {
	case ScopeTenant:
		return "tenant:" + s.Name
	case ScopeDomain:
		return "domain:" + s.Name
	}
	return "global"
}

// ParseScope parses "global", "tenant:ID" or "domain:DOMAIN". It checks the
// syntax only; whether the tenant exists is a property of the whole Set.
func ParseScope(s string) (Scope, error) {
	s = strings.TrimSpace(s)
	kind, name, found := strings.Cut(s, ":")
	switch {
	case s == "global":
		return Scope{}, nil
	case found && kind == "tenant":
		if err := checkID(name); err != nil {
			return Scope{}, fmt.Errorf("scope %q: tenant id %w", s, err)
		}
		return Scope{Kind: ScopeTenant, Name: name}, nil
	case found && kind == "domain":
		d := NormDomain(name)
		if err := checkDomain(d); err != nil {
			return Scope{}, fmt.Errorf("scope %q: %w", s, err)
		}
		return Scope{Kind: ScopeDomain, Name: d}, nil
	}
	return Scope{}, fmt.Errorf("unknown scope %q (want global, tenant:ID or domain:DOMAIN)", s)
}

// Action is what a rule does when it matches. The valid actions depend on
// the milter; see Actions.
type Action string

const (
	ActionAllow       Action = "allow"
	ActionReject      Action = "reject"
	ActionTempfail    Action = "tempfail"
	ActionDiscard     Action = "discard"
	ActionQuarantine  Action = "quarantine"
	ActionRelayPermit Action = "relay_permit"
	ActionRelayDeny   Action = "relay_deny"
	ActionGreylist    Action = "greylist"
	ActionArchive     Action = "archive"
	ActionEncrypt     Action = "encrypt"
	ActionSkip        Action = "skip"
	// ActionTag marks the message with a header and lets it through (policy
	// rules on check results; docs/policy.md).
	ActionTag Action = "tag"
	// ActionRequireTLS sends the message through a transport that
	// delivers only over TLS (encrypt rules; docs/encrypt.md).
	ActionRequireTLS Action = "require_tls"
	// ActionScore adds the rule's Score to the message's spam score (policy
	// rules; the milter sums the scores of every matching score rule and
	// compares the total with the tenant's thresholds, docs/policy.md).
	ActionScore Action = "score"
)

// MaxScore bounds |Rule.Score|: larger values are almost certainly typos
// and would make every threshold meaningless.
const MaxScore = 1000

type actionInfo struct {
	name Action
	// restrictive actions come before permissive ones at equal scope and
	// priority, so a deny is never shadowed by an allow that happens to
	// sort first.
	restrictive bool
	// replyClass is the first digit a reply for this action must have (4 or
	// 5); 0 means the action sends no SMTP reply, so a reply is an error.
	replyClass int
}

// actionTable is the one place that says which actions each milter knows.
var actionTable = []struct {
	milter  string
	actions []actionInfo
}{
	{"access", []actionInfo{
		{ActionAllow, false, 0},
		{ActionReject, true, 5},
		{ActionTempfail, true, 4},
		{ActionDiscard, true, 0},
		{ActionQuarantine, true, 0},
		{ActionRelayPermit, false, 0},
		{ActionRelayDeny, true, 5},
	}},
	{"policy", []actionInfo{
		{ActionAllow, false, 0},
		{ActionReject, true, 5},
		{ActionTempfail, true, 4},
		{ActionDiscard, true, 0},
		{ActionQuarantine, true, 0},
		{ActionGreylist, true, 4},
		{ActionTag, true, 0},
		{ActionScore, false, 0},
	}},
	// For archive and encrypt the "restrictive" choice is the one that
	// keeps the guarantee (journal it, encrypt it) rather than waives it.
	{"archive", []actionInfo{
		{ActionArchive, true, 0},
		{ActionSkip, false, 0},
	}},
	// An encrypt rule's reply is what the client sees when the message
	// must be encrypted and this host can neither route nor encrypt it.
	{"encrypt", []actionInfo{
		{ActionEncrypt, true, 5},
		{ActionRequireTLS, true, 0},
		{ActionSkip, false, 0},
	}},
}

// Milters lists the milters rules can be written for.
func Milters() []string {
	out := make([]string, len(actionTable))
	for i, m := range actionTable {
		out[i] = m.milter
	}
	return out
}

// Actions lists the actions a milter's rules may use; nil for an unknown
// milter.
func Actions(milter string) []Action {
	for _, m := range actionTable {
		if m.milter == milter {
			out := make([]Action, len(m.actions))
			for i, a := range m.actions {
				out[i] = a.name
			}
			return out
		}
	}
	return nil
}

func lookupAction(milter string, a Action) (actionInfo, bool) {
	for _, m := range actionTable {
		if m.milter == milter {
			for _, info := range m.actions {
				if info.name == a {
					return info, true
				}
			}
		}
	}
	return actionInfo{}, false
}

func knownMilter(milter string) bool {
	for _, m := range actionTable {
		if m.milter == milter {
			return true
		}
	}
	return false
}

// Reply is an SMTP reply a rule answers with: "550 5.7.1 Access denied".
type Reply struct {
	Code     int    // 3 digits, 0 when the rule has no reply
	Enhanced string // RFC 3463 "5.7.1", optional
	Text     string
}

// IsZero reports whether no reply is set.
func (r Reply) IsZero() bool { return r.Code == 0 && r.Enhanced == "" && r.Text == "" }

func (r Reply) String() string {
	if r.IsZero() {
		return ""
	}
	parts := []string{strconv.Itoa(r.Code)}
	if r.Enhanced != "" {
		parts = append(parts, r.Enhanced)
	}
	if r.Text != "" {
		parts = append(parts, r.Text)
	}
	return strings.Join(parts, " ")
}

// ParseReply parses "CODE [ENHANCED] [TEXT]" and checks that the code is a
// 4xx or 5xx reply (RFC 5321 4.2.1), that the enhanced code has the RFC 3463
// form class.subject.detail with the same class as the code, and that the
// text fits on one reply line.
func ParseReply(s string) (Reply, error) {
	s = strings.TrimSpace(s)
	codeStr, rest, _ := strings.Cut(s, " ")
	if len(codeStr) != 3 || codeStr[0] < '4' || codeStr[0] > '5' ||
		codeStr[1] < '0' || codeStr[1] > '5' || codeStr[2] < '0' || codeStr[2] > '9' {
		return Reply{}, fmt.Errorf("reply %q must start with a 4xx or 5xx SMTP code such as 550 or 451", s)
	}
	code, _ := strconv.Atoi(codeStr)
	r := Reply{Code: code}
	rest = strings.TrimSpace(rest)
	if first, text, _ := strings.Cut(rest, " "); looksEnhanced(first) {
		if err := checkEnhanced(first, codeStr[0]); err != nil {
			return Reply{}, fmt.Errorf("reply %q: %w", s, err)
		}
		r.Enhanced = first
		rest = strings.TrimSpace(text)
	}
	for _, c := range rest {
		if c < 0x20 || c == 0x7f {
			return Reply{}, fmt.Errorf("reply %q: text must be one line of printable characters", s)
		}
	}
	if len(s) > 500 {
		return Reply{}, fmt.Errorf("reply is %d characters long; an SMTP reply line holds at most 512 (RFC 5321 4.5.3.1.5)", len(s))
	}
	r.Text = rest
	return r, nil
}

// looksEnhanced reports whether the word was meant as an enhanced status
// code (digits and dots starting with a digit), so "5.7" is an error rather
// than text.
func looksEnhanced(w string) bool {
	if w == "" || w[0] < '0' || w[0] > '9' || !strings.Contains(w, ".") {
		return false
	}
	return strings.Trim(w, "0123456789.") == ""
}

// checkEnhanced validates an RFC 3463 status code: class "." subject "."
// detail, class in {2,4,5} equal to the reply code's class, subject and
// detail of 1–3 digits.
func checkEnhanced(e string, class byte) error {
	parts := strings.Split(e, ".")
	if len(parts) != 3 {
		return fmt.Errorf("enhanced status code %q must have the form class.subject.detail, e.g. 5.7.1", e)
	}
	for _, p := range parts {
		if len(p) < 1 || len(p) > 3 {
			return fmt.Errorf("enhanced status code %q must have the form class.subject.detail, e.g. 5.7.1", e)
		}
	}
	if len(parts[0]) != 1 || parts[0][0] != class {
		return fmt.Errorf("enhanced status code %s does not match the reply code's class %cxx (want %c.x.x)", e, class, class)
	}
	return nil
}

// RateKey is what a rate rule counts by.
type RateKey string

const (
	RateClientIP RateKey = "client_ip"
	RateSender   RateKey = "sender"
	RateSASLUser RateKey = "sasl_user"
	RateTenant   RateKey = "tenant"
)

var rateKeys = []RateKey{RateClientIP, RateSender, RateSASLUser, RateTenant}

// Rate is a rate limit: at most Limit messages per Per for each distinct
// value of Key.
type Rate struct {
	Key   RateKey
	Limit int
	Per   time.Duration
}

// Rate windows outside these bounds are almost certainly typos (1ms, 10y)
// and would either never trigger or keep counters forever.
const (
	minRatePer = time.Second
	maxRatePer = 7 * 24 * time.Hour
)

// Clone returns a deep copy of s, so a Snapshot never shares memory that the
// caller may still modify.
func (s *Set) Clone() *Set {
	if s == nil {
		return &Set{}
	}
	out := &Set{Version: s.Version, Tenants: make([]Tenant, len(s.Tenants)), Rules: make([]Rule, len(s.Rules))}
	copy(out.Tenants, s.Tenants)
	copy(out.Rules, s.Rules)
	out.Signing = cloneSigning(s.Signing)
	for i := range out.Tenants {
		out.Tenants[i].cloneSlices()
	}
	for i := range out.Rules {
		out.Rules[i].cloneSlices()
	}
	return out
}

func (t Tenant) clone() Tenant {
	t.cloneSlices()
	return t
}

// cloneSlices gives t its own copies of the slices it shares with
// whatever it was copied from.
func (t *Tenant) cloneSlices() {
	t.Domains = slices.Clone(t.Domains)
	t.Relay.Networks = slices.Clone(t.Relay.Networks)
	t.Relay.SASLUsers = slices.Clone(t.Relay.SASLUsers)
}

func (r Rule) clone() Rule {
	r.cloneSlices()
	return r
}

func (r *Rule) cloneSlices() {
	m := &r.Match
	m.ClientIP = slices.Clone(m.ClientIP)
	m.ClientName = slices.Clone(m.ClientName)
	m.Helo = slices.Clone(m.Helo)
	m.Sender = slices.Clone(m.Sender)
	m.Rcpt = slices.Clone(m.Rcpt)
	m.SenderDomain = slices.Clone(m.SenderDomain)
	m.RcptDomain = slices.Clone(m.RcptDomain)
	m.SASLUser = slices.Clone(m.SASLUser)
	m.Subject = slices.Clone(m.Subject)
	m.Header = slices.Clone(m.Header)
	m.SPF = slices.Clone(m.SPF)
	m.DMARC = slices.Clone(m.DMARC)
	m.Detect = slices.Clone(m.Detect)
	m.Body = slices.Clone(m.Body)
	m.Attachment = slices.Clone(m.Attachment)
	m.Size = slices.Clone(m.Size)
	m.URLDomain = slices.Clone(m.URLDomain)
	if r.Rate != nil {
		rate := *r.Rate
		r.Rate = &rate
	}
	r.Targets = slices.Clone(r.Targets)
}

// DocID is the id under which the state layer stores the tenant's document.
func (t Tenant) DocID() string { return TenantDocPrefix + t.ID }

// DocID is the id under which the state layer stores the rule's document
// (the rule id itself; rule ids cannot contain ':').
func (r Rule) DocID() string { return r.ID }

// TenantDocPrefix starts the document id of every tenant.
const TenantDocPrefix = "tenant:"
