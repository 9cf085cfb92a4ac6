// Package policy is the spam and policy milter. Part 1 (issue 14) checks
// inbound mail — SPF (RFC 7208) at MAIL, DKIM (RFC 6376, RFC 8463) streamed
// as the message arrives, DMARC (RFC 7489) at end of message, all under one
// DNS budget per message — writes one Authentication-Results header (RFC
// 8601), removes forged ones, applies what each tenant says to do with the
// results (rules with spf and dmarc conditions, docs/policy.md), and signs
// outbound mail with DKIM. Part 2 (issue 15, spam.go) adds DNSBL, DNSWL
// and URIBL lists, greylisting over the state shared by the sites, content
// rules on a streaming MIME walk, rspamd and spamd as optional scanners,
// and a score judged per tenant (tag, quarantine, reject).
//
// The checks live in subpackages (spfcheck, dkimcheck, dmarc, authres); this
// package is the session that runs them at the right stage, decides, edits
// the message and fills the trail section. Lists, greylisting, the MIME walk
// and the scanners live in subpackages too (dnsbl, greylist, content,
// scanner).
package policy

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/milters/policy/dnsbl"
	"github.com/geomilter/geomilter/milters/policy/greylist"
	"github.com/geomilter/geomilter/milters/policy/scanner"
	"github.com/geomilter/geomilter/shared/config"
	"github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/resolver"
	"github.com/geomilter/geomilter/shared/rules"
	"github.com/geomilter/geomilter/shared/service"
	"github.com/geomilter/geomilter/shared/state"
)

// Name is the milter's name in config (milters.policy) and in trail events.
const Name = "policy"

// Milter is the policy milter.
type Milter struct {
	rules    service.RulesView
	empty    *rules.Snapshot
	dns      resolver.Resolver
	settings *Settings
	// budget is the DNS waiting one message may spend (dns.message_budget).
	budget time.Duration
	clock  func() time.Time
	log    zerolog.Logger
	keys   *keyring
	met    metrics
	// plan caches, per rules snapshot, what DecidesAt needs to know.
	plan atomic.Pointer[plan]

	// Part 2.
	ipLists  []dnsbl.List // dnsbl and dnswl, looked up at MAIL
	lists    listIndex    // every list by kind and zone
	grey     *greylist.Greylister
	scanners *scanner.Set
	builtin  []builtinRule // default content rules; nil when off
	// listRefusals: some IP list rejects or tempfails directly.
	listRefusals bool
	// replies are the lists' and greylisting's configured replies, parsed
	// once (validation has checked them), by their text.
	replies map[string]rules.Reply
}

var (
	_ milterrt.Milter      = (*Milter)(nil)
	_ milterrt.Decider     = (*Milter)(nil)
	_ milterrt.MessageUser = (*Milter)(nil)
	_ io.Closer            = (*Milter)(nil)
)

// New builds the policy milter from the process environment: the process's
// DNS resolver (a dns section that cannot work stops the start here), the
// rules, the milters.policy options and dns.message_budget.
func New(env *service.Env) (milterrt.Milter, error) {
	dns, err := env.DNS()
	if err != nil {
		return nil, fmt.Errorf("policy: DNS: %w", err)
	}
	cfg := env.Config
	if cfg == nil {
		return nil, errors.New("policy: no config")
	}
	budget := cfg.DNS.MessageBudget
	if budget <= 0 {
		budget = config.DefaultDNSMessageBudget
	}
	return NewMilter(Options{
		Rules: env.Rules, DNS: dns, Settings: ConfigFrom(cfg), MessageBudget: budget,
		Clock: env.Clock, Log: env.Log, Registerer: env.Registry, Store: env.Store,
	})
}

// Options are the parts of a policy milter (tests build one directly).
type Options struct {
	Rules         service.RulesView
	DNS           resolver.Resolver
	Settings      *Settings
	MessageBudget time.Duration
	Clock         func() time.Time // DKIM signature time, greylist delays; nil: time.Now
	Log           zerolog.Logger
	Registerer    prometheus.Registerer
	// Store keeps the greylist triplets; nil: one in process memory.
	Store state.Backend
}

// NewMilter builds the milter from its parts.
func NewMilter(o Options) (*Milter, error) {
	if o.Rules == nil {
		return nil, errors.New("policy: Options.Rules is required")
	}
	if o.DNS == nil {
		return nil, errors.New("policy: Options.DNS is required")
	}
	if o.Settings == nil {
		return nil, errors.New("policy: Options.Settings is required")
	}
	if o.MessageBudget <= 0 {
		o.MessageBudget = config.DefaultDNSMessageBudget
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	empty, err := rules.Compile(&rules.Set{})
	if err != nil {
		return nil, fmt.Errorf("policy: compile empty rule set: %w", err)
	}
	m := &Milter{
		rules: o.Rules, empty: empty, dns: o.DNS, settings: o.Settings, budget: o.MessageBudget,
		clock: o.Clock, log: o.Log, keys: newKeyring(o.Log),
	}
	if m.met, err = newMetrics(o.Registerer); err != nil {
		return nil, err
	}
	if err := m.part2(o); err != nil {
		return nil, err
	}
	return m, nil
}

// parseReply keeps a configured reply, parsed; an empty or invalid one
// (check-config refuses those) leaves the default.
func (m *Milter) parseReply(text string) {
	if strings.TrimSpace(text) == "" {
		return
	}
	if rp, err := rules.ParseReply(text); err == nil {
		m.replies[text] = rp
	}
}

// part2 builds the lists, the greylister, the scanners and the built-in
// content rules from the settings.
func (m *Milter) part2(o Options) error {
	st := o.Settings
	m.ipLists = append(append([]dnsbl.List(nil), st.DNSBL...), st.DNSWL...)
	m.lists = newListIndex(st)
	m.replies = map[string]rules.Reply{}
	for _, l := range st.DNSBL {
		if l.Action == string(rules.ActionReject) || l.Action == string(rules.ActionTempfail) {
			m.listRefusals = true
		}
		m.parseReply(l.Reply)
	}
	m.parseReply(st.Greylist.Reply)
	store := o.Store
	if store == nil {
		store = state.NewMemStore(o.Clock)
	}
	var err error
	gs := st.Greylist
	if gs == (greylist.Settings{}) { // Settings built in code without greylisting
		gs = greylist.DefaultSettings()
	}
	if m.grey, err = greylist.New(store, gs, o.Clock, o.Log, o.Registerer); err != nil {
		return fmt.Errorf("policy: greylist: %w", err)
	}
	if len(st.Scanners) > 0 {
		if m.scanners, err = scanner.NewSet(st.Scanners, o.Log, o.Registerer); err != nil {
			return fmt.Errorf("policy: scanners: %w", err)
		}
	}
	if st.Scoring.DefaultRules {
		m.builtin = builtinRules
	}
	return nil
}

// Close implements io.Closer: the scanners' connections and probes stop.
func (m *Milter) Close() error {
	if m.scanners != nil {
		return m.scanners.Close()
	}
	return nil
}

// Name implements milterrt.Milter.
func (*Milter) Name() string { return Name }

// Stages implements milterrt.Milter: the envelope (client, SASL login,
// sender for SPF, recipients for the tenants), and the content for DKIM,
// DMARC's From and the Authentication-Results fields.
func (*Milter) Stages() milterrt.Stages {
	return milterrt.StageConnect | milterrt.StageHelo | milterrt.StageMail | milterrt.StageRcpt |
		milterrt.StageHeaders | milterrt.StageEOH | milterrt.StageBody | milterrt.StageEOM
}

// UsesMessage implements milterrt.MessageUser: signing reads the whole
// message at end of message (the runtime keeps it in memory up to
// message_memory, in a file beyond).
func (*Milter) UsesMessage() bool { return true }

// Modifications implements milterrt.Milter: the A-R and DKIM-Signature
// fields are inserted, forged A-R fields removed, the quarantine action
// holds.
func (*Milter) Modifications() milterrt.Modifications {
	return milterrt.MayAddHeader | milterrt.MayChangeHeader | milterrt.MayQuarantine
}

// DecidesAt implements milterrt.Decider. Most is decided at end of
// message (DMARC and the content need the whole message), where Postfix
// always waits; RCPT waits for a reply only while something can refuse a
// recipient there: a rule on its tenant's SPF result, greylisting, or a
// DNSBL list with a direct reject or tempfail. SPF and the IP lists run at
// MAIL, which Postfix does not wait for: their look-ups overlap the
// client's RCPT.
func (m *Milter) DecidesAt() milterrt.Stages {
	p := m.planFor(m.snapshot())
	if p.spfRefusals || p.greylistRules || m.settings.Greylist.Enabled || m.listRefusals {
		return milterrt.StageRcpt
	}
	return 0
}

// NewSession implements milterrt.Milter.
func (m *Milter) NewSession(*milterrt.State) milterrt.Session { return &session{m: m} }

func (m *Milter) snapshot() *rules.Snapshot {
	if s := m.rules.Current(); s != nil {
		return s
	}
	return m.empty
}

// plan is what the milter knows of one rules snapshot.
type plan struct {
	snap *rules.Snapshot
	// spfRefusals: a policy rule on spf alone rejects or tempfails, so
	// RCPT must wait for the reply.
	spfRefusals bool
	// spfRules, dmarcRules: some rule has that condition.
	spfRules, dmarcRules bool
	// greylistRules: some rule greylists.
	greylistRules bool
}

func (m *Milter) planFor(snap *rules.Snapshot) *plan {
	if p := m.plan.Load(); p != nil && p.snap == snap {
		return p
	}
	p := &plan{snap: snap}
	if snap.Len() > 0 {
		for _, r := range snap.Set().Rules {
			if r.Milter != Name || !r.Enabled {
				continue
			}
			if r.Action == rules.ActionGreylist {
				p.greylistRules = true
			}
			if len(r.Match.DMARC) > 0 {
				p.dmarcRules = true
			} else if len(r.Match.SPF) > 0 {
				p.spfRules = true
				if r.Action == rules.ActionReject || r.Action == rules.ActionTempfail {
					p.spfRefusals = true
				}
			}
		}
	}
	m.plan.Store(p)
	return p
}

// metrics are the policy milter's own counters.
type metrics struct {
	degraded   prometheus.Counter
	arRemoved  prometheus.Counter
	signatures *prometheus.CounterVec
	results    *prometheus.CounterVec

	listHits     *prometheus.CounterVec
	listFailures *prometheus.CounterVec
	greyExempt   prometheus.Counter
	mimeProblems *prometheus.CounterVec
	spamActions  *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (metrics, error) {
	m := metrics{
		degraded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "geomilter_policy_dns_degraded_total",
			Help: "Messages whose DNS look-ups ran out of the message budget or failed temporarily (trail: degraded dns).",
		}),
		arRemoved: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "geomilter_policy_authres_removed_total",
			Help: "Incoming Authentication-Results fields removed because they claimed our authserv-id (RFC 8601 §5).",
		}),
		signatures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "geomilter_policy_dkim_signatures_total",
			Help: "Outbound messages signed (outcome signed) or left unsigned although a signing entry covers their From domain (outcome error).",
		}, []string{"outcome"}),
		results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "geomilter_policy_results_total",
			Help: "Check results of inbound messages: check is spf, dkim (one per signature) or dmarc; result an RFC 8601 keyword.",
		}, []string{"check", "result"}),
		listHits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "geomilter_policy_list_hits_total",
			Help: "Messages a list listed: kind dnsbl or dnswl (the client IP), uribl (a domain of a URL); zone the list.",
		}, []string{"kind", "zone"}),
		listFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "geomilter_policy_list_failures_total",
			Help: "List look-ups that got no answer (timeout, SERVFAIL, the message's DNS budget spent), by list.",
		}, []string{"zone"}),
		greyExempt: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "geomilter_policy_greylist_exempt_total",
			Help: "Recipients greylisting would have applied to but for an exemption (a DNSWL hit, an allow rule).",
		}),
		mimeProblems: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "geomilter_policy_mime_problems_total",
			Help: "Messages with malformed MIME or a walk limit reached, by kind (depth, parts, bytes, boundary, encoding, charset, header, zip).",
		}, []string{"kind"}),
		spamActions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "geomilter_policy_spam_actions_total",
			Help: "Inbound messages by the outcome of their score and content rules: none, tag, quarantine, reject, tempfail, discard, allow.",
		}, []string{"action"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.degraded, m.arRemoved, m.signatures, m.results,
		m.listHits, m.listFailures, m.greyExempt, m.mimeProblems, m.spamActions} {
		if err := reg.Register(c); err != nil {
			return metrics{}, fmt.Errorf("policy: register metrics: %w", err)
		}
	}
	return m, nil
}
