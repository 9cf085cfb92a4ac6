package rules

import (
	"net/netip"
	"slices"
)

// Facts is what a milter knows about a message when it asks which rules
// apply. Empty fields are unknown (at the connect stage there is no sender
// yet) and never satisfy a condition on them.
type Facts struct {
	ClientIP   netip.Addr
	ClientName string
	Helo       string
	// Sender is the envelope sender, with or without angle brackets; the
	// null sender must be passed as "<>" ("" means "no MAIL FROM yet").
	Sender string
	// Rcpt is one recipient: rules are evaluated per recipient.
	Rcpt     string
	SASLUser string
	// Direction may be left unknown: the Snapshot then treats the message as
	// outbound when the client is a tenant's relay (TenantForRelay), inbound
	// otherwise.
	Direction Direction

	// ContentKnown says the message's header section is known (from end of
	// headers on, in the content milters): only then are the subject and
	// header conditions evaluated; before, a rule with one never matches.
	ContentKnown bool
	// Subject is the Subject field's value, unfolded and with RFC 2047
	// encoded words decoded ("" when the message has none).
	Subject string
	// Headers are the message's header fields in order (see Header).
	Headers []Header

	// SPF and DMARC are the policy milter's check results (RFC 8601
	// keywords, lower case); "" (not checked yet) satisfies no spf or
	// dmarc condition.
	SPF, DMARC string

	// Detected names the encrypt milter's detectors that fired on the
	// message ("card", "iban", pattern names); a detect condition holds
	// when one of its values is here. Nil (detectors not run) satisfies
	// no detect condition.
	Detected []string

	// Scan is the message's scan (Scanner.NewScan of this Snapshot and
	// milter, fed the whole message): the scan keys (body, attachment,
	// size, url_domain) hold as it recorded. Nil — or a Scan of another
	// Snapshot or milter — means "not scanned": a rule with a scan key
	// never matches then.
	Scan *Scan
}

// Result condition bits of a compiled rule (crule.res).
const (
	rSPF uint8 = 1 << iota
	rDMARC
	rDetect
)

// query is Facts normalized once per lookup.
type query struct {
	ip         netip.Addr
	name, helo string
	sender     string
	senderDom  string
	senderNull bool
	rcpt       string
	rcptDom    string
	sasl       string
	dir        Direction
	scopeDom   string
	tenant     *Tenant
	content    contentFacts
	spf, dmarc string
	detected   []string
	scan       *Scan
}

func (s *Snapshot) prepare(f *Facts) query {
	q := query{
		ip:    f.ClientIP.Unmap().WithZone(""),
		name:  NormDomain(f.ClientName),
		helo:  NormName(f.Helo),
		sasl:  NormName(f.SASLUser),
		dir:   f.Direction,
		spf:   f.SPF,
		dmarc: f.DMARC,
		// detected is used as given: the caller's slice is only read.
		detected: f.Detected,
	}
	if f.ContentKnown {
		q.content = contentFacts{known: true, subject: f.Subject, headers: f.Headers}
	}
	q.sender, q.senderDom, q.senderNull = SplitAddr(f.Sender)
	q.rcpt, q.rcptDom, _ = SplitAddr(f.Rcpt)
	var relay *Tenant
	if q.dir == DirectionUnknown || q.dir == Outbound {
		relay = s.TenantForRelay(q.ip, q.sasl)
	}
	if q.dir == DirectionUnknown {
		q.dir = Inbound
		if relay != nil {
			q.dir = Outbound
		}
	}
	if q.dir == Outbound {
		q.scopeDom = q.senderDom
		q.tenant = relay
	} else {
		q.scopeDom = q.rcptDom
		q.tenant = s.TenantOf(q.rcptDom)
	}
	return q
}

// Match returns every enabled rule of the milter whose scope applies to the
// message and whose conditions are all satisfied, in precedence order (see
// docs/rules.md): domain-scoped before tenant-scoped before global rules;
// within a scope lower priority first, then restrictive actions (reject,
// tempfail, discard, quarantine, relay_deny, …) before permissive ones
// (allow, relay_permit), then by id. Rate rules are included; the caller
// counts them. Content conditions (subject, header) are evaluated when
// f.ContentKnown; before, a rule with one does not match. Scan keys (body,
// attachment, size, url_domain) hold as f.Scan recorded them; without a
// Scan a rule with one does not match.
// The rules are shared and must not be modified.
func (s *Snapshot) Match(milter string, f Facts) []*Rule {
	ix := s.milters[milter]
	if ix == nil {
		return nil
	}
	q := s.prepare(&f)
	if f.Scan != nil && f.Scan.sc.snap == s && f.Scan.sc.milter == milter {
		q.scan = f.Scan
	}
	var buf [64]int32
	cands := ix.candidates(buf[:0], &q)
	if len(cands) == 0 {
		return nil
	}
	// Rules are stored in precedence order, so sorting the positions sorts
	// the result; duplicates (a rule filed under two values that both
	// match) end up adjacent.
	slices.Sort(cands)
	var out []*Rule
	last := int32(-1)
	for _, i := range cands {
		if i == last {
			continue
		}
		last = i
		c := &s.crules[i]
		if c.matches(&q) {
			out = append(out, c.rule)
		}
	}
	return out
}

func (ix *index) lookup(dst []int32, k keyKind, v string) []int32 {
	m := ix.strs[k]
	if m == nil || v == "" {
		return dst
	}
	if i, ok := m[v]; ok {
		dst = ix.post.appendTo(dst, i)
	}
	return dst
}

// lookupParents looks up every parent domain of d (strictly above it).
func (ix *index) lookupParents(dst []int32, k keyKind, d string) []int32 {
	m := ix.strs[k]
	if m == nil {
		return dst
	}
	for p := parent(d); p != ""; p = parent(p) {
		if i, ok := m[p]; ok {
			dst = ix.post.appendTo(dst, i)
		}
	}
	return dst
}

func (ix *index) candidates(dst []int32, q *query) []int32 {
	dst = append(dst, ix.scan...)
	if q.scan != nil {
		for k, slot := range ix.scannedSlot {
			if q.scan.holds(slot) {
				dst = append(dst, ix.scanned[k])
			}
		}
	}
	if q.ip.IsValid() {
		dst = ix.ips.appendAll(dst, q.ip)
	}
	if q.senderNull {
		dst = append(dst, ix.nullSender...)
	}
	dst = ix.lookup(dst, kSenderAddr, q.sender)
	dst = ix.lookup(dst, kSenderDom, q.senderDom)
	dst = ix.lookupParents(dst, kSenderSub, q.senderDom)
	dst = ix.lookup(dst, kRcptAddr, q.rcpt)
	dst = ix.lookup(dst, kRcptDom, q.rcptDom)
	dst = ix.lookupParents(dst, kRcptSub, q.rcptDom)
	dst = ix.lookup(dst, kSASL, q.sasl)
	dst = ix.lookup(dst, kHeloExact, q.helo)
	dst = ix.lookupParents(dst, kHeloSub, q.helo)
	dst = ix.lookup(dst, kNameExact, q.name)
	dst = ix.lookupParents(dst, kNameSub, q.name)
	dst = ix.lookup(dst, kScopeDomain, q.scopeDom)
	if q.tenant != nil {
		dst = ix.lookup(dst, kScopeTenant, q.tenant.ID)
	}
	return dst
}

// matches verifies scope and every condition of the rule.
func (c *crule) matches(q *query) bool {
	switch c.scopeKind {
	case ScopeDomain:
		if q.scopeDom != c.scopeDomain {
			return false
		}
	case ScopeTenant:
		if q.tenant == nil || q.tenant != c.scopeTenant {
			return false
		}
	}
	if c.dir != DirectionUnknown && c.dir != q.dir {
		return false
	}
	if len(c.ips) > 0 {
		if !q.ip.IsValid() {
			return false
		}
		found := false
		for _, p := range c.ips {
			if p.Contains(q.ip) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	if c.res != 0 {
		m := &c.rule.Match
		if c.res&rSPF != 0 && (q.spf == "" || !slices.Contains(m.SPF, q.spf)) ||
			c.res&rDMARC != 0 && (q.dmarc == "" || !slices.Contains(m.DMARC, q.dmarc)) ||
			c.res&rDetect != 0 && !slices.ContainsFunc(m.Detect, func(d string) bool { return slices.Contains(q.detected, d) }) {
			return false
		}
	}
	if c.scan >= 0 && (q.scan == nil || !q.scan.holds(c.scan)) {
		return false
	}
	if c.has == 0 {
		return true
	}
	k := c.c
	switch {
	case c.has&cSASL != 0 && (q.sasl == "" || !k.sasl.has(q.sasl)),
		c.has&cSender != 0 && !k.sender.match(q.sender, q.senderDom, q.senderNull),
		c.has&cRcpt != 0 && !k.rcpt.match(q.rcpt, q.rcptDom, false),
		c.has&cSenderDom != 0 && !k.senderDom.match(q.senderDom),
		c.has&cRcptDom != 0 && !k.rcptDom.match(q.rcptDom),
		c.has&cHelo != 0 && !k.helo.match(q.helo),
		c.has&cName != 0 && !k.name.match(q.name),
		c.has&cContent != 0 && !k.content.match(&q.content):
		return false
	}
	return true
}
