package trail

// The typed sections of an event: each milter records what it found in
// fields of its own (rules matched, counts, authentication results, journal
// records) rather than only in the free-text reasons, so a reader can query
// them. An event carries at most one section, its milter's; the JSON key is
// the milter's name. docs/trail-events.md documents every field; readers
// ignore fields they do not know, so fields are added without a schema
// bump.

// Section is one milter's part of an event. The milter sets a new value per
// transaction in milterrt.State.Section; the process attaches it to the
// event (Event.SetSection). The set of section types is closed: the four
// below.
type Section interface{ attach(e *Event) }

// SetSection puts s into its milter's field of e; nil does nothing.
func (e *Event) SetSection(s Section) {
	if s != nil {
		s.attach(e)
	}
}

// RuleHit is an ops rule that took part in a decision.
type RuleHit struct {
	ID     string `json:"id"`
	Scope  string `json:"scope"`  // global, tenant:ID or domain:DOMAIN
	Action string `json:"action"` // the rule's action (reject, allow, archive, …)
	// Stage is where the rule was applied: connect, helo, mail, rcpt, eoh or
	// eom.
	Stage string `json:"stage,omitempty"`
	// Rcpt is the recipient it was applied to, for a per-recipient decision.
	Rcpt string `json:"rcpt,omitempty"`
}

// AccessSection is the access milter's part (JSON key "access").
type AccessSection struct {
	// Direction is inbound or outbound as the milter judged it at MAIL.
	Direction string `json:"direction,omitempty"`
	// RelayTenant is the tenant whose relay the client is (outbound mail).
	RelayTenant string `json:"relay_tenant,omitempty"`
	// Rules are the rules that decided (a refusal, a quarantine) or let the
	// message through (allow, relay_permit), in the order applied.
	Rules []RuleHit `json:"rules,omitempty"`
	// Rates are the rate rules that counted this message, with the counts
	// they saw; Exceeded marks the one that tripped.
	Rates []RateCount `json:"rates,omitempty"`
	// RelayRefused are the recipients refused by the built-in relay check.
	RelayRefused []RelayRefusal `json:"relay_refused,omitempty"`
}

func (s *AccessSection) attach(e *Event) { e.Access = s }

// RateCount is one rate rule's count for a message.
type RateCount struct {
	RuleID string `json:"rule_id"`
	Key    string `json:"key"`   // client_ip, sender, sasl_user or tenant
	Value  string `json:"value"` // what was counted: the address, sender, login or tenant id
	// Count is the fixed window's total over all sites, this message
	// included; Limit and WindowS are the rule's (limit per window_s
	// seconds). The rule trips when Count > Limit.
	Count    int64   `json:"count"`
	Limit    int     `json:"limit"`
	WindowS  float64 `json:"window_s"`
	Exceeded bool    `json:"exceeded,omitempty"`
	// Store is where it was counted: redis, or memory (standalone, or the
	// fallback while Redis did not answer; see degraded).
	Store string `json:"store"`
}

// RelayRefusal is a recipient refused because relaying to its domain was not
// authorised.
type RelayRefusal struct {
	Rcpt   string `json:"rcpt"`
	Domain string `json:"domain"`
}

// PolicySection is the policy milter's part (JSON key "policy").
type PolicySection struct {
	// SPF has one result per identity checked (RFC 7208 §2.3 helo, §2.4
	// mailfrom).
	SPF []SPFResult `json:"spf,omitempty"`
	// DKIM has one result per DKIM-Signature field verified (RFC 6376).
	DKIM []DKIMResult `json:"dkim,omitempty"`
	// DMARC is the evaluation for the RFC5322.From domain (RFC 7489).
	DMARC *DMARCResult `json:"dmarc,omitempty"`
	// DNSBL lists the block, allow and URI lists that listed the client
	// or a domain of the message.
	DNSBL []DNSBLHit `json:"dnsbl,omitempty"`
	// Lists is the time the list look-ups took and the lists that did not
	// answer.
	Lists *ListUse `json:"lists,omitempty"`
	// Greylist has the greylisting outcome per recipient, when it ran.
	Greylist []GreylistResult `json:"greylist,omitempty"`
	// Score is the message's total score and Threshold the one it was
	// judged against (the parts are in the event's scores: every list,
	// rule, scanner and MIME problem that added to it, named
	// "dnsbl:ZONE", "rule:ID", "scanner:NAME", "mime:KIND").
	Score     float64 `json:"score"`
	Threshold float64 `json:"threshold,omitempty"`
	// Action is what the score (or a content rule) led to: tag,
	// quarantine, reject, or "" (none).
	Action string `json:"action,omitempty"`
	// Content is the MIME walk of the message, when it ran.
	Content *ContentUse `json:"content,omitempty"`
	// Scanners are the outside scanners' (rspamd, spamd) answers.
	Scanners []ScannerResult `json:"scanners,omitempty"`
	// Rules are the policy rules that decided or let the message through.
	Rules []RuleHit `json:"rules,omitempty"`
	// Direction is inbound (verified) or outbound (signed, not verified).
	Direction string `json:"direction,omitempty"`
	// AuthResRemoved counts the incoming Authentication-Results fields
	// removed because they claimed our authserv-id (RFC 8601 §5: forged).
	AuthResRemoved int `json:"authres_removed,omitempty"`
	// Tags are the checks the tag action marked in the X-Geomilter-Policy
	// header, e.g. ["spf=softfail"].
	Tags []string `json:"tags,omitempty"`
	// Signed is the DKIM signature added to outbound mail, or why none
	// could be.
	Signed *SignedResult `json:"signed,omitempty"`
	// DNS is the message's DNS budget use, when it looked names up.
	DNS *DNSUse `json:"dns,omitempty"`
}

func (s *PolicySection) attach(e *Event) { e.Policy = s }

// SignedResult is the DKIM signing of an outbound message.
type SignedResult struct {
	Domain    string `json:"domain"`   // d=
	Selector  string `json:"selector"` // s=
	Algorithm string `json:"algorithm,omitempty"`
	// Error says why the message went out unsigned although an entry
	// covers its From domain (e.g. an unusable key file).
	Error string `json:"error,omitempty"`
}

// DNSUse is how much of its DNS budget a message spent.
type DNSUse struct {
	SpentMS float64 `json:"spent_ms"`
	// Exhausted: the budget ran out, so some look-up was cut short or not
	// made (the event's degraded has "dns").
	Exhausted bool `json:"exhausted,omitempty"`
}

// SPFResult is one SPF check.
type SPFResult struct {
	Identity string `json:"identity"` // helo or mailfrom
	Domain   string `json:"domain"`
	// Result is an RFC 7208 §2.6 result: none, neutral, pass, fail,
	// softfail, temperror, permerror.
	Result string `json:"result"`
	Detail string `json:"detail,omitempty"`
	// DurationMS is the check's time, DNS included.
	DurationMS float64 `json:"duration_ms,omitempty"`
}

// DKIMResult is one signature's verification.
type DKIMResult struct {
	Domain     string `json:"domain"`               // d=
	Selector   string `json:"selector"`             // s=
	Identifier string `json:"identifier,omitempty"` // i=
	// Result is an RFC 8601 §2.7.1 result: pass, fail, neutral, policy,
	// temperror, permerror.
	Result string `json:"result"`
	Detail string `json:"detail,omitempty"`
}

// DMARCResult is the DMARC evaluation of a message.
type DMARCResult struct {
	Domain string `json:"domain"` // the RFC5322.From domain
	// Policy is the domain's published p= (none, quarantine, reject), ""
	// when it has no record.
	Policy string `json:"policy,omitempty"`
	// Result is pass, fail, none, temperror or permerror (RFC 8601 §2.7.6).
	Result      string `json:"result"`
	SPFAligned  bool   `json:"spf_aligned"`
	DKIMAligned bool   `json:"dkim_aligned"`
	// Disposition is what the milter applied for DMARC: none, quarantine or
	// reject (a local policy may apply less than the domain asks).
	Disposition string `json:"disposition,omitempty"`
	// DurationMS is the evaluation's time, DNS included.
	DurationMS float64 `json:"duration_ms,omitempty"`
}

// DNSBLHit is a list that listed the client or a domain of the message.
type DNSBLHit struct {
	Zone   string `json:"zone"`
	Answer string `json:"answer"` // the A record returned, e.g. 127.0.0.2
	// Kind is dnsbl, dnswl or uribl; Target the IP or domain looked up.
	Kind   string  `json:"kind,omitempty"`
	Target string  `json:"target,omitempty"`
	Weight float64 `json:"weight,omitempty"`
	// Action is the list's direct action (reject, tempfail, quarantine),
	// "" when it only scores.
	Action string `json:"action,omitempty"`
}

// ListUse is the time the list look-ups of a message took.
type ListUse struct {
	DurationMS float64 `json:"duration_ms"`
	// Failed names the lists that did not answer ("zone: why").
	Failed []string `json:"failed,omitempty"`
}

// GreylistResult is the greylisting outcome for one recipient.
type GreylistResult struct {
	Rcpt string `json:"rcpt,omitempty"`
	// Status is new (first sighting: deferred), waiting (retried too early:
	// deferred), passed (retried in time, or passed before), allowlisted
	// (the client network passed often enough), exempt (see Reason) or
	// degraded (the state did not answer: accepted).
	Status string `json:"status"`
	// Reason says why a recipient was exempt, or the state's error.
	Reason string `json:"reason,omitempty"`
	// FirstSeenMS is the first sighting at any site, Unix milliseconds.
	FirstSeenMS int64   `json:"first_seen_ms,omitempty"`
	DurationMS  float64 `json:"duration_ms,omitempty"`
}

// ScorePart is one named score, e.g. a scanner's symbol.
type ScorePart struct {
	Name  string  `json:"name"`
	Score float64 `json:"score"`
}

// ContentUse is the MIME walk of one message.
type ContentUse struct {
	Parts       int `json:"parts"`
	Attachments int `json:"attachments,omitempty"`
	URLs        int `json:"urls,omitempty"`
	// Problems are the kinds of malformed MIME or limits reached.
	Problems   []string `json:"problems,omitempty"`
	Truncated  bool     `json:"truncated,omitempty"`
	DurationMS float64  `json:"duration_ms"`
}

// ScannerResult is one outside scanner's answer.
type ScannerResult struct {
	Name     string  `json:"name"`
	Score    float64 `json:"score"`
	Required float64 `json:"required,omitempty"`
	Action   string  `json:"action,omitempty"`
	// Symbols are the scanner's rule names with their scores.
	Symbols []ScorePart `json:"symbols,omitempty"`
	// Skipped says why the scanner was not asked (breaker open, too
	// large); Error why its answer is missing (timeout, refused).
	Skipped    string  `json:"skipped,omitempty"`
	Error      string  `json:"error,omitempty"`
	DurationMS float64 `json:"duration_ms,omitempty"`
}

// ArchiveSection is the archive milter's part (JSON key "archive").
type ArchiveSection struct {
	// Journaled says whether a journal record was written; Reason says
	// why not (a skip rule, no target, too large, journal full, a write
	// error) when it was not.
	Journaled bool   `json:"journaled"`
	Reason    string `json:"reason,omitempty"`
	// RecordID is the journal id of the record written for the message
	// (the X-Geomilter-Journal-Id of its journal report).
	RecordID string `json:"record_id,omitempty"`
	// Targets are the archive destinations and what became of the record
	// at each.
	Targets []ArchiveTarget `json:"targets,omitempty"`
	// Bytes is the size of the message journaled.
	Bytes int64 `json:"bytes,omitempty"`
	// Rules are the archive rules that applied (archive, skip).
	Rules []RuleHit `json:"rules,omitempty"`
}

func (s *ArchiveSection) attach(e *Event) { e.Archive = s }

// ArchiveTarget is one archive destination.
type ArchiveTarget struct {
	Name string `json:"name"`
	// Status is spooled: on this host's disk, on its way to the target.
	// (Delivery happens later, in the background, and is counted in the
	// archive metrics and `ctl archive status`.)
	Status string `json:"status"`
	Detail string `json:"detail,omitempty"`
}

// EncryptSection is the encrypt milter's part (JSON key "encrypt").
type EncryptSection struct {
	// Trigger is the kind of the first trigger that fired: subject_tag (a
	// tag in the subject), rule (an encrypt rule on addresses, subject or
	// headers), detector (an encrypt rule on a content detector), or none
	// (the message went as it came).
	Trigger string `json:"trigger"`
	// Triggers are every trigger that fired, in order.
	Triggers []EncryptTrigger `json:"triggers,omitempty"`
	// Action is what the milter did: none, route (marked for the
	// encryption gateway), require_tls (marked for the TLS-only
	// transport), inline (encrypted by the milter) or reject.
	Action string `json:"action"`
	// Route is the Postfix transport the marker sends the message to
	// (encrypt, smtp-tls), or the inline method (smime, pgp); "" when the
	// message leaves as it came or was rejected.
	Route string `json:"route,omitempty"`
	// Direction is inbound or outbound; Tenant the tenant whose keys and
	// rules applied.
	Direction string `json:"direction,omitempty"`
	Tenant    string `json:"tenant,omitempty"`
	// Rcpts are the recipients that required encryption (or TLS).
	Rcpts []string `json:"rcpts,omitempty"`
	// TagsRemoved counts the subject tags removed from the Subject.
	TagsRemoved int `json:"tags_removed,omitempty"`
	// Fallback says why inline encryption, when configured, was not used
	// (no_key, too_large, error: …) and the message was routed or rejected.
	Fallback string `json:"fallback,omitempty"`
	// Rules are the encrypt rules that applied (encrypt, require_tls, skip).
	Rules []RuleHit `json:"rules,omitempty"`
}

// EncryptTrigger is one thing that asked for encryption. It never holds
// matched content: a detector gives its name and how many it found.
type EncryptTrigger struct {
	Kind     string `json:"kind"` // subject_tag, rule, detector
	RuleID   string `json:"rule_id,omitempty"`
	Detector string `json:"detector,omitempty"` // card, iban or a pattern name
	Count    int    `json:"count,omitempty"`    // tags or detector matches
}

func (s *EncryptSection) attach(e *Event) { e.Encrypt = s }
