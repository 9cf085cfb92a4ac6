package access

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/rules"
	"github.com/geomilter/geomilter/shared/state"
	"github.com/geomilter/geomilter/shared/trail"
	"github.com/geomilter/geomilter/shared/verdict"
)

// session is one milter connection (one Postfix SMTP session).
type session struct {
	milterrt.BaseSession
	m *Milter

	// Connection.
	ip    netip.Addr
	name  string // client name, lower case
	local bool   // local submission: trusted for relaying
	// connRule and heloRule are an allow or quarantine found final at
	// CONNECT or HELO: it precedes every rule that could still apply, so
	// no other rule is looked at for this connection (for heloRule: until
	// the next HELO). The relay check still runs per recipient.
	connRule, heloRule *rules.Rule

	// Transaction, set at MAIL.
	snap        *rules.Snapshot
	an          *analysis // nil while the snapshot's analysis is being built
	facts       rules.Facts
	dir         rules.Direction
	relayTenant *rules.Tenant
	relayOK     bool                   // the client may relay: a tenant's relay or a local submission
	txnRule     *rules.Rule            // allow or quarantine found final at MAIL
	rates       map[string]*rateResult // subject (rule id:value) -> its count, once per transaction
	counted     []string               // the subjects of rates, in the order counted
	noted       []string               // rule ids whose reason is already in the trail
}

func (s *session) Connect(st *milterrt.State) milterrt.Decision {
	s.ip = addrOf(st.ClientAddr)
	s.name = rules.NormDomain(st.ClientHost)
	s.local = isLocal(st)
	s.connRule, s.heloRule = nil, nil
	snap := s.m.snapshot()
	an := s.m.analysisFor(snap)
	if an == nil || an.afterConnect.blocksGlobal() {
		return milterrt.Continue()
	}
	f := rules.Facts{ClientIP: s.ip, ClientName: s.name}
	d, r := s.early(st, snap, &an.afterConnect, atConnect, rules.DirectionUnknown, f)
	s.connRule = r
	return d
}

func (s *session) Helo(st *milterrt.State) milterrt.Decision {
	// A new HELO name is judged afresh; a quarantine stays, as the runtime
	// keeps applying it to every message of the connection.
	if s.heloRule != nil && s.heloRule.Action == rules.ActionAllow {
		s.heloRule = nil
	}
	if s.connRule != nil || s.heloRule != nil {
		return milterrt.Continue()
	}
	snap := s.m.snapshot()
	an := s.m.analysisFor(snap)
	if an == nil || an.afterHelo.blocksGlobal() {
		return milterrt.Continue()
	}
	f := rules.Facts{ClientIP: s.ip, ClientName: s.name, Helo: st.Helo}
	d, r := s.early(st, snap, &an.afterHelo, atHelo, rules.DirectionUnknown, f)
	s.heloRule = r
	return d
}

func (s *session) MailFrom(st *milterrt.State) milterrt.Decision {
	s.snap = s.m.snapshot()
	s.an = s.m.analysisFor(s.snap)
	s.txnRule, s.rates, s.counted, s.noted = nil, nil, s.counted[:0], s.noted[:0]
	sasl := st.Macro("auth_authen")
	sender := st.Sender
	if sender == "" {
		sender = "<>" // rules.Facts: "" would mean "no MAIL FROM yet"
	}
	s.relayTenant = s.snap.TenantForRelay(s.ip, sasl)
	s.dir = rules.Inbound
	if s.relayTenant != nil {
		s.dir = rules.Outbound
	}
	s.relayOK = s.local || s.relayTenant != nil
	s.facts = rules.Facts{ClientIP: s.ip, ClientName: s.name, Helo: st.Helo, Sender: sender, SASLUser: sasl, Direction: s.dir}
	sec := s.section(st)
	sec.Direction = s.dir.String()
	if s.relayTenant != nil {
		sec.RelayTenant = s.relayTenant.ID
	}

	if r := s.settled(); r != nil {
		s.note(st, r, atMail, "", "connection "+actionPhrase(r))
		return milterrt.Continue()
	}
	if s.an == nil {
		return milterrt.Continue()
	}
	ix := &s.an.afterMail[dirIndex(s.dir)]
	if s.dir == rules.Inbound && ix.blocksGlobal() {
		return milterrt.Continue()
	}
	d, r := s.early(st, s.snap, ix, atMail, s.dir, s.facts)
	s.txnRule = r
	return d
}

// settled returns the allow or quarantine rule that decides every
// recipient of the transaction, if one was found final before RCPT.
func (s *session) settled() *rules.Rule {
	switch {
	case s.connRule != nil:
		return s.connRule
	case s.heloRule != nil:
		return s.heloRule
	}
	return s.txnRule
}

// early evaluates, before RCPT, the rules whose facts are all known at
// stage at, in precedence order. It stops at the first rule that is not
// final — one that a rule of higher precedence evaluated later (in ix)
// may still override — and at relay rules, which are decided per
// recipient. It returns the decision for the stage, and the rule when
// that is an allow or a quarantine that settles the rest.
func (s *session) early(st *milterrt.State, snap *rules.Snapshot, ix *shadowIndex, at stage, dir rules.Direction, f rules.Facts) (milterrt.Decision, *rules.Rule) {
	first, shadowed := ix.first(s.ip, s.name)
	matched := snap.Match(Name, f)
	final := func(r *rules.Rule) bool {
		return stageFor(r, dir) <= at && (!shadowed || precOf(r).before(first))
	}
	// The rate rules the loop below reaches are those before the first rule
	// it stops at whatever the counts: count them all in one call.
	var batch []rateReq
	for _, r := range matched {
		if !final(r) || isRelayRule(r) || !r.IsRate() {
			break
		}
		batch = append(batch, rateReq{r, s.rateValue(r, "")})
	}
	s.countRates(st, batch)
	for _, r := range matched {
		if !final(r) {
			break // r and every rule after it may still be overridden
		}
		switch r.Action {
		case rules.ActionRelayPermit, rules.ActionRelayDeny:
			return milterrt.Continue(), nil // they decide per recipient
		}
		if r.IsRate() {
			exceeded, ok := s.rateExceeded(st, r, s.rateValue(r, ""))
			if !ok || !exceeded {
				continue
			}
		}
		switch r.Action {
		case rules.ActionAllow:
			if at == atMail { // connection-level allows are noted per transaction, at MAIL
				s.note(st, r, at, "", actionPhrase(r))
			}
			return milterrt.Continue(), r
		case rules.ActionQuarantine:
			return s.decision(st, r, at, ""), r
		}
		return s.decision(st, r, at, ""), nil
	}
	return milterrt.Continue(), nil
}

func (s *session) RcptTo(st *milterrt.State, rcpt *milterrt.Recipient) milterrt.Decision {
	if s.snap == nil {
		// No MAIL event (the runtime always negotiates it, so only a
		// misbehaving client gets here): evaluate as if it had come.
		if d := s.MailFrom(st); d.Action != milterrt.ActionContinue && d.Action != milterrt.ActionQuarantine {
			return d
		}
	}
	dom := rules.DomainOf(rcpt.Addr)
	// A recipient without a domain (RCPT TO:<postmaster>) is local to the
	// MTA; any other domain that no tenant owns is a relay destination.
	relay := dom != "" && s.snap.TenantOf(dom) == nil

	r := s.settled()
	if r == nil {
		f := s.facts
		f.Rcpt = rcpt.Addr
		r = s.rcptPass(st, f, relay, dom)
	}
	if r != nil {
		switch r.Action {
		case rules.ActionReject, rules.ActionTempfail, rules.ActionRelayDeny:
			return s.decision(st, r, atRcpt, rcpt.Addr)
		}
	}
	if relay && !s.relayOK && (r == nil || r.Action != rules.ActionRelayPermit) {
		s.m.met.relayRefused.Inc()
		st.AddRuleID(RelayRuleID)
		sec := s.section(st)
		sec.RelayRefused = append(sec.RelayRefused, trail.RelayRefusal{Rcpt: rcpt.Addr, Domain: dom})
		return milterrt.Reject("554", "5.7.1", "Relay access denied").WithRule(RelayRuleID).
			WithReason(fmt.Sprintf("relay to %s refused: the client is not a relay of any tenant and no relay_permit rule applies", dom))
	}
	if r == nil {
		return milterrt.Continue()
	}
	switch r.Action {
	case rules.ActionDiscard:
		return s.decision(st, r, atRcpt, rcpt.Addr)
	case rules.ActionQuarantine:
		if s.settled() != nil {
			return milterrt.Continue() // already held for the whole message
		}
		return s.decision(st, r, atRcpt, rcpt.Addr)
	}
	s.note(st, r, atRcpt, rcpt.Addr, actionPhrase(r)) // allow, relay_permit
	return milterrt.Continue()
}

// rcptPass evaluates every rule for one recipient, in precedence order,
// and returns the first decisive one (nil if none): an exceeded rate rule,
// a relay rule when the recipient is a relay destination, or any other.
func (s *session) rcptPass(st *milterrt.State, f rules.Facts, relay bool, dom string) *rules.Rule {
	matched := s.snap.Match(Name, f)
	// Count, in one call, the rate rules before the first rule that decides
	// whatever the counts (the loop below never goes past it).
	var batch []rateReq
	for _, r := range matched {
		if isRelayRule(r) && !relay {
			continue
		}
		if !r.IsRate() {
			break
		}
		batch = append(batch, rateReq{r, s.rateValue(r, dom)})
	}
	s.countRates(st, batch)
	for _, r := range matched {
		if isRelayRule(r) && !relay {
			continue // relay rules say nothing about mail for a tenant's own domains
		}
		if r.IsRate() {
			exceeded, ok := s.rateExceeded(st, r, s.rateValue(r, dom))
			if !ok || !exceeded {
				continue
			}
		}
		return r
	}
	return nil
}

// rateValue is what rate rule r counts by for this message ("" if the
// message has no such value: no client address, no SASL login, no tenant).
// dom is the recipient's domain at RCPT ("" before).
func (s *session) rateValue(r *rules.Rule, dom string) string {
	switch r.Rate.Key {
	case rules.RateClientIP:
		if s.ip.IsValid() {
			return s.ip.String()
		}
	case rules.RateSender:
		addr, _, null := rules.SplitAddr(s.facts.Sender)
		if null {
			return "<>"
		}
		return addr
	case rules.RateSASLUser:
		return rules.NormName(s.facts.SASLUser)
	case rules.RateTenant:
		if s.dir == rules.Outbound {
			return s.relayTenant.ID
		}
		if t := s.snap.TenantOf(dom); t != nil {
			return t.ID
		}
	}
	return ""
}

// isRelayRule reports the actions decided per relay destination.
func isRelayRule(r *rules.Rule) bool {
	return r.Action == rules.ActionRelayPermit || r.Action == rules.ActionRelayDeny
}

// rateReq is a rate rule to count for this message, by value ("" when the
// message has none: not counted).
type rateReq struct {
	r     *rules.Rule
	value string
}

// rateResult is the count of one subject for the transaction.
type rateResult struct {
	r        *rules.Rule
	value    string // what it counts by
	total    int64  // the window's total over all sites, this message included
	store    string // where it was counted: redis or memory
	err      error  // not counted (an invalid window; validation rules it out)
	reported bool   // its rule id (and the reason of a trip) is in the trail
}

func (res *rateResult) exceeded() bool { return res.err == nil && res.total > int64(res.r.Rate.Limit) }

// countRates counts the message once for each rate rule and value in reqs
// not yet counted in this transaction, all in one call to the counter (one
// Redis round trip per instance, however many rules).
func (s *session) countRates(st *milterrt.State, reqs []rateReq) {
	var incr []state.IncrReq
	var pending []*rateResult
	for _, q := range reqs {
		if q.value == "" {
			continue
		}
		subject := q.r.ID + ":" + q.value
		if _, done := s.rates[subject]; done {
			continue
		}
		if s.rates == nil {
			s.rates = make(map[string]*rateResult, 4)
		}
		res := &rateResult{r: q.r, value: q.value}
		s.rates[subject] = res
		s.counted = append(s.counted, subject)
		incr = append(incr, state.IncrReq{Subject: subject, Window: q.r.Rate.Per})
		pending = append(pending, res)
	}
	if len(incr) == 0 {
		return
	}
	counts, store, err := s.m.countMany(st, incr)
	for i, res := range pending {
		if err != nil {
			res.err = err
			continue
		}
		res.total, res.store = counts[i].Total, store
	}
}

// rateExceeded reports whether the message exceeds rate rule r for value:
// the fixed window's total over all sites is above Limit, so Limit
// messages pass and the next one trips. The message was counted once per
// transaction by countRates (later recipients reuse the result); a rule
// reached without that is counted here. ok is false when the message has
// no value to count by, or was not counted.
func (s *session) rateExceeded(st *milterrt.State, r *rules.Rule, value string) (exceeded, ok bool) {
	if value == "" {
		return false, false
	}
	subject := r.ID + ":" + value
	res := s.rates[subject]
	if res == nil {
		s.countRates(st, []rateReq{{r, value}})
		res = s.rates[subject]
	}
	if !res.reported {
		res.reported = true
		switch {
		case res.err != nil:
			// Only an invalid window gets here, which rule validation rules out:
			// let the message through rather than refuse mail on a bug.
			st.AddReason(fmt.Sprintf("rate rule %s not counted: %v", r.ID, res.err))
		case res.exceeded():
			// Rules counted along with this one that the evaluation will not
			// reach counted the message too; the deciding rule goes last.
			s.reportCounted(st)
			st.AddRuleID(r.ID)
			s.reportRate(st, res)
			s.m.met.exceeded.Inc()
			st.AddReason(fmt.Sprintf("rate rule %s: %s %s counted %d in the current %s window, limit %d",
				r.ID, r.Rate.Key, value, res.total, r.Rate.Per, r.Rate.Limit))
		default:
			st.AddRuleID(r.ID)
			s.reportRate(st, res)
		}
	}
	return res.exceeded(), res.err == nil
}

// reportCounted puts in the trail the rate rules that counted the message
// and are not there yet.
func (s *session) reportCounted(st *milterrt.State) {
	for _, subject := range s.counted {
		if res := s.rates[subject]; !res.reported && res.err == nil {
			res.reported = true
			st.AddRuleID(res.r.ID)
			s.reportRate(st, res)
		}
	}
}

// reportRate puts a counted rate rule's count into the trail section.
func (s *session) reportRate(st *milterrt.State, res *rateResult) {
	sec := s.section(st)
	sec.Rates = append(sec.Rates, trail.RateCount{
		RuleID: res.r.ID, Key: string(res.r.Rate.Key), Value: res.value,
		Count: res.total, Limit: res.r.Rate.Limit, WindowS: res.r.Rate.Per.Seconds(),
		Exceeded: res.exceeded(), Store: res.store,
	})
}

// section returns the transaction's trail section, made on first use (the
// runtime drops it when the transaction ends; the event keeps it).
func (s *session) section(st *milterrt.State) *trail.AccessSection {
	if sec, ok := st.Section.(*trail.AccessSection); ok {
		return sec
	}
	sec := &trail.AccessSection{}
	st.Section = sec
	return sec
}

// hit records in the trail section that rule r was applied at stage at
// (for recipient rcpt, at RCPT).
func (s *session) hit(st *milterrt.State, r *rules.Rule, at stage, rcpt string) {
	sec := s.section(st)
	sec.Rules = append(sec.Rules, verdict.Hit(r, at.String(), rcpt))
}

// decision turns a decisive restrictive rule into the runtime's decision
// (verdict.FromRule), naming the rule for the trail.
func (s *session) decision(st *milterrt.State, r *rules.Rule, at stage, rcpt string) milterrt.Decision {
	st.AddRuleID(r.ID)
	s.hit(st, r, at, rcpt)
	return verdict.FromRule(Name, r)
}

// note records a permissive decision (allow, relay_permit) for the trail,
// once per rule and transaction.
func (s *session) note(st *milterrt.State, r *rules.Rule, at stage, rcpt, what string) {
	for _, id := range s.noted {
		if id == r.ID {
			return
		}
	}
	s.noted = append(s.noted, r.ID)
	st.AddRuleID(r.ID)
	s.hit(st, r, at, rcpt)
	st.AddReason("access rule " + r.ID + " (" + r.Scope.String() + "): " + what)
}

func actionPhrase(r *rules.Rule) string {
	switch r.Action {
	case rules.ActionAllow:
		return "allow"
	case rules.ActionRelayPermit:
		return "relay_permit"
	case rules.ActionQuarantine:
		return "quarantine"
	}
	return string(r.Action)
}

func (s *session) Abort(*milterrt.State) { s.endTxn() }

func (s *session) EndOfMessage(*milterrt.State, milterrt.Modifier) milterrt.Decision {
	s.endTxn()
	return milterrt.Continue()
}

// endTxn drops the transaction's references (the snapshot may be replaced
// while the connection idles).
func (s *session) endTxn() {
	s.snap, s.an, s.txnRule, s.rates, s.relayTenant = nil, nil, nil, nil, nil
	s.counted = s.counted[:0]
}

// addrOf converts the runtime's client address (nil for local submissions).
func addrOf(ip net.IP) netip.Addr {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Addr{}
	}
	return a.Unmap()
}

// isLocal reports a local submission: no client address (Postfix's family
// unix), or the ersatz client Postfix's cleanup server gives non_smtpd_milters
// for mail from sendmail and pickup — localhost, 127.0.0.1, port 0
// (cleanup_milter.c, cleanup_milter_client_init). No TCP peer has port 0.
func isLocal(st *milterrt.State) bool {
	if st.ClientAddr == nil {
		return true
	}
	return st.ClientPort == 0 && st.ClientAddr.IsLoopback()
}
