package policy

import (
	"context"
	"net/mail"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/geomilter/geomilter/milters/policy/authres"
	"github.com/geomilter/geomilter/milters/policy/dkimcheck"
	"github.com/geomilter/geomilter/milters/policy/dmarc"
	"github.com/geomilter/geomilter/milters/policy/dnsbl"
	"github.com/geomilter/geomilter/milters/policy/spfcheck"
	"github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/resolver"
	"github.com/geomilter/geomilter/shared/rules"
	"github.com/geomilter/geomilter/shared/trail"
	"github.com/geomilter/geomilter/shared/verdict"
)

// Header fields the milter writes.
const (
	authResName = "Authentication-Results"
	// TagHeader is what the tag action writes: the checks it marks,
	// e.g. "X-Geomilter-Policy: spf=softfail dmarc=fail". Incoming ones are
	// removed, so a downstream filter can trust it.
	TagHeader = "X-Geomilter-Policy"
)

// session is one milter connection. Its transaction fields are reset at
// MAIL; the runtime calls it from one goroutine.
type session struct {
	milterrt.BaseSession
	m *Milter

	// Transaction.
	snap   *rules.Snapshot
	plan   *plan
	sec    *trail.PolicySection
	ctx    context.Context // carries the message's DNS budget
	cancel context.CancelFunc
	// inbound: verified; otherwise the client is local, authenticated or a
	// tenant's relay, and the message is signed instead.
	inbound     bool
	relayTenant *rules.Tenant
	spf         spfcheck.Result
	ver         *dkimcheck.Verifier
	// spfAction is the strictest non-refusing action (tag, quarantine)
	// rules chose at RCPT for the SPF result; applied at end of message.
	spfAction outcome
	// ipRes are the DNSBL and DNSWL answers for the client (from MAIL).
	ipRes dnsbl.Result
}

// outcome is what a result leads to: a rule's action, or the built-in
// default (rule nil).
type outcome struct {
	action rules.Action // "" = nothing decided (record)
	rule   *rules.Rule
	check  string // spf or dmarc
	result string
}

// strictness orders the actions: the strictest wins when recipients of
// several tenants disagree (docs/policy.md).
func strictness(a rules.Action) int {
	switch a {
	case rules.ActionReject:
		return 5
	case rules.ActionTempfail:
		return 4
	case rules.ActionQuarantine:
		return 3
	case rules.ActionTag:
		return 2
	case rules.ActionAllow:
		return 1
	}
	return 0
}

func stricter(a, b outcome) outcome {
	if strictness(b.action) > strictness(a.action) {
		return b
	}
	return a
}

func (s *session) MailFrom(st *milterrt.State) milterrt.Decision {
	s.end()
	s.snap = s.m.snapshot()
	s.plan = s.m.planFor(s.snap)
	s.sec = &trail.PolicySection{}
	st.Section = s.sec
	s.spf, s.spfAction, s.ctx, s.ipRes = spfcheck.Result{}, outcome{}, nil, dnsbl.Result{}
	sasl := st.Macro("auth_authen")
	var ip netip.Addr
	if a, ok := netip.AddrFromSlice(st.ClientAddr); ok {
		ip = a.Unmap()
	}
	s.relayTenant = s.snap.TenantForRelay(ip, sasl)
	// Outbound mail is signed, not verified: a local submission, an
	// authenticated client, or a tenant's relay network (as access judges
	// direction). SPF of our own relays would say nothing.
	s.inbound = !st.Local() && sasl == "" && s.relayTenant == nil
	if !s.inbound {
		s.sec.Direction = rules.Outbound.String()
		return milterrt.Continue()
	}
	s.sec.Direction = rules.Inbound.String()
	ctx, cancel := context.WithCancel(context.Background())
	s.ctx, s.cancel = resolver.WithBudget(ctx, s.m.budget), cancel
	lists := s.startLists(ip)
	// RFC 7208 §2.4: MAIL FROM, or postmaster@HELO for a null sender.
	s.spf = spfcheck.Check(s.ctx, s.m.dns, st.ClientAddr, st.Helo, st.Sender)
	lists()
	tr := s.spf.Trail()
	tr.DurationMS = ms(s.spf.Duration)
	s.sec.SPF = append(s.sec.SPF, tr)
	s.m.met.results.WithLabelValues("spf", s.spf.Result).Inc()
	st.AddReason("spf " + s.spf.Result + " for " + s.spf.Identity + " " + s.spf.Domain)
	s.ver = dkimcheck.NewVerifier(s.ctx, dkimcheck.VerifyOptions{
		LookupTXT: s.m.dns.LookupTXT, MaxSignatures: s.m.settings.DKIM.MaxSignatures,
	})
	return milterrt.Continue()
}

// RcptTo applies, per recipient: its rules on the SPF result (a refusal
// fails this recipient only; tag and quarantine wait for the end of the
// message), then the IP lists' direct refusals for its tenant, then
// greylisting.
func (s *session) RcptTo(st *milterrt.State, rcpt *milterrt.Recipient) milterrt.Decision {
	if !s.inbound || s.plan == nil {
		return milterrt.Continue()
	}
	if s.plan.spfRules && s.spf.Result != "" {
		if o := s.resultRule(st, rcpt.Addr, rules.Facts{SPF: s.spf.Result}, "spf", s.spf.Result); o.rule != nil {
			s.hit(st, o.rule, "rcpt", rcpt.Addr)
			switch o.action {
			case rules.ActionReject, rules.ActionTempfail:
				return s.refuse(o)
			}
			s.spfAction = stricter(s.spfAction, o)
		}
	}
	tenant := s.tenantOf(rcpt.Addr)
	if d, ok := s.listRefusal(st, tenant); ok {
		return d
	}
	if d, ok := s.greylistRcpt(st, rcpt.Addr, tenant); ok {
		return d
	}
	return milterrt.Continue()
}

// resultRule returns the first (most specific) policy rule on check
// results matching the recipient with the facts given.
func (s *session) resultRule(st *milterrt.State, rcpt string, f rules.Facts, check, result string) outcome {
	sender := st.Sender
	if sender == "" {
		sender = "<>"
	}
	var ip netip.Addr
	if a, ok := netip.AddrFromSlice(st.ClientAddr); ok {
		ip = a.Unmap()
	}
	f.ClientIP, f.ClientName, f.Helo, f.Sender, f.Rcpt = ip, st.ClientHost, st.Helo, sender, rcpt
	f.Direction = rules.Inbound
	for _, r := range s.snap.Match(Name, f) {
		if !r.Match.HasResults() {
			continue // other policy rules are not part 1's
		}
		if check == "spf" && len(r.Match.DMARC) > 0 {
			continue
		}
		return outcome{action: r.Action, rule: r, check: check, result: result}
	}
	return outcome{check: check, result: result}
}

func (s *session) hit(st *milterrt.State, r *rules.Rule, stage, rcpt string) {
	st.AddRuleID(r.ID)
	s.sec.Rules = append(s.sec.Rules, verdict.Hit(r, stage, rcpt))
}

// Default replies (the client sees only these short texts; the trail has
// the details). RFC 7372 §3.2 has the SPF codes; DMARC's reject is 5.7.1
// (RFC 7489 §6.7 leaves the text to the receiver).
var defaultReplies = map[string]map[rules.Action][3]string{
	"spf": {
		rules.ActionReject:   {"550", "5.7.23", "SPF validation failed"},
		rules.ActionTempfail: {"451", "4.7.24", "SPF validation error, try again later"},
	},
	"dmarc": {
		rules.ActionReject:   {"550", "5.7.1", "Rejected by the DMARC policy of the From domain"},
		rules.ActionTempfail: {"451", "4.7.1", "DMARC validation error, try again later"},
	},
	"spam": {
		rules.ActionReject:   {"550", "5.7.1", "Message rejected as spam"},
		rules.ActionTempfail: {"451", "4.7.1", "Message deferred by the spam policy, try again later"},
	},
	"content": {
		rules.ActionReject:   {"550", "5.7.1", "Message rejected by the content policy"},
		rules.ActionTempfail: {"451", "4.7.1", "Message deferred by the content policy, try again later"},
	},
}

// withReply gives a refusal a configured reply (a rule's, a list's,
// greylisting's): its code and enhanced code, and its text when it has one
// (else the check's default text stays).
func withReply(d milterrt.Decision, rp rules.Reply) milterrt.Decision {
	if rp.IsZero() {
		return d
	}
	d.Code, d.Enhanced = strconv.Itoa(rp.Code), rp.Enhanced
	if rp.Text != "" {
		d.Text = rp.Text
	}
	return d
}

// refuse is the reject or tempfail of an outcome, with the rule's reply
// when it has one.
func (s *session) refuse(o outcome) milterrt.Decision {
	def, ok := defaultReplies[o.check][o.action]
	if !ok { // a check without replies of its own
		def = defaultReplies["content"][o.action]
	}
	d := milterrt.Reject(def[0], def[1], def[2])
	if o.action == rules.ActionTempfail {
		d = milterrt.TempFail(def[0], def[1], def[2])
	}
	reason := o.check + "=" + o.result
	switch {
	case o.rule != nil:
		d = withReply(d, o.rule.Reply).WithRule(o.rule.ID)
		reason += ": policy rule " + o.rule.ID + " (" + o.rule.Scope.String() + "): " + string(o.action)
	case o.check == "dmarc":
		reason += ": the domain's published DMARC policy: " + string(o.action)
	default:
		reason += ": " + string(o.action)
	}
	return d.WithReason(reason)
}

func (s *session) Header(st *milterrt.State, h milterrt.HeaderField) milterrt.Decision {
	if s.ver != nil {
		s.ver.Header(h.Name, h.Raw)
	}
	return milterrt.Continue()
}

func (s *session) EndOfHeaders(*milterrt.State) milterrt.Decision {
	if s.ver != nil {
		s.ver.EndHeaders()
	}
	return milterrt.Continue()
}

func (s *session) BodyChunk(st *milterrt.State, chunk []byte) milterrt.Decision {
	if s.ver != nil {
		s.ver.Body(chunk)
	}
	return milterrt.Continue()
}

func (s *session) EndOfMessage(st *milterrt.State, mod milterrt.Modifier) milterrt.Decision {
	defer s.end()
	if s.sec == nil { // no MAIL negotiated: nothing known
		return milterrt.Continue()
	}
	if !s.inbound {
		s.sign(st, mod)
		return milterrt.Continue()
	}
	return s.verify(st, mod)
}

// verify finishes the checks of an inbound message, decides and writes
// the Authentication-Results field.
func (s *session) verify(st *milterrt.State, mod milterrt.Modifier) milterrt.Decision {
	ar := authres.Results{}
	spfDomain := s.spf.Domain
	if s.spf.Identity == spfcheck.IdentityHELO {
		ar = append(ar, authres.SPF(s.spf.Result, "", st.Helo))
	} else {
		ar = append(ar, authres.SPF(s.spf.Result, spfDomain, st.Helo))
	}

	// DKIM: the verifier has had the message as it came.
	sigs, _ := s.ver.Close()
	var dk []dmarc.DKIMResult
	for _, r := range sigs {
		ar = append(ar, authres.DKIM(r.Result, r.Domain, r.Selector, r.BPrefix))
		tr := trail.DKIMResult{Domain: r.Domain, Selector: r.Selector, Identifier: r.Identifier, Result: r.Result}
		if r.Err != nil {
			tr.Detail = r.Err.Error()
		}
		s.sec.DKIM = append(s.sec.DKIM, tr)
		dk = append(dk, dmarc.DKIMResult{Domain: r.Domain, Selector: r.Selector, Result: r.Result})
		s.m.met.results.WithLabelValues("dkim", r.Result).Inc()
		st.AddReason("dkim " + r.Result + " d=" + r.Domain + " s=" + r.Selector)
	}
	if len(sigs) == 0 {
		ar = append(ar, authres.Method{Name: "dkim", Result: "none"})
	}

	// DMARC with every From field (RFC 7489 §6.6.1).
	var from []string
	for _, h := range st.Headers {
		if strings.EqualFold(h.Name, "From") {
			from = append(from, h.Raw)
		}
	}
	dm := dmarc.Evaluate(s.ctx, s.m.dns, dmarc.Input{From: from, SPFResult: s.spf.Result, SPFDomain: spfDomain, DKIM: dk})
	s.m.met.results.WithLabelValues("dmarc", dm.Result).Inc()
	reason := "dmarc " + dm.Result + " for " + dm.Domain
	if dm.Policy != "" {
		reason += " (p=" + dm.Policy + ")"
	}
	if dm.Reason != "" && dm.Result != dmarc.Pass {
		reason += ": " + dm.Reason
	}
	st.AddReason(reason)

	// The action: per accepted recipient, its most specific rule on the
	// results, else the default (DMARC: the published policy); the
	// strictest over the recipients, and over what SPF rules asked at RCPT.
	chosen := s.spfAction
	var content rules.Facts
	if s.plan.dmarcRules {
		content = verdict.ContentFacts(st)
	}
	for _, rcpt := range st.AcceptedRcpts() {
		o := outcome{check: "dmarc", result: dm.Result}
		if s.plan.dmarcRules {
			f := content
			f.SPF, f.DMARC = s.spf.Result, dm.Result
			o = s.resultRule(st, rcpt, f, "dmarc", dm.Result)
		}
		if o.rule != nil {
			s.hit(st, o.rule, "eom", rcpt)
		} else if dm.Result == dmarc.Fail {
			// RFC 7489 §6.6.4, §6.7: the Domain Owner's disposition.
			switch dm.Disposition {
			case dmarc.DispositionReject:
				o.action = rules.ActionReject
			case dmarc.DispositionQuarantine:
				o.action = rules.ActionQuarantine
			}
		}
		chosen = stricter(chosen, o)
	}

	applied := dmarc.DispositionNone
	switch chosen.action {
	case rules.ActionReject:
		applied = dmarc.DispositionReject
	case rules.ActionQuarantine:
		applied = dmarc.DispositionQuarantine
	}
	dtr := dm.Trail()
	if chosen.check == "dmarc" {
		dtr.Disposition = applied
	} else {
		dtr.Disposition = dmarc.DispositionNone
	}
	dtr.DurationMS = ms(dm.Duration)
	s.sec.DMARC = &dtr
	comment := ""
	if dm.Policy != "" {
		comment = "p=" + dm.Policy + " dis=" + dtr.Disposition
	}
	ar = append(ar, authres.DMARC(dm.Result, comment, dm.Domain))

	// Part 2: lists, content, scanners, the score (spam.go).
	sv := s.spamVerdict(st, s.spf.Result, dm.Result)
	s.noteDNS(st, dm)
	final := stricter(chosen, sv.out)

	switch final.action {
	case rules.ActionReject, rules.ActionTempfail:
		return s.refuse(final)
	case rules.ActionDiscard:
		why := final.check + "=" + final.result
		st.AddReason("discarded: " + why)
		return milterrt.Discard().WithReason("discarded: " + why).WithRule(final.rule.ID)
	}
	s.editHeaders(st, mod, ar, chosen)
	s.spamHeaders(st, mod, sv)
	if final.action == rules.ActionQuarantine {
		why := final.check + "=" + final.result
		switch {
		case final.rule != nil:
			why += " (policy rule " + final.rule.ID + ")"
		case final.check == "dmarc":
			why += " (the domain's DMARC policy)"
		}
		st.AddReason("quarantined: " + why)
		return milterrt.Quarantine("policy: " + why).WithReason("quarantined: " + why)
	}
	return milterrt.Continue()
}

// editHeaders removes the forged Authentication-Results fields and our tag
// header from the message as received, then puts ours on top.
func (s *session) editHeaders(st *milterrt.State, mod milterrt.Modifier, ar authres.Results, chosen outcome) {
	// Indexes count per name, 1-based (SMFIR_CHGHEADER). Removing from the
	// last one up leaves the indexes of those before unchanged, whatever
	// the MTA does with the index of a removed field; and the removals go
	// before our insertions, which would count in later indexes.
	var forged, tags []int
	nAR, nTag := 0, 0
	for _, h := range st.Headers {
		switch {
		case strings.EqualFold(h.Name, authResName):
			nAR++
			if authres.ClaimsAuthservID(h.Raw, s.m.settings.AuthservID) {
				forged = append(forged, nAR)
			}
		case strings.EqualFold(h.Name, TagHeader):
			nTag++
			tags = append(tags, nTag)
		}
	}
	for i := len(forged) - 1; i >= 0; i-- {
		if err := mod.ChangeHeader(forged[i], authResName, ""); err != nil {
			s.m.log.Warn().Err(err).Str("txn", st.TxnID).Msg("removing a forged Authentication-Results field")
			continue
		}
		s.sec.AuthResRemoved++
		s.m.met.arRemoved.Inc()
	}
	if len(forged) > 0 {
		st.AddReason("removed " + strconv.Itoa(len(forged)) + " Authentication-Results field(s) claiming our authserv-id")
	}
	for i := len(tags) - 1; i >= 0; i-- {
		_ = mod.ChangeHeader(tags[i], TagHeader, "")
	}
	// RFC 8601 §5: at the top, above the fields it speaks about. The value
	// carries its leading space: with SMFIP_HDR_LEADSPC Postfix adds none.
	if err := mod.InsertHeader(0, authResName, " "+authres.Format(s.m.settings.AuthservID, ar)); err != nil {
		s.m.log.Warn().Err(err).Str("txn", st.TxnID).Msg("adding Authentication-Results")
	}
	if chosen.action == rules.ActionTag || s.spfAction.action == rules.ActionTag {
		var marks []string
		if s.spfAction.action == rules.ActionTag {
			marks = append(marks, "spf="+s.spfAction.result)
		}
		if chosen.action == rules.ActionTag && chosen.check == "dmarc" {
			marks = append(marks, "dmarc="+chosen.result)
		}
		if len(marks) > 0 {
			s.sec.Tags = marks
			if err := mod.AddHeader(TagHeader, " "+strings.Join(marks, " ")); err != nil {
				s.m.log.Warn().Err(err).Str("txn", st.TxnID).Msg("adding the tag header")
			}
			st.AddReason("tagged " + strings.Join(marks, " "))
		}
	}
}

// noteDNS records the message's DNS budget use, and flags the message
// degraded when the budget ran out or a check failed temporarily.
func (s *session) noteDNS(st *milterrt.State, dm dmarc.Result) {
	spent, exhausted := resolver.BudgetSpent(s.ctx)
	s.sec.DNS = &trail.DNSUse{SpentMS: ms(spent), Exhausted: exhausted}
	temp := exhausted || s.spf.Result == spfcheck.TempError || dm.Result == dmarc.TempError
	for _, d := range s.sec.DKIM {
		temp = temp || d.Result == dkimcheck.ResultTempError
	}
	if temp {
		st.MarkDegraded("dns")
		s.m.met.degraded.Inc()
	}
}

// sign adds a DKIM signature to an outbound message whose From domain has
// a signing entry (and, if the entry is a tenant's, whose relay is that
// tenant's). Signing never fails mail: a problem is recorded and the
// message goes out unsigned.
func (s *session) sign(st *milterrt.State, mod milterrt.Modifier) {
	domain := fromDomain(st.Headers)
	if domain == "" {
		return
	}
	sg, err := s.m.keys.Signer(s.snap, domain)
	if err != nil {
		s.sec.Signed = &trail.SignedResult{Domain: domain, Error: err.Error()}
		s.m.met.signatures.WithLabelValues("error").Inc()
		st.AddReason("not signed: " + err.Error())
		return
	}
	if sg == nil {
		return
	}
	if sg.Tenant != "" && (s.relayTenant == nil || s.relayTenant.ID != sg.Tenant) {
		st.AddReason("not signed: " + domain + " is signed for tenant " + sg.Tenant + " only")
		return
	}
	res := &trail.SignedResult{Domain: sg.Domain, Selector: sg.Selector, Algorithm: sg.Algorithm}
	s.sec.Signed = res
	if st.Message == nil {
		res.Error = "the message was not kept"
		s.m.met.signatures.WithLabelValues("error").Inc()
		return
	}
	value, err := dkimcheck.Sign(st.Message.Reader(), dkimcheck.SignOptions{
		Domain: sg.Domain, Selector: sg.Selector, Key: sg.Key, Now: s.m.clock,
	})
	if err == nil {
		// RFC 6376 §5.6: above the fields it signs. The value starts with
		// its space (SMFIP_HDR_LEADSPC).
		err = mod.InsertHeader(0, dkimcheck.HeaderName, value)
	}
	if err != nil {
		res.Error = err.Error()
		s.m.met.signatures.WithLabelValues("error").Inc()
		st.AddReason("not signed: " + err.Error())
		return
	}
	s.m.met.signatures.WithLabelValues("signed").Inc()
	st.AddReason("dkim signed d=" + sg.Domain + " s=" + sg.Selector)
}

// fromDomain is the domain of the first address of the first From field
// (the author the signature vouches for), "" when there is none readable.
func fromDomain(hs []milterrt.HeaderField) string {
	for _, h := range hs {
		if !strings.EqualFold(h.Name, "From") {
			continue
		}
		addrs, err := mail.ParseAddressList(h.Value)
		if err != nil || len(addrs) == 0 {
			return ""
		}
		at := strings.LastIndexByte(addrs[0].Address, '@')
		if at < 0 {
			return ""
		}
		return strings.ToLower(strings.TrimSuffix(addrs[0].Address[at+1:], "."))
	}
	return ""
}

// end releases the transaction's verifier and DNS context.
func (s *session) end() {
	if s.ver != nil {
		s.ver.Abort() // after Close: does nothing
		s.ver = nil
	}
	if s.cancel != nil {
		s.cancel()
		s.cancel = nil
	}
}

func (s *session) Abort(st *milterrt.State) {
	if s.sec != nil && s.ctx != nil {
		if spent, exhausted := resolver.BudgetSpent(s.ctx); spent > 0 || exhausted {
			s.sec.DNS = &trail.DNSUse{SpentMS: ms(spent), Exhausted: exhausted}
			if exhausted {
				st.MarkDegraded("dns")
			}
		}
	}
	s.end()
}

func (s *session) Close(*milterrt.State) { s.end() }

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
