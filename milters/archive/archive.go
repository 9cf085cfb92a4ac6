// Package archive is the archive milter: it journals every accepted message
// with its full envelope before Postfix accepts it, and delivers the journal
// to archives that may be dark (docs/archive.md).
//
// At end of message the milter writes one journal record — the envelope
// (client, HELO, SASL login, MAIL FROM, every accepted RCPT including Bcc
// recipients, queue id, site, host, time, direction, tenant) and the message
// byte for byte — to a local spool in durable mode: the record is fsynced
// (one fsync shared by concurrent sessions) before the milter answers. If
// it cannot be written the answer is a temporary failure, so Postfix never
// accepts a message without its record. In the background one drainer per
// target (an SMTP journal mailbox, a directory, an HTTP endpoint) ships the
// records through its own cursor, so a dark archive holds back only itself.
package archive

import (
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/milters/archive/journal"
	"github.com/geomilter/geomilter/shared/config"
	"github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/rules"
	"github.com/geomilter/geomilter/shared/service"
	"github.com/geomilter/geomilter/shared/spool"
	"github.com/geomilter/geomilter/shared/trail"
	"github.com/geomilter/geomilter/shared/verdict"
)

// Name is the milter's name in config (milters.archive) and in trail events.
const Name = "archive"

// Milter is the archive milter.
type Milter struct {
	rules   service.RulesView
	clock   func() time.Time
	log     zerolog.Logger
	site    string
	host    string
	maxSize int64
	pipe    *pipeline
	met     *counters
}

var (
	_ milterrt.Milter      = (*Milter)(nil)
	_ milterrt.Decider     = (*Milter)(nil)
	_ milterrt.MessageUser = (*Milter)(nil)
)

// New builds the archive milter from the process environment: it opens the
// journal spool (recovering what a crash left) and starts one drainer per
// target.
func New(env *service.Env) (milterrt.Milter, error) {
	cfg := env.Config
	o := ConfigFrom(cfg)
	reg := env.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m := &Milter{
		rules: env.Rules, clock: env.Clock, log: env.Log,
		site: cfg.Site, host: cfg.Host, maxSize: int64(o.Journal.MaxMessageSize),
		met: newCounters(reg),
	}
	p, err := openPipeline(cfg, &o.Journal, env.Log, reg, env.Clock)
	if err != nil {
		return nil, err
	}
	m.pipe = p
	env.Handle("/archive/status", p.statusHandler())
	env.Handle("/archive/replay", p.replayHandler())
	env.AddCheck(p.check())
	return m, nil
}

// Close stops the drainers (after a bounded attempt to deliver what is
// pending) and closes the journal spool. What is not delivered stays on
// disk for the next start.
func (m *Milter) Close() error { return m.pipe.close(flushTimeout) }

// Name implements milterrt.Milter.
func (*Milter) Name() string { return Name }

// Stages implements milterrt.Milter: the envelope stages fill State (the
// journal's envelope); the message comes through MessageUser.
func (*Milter) Stages() milterrt.Stages {
	return milterrt.StageConnect | milterrt.StageHelo | milterrt.StageMail | milterrt.StageRcpt | milterrt.StageEOM
}

// Modifications implements milterrt.Milter: the journal never changes the
// message.
func (*Milter) Modifications() milterrt.Modifications { return 0 }

// DecidesAt implements milterrt.Decider: the only decision (tempfail when
// the journal cannot be written) comes at end of message, so Postfix never
// waits for a reply at the envelope.
func (*Milter) DecidesAt() milterrt.Stages { return milterrt.StageEOM }

// UsesMessage implements milterrt.MessageUser: the journal holds the
// message byte for byte.
func (*Milter) UsesMessage() bool { return true }

// NewSession implements milterrt.Milter.
func (m *Milter) NewSession(*milterrt.State) milterrt.Session { return &session{m: m} }

type session struct {
	milterrt.BaseSession
	m *Milter
}

// Replies. 4.3.x: mail system status (RFC 3463 §3.4); the client retries
// and nothing is accepted without its record.
var (
	replyWriteFailed = [3]string{"451", "4.3.0", "Message could not be archived, try again later"}
	replyFull        = [3]string{"452", "4.3.1", "Archive journal full, try again later"}
	replyTooLarge    = [3]string{"452", "4.3.4", "Message too large to archive"}
)

func tempfail(r [3]string, reason string) milterrt.Decision {
	return milterrt.TempFail(r[0], r[1], r[2]).WithReason(reason)
}

// EndOfMessage journals the message, or answers tempfail.
func (s *session) EndOfMessage(st *milterrt.State, _ milterrt.Modifier) milterrt.Decision {
	m := s.m
	sec := &trail.ArchiveSection{}
	st.Section = sec
	pl := m.plan(st, sec)
	if !pl.journal {
		m.met.messages.WithLabelValues("skipped").Inc()
		sec.Reason = pl.why
		st.AddReason("archive: not journaled: " + pl.why)
		return milterrt.Continue()
	}
	msg := st.Message
	if msg == nil { // the runtime always gives one to a MessageUser
		return s.failed(st, sec, replyWriteFailed, "no message", errors.New("no message in this transaction"))
	}
	size := msg.Size()
	if size > m.maxSize {
		return s.failed(st, sec, replyTooLarge, "too_large", errors.New("message larger than journal.max_message_size"))
	}
	now := m.clock()
	h := &journal.Header{
		Version: journal.Version, ID: journal.NewID(m.site, now), Site: m.site, Host: m.host, Time: now,
		Direction: pl.direction, Tenant: pl.tenant, Targets: pl.targets, RuleIDs: pl.ruleIDs,
		Size: size, MessageID: headerValue(st, "Message-ID"), Envelope: st.Envelope(),
	}
	r, n, err := journal.Encode(h, msg.Reader())
	if err != nil {
		return s.failed(st, sec, replyWriteFailed, "encode", err)
	}
	start := time.Now()
	err = m.pipe.spool.AppendFrom(r, n)
	m.met.appendSeconds.Observe(time.Since(start).Seconds())
	switch {
	case errors.Is(err, spool.ErrFull):
		return s.failed(st, sec, replyFull, "full", err)
	case errors.Is(err, spool.ErrTooLarge):
		return s.failed(st, sec, replyFull, "too_large", err)
	case err != nil:
		return s.failed(st, sec, replyWriteFailed, "write", err)
	}
	m.met.messages.WithLabelValues("journaled").Inc()
	m.met.bytes.Add(float64(size))
	sec.Journaled, sec.RecordID, sec.Bytes = true, h.ID, size
	for _, t := range m.pipe.targetNames() {
		if h.WantsTarget(t) {
			sec.Targets = append(sec.Targets, trail.ArchiveTarget{Name: t, Status: "spooled"})
		}
	}
	return milterrt.Continue()
}

// failed answers tempfail: a message is never accepted without its record.
func (s *session) failed(st *milterrt.State, sec *trail.ArchiveSection, reply [3]string, why string, err error) milterrt.Decision {
	s.m.met.messages.WithLabelValues("failed").Inc()
	s.m.met.failures.WithLabelValues(why).Inc()
	sec.Reason = why + ": " + err.Error()
	s.m.log.Error().Err(err).Str("reason", why).Str("queue_id", st.QueueID()).Str("txn", st.TxnID).
		Int64("size", sizeOf(st)).Msg("journal record not written: message answered with a temporary failure")
	return tempfail(reply, "archive: "+why)
}

func sizeOf(st *milterrt.State) int64 {
	if st.Message == nil {
		return 0
	}
	return st.Message.Size()
}

// plan is what the rules say about one message.
type plan struct {
	journal           bool
	why               string   // when not journaled
	targets           []string // nil: every target
	ruleIDs           []string
	direction, tenant string
}

// plan evaluates the archive rules for each accepted recipient. The
// message is journaled (with its whole envelope) when any recipient's
// first matching rule says archive, or has no rule: journaling is the
// default and skip the exception. The targets are the union of those the
// archive rules name; a rule without targets, or a recipient without a
// rule, means every target.
func (m *Milter) plan(st *milterrt.State, sec *trail.ArchiveSection) plan {
	snap := m.rules.Current()
	pl := plan{}
	if t := verdict.RelayTenant(snap, st); t != nil {
		pl.direction, pl.tenant = rules.Outbound.String(), t.ID
	} else {
		pl.direction = rules.Inbound.String()
	}
	all := false
	want := map[string]bool{}
	rcpts := st.AcceptedRcpts()
	for _, rcpt := range rcpts {
		if pl.tenant == "" {
			if t := snap.TenantOf(rules.DomainOf(rcpt)); t != nil {
				pl.tenant = t.ID
			}
		}
		matched := snap.Match(Name, verdict.Facts(st, rcpt))
		if len(matched) == 0 {
			all = true
			pl.journal = true
			continue
		}
		rule := matched[0] // the first in precedence order decides
		st.AddRuleID(rule.ID)
		if !slices.Contains(pl.ruleIDs, rule.ID) {
			pl.ruleIDs = append(pl.ruleIDs, rule.ID)
		}
		sec.Rules = append(sec.Rules, verdict.Hit(rule, "eom", rcpt))
		if rule.Action == rules.ActionSkip {
			continue
		}
		pl.journal = true
		known := 0
		for _, t := range rule.Targets {
			if m.pipe.hasTarget(t) {
				want[t] = true
				known++
			} else {
				m.met.unknownTargets.Inc()
				st.MarkDegraded("archive target " + t + " of rule " + rule.ID + " is not configured here")
			}
		}
		if known == 0 { // no targets named, or none configured here: never lose the record
			all = true
		}
	}
	switch {
	case len(rcpts) == 0:
		// Postfix does not send end of message without a recipient; a
		// message that gets here anyway is journaled rather than lost.
		pl.journal, all = true, true
	case !pl.journal:
		pl.why = "skip rule"
		return pl
	}
	if !all {
		for _, t := range m.pipe.targetNames() {
			if want[t] {
				pl.targets = append(pl.targets, t)
			}
		}
	}
	return pl
}

// headerValue is the first header field called name, unfolded.
func headerValue(st *milterrt.State, name string) string {
	for _, h := range st.Headers {
		if strings.EqualFold(h.Name, name) {
			return strings.TrimSpace(h.Value)
		}
	}
	return ""
}

// flushTimeout bounds the delivery attempt at stop; the rest stays in the
// journal for the next start.
const flushTimeout = 5 * time.Second

// JournalDirOf is where a config's archive milter keeps its journal spool
// (tests and ctl).
func JournalDirOf(cfg *config.Config) string {
	o := ConfigFrom(cfg)
	return o.Journal.JournalDir(cfg)
}
