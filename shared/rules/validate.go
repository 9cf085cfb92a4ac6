package rules

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// problem is one thing wrong, at a key path relative to what is being
// checked ("action", "match.client_ip[2]"); callers prefix it with the
// rule's or tenant's own place ("rules[3].") and position it in the file.
type problem struct {
	path string
	msg  string
}

type problems []problem

func (ps *problems) add(path, format string, args ...any) {
	*ps = append(*ps, problem{path, fmt.Sprintf(format, args...)})
}

// err joins problems into one error for the callers that have no file
// positions (documents, Compile).
func (ps problems) err(prefix string) error {
	if len(ps) == 0 {
		return nil
	}
	errs := make([]error, len(ps))
	for i, p := range ps {
		path := joinPath(prefix, p.path)
		if path == "" {
			errs[i] = errors.New(p.msg)
		} else {
			errs[i] = fmt.Errorf("%s: %s", path, p.msg)
		}
	}
	return errors.Join(errs...)
}

func joinPath(prefix, path string) string {
	switch {
	case prefix == "":
		return path
	case path == "":
		return prefix
	case path[0] == '[':
		return prefix + path
	}
	return prefix + "." + path
}

const maxIDLen = 128

// checkID validates a rule or tenant id: [A-Za-z0-9._-]+. Ids travel in
// Redis keys, trail events and log lines, so they stay plain.
func checkID(id string) error {
	if id == "" {
		return errors.New("is empty")
	}
	if len(id) > maxIDLen {
		return fmt.Errorf("%q is longer than %d characters", id, maxIDLen)
	}
	if !IsName(id, maxIDLen) {
		return fmt.Errorf("%q may contain only letters, digits, '.', '_' and '-'", id)
	}
	return nil
}

// IsName reports whether s is 1 to max bytes of letters, digits, '.', '_'
// and '-': the names of rules, tenants, archive targets and detectors,
// usable as they are in file names, metric labels and Redis keys.
func IsName(s string, max int) bool {
	if s == "" || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// checkDomain validates a lower-case ASCII domain name (labels of letters,
// digits, '-' and '_', at most 63 octets each, 253 in all). Unicode names
// must be written in their xn-- form so they compare equal to what SMTP
// carries.
func checkDomain(d string) error {
	if d == "" {
		return errors.New("domain is empty")
	}
	if len(d) > 253 {
		return fmt.Errorf("domain %q is longer than 253 characters", d)
	}
	label := 0
	for i := 0; i < len(d); i++ {
		c := d[i]
		switch {
		case c == '.':
			if label == 0 {
				return fmt.Errorf("domain %q has an empty label", d)
			}
			label = 0
			continue
		case c >= 0x80:
			return fmt.Errorf("domain %q is not ASCII; write internationalised names in their xn-- form", d)
		case !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_'):
			return fmt.Errorf("domain %q contains %q", d, c)
		}
		label++
		if label > 63 {
			return fmt.Errorf("domain %q has a label longer than 63 characters", d)
		}
	}
	if label == 0 {
		return fmt.Errorf("domain %q has an empty label", d)
	}
	return nil
}

// checkDomainPattern validates "example.com" or ".example.com" (subdomains).
func checkDomainPattern(v string) error {
	if strings.HasPrefix(v, ".") {
		return checkDomain(v[1:])
	}
	return checkDomain(v)
}

// checkAddrPattern validates a sender/rcpt value: "user@domain",
// "@domain", "domain", ".domain", and "<>" when null is allowed.
func checkAddrPattern(v string, allowNull bool) error {
	if v == "<>" {
		if allowNull {
			return nil
		}
		return errors.New("\"<>\" (the null sender) is only meaningful for sender")
	}
	at := strings.LastIndexByte(v, '@')
	if at < 0 {
		return checkDomainPattern(v)
	}
	local, dom := v[:at], v[at+1:]
	for _, c := range local {
		if c <= ' ' || c == 0x7f || c == '<' || c == '>' {
			return fmt.Errorf("address %q: local part contains %q", v, c)
		}
	}
	if err := checkDomain(dom); err != nil {
		return fmt.Errorf("address %q: %w", v, err)
	}
	return nil
}

// checkName validates a SASL login or an exact HELO: non-empty, no white
// space or control characters.
func checkName(v string) error {
	if v == "" {
		return errors.New("is empty")
	}
	for _, c := range v {
		if c <= ' ' || c == 0x7f {
			return fmt.Errorf("%q contains white space or a control character", v)
		}
	}
	return nil
}

func checkHeloPattern(v string) error {
	if strings.HasPrefix(v, ".") {
		return checkDomain(v[1:])
	}
	return checkName(v)
}

// normPrefix turns IPv4-mapped IPv6 prefixes into IPv4 ones, so
// ::ffff:192.0.2.0/120 and 192.0.2.0/24 are the same rule and match the
// (unmapped) client address the milter sees.
func normPrefix(p netip.Prefix) netip.Prefix {
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p
}

// checkPrefix rejects what would silently match something else than meant.
func checkPrefix(p netip.Prefix) error {
	switch {
	case !p.IsValid():
		return errors.New("invalid network")
	case p.Addr().Zone() != "":
		return fmt.Errorf("network %s has a zone; zones are not allowed", p)
	case p.Masked() != p:
		return fmt.Errorf("network %s has host bits set (did you mean %s?)", p, p.Masked())
	}
	return nil
}

// parsePrefix parses an address or a CIDR network.
func parsePrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	var p netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return netip.Prefix{}, fmt.Errorf("invalid network %q (want an address or a CIDR network such as 192.0.2.0/24 or 2001:db8::/32)", s)
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("invalid address %q (want an address or a CIDR network such as 192.0.2.0/24 or 2001:db8::/32)", s)
		}
		if a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("address %q has a zone; zones are not allowed", s)
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if err := checkPrefix(p); err != nil {
		return netip.Prefix{}, err
	}
	return normPrefix(p), nil
}

func lowerAll(vs []string) {
	for i, v := range vs {
		vs[i] = NormName(v)
	}
}

func normDomains(vs []string) {
	for i, v := range vs {
		vs[i] = NormDomain(v)
	}
}

// normalize puts r's values into canonical form (lower case, no trailing
// dots, unmapped prefixes) so matching is a plain comparison.
func (r *Rule) normalize() {
	m := &r.Match
	for _, vs := range []*[]string{&m.ClientName, &m.Helo, &m.Sender, &m.Rcpt, &m.SenderDomain, &m.RcptDomain, &m.SASLUser, &m.Subject, &m.Header, &m.SPF, &m.DMARC, &m.Detect, &m.Body, &m.Attachment, &m.Size, &m.URLDomain} {
		nilIfEmpty(vs)
	}
	for i, v := range m.Attachment {
		m.Attachment[i] = strings.ToLower(strings.TrimSpace(v))
	}
	for i, v := range m.Size {
		m.Size[i] = strings.TrimSpace(v)
	}
	normDomains(m.URLDomain)
	lowerAll(m.SPF)
	lowerAll(m.DMARC)
	for i, v := range m.Detect {
		m.Detect[i] = strings.TrimSpace(v)
	}
	if len(m.ClientIP) == 0 {
		m.ClientIP = nil
	}
	for i, p := range m.ClientIP {
		m.ClientIP[i] = normPrefix(p)
	}
	normDomains(m.ClientName)
	lowerAll(m.Helo)
	for _, vs := range [][]string{m.Sender, m.Rcpt} {
		for i, v := range vs {
			v = NormName(v)
			if at := strings.LastIndexByte(v, '@'); at >= 0 {
				v = v[:at] + "@" + NormDomain(v[at+1:])
			} else if v != "<>" {
				v = NormDomain(v)
			}
			vs[i] = v
		}
	}
	normDomains(m.SenderDomain)
	normDomains(m.RcptDomain)
	lowerAll(m.SASLUser)
	if r.Scope.Kind == ScopeDomain {
		r.Scope.Name = NormDomain(r.Scope.Name)
	}
}

// nilIfEmpty makes "key: []" and an absent key the same value, so both
// give the same document and checksum.
func nilIfEmpty(vs *[]string) {
	if len(*vs) == 0 {
		*vs = nil
	}
}

func (t *Tenant) normalize() {
	nilIfEmpty(&t.Domains)
	nilIfEmpty(&t.Relay.SASLUsers)
	if len(t.Relay.Networks) == 0 {
		t.Relay.Networks = nil
	}
	normDomains(t.Domains)
	lowerAll(t.Relay.SASLUsers)
	for i, p := range t.Relay.Networks {
		t.Relay.Networks[i] = normPrefix(p)
	}
}

// check validates a normalized rule on its own (not against the rest of the
// set). Problems are relative to the rule.
func (r *Rule) check() problems {
	var ps problems
	if err := checkID(r.ID); err != nil {
		ps.add("id", "rule id %v", err)
	}
	milterOK := knownMilter(r.Milter)
	if !milterOK {
		ps.add("milter", "unknown milter %q (known: %s)", r.Milter, strings.Join(Milters(), ", "))
	}
	switch r.Scope.Kind {
	case ScopeGlobal:
		if r.Scope.Name != "" {
			ps.add("scope", "global scope takes no name")
		}
	case ScopeTenant:
		if err := checkID(r.Scope.Name); err != nil {
			ps.add("scope", "tenant id %v", err)
		}
	case ScopeDomain:
		if err := checkDomain(r.Scope.Name); err != nil {
			ps.add("scope", "%v", err)
		}
	default:
		ps.add("scope", "unknown scope kind %d", r.Scope.Kind)
	}
	info, actionOK := lookupAction(r.Milter, r.Action)
	switch {
	case r.Action == "" && milterOK:
		ps.add("action", "required (one of: %s)", actionList(r.Milter))
	case r.Action == "":
		ps.add("action", "required")
	case milterOK && !actionOK:
		ps.add("action", "unknown action %q for milter %s (known: %s)", r.Action, r.Milter, actionList(r.Milter))
	}
	if !r.Reply.IsZero() && actionOK {
		if err := checkReply(r.Reply); err != nil {
			ps.add("reply", "%v", err)
		} else if info.replyClass == 0 {
			ps.add("reply", "action %s sends no SMTP reply; remove reply or use one of: %s", r.Action, replyActions(r.Milter))
		} else if r.Reply.Code/100 != info.replyClass {
			ps.add("reply", "reply %q is a %dxx code but action %s needs %dxx", r.Reply.String(), r.Reply.Code/100, r.Action, info.replyClass)
		}
	}
	if r.Rate != nil {
		rt := r.Rate
		if !slices.Contains(rateKeys, rt.Key) {
			ps.add("rate.key", "unknown rate key %q (known: %s)", rt.Key, joinRateKeys())
		}
		if rt.Limit <= 0 {
			ps.add("rate.limit", "must be a positive number of messages, got %d", rt.Limit)
		}
		if rt.Per < minRatePer || rt.Per > maxRatePer {
			ps.add("rate.per", "must be between %s and %s, got %s", minRatePer, "168h", rt.Per)
		}
		if actionOK && !info.restrictive {
			ps.add("action", "a rate rule needs an action that stops mail (e.g. tempfail or reject), not %s", r.Action)
		}
	}
	ps = append(ps, r.Match.check(r.Milter)...)
	ps = append(ps, r.checkResults(actionOK)...)
	ps = append(ps, r.checkTargets()...)
	ps = append(ps, r.checkDetect()...)
	ps = append(ps, r.checkScore(actionOK)...)
	return ps
}

// checkScore: a policy rule either adds a score (action score, a non-zero
// finite score) or takes an action; never both, so what a rule does is
// read off one key.
func (r *Rule) checkScore(actionOK bool) problems {
	var ps problems
	sc := r.Score
	switch {
	case math.IsNaN(sc) || math.IsInf(sc, 0) || math.Abs(sc) > MaxScore:
		ps.add("score", "must be a number between -%d and %d, got %v", MaxScore, MaxScore, sc)
	case sc != 0 && r.Milter != "policy":
		ps.add("score", "scores are the policy milter's; use score in policy rules only")
	case sc != 0 && actionOK && r.Action != ActionScore:
		ps.add("score", "a rule adds a score or takes an action: remove score or action %s", r.Action)
	case sc == 0 && r.Action == ActionScore:
		ps.add("score", "action score needs a non-zero score (e.g. score: 2.5); a rule adds a score or takes an action")
	}
	return ps
}

// checkDetect: detect names the encrypt milter's detectors. Pattern names
// are checked against milters.encrypt.detect.patterns by the milter (the
// rules are shared by hosts whose configs may differ).
func (r *Rule) checkDetect() problems {
	var ps problems
	if len(r.Match.Detect) == 0 {
		return ps
	}
	if r.Milter != "encrypt" {
		ps.add("match.detect", "detect names the encrypt milter's content detectors; use it in encrypt rules only")
		return ps
	}
	seen := map[string]bool{}
	for i, d := range r.Match.Detect {
		p := "match.detect[" + strconv.Itoa(i) + "]"
		switch {
		case checkID(d) != nil:
			ps.add(p, "detector name %v (card, iban or a pattern name of milters.encrypt.detect.patterns)", checkID(d))
		case seen[d]:
			ps.add(p, "detector %q listed twice", d)
		}
		seen[d] = true
	}
	return ps
}

// checkTargets: targets belong to archive rules that journal. The names
// are checked against the configured targets by the archive milter (the
// rules are shared by hosts whose configs may differ).
func (r *Rule) checkTargets() problems {
	var ps problems
	if len(r.Targets) == 0 {
		return ps
	}
	if r.Milter != "archive" || r.Action != ActionArchive {
		ps.add("targets", "only archive rules with action archive name targets")
		return ps
	}
	seen := map[string]bool{}
	for i, t := range r.Targets {
		switch {
		case checkID(t) != nil:
			ps.add("targets["+strconv.Itoa(i)+"]", "target name %v", checkID(t))
		case seen[t]:
			ps.add("targets["+strconv.Itoa(i)+"]", "target %q listed twice", t)
		}
		seen[t] = true
	}
	return ps
}

// Result values the spf and dmarc match keys take: RFC 7208 §2.6 and
// RFC 7489 §11.2 (as RFC 8601 §2.7 spells them).
var (
	spfResults   = []string{"pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"}
	dmarcResults = []string{"pass", "fail", "none", "temperror", "permerror"}
	// resultActions are what a rule on check results may do: record only
	// (allow), tag, quarantine, reject, tempfail (docs/policy.md).
	resultActions = []Action{ActionAllow, ActionTag, ActionQuarantine, ActionReject, ActionTempfail}
)

// checkResults checks the spf and dmarc conditions and the tag action,
// which go together: a rule on check results is the policy milter's, says
// what to do with a result, and is decided where that result exists.
func (r *Rule) checkResults(actionOK bool) problems {
	var ps problems
	m := &r.Match
	values := func(key string, vs, known []string) {
		for i, v := range vs {
			if !slices.Contains(known, v) {
				ps.add("match."+key+"["+strconv.Itoa(i)+"]", "unknown %s result %q (known: %s)", key, v, strings.Join(known, ", "))
			}
		}
	}
	values("spf", m.SPF, spfResults)
	values("dmarc", m.DMARC, dmarcResults)
	if !m.HasResults() {
		if r.Action == ActionTag && r.Milter == "policy" {
			ps.add("action", "tag marks a check result: add match.spf or match.dmarc")
		}
		return ps
	}
	if r.Milter != "policy" {
		key := "match.spf"
		if len(m.SPF) == 0 {
			key = "match.dmarc"
		}
		ps.add(key, "spf and dmarc are the policy milter's check results; use them in policy rules only")
		return ps
	}
	if actionOK && !slices.Contains(resultActions, r.Action) {
		ps.add("action", "a rule on spf or dmarc results takes one of: allow (record only), tag, quarantine, reject, tempfail; not %s", r.Action)
	}
	if r.Rate != nil {
		ps.add("rate", "a rule on spf or dmarc results cannot be a rate rule")
	}
	if len(m.DMARC) == 0 && (m.HasContent() || m.HasScan()) {
		// Without dmarc the rule is decided per recipient at RCPT, before
		// the content exists (docs/policy.md).
		ps.add("match.spf", "a rule on spf alone is decided at RCPT, before the content: remove subject, header and the scan keys (body, attachment, size, url_domain), or add a dmarc condition")
	}
	return ps
}

func checkReply(r Reply) error {
	// Re-parse the canonical text: one set of rules whether the reply came
	// from a file, a document or a struct literal.
	got, err := ParseReply(r.String())
	if err != nil {
		return err
	}
	if got != r {
		return fmt.Errorf("reply %q is not in canonical form", r.String())
	}
	return nil
}

func (m *Match) check(milter string) problems {
	var ps problems
	each := func(key string, vs []string, check func(string) error) {
		for i, v := range vs {
			if err := check(v); err != nil {
				ps.add("match."+key+"["+strconv.Itoa(i)+"]", "%v", err)
			}
		}
	}
	for i, p := range m.ClientIP {
		if err := checkPrefix(p); err != nil {
			ps.add("match.client_ip["+strconv.Itoa(i)+"]", "%v", err)
		}
	}
	each("client_name", m.ClientName, checkDomainPattern)
	each("helo", m.Helo, checkHeloPattern)
	each("sender", m.Sender, func(v string) error { return checkAddrPattern(v, true) })
	each("rcpt", m.Rcpt, func(v string) error { return checkAddrPattern(v, false) })
	each("sender_domain", m.SenderDomain, checkDomainPattern)
	each("rcpt_domain", m.RcptDomain, checkDomainPattern)
	each("sasl_user", m.SASLUser, checkName)
	each("subject", m.Subject, checkContentPattern)
	each("header", m.Header, checkHeaderPattern)
	each("body", m.Body, checkContentPattern)
	each("attachment", m.Attachment, checkAttachment)
	each("size", m.Size, func(v string) error { _, err := parseSize(v); return err })
	each("url_domain", m.URLDomain, checkURLDomain)
	if milter != "policy" {
		// Only the policy milter walks the body (docs/rules.md).
		for _, k := range []struct {
			key string
			vs  []string
		}{{"body", m.Body}, {"attachment", m.Attachment}, {"size", m.Size}, {"url_domain", m.URLDomain}} {
			if len(k.vs) > 0 {
				ps.add("match."+k.key, "%s is a scan key of the policy milter (it walks the message body); use it in policy rules only", k.key)
			}
		}
	}
	if m.Direction > Outbound {
		ps.add("match.direction", "unknown direction %d", m.Direction)
	}
	if milter == "access" {
		// The access milter decides before the message content exists; a
		// content condition there could never be evaluated.
		if len(m.Subject) > 0 {
			ps.add("match.subject", "%s", contentInAccess)
		}
		if len(m.Header) > 0 {
			ps.add("match.header", "%s", contentInAccess)
		}
	}
	return ps
}

// contentInAccess says why subject and header are errors in access rules.
const contentInAccess = "the access milter decides before the message content exists (it never sees headers); " +
	"subject and header conditions belong in policy, archive or encrypt rules"

func (t *Tenant) check() problems {
	var ps problems
	if err := checkID(t.ID); err != nil {
		ps.add("id", "tenant id %v", err)
	}
	for i, d := range t.Domains {
		if err := checkDomain(d); err != nil {
			ps.add("domains["+strconv.Itoa(i)+"]", "%v", err)
		}
	}
	for i, p := range t.Relay.Networks {
		if err := checkPrefix(p); err != nil {
			ps.add("relay.networks["+strconv.Itoa(i)+"]", "%v", err)
		}
	}
	for i, u := range t.Relay.SASLUsers {
		if err := checkName(u); err != nil {
			ps.add("relay.sasl_users["+strconv.Itoa(i)+"]", "sasl user %v", err)
		}
	}
	return ps
}

func actionList(milter string) string {
	as := Actions(milter)
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = string(a)
	}
	return strings.Join(s, ", ")
}

func replyActions(milter string) string {
	var s []string
	for _, a := range Actions(milter) {
		if info, _ := lookupAction(milter, a); info.replyClass != 0 {
			s = append(s, string(a))
		}
	}
	return strings.Join(s, ", ")
}

func joinRateKeys() string {
	s := make([]string, len(rateKeys))
	for i, k := range rateKeys {
		s[i] = string(k)
	}
	return strings.Join(s, ", ")
}

// setChecker finds the problems that involve more than one entry: duplicate
// ids, a domain, SASL login or network claimed by two tenants, a scope naming
// a tenant that does not exist. Entries are added in order; the first one
// wins and later conflicting ones are reported (and, for documents, skipped).
type setChecker struct {
	ruleAt   map[string]int // rule id -> index
	tenantAt map[string]int
	domainOf map[string]string // domain -> tenant id
	saslOf   map[string]string
	netOf    map[netip.Prefix]string
	known    string // cached knownTenants text; "" after a change
}

func newSetChecker() *setChecker {
	return &setChecker{
		ruleAt:   make(map[string]int),
		tenantAt: make(map[string]int),
		domainOf: make(map[string]string),
		saslOf:   make(map[string]string),
		netOf:    make(map[netip.Prefix]string),
	}
}

// tenantConflicts reports what t (index i in its list) shares with a
// tenant registered before it.
func (c *setChecker) tenantConflicts(t *Tenant) problems {
	var ps problems
	if j, dup := c.tenantAt[t.ID]; dup {
		ps.add("id", "duplicate tenant id %q (first defined at tenants[%d])", t.ID, j)
	}
	seen := make(map[string]bool)
	for k, d := range t.Domains {
		if other, taken := c.domainOf[d]; taken {
			ps.add("domains["+strconv.Itoa(k)+"]", "domain %q already belongs to tenant %q", d, other)
		} else if seen[d] {
			ps.add("domains["+strconv.Itoa(k)+"]", "domain %q is listed twice", d)
		}
		seen[d] = true
	}
	for k, u := range t.Relay.SASLUsers {
		if other, taken := c.saslOf[u]; taken {
			ps.add("relay.sasl_users["+strconv.Itoa(k)+"]", "sasl user %q already relays for tenant %q", u, other)
		}
	}
	for k, n := range t.Relay.Networks {
		if other, taken := c.netOf[n]; taken {
			ps.add("relay.networks["+strconv.Itoa(k)+"]", "network %s already relays for tenant %q", n, other)
		}
	}
	return ps
}

// registerTenant makes t known to later checks; the first claim of an id,
// domain, login or network stays.
func (c *setChecker) registerTenant(i int, t *Tenant) {
	c.known = ""
	if _, dup := c.tenantAt[t.ID]; !dup {
		c.tenantAt[t.ID] = i
	}
	for _, d := range t.Domains {
		if _, taken := c.domainOf[d]; !taken {
			c.domainOf[d] = t.ID
		}
	}
	for _, u := range t.Relay.SASLUsers {
		if _, taken := c.saslOf[u]; !taken {
			c.saslOf[u] = t.ID
		}
	}
	for _, n := range t.Relay.Networks {
		if _, taken := c.netOf[n]; !taken {
			c.netOf[n] = t.ID
		}
	}
}

// addRule records r (index i in its list) unless its id is taken or its
// scope names an unknown tenant. Call after every tenant has been added.
func (c *setChecker) addRule(i int, r *Rule) problems {
	var ps problems
	if j, dup := c.ruleAt[r.ID]; dup {
		ps.add("id", "duplicate rule id %q (first defined at rules[%d])", r.ID, j)
	}
	if r.Scope.Kind == ScopeTenant {
		if _, ok := c.tenantAt[r.Scope.Name]; !ok {
			ps.add("scope", "unknown tenant %q in scope %s (%s)", r.Scope.Name, r.Scope, c.knownTenants())
		}
	}
	if len(ps) == 0 {
		c.ruleAt[r.ID] = i
	}
	return ps
}

func (c *setChecker) knownTenants() string {
	if len(c.tenantAt) == 0 {
		return "no tenants are defined"
	}
	if c.known == "" {
		c.known = c.listTenants()
	}
	return c.known
}

func (c *setChecker) listTenants() string {
	ids := make([]string, 0, len(c.tenantAt))
	for id := range c.tenantAt {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	const show = 10
	if len(ids) > show {
		return fmt.Sprintf("known: %s, … %d more", strings.Join(ids[:show], ", "), len(ids)-show)
	}
	return "known: " + strings.Join(ids, ", ")
}

// Validate normalizes s in place and reports every problem in it, as
// Compile would. Sets from Parse, SetFromDocs and LoadSaved are already
// valid; Validate is for sets built in code.
func (s *Set) Validate() error {
	var all []error
	c := newSetChecker()
	for i := range s.Tenants {
		t := &s.Tenants[i]
		t.normalize()
		ps := t.check()
		ps = append(ps, c.tenantConflicts(t)...)
		c.registerTenant(i, t)
		if err := ps.err("tenants[" + strconv.Itoa(i) + "]"); err != nil {
			all = append(all, err)
		}
	}
	for i := range s.Rules {
		r := &s.Rules[i]
		r.normalize()
		ps := r.check()
		ps = append(ps, c.addRule(i, r)...)
		if err := ps.err("rules[" + strconv.Itoa(i) + "]"); err != nil {
			all = append(all, err)
		}
	}
	if err := validateSigning(s, c); err != nil {
		all = append(all, err)
	}
	return errors.Join(all...)
}
