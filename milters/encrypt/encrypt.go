// Package encrypt is the encryption milter: at end of message it decides
// whether a message must leave encrypted (or over TLS only), and makes it so
// (docs/encrypt.md).
//
// Triggers, for outbound mail (a tenant's relay network or SASL login) by
// default: a subject tag (milters.encrypt.subject_tags, removed from the
// Subject), an encrypt rule (any match key: header, subject, sender or
// recipient domain, …) and an encrypt rule on content detectors
// (match.detect: card numbers, IBANs, configured patterns; package detect,
// fed by one streaming MIME walk, shared/mimewalk). Inbound mail is left
// alone unless a rule says direction: inbound. A skip rule is an exception:
// the first rule that matches a recipient, in the rules' precedence order,
// decides for that recipient.
//
// Actions, per message (Postfix routes a message, not a recipient): route
// (the X-Geomilter-Encrypt marker, which postfix/milter_header_checks turns
// into a FILTER to the encryption gateway), inline encryption (S/MIME or
// PGP/MIME, package inline) when every recipient has a key, reject (550
// 5.7.1) when neither is possible, and require_tls (the X-Geomilter-TLS
// marker, a FILTER to a transport that delivers only over TLS). A message
// that must be encrypted is never delivered in clear by this milter.
package encrypt

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/milters/encrypt/detect"
	"github.com/geomilter/geomilter/milters/encrypt/inline"
	"github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/mimewalk"
	"github.com/geomilter/geomilter/shared/rules"
	"github.com/geomilter/geomilter/shared/service"
	"github.com/geomilter/geomilter/shared/trail"
	"github.com/geomilter/geomilter/shared/verdict"
)

// Name is the milter's name in config (milters.encrypt) and in trail events.
const Name = "encrypt"

// Marker header fields. postfix/milter_header_checks routes on them (it
// applies only to fields a milter adds, so a client cannot set them), and
// the transports strip them before the message leaves (master.cf.snippet).
const (
	MarkerEncrypt = "X-Geomilter-Encrypt"
	MarkerTLS     = "X-Geomilter-TLS"
)

// Transports the markers lead to (postfix/master.cf.snippet).
const (
	TransportEncrypt = "encrypt"
	TransportTLS     = "smtp-tls"
)

// Actions, as trail events and metrics name them.
const (
	ActionNone       = "none"
	ActionRoute      = "route"
	ActionRequireTLS = "require_tls"
	ActionInline     = "inline"
	ActionReject     = "reject"
)

// Trigger kinds.
const (
	KindSubjectTag = "subject_tag"
	KindRule       = "rule"
	KindDetector   = "detector"
)

// Milter is the encrypt milter.
type Milter struct {
	rules      service.RulesView
	clock      func() time.Time
	log        zerolog.Logger
	settings   *Settings
	tags       tagMatcher
	det        *detect.Detector // nil: no detector configured
	detNames   []string         // every detector a rule may name here
	keys       *inline.KeyStore // nil: inline encryption off
	messageDir string
	met        *counters
}

var (
	_ milterrt.Milter      = (*Milter)(nil)
	_ milterrt.Decider     = (*Milter)(nil)
	_ milterrt.MessageUser = (*Milter)(nil)
)

// New builds the encrypt milter from the process environment: it compiles
// the detectors and, with inline encryption on, opens the key store (bad
// key files are logged and skipped; a missing directory is an error).
func New(env *service.Env) (milterrt.Milter, error) {
	cfg := env.Config
	o := ConfigFrom(cfg)
	reg := env.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m := &Milter{
		rules: env.Rules, clock: env.Clock, log: env.Log, settings: o,
		tags: newTagMatcher(o.SubjectTags), detNames: o.Detect.Names(),
		messageDir: os.TempDir(), met: newCounters(reg),
	}
	if mc := cfg.Milters.Encrypt; mc != nil && mc.MessageDir != "" {
		m.messageDir = mc.MessageDir
	}
	if len(m.detNames) > 0 {
		d, err := detect.New(o.Detect.DetectConfig())
		if err != nil {
			return nil, fmt.Errorf("milters.encrypt.detect: %w", err)
		}
		m.det = d
	}
	if o.Inline.Method != "" {
		ks, err := inline.OpenKeyStore(o.Inline.KeysDir)
		if err != nil {
			return nil, fmt.Errorf("milters.encrypt.inline.keys_dir: %w", err)
		}
		for _, p := range ks.Problems() {
			env.Log.Warn().Err(p).Msg("inline key store: file skipped")
		}
		m.keys = ks
	}
	return m, nil
}

// Name implements milterrt.Milter.
func (*Milter) Name() string { return Name }

// Stages implements milterrt.Milter: the envelope gives the direction and
// recipients; the message comes through MessageUser.
func (*Milter) Stages() milterrt.Stages {
	return milterrt.StageConnect | milterrt.StageHelo | milterrt.StageMail | milterrt.StageRcpt | milterrt.StageEOM
}

// Modifications implements milterrt.Milter: markers are added, the Subject
// and (inline) the Content-* fields changed, the body replaced.
func (*Milter) Modifications() milterrt.Modifications {
	return milterrt.MayAddHeader | milterrt.MayChangeHeader | milterrt.MayChangeBody
}

// DecidesAt implements milterrt.Decider: the encryption route is chosen from
// the whole message, at end of message, so Postfix never waits at the
// envelope.
func (*Milter) DecidesAt() milterrt.Stages { return milterrt.StageEOM }

// UsesMessage implements milterrt.MessageUser: the detectors and inline
// encryption read the whole message.
func (*Milter) UsesMessage() bool { return true }

// NewSession implements milterrt.Milter.
func (m *Milter) NewSession(*milterrt.State) milterrt.Session { return &session{m: m} }

type session struct {
	milterrt.BaseSession
	m *Milter
}

// rcptPlan is what the rules say for one recipient.
type rcptPlan struct {
	rcpt    string
	rule    *rules.Rule // the deciding rule, nil when none matched
	encrypt bool
	tls     bool
}

// plan is what the triggers say about one message.
type plan struct {
	outbound bool
	tenant   string
	rcpts    []rcptPlan
	tagEdit  subjectEdit
	tagIndex int // the Subject field the tags are in (1-based per name)
	findings *detect.Findings
	scanErr  error
}

func (p *plan) needEncrypt() bool {
	return slices.ContainsFunc(p.rcpts, func(r rcptPlan) bool { return r.encrypt })
}

func (p *plan) needTLS() bool {
	return slices.ContainsFunc(p.rcpts, func(r rcptPlan) bool { return r.tls })
}

// EndOfMessage evaluates the triggers and applies the action.
func (s *session) EndOfMessage(st *milterrt.State, mod milterrt.Modifier) milterrt.Decision {
	m := s.m
	sec := &trail.EncryptSection{Trigger: ActionNone, Action: ActionNone}
	st.Section = sec
	pl := m.plan(st)
	sec.Tenant = pl.tenant
	sec.Direction = rules.Inbound.String()
	if pl.outbound {
		sec.Direction = rules.Outbound.String()
	}
	m.record(st, sec, &pl)

	action, d := ActionNone, milterrt.Continue()
	var inl *inlineResult
	switch {
	case pl.needEncrypt():
		action, d, inl = s.encrypt(st, sec, &pl)
	case pl.needTLS():
		action = ActionRequireTLS
		sec.Route = TransportTLS
	}
	defer inl.close()
	sec.Action = action
	m.met.actions.WithLabelValues(action).Inc()
	if action != ActionReject {
		d = s.edit(st, mod, sec, &pl, action, inl)
	}
	if action != ActionNone {
		st.AddReason("encrypt: " + action)
	}
	ev := m.log.Info()
	if action == ActionNone {
		ev = m.log.Debug()
	}
	ev.Str("queue_id", st.QueueID()).Str("txn", st.TxnID).Str("action", action).Str("trigger", sec.Trigger).
		Int("triggers", len(sec.Triggers)).Int("rcpts", len(sec.Rcpts)).Str("direction", sec.Direction).
		Str("fallback", sec.Fallback).Msg("encrypt decision")
	return d
}

// plan evaluates the triggers for every accepted recipient.
//
// The deciding rule of a recipient is the first of its matching encrypt
// rules in precedence order (docs/rules.md), leaving out, for inbound mail,
// rules that do not say direction: inbound. The detectors are run only
// when they can change a deciding rule: the rules are first matched as if
// every configured detector had fired, and only when a recipient's deciding
// rule then has a detect condition is the message scanned and the rules
// matched again with what was found. (A detect condition can only fail
// where it held, so a deciding rule without one stays the same.)
func (m *Milter) plan(st *milterrt.State) plan {
	snap := m.rules.Current()
	pl := plan{}
	if t := verdict.RelayTenant(snap, st); t != nil {
		pl.outbound, pl.tenant = true, t.ID
	}
	if pl.outbound {
		pl.tagEdit, pl.tagIndex = m.findTags(st)
	}
	rcpts := st.AcceptedRcpts()
	// The facts but the recipient are the same for every recipient.
	base := verdict.Facts(st, "")
	base.Direction = rules.Inbound
	if pl.outbound {
		base.Direction = rules.Outbound
	}
	decide := func(detected []string) (needDetect bool) {
		pl.rcpts = pl.rcpts[:0]
		for _, rcpt := range rcpts {
			rp := rcptPlan{rcpt: rcpt}
			f := base
			f.Rcpt = rcpt
			f.Detected = detected
			for _, r := range snap.Match(Name, f) {
				if !pl.outbound && r.Match.Direction != rules.Inbound {
					continue // inbound mail: only rules that ask for it
				}
				rp.rule = r
				break
			}
			switch {
			case rp.rule == nil:
				rp.encrypt = pl.tagEdit.found > 0
			case rp.rule.Action == rules.ActionEncrypt:
				rp.encrypt = true
			case rp.rule.Action == rules.ActionRequireTLS:
				rp.tls = true
				rp.encrypt = pl.tagEdit.found > 0
			}
			if rp.rule != nil && len(rp.rule.Match.Detect) > 0 {
				needDetect = true
			}
			pl.rcpts = append(pl.rcpts, rp)
		}
		return needDetect
	}
	if !decide(m.detNames) || m.det == nil {
		return pl
	}
	f, err := m.scan(st)
	if err != nil {
		pl.scanErr = err
		// A message the detectors could not read is treated as if every
		// detector had fired: the safe side is the encryption path.
		st.MarkDegraded("encrypt: detectors could not read the message")
		return pl
	}
	var fired []string
	for _, h := range f.Hits {
		fired = append(fired, detectorName(h.Detector))
	}
	if fired == nil {
		fired = []string{} // detectors ran, nothing fired
	}
	pl.findings = &f
	decide(fired)
	return pl
}

// detectorName is the name rules use for a detect.Hit's detector.
func detectorName(d string) string { return strings.TrimPrefix(d, "pattern:") }

// scan runs the detectors over the message.
func (m *Milter) scan(st *milterrt.State) (detect.Findings, error) {
	if st.Message == nil {
		return detect.Findings{}, fmt.Errorf("no message in this transaction")
	}
	f, res, err := scan(m.det, st.Message.Reader(), mimewalk.Limits{})
	if err != nil {
		m.log.Warn().Err(err).Str("txn", st.TxnID).Msg("encrypt: reading the message for the detectors")
		return f, err
	}
	if res.Truncated {
		st.MarkDegraded("encrypt: detectors read only the first " + fmt.Sprint(res.DecodedBytes) + " decoded bytes")
	}
	if f.Fired() {
		m.met.scans.WithLabelValues("fired").Inc()
	} else {
		m.met.scans.WithLabelValues("clean").Inc()
	}
	return f, nil
}

// findTags looks for subject tags in the first Subject field.
func (m *Milter) findTags(st *milterrt.State) (subjectEdit, int) {
	for _, h := range st.Headers {
		if strings.EqualFold(h.Name, "Subject") {
			return m.tags.strip(h.Value), 1
		}
	}
	return subjectEdit{}, 0
}

// record fills the trail section with the triggers and rules, and counts
// the triggers.
func (m *Milter) record(st *milterrt.State, sec *trail.EncryptSection, pl *plan) {
	seen := map[string]bool{}
	anyEncrypt := false
	for _, rp := range pl.rcpts {
		if rp.encrypt || rp.tls {
			sec.Rcpts = append(sec.Rcpts, rp.rcpt)
		}
		anyEncrypt = anyEncrypt || rp.encrypt
		r := rp.rule
		if r == nil {
			continue
		}
		st.AddRuleID(r.ID)
		sec.Rules = append(sec.Rules, verdict.Hit(r, "eom", rp.rcpt))
		if r.Action == rules.ActionSkip || seen[r.ID] {
			continue
		}
		seen[r.ID] = true
		if len(r.Match.Detect) == 0 || pl.findings == nil {
			sec.Triggers = append(sec.Triggers, trail.EncryptTrigger{Kind: KindRule, RuleID: r.ID})
			m.met.triggers.WithLabelValues(KindRule).Inc()
			continue
		}
		for _, h := range pl.findings.Hits {
			if name := detectorName(h.Detector); slices.Contains(r.Match.Detect, name) {
				sec.Triggers = append(sec.Triggers, trail.EncryptTrigger{Kind: KindDetector, RuleID: r.ID, Detector: name, Count: h.Count})
			}
		}
		m.met.triggers.WithLabelValues(KindDetector).Inc()
	}
	if pl.tagEdit.found > 0 {
		sec.TagsRemoved = pl.tagEdit.found
		if anyEncrypt {
			// The tag asked for it (alone or beside a rule); a tag that
			// every recipient's skip rule overrode triggers nothing.
			sec.Triggers = append([]trail.EncryptTrigger{{Kind: KindSubjectTag, Count: pl.tagEdit.found}}, sec.Triggers...)
			m.met.triggers.WithLabelValues(KindSubjectTag).Inc()
		}
	}
	for _, d := range m.unknownDetectors(pl) {
		m.met.unknownDetect.Inc()
		st.MarkDegraded("encrypt rule names detector " + d + ", not configured here")
	}
	if len(sec.Triggers) > 0 {
		sec.Trigger = sec.Triggers[0].Kind
	}
}

// unknownDetectors lists the detectors deciding rules name that this host
// does not configure.
func (m *Milter) unknownDetectors(pl *plan) []string {
	var out []string
	for _, rp := range pl.rcpts {
		if rp.rule == nil {
			continue
		}
		for _, d := range rp.rule.Match.Detect {
			if !slices.Contains(m.detNames, d) && !slices.Contains(out, d) {
				out = append(out, d)
			}
		}
	}
	return out
}

// markerValue says in the marker why the message is routed: the trigger
// kinds and rule ids (never content), for the gateway's and Postfix's logs.
func markerValue(sec *trail.EncryptSection) string {
	var parts []string
	for _, t := range sec.Triggers {
		v := t.Kind
		switch {
		case t.Detector != "":
			v += "=" + t.Detector
		case t.RuleID != "":
			v += "=" + t.RuleID
		}
		if !slices.Contains(parts, v) {
			parts = append(parts, v)
		}
		if len(parts) == 5 {
			break
		}
	}
	if len(parts) == 0 {
		return "required"
	}
	return strings.Join(parts, ", ")
}
