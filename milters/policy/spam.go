package policy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/geomilter/geomilter/milters/policy/content"
	"github.com/geomilter/geomilter/milters/policy/dnsbl"
	"github.com/geomilter/geomilter/milters/policy/greylist"
	"github.com/geomilter/geomilter/milters/policy/scanner"
	"github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/rules"
	"github.com/geomilter/geomilter/shared/trail"
	"github.com/geomilter/geomilter/shared/verdict"
)

// Part 2 of the policy milter (docs/policy.md): lists, greylisting,
// content rules, scanners and the score. What runs where:
//
//   - MAIL: the client IP is looked up in the DNSBL and DNSWL lists, at
//     the same time as SPF, under the message's DNS budget;
//   - RCPT: a list with a direct reject or tempfail action refuses the
//     recipients of the tenants it applies to; then greylisting, per
//     recipient;
//   - end of message: the MIME walk feeds the content rules (one pass for
//     all of them) and collects URL domains for URIBL, while the outside
//     scanners look at the message; then each recipient's score is summed
//     over what applies to its tenant and judged against its tenant's
//     thresholds. The strictest outcome over the recipients wins, as in
//     part 1.

// GTUBE is the Generic Test for Unsolicited Bulk Email: SpamAssassin and
// rspamd score a message containing it as spam, so an administrator can
// test the path end to end. The built-in rule scores it 1000.
const GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

// builtinRule is a default content rule (scoring.default_rules): a fixed
// string in a text line, matched case-sensitively as SpamAssassin's GTUBE
// rule is. It is not a rules-file rule because it needs none of their
// machinery: one bytes.Contains per line costs a fraction of a second
// lower-cased scan.
type builtinRule struct {
	id    string
	text  []byte
	score float64
}

var builtinRules = []builtinRule{
	{id: "builtin-gtube", text: []byte(GTUBE), score: 1000},
}

// builtinScan records which built-in rules a message's text matched.
type builtinScan struct {
	rules []builtinRule
	hit   []bool
}

func newBuiltinScan(rs []builtinRule) *builtinScan {
	return &builtinScan{rules: rs, hit: make([]bool, len(rs))}
}

func (b *builtinScan) Text(line []byte) {
	for i := range b.rules {
		if !b.hit[i] && bytes.Contains(line, b.rules[i].text) {
			b.hit[i] = true
		}
	}
}

func (*builtinScan) Attachment(string, string) {}
func (*builtinScan) URL(string)                {}
func (*builtinScan) Size(int64)                {}

// Spam header fields (SpamAssassin's names, which mail clients and
// downstream filters know). Incoming ones are removed from inbound mail.
const (
	spamFlag   = "X-Spam-Flag"
	spamScore  = "X-Spam-Score"
	spamStatus = "X-Spam-Status"
)

// listIndex finds the configured list of a hit.
type listIndex map[string]*dnsbl.List

func listKey(k dnsbl.Kind, zone string) string { return strconv.Itoa(int(k)) + "/" + zone }

func newListIndex(st *Settings) listIndex {
	ix := listIndex{}
	for _, g := range []struct {
		kind  dnsbl.Kind
		lists []dnsbl.List
	}{{dnsbl.IP, st.DNSBL}, {dnsbl.Allow, st.DNSWL}, {dnsbl.URI, st.URIBL}} {
		for i := range g.lists {
			ix[listKey(g.kind, g.lists[i].Zone)] = &g.lists[i]
		}
	}
	return ix
}

func kindName(k dnsbl.Kind) string {
	switch k {
	case dnsbl.Allow:
		return "dnswl"
	case dnsbl.URI:
		return "uribl"
	}
	return "dnsbl"
}

// startLists looks the client up in the IP lists while SPF runs; the
// returned func waits for the answers (bounded by the message's budget).
func (s *session) startLists(ip netip.Addr) func() {
	lists := s.m.ipLists
	if len(lists) == 0 || !ip.IsValid() {
		return func() {}
	}
	ctx := s.ctx
	ch := make(chan dnsbl.Result, 1)
	go func() { ch <- dnsbl.CheckIP(ctx, s.m.dns, ip, lists) }()
	return func() {
		s.ipRes = <-ch
		s.noteLists(s.ipRes)
	}
}

// noteLists records list hits and failures in the trail and metrics.
func (s *session) noteLists(r dnsbl.Result) {
	for _, h := range r.Hits {
		s.sec.DNSBL = append(s.sec.DNSBL, trail.DNSBLHit{
			Zone: h.Zone, Answer: h.Answer, Kind: kindName(h.Kind), Target: h.Target, Weight: h.Weight, Action: h.Action,
		})
		s.m.met.listHits.WithLabelValues(kindName(h.Kind), h.Zone).Inc()
	}
	if len(r.Hits) == 0 && len(r.Failures) == 0 && r.Duration == 0 {
		return
	}
	if s.sec.Lists == nil {
		s.sec.Lists = &trail.ListUse{}
	}
	s.sec.Lists.DurationMS += ms(r.Duration)
	for _, f := range r.Failures {
		s.sec.Lists.Failed = append(s.sec.Lists.Failed, f.Zone+": "+f.Err.Error())
		s.m.met.listFailures.WithLabelValues(f.Zone).Inc()
	}
}

// tenantOf is the id of the tenant receiving mail for rcpt ("" for none).
func (s *session) tenantOf(rcpt string) string {
	at := strings.LastIndexByte(rcpt, '@')
	if at < 0 {
		return ""
	}
	if t := s.snap.TenantOf(strings.ToLower(strings.Trim(rcpt[at+1:], "<>"))); t != nil {
		return t.ID
	}
	return ""
}

// listRefusal is the first direct reject or tempfail of an IP list hit
// that applies to the tenant.
func (s *session) listRefusal(st *milterrt.State, tenant string) (milterrt.Decision, bool) {
	for _, h := range s.ipRes.Hits {
		if h.Action != string(rules.ActionReject) && h.Action != string(rules.ActionTempfail) {
			continue
		}
		if l := s.m.lists[listKey(h.Kind, h.Zone)]; l == nil || !l.AppliesTo(tenant) {
			continue
		}
		ip := ""
		if a, ok := netip.AddrFromSlice(st.ClientAddr); ok {
			ip = a.Unmap().String()
		}
		// Postfix's default_rbl_reply, as reject_rbl_client answers.
		d := milterrt.Reject("554", "5.7.1", "Service unavailable; client ["+ip+"] blocked using "+h.Zone)
		if h.Action == string(rules.ActionTempfail) {
			d = milterrt.TempFail("451", "4.7.1", "Service unavailable; client ["+ip+"] listed at "+h.Zone+", try again later")
		}
		d = withReply(d, s.m.replies[h.Reply])
		return d.WithReason(kindName(h.Kind) + " " + h.Zone + " listed " + h.Target + " (" + h.Answer + "): " + h.Action), true
	}
	return milterrt.Decision{}, false
}

// allowListed names the DNSWL zone that listed the client for the tenant.
func (s *session) allowListed(tenant string) string {
	for _, h := range s.ipRes.Hits {
		if h.Kind != dnsbl.Allow {
			continue
		}
		if l := s.m.lists[listKey(h.Kind, h.Zone)]; l != nil && l.AppliesTo(tenant) {
			return h.Zone
		}
	}
	return ""
}

// greylistRcpt greylists one recipient when the settings or a policy rule
// say so and nothing exempts it. The state answers within its own budget;
// when it does not, the recipient is accepted and the message flagged.
func (s *session) greylistRcpt(st *milterrt.State, rcpt, tenant string) (milterrt.Decision, bool) {
	apply := s.m.settings.Greylist.Enabled
	if s.m.grey == nil || (!apply && !s.plan.greylistRules) {
		return milterrt.Decision{}, false
	}
	exempt := ""
	f := verdict.Facts(st, rcpt)
	f.Direction = rules.Inbound
	for _, r := range s.snap.Match(Name, f) {
		if r.IsRate() || r.Match.HasResults() || r.Match.HasContent() || r.Match.HasScan() {
			continue
		}
		if r.Action == rules.ActionGreylist {
			apply = true
			s.hit(st, r, "rcpt", rcpt)
			break
		}
		if r.Action == rules.ActionAllow {
			exempt = "policy rule " + r.ID
			break
		}
	}
	if !apply {
		return milterrt.Decision{}, false
	}
	if exempt == "" {
		if z := s.allowListed(tenant); z != "" {
			exempt = "dnswl " + z
		}
	}
	if exempt == "" {
		// Senders the access rules allow (allowlists) are not delayed.
		for _, r := range s.snap.Match("access", f) {
			if r.IsRate() {
				continue
			}
			if r.Action == rules.ActionAllow || r.Action == rules.ActionRelayPermit {
				exempt = "access rule " + r.ID
			}
			break
		}
	}
	gr := trail.GreylistResult{Rcpt: rcpt}
	defer func() { s.sec.Greylist = append(s.sec.Greylist, gr) }()
	if exempt != "" {
		gr.Status, gr.Reason = "exempt", exempt
		s.m.met.greyExempt.Inc()
		return milterrt.Decision{}, false
	}
	var ip netip.Addr
	if a, ok := netip.AddrFromSlice(st.ClientAddr); ok {
		ip = a.Unmap()
	}
	// The state store answers within redis.timeout; this is a backstop.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	res := s.m.grey.Check(ctx, greylist.Triplet{Client: ip, Sender: st.Sender, Rcpt: rcpt})
	cancel()
	gr.Status, gr.DurationMS = string(res.Status), ms(res.Duration)
	if !res.FirstSeen.IsZero() {
		gr.FirstSeenMS = res.FirstSeen.UnixMilli()
	}
	if res.Err != nil {
		gr.Reason = res.Err.Error()
	}
	if res.Status == greylist.StatusDegraded {
		st.MarkDegraded("greylist")
	}
	if !res.Defer {
		return milterrt.Decision{}, false
	}
	d := milterrt.TempFail("451", "4.7.1", "Greylisted, please try again later")
	d = withReply(d, s.m.replies[s.m.settings.Greylist.Reply])
	return d.WithReason("greylisted (" + string(res.Status) + ")"), true
}

// contentRun is what end of message learnt of the content.
type contentRun struct {
	scan     *rules.Scan
	builtin  *builtinScan
	report   content.Report
	kinds    []string // problemKinds(report), once
	walked   bool
	uribl    dnsbl.Result
	scanners []scanner.Result
}

// sink feeds the walk to the user's and the built-in rules at once.
type sink []content.Sink

func (k sink) Text(line []byte) {
	for _, s := range k {
		s.Text(line)
	}
}

func (k sink) Attachment(name, typ string) {
	for _, s := range k {
		s.Attachment(name, typ)
	}
}

func (k sink) URL(host string) {
	for _, s := range k {
		s.URL(host)
	}
}

func (k sink) Size(n int64) {
	for _, s := range k {
		s.Size(n)
	}
}

// runContent walks the message, asks URIBL and the scanners, all bounded.
func (s *session) runContent(st *milterrt.State) *contentRun {
	run := &contentRun{}
	if st.Message == nil {
		return run
	}
	var done chan struct{}
	if s.m.scanners != nil && s.m.scanners.Len() > 0 {
		done = make(chan struct{})
		msg := scanner.Message{
			Open: func() io.Reader { return st.Message.Reader() }, Size: st.Message.Size(),
			ClientHost: st.ClientHost, Helo: st.Helo, From: st.Sender, QueueID: st.QueueID(),
			User: st.Macro("auth_authen"), Rcpts: st.AcceptedRcpts(),
		}
		if a, ok := netip.AddrFromSlice(st.ClientAddr); ok {
			msg.ClientIP = a.Unmap().String()
		}
		go func() {
			defer close(done)
			run.scanners = s.m.scanners.Scan(context.Background(), msg)
		}()
	}

	var k sink
	if sc := s.snap.Scanner(Name); sc.Rules() > 0 {
		run.scan = sc.NewScan()
		k = append(k, run.scan)
	}
	if len(s.m.builtin) > 0 {
		run.builtin = newBuiltinScan(s.m.builtin)
		k = append(k, run.builtin)
	}
	if len(k) > 0 || len(s.m.settings.URIBL) > 0 || s.m.settings.Scoring.MIMEProblem > 0 {
		c := s.m.settings.Content
		rep, err := content.Walk(st.Message.Reader(), st.Message.Size(), k, content.Limits{
			MaxDepth: c.MaxDepth, MaxParts: c.MaxParts, MaxScanBytes: int64(c.MaxScanBytes), MaxURLs: c.MaxURLs,
		})
		run.report, run.walked = rep, true
		if err != nil {
			// The message could not be read back (a spool file gone):
			// the content is unknown, the other checks still count.
			s.m.log.Warn().Err(err).Str("txn", st.TxnID).Msg("policy: reading the message for content rules")
			st.MarkDegraded("content")
		}
		cu := &trail.ContentUse{
			Parts: rep.Parts, Attachments: rep.Attachments, URLs: len(rep.URLDomains),
			Truncated: rep.Truncated, DurationMS: ms(rep.Duration),
		}
		run.kinds = problemKinds(rep)
		for _, kind := range run.kinds {
			cu.Problems = append(cu.Problems, kind)
			s.m.met.mimeProblems.WithLabelValues(kind).Inc()
		}
		s.sec.Content = cu
	}
	if len(s.m.settings.URIBL) > 0 && len(run.report.URLDomains) > 0 {
		run.uribl = dnsbl.CheckDomains(s.ctx, s.m.dns, run.report.URLDomains, s.m.settings.URIBL, s.m.settings.Content.URIBLQueries)
		s.noteLists(run.uribl)
	}
	if done != nil {
		<-done
		for _, r := range run.scanners {
			s.noteScanner(st, r)
		}
	}
	return run
}

// problemKinds are the distinct kinds of MIME problems, sorted.
func problemKinds(rep content.Report) []string {
	var kinds []string
	for _, p := range rep.Problems {
		if !slices.Contains(kinds, p.Kind) {
			kinds = append(kinds, p.Kind)
		}
	}
	if rep.ZipProblems > 0 && !slices.Contains(kinds, "zip") {
		kinds = append(kinds, "zip")
	}
	sort.Strings(kinds)
	return kinds
}

func (s *session) noteScanner(st *milterrt.State, r scanner.Result) {
	tr := trail.ScannerResult{
		Name: r.Scanner, Score: r.Score, Required: r.Required, Action: r.Action,
		Skipped: r.Skipped, DurationMS: ms(r.Duration),
	}
	for _, sym := range r.Symbols {
		tr.Symbols = append(tr.Symbols, trail.ScorePart{Name: sym.Name, Score: sym.Score})
	}
	outcome := "answered"
	switch {
	case r.Skipped != "":
		outcome = "skipped"
	case r.Err != nil:
		tr.Error = r.Err.Error()
		outcome = "failed"
		st.MarkDegraded("scanner")
	}
	s.sec.Scanners = append(s.sec.Scanners, tr)
	st.AddReason("scanner " + r.Scanner + " " + outcome)
}

// rcptJudgement is the spam verdict for one recipient.
type rcptJudgement struct {
	rcpt   string
	score  float64
	parts  []scorePart
	limits Limits
	out    outcome
}

type scorePart struct {
	name  string
	score float64
}

// judge sums the score of one recipient and finds its outcome: a content
// rule's direct action, a list's quarantine, else the tenant's thresholds.
func (s *session) judge(st *milterrt.State, rcpt string, base rules.Facts, run *contentRun) rcptJudgement {
	tenant := s.tenantOf(rcpt)
	j := rcptJudgement{rcpt: rcpt, limits: s.m.settings.Scoring.For(tenant)}
	add := func(name string, v float64) {
		if v != 0 {
			j.parts = append(j.parts, scorePart{name, v})
			j.score += v
		}
	}
	var listOut outcome
	seen := map[string]bool{}
	for _, r := range []dnsbl.Result{s.ipRes, run.uribl} {
		for _, h := range r.Hits {
			key := listKey(h.Kind, h.Zone)
			l := s.m.lists[key]
			if l == nil || !l.AppliesTo(tenant) || seen[key] {
				continue
			}
			seen[key] = true // a list counts once per message
			add(kindName(h.Kind)+":"+h.Zone, h.Weight)
			if h.Action == string(rules.ActionQuarantine) {
				listOut = outcome{action: rules.ActionQuarantine, check: kindName(h.Kind), result: h.Zone}
			}
		}
	}
	if run.walked {
		for _, kind := range run.kinds {
			add("mime:"+kind, s.m.settings.Scoring.MIMEProblem)
		}
	}
	for _, r := range run.scanners {
		if r.Err == nil && r.Skipped == "" {
			add("scanner:"+r.Scanner, r.Score)
		}
	}
	f := base
	f.Rcpt, f.Scan = rcpt, run.scan
	var direct *rules.Rule
	for _, r := range s.snap.Match(Name, f) {
		switch {
		case r.IsRate() || r.Action == rules.ActionGreylist:
		case r.Action == rules.ActionScore:
			add("rule:"+r.ID, r.Score)
			s.hit(st, r, "eom", rcpt)
		case direct == nil && !r.Match.HasResults():
			direct = r // part 1's rules on results are judged apart
		}
	}
	if run.builtin != nil {
		for i, hit := range run.builtin.hit {
			if hit {
				add("rule:"+run.builtin.rules[i].id, run.builtin.rules[i].score)
				st.AddRuleID(run.builtin.rules[i].id)
			}
		}
	}
	if direct != nil {
		s.hit(st, direct, "eom", rcpt)
		j.out = outcome{action: direct.Action, rule: direct, check: "content", result: "policy rule " + direct.ID}
		return j
	}
	j.out = outcome{check: "spam", result: fmt.Sprintf("score %.1f", j.score)}
	switch l := j.limits; {
	case l.Reject > 0 && j.score >= l.Reject:
		j.out.action, j.out.result = rules.ActionReject, fmt.Sprintf("score %.1f (reject at %.1f)", j.score, l.Reject)
	case l.Quarantine > 0 && j.score >= l.Quarantine:
		j.out.action, j.out.result = rules.ActionQuarantine, fmt.Sprintf("score %.1f (quarantine at %.1f)", j.score, l.Quarantine)
	case l.Tag > 0 && j.score >= l.Tag:
		j.out.action, j.out.result = rules.ActionTag, fmt.Sprintf("score %.1f (tag at %.1f)", j.score, l.Tag)
	}
	j.out = stricter(j.out, listOut)
	return j
}

// spamVerdict judges every accepted recipient; the strictest wins and
// the highest score is the one the headers and trail show.
type spamVerdict struct {
	out     outcome
	top     rcptJudgement
	flagged bool // X-Spam-Flag: YES
}

func (s *session) spamVerdict(st *milterrt.State, spfResult, dmarcResult string) spamVerdict {
	run := s.runContent(st)
	base := verdict.ContentFacts(st)
	base.SPF, base.DMARC, base.Direction = spfResult, dmarcResult, rules.Inbound
	var v spamVerdict
	first := true
	for _, rcpt := range st.AcceptedRcpts() {
		j := s.judge(st, rcpt, base, run)
		if first || j.score > v.top.score {
			v.top, first = j, false
		}
		v.out = stricter(v.out, j.out)
		if j.out.action == rules.ActionAllow {
			continue
		}
		if j.limits.Tag > 0 && j.score >= j.limits.Tag {
			v.flagged = true
		}
		if j.out.check == "content" && j.out.action == rules.ActionTag {
			v.flagged = true
		}
	}
	s.sec.Score = v.top.score
	s.sec.Threshold = v.top.limits.Tag
	switch v.out.action {
	case rules.ActionReject, rules.ActionTempfail, rules.ActionQuarantine, rules.ActionTag, rules.ActionDiscard:
		s.sec.Action = string(v.out.action)
	}
	for _, p := range v.top.parts {
		st.AddScore(p.name, p.score)
	}
	s.m.met.spamActions.WithLabelValues(actionLabel(v.out.action)).Inc()
	return v
}

func actionLabel(a rules.Action) string {
	if a == "" {
		return "none"
	}
	return string(a)
}

// spamHeaders removes incoming X-Spam-* fields (outside mail cannot tell
// us what it is) and writes ours, SpamAssassin's format:
// "X-Spam-Status: Yes, score=7.3 required=5.0 tests=dnsbl:zen.example,rule:r1".
func (s *session) spamHeaders(st *milterrt.State, mod milterrt.Modifier, v spamVerdict) {
	counts := map[string]int{}
	type field struct {
		name string
		idx  int
	}
	var remove []field
	for _, h := range st.Headers {
		key := strings.ToLower(h.Name)
		counts[key]++
		if strings.HasPrefix(key, "x-spam-") {
			remove = append(remove, field{h.Name, counts[key]})
		}
	}
	for i := len(remove) - 1; i >= 0; i-- {
		if err := mod.ChangeHeader(remove[i].idx, remove[i].name, ""); err != nil {
			s.m.log.Warn().Err(err).Str("txn", st.TxnID).Msg("removing an incoming X-Spam field")
		}
	}
	if len(remove) > 0 {
		st.AddReason("removed " + strconv.Itoa(len(remove)) + " incoming X-Spam field(s)")
	}
	yes := "No"
	if v.flagged {
		yes = "Yes"
		_ = mod.AddHeader(spamFlag, " YES")
	}
	var tests []string
	for _, p := range v.top.parts {
		tests = append(tests, p.name)
	}
	if len(tests) == 0 {
		tests = []string{"none"}
	}
	_ = mod.AddHeader(spamScore, " "+strconv.FormatFloat(v.top.score, 'f', 1, 64))
	// Folded after each test name where long, so the field stays within
	// RFC 5322 §2.1.1's 78 characters per line for most messages.
	status := fmt.Sprintf(" %s, score=%.1f required=%.1f tests=%s", yes, v.top.score, v.top.limits.Tag, strings.Join(tests, ",\r\n\t"))
	if err := mod.AddHeader(spamStatus, status); err != nil {
		s.m.log.Warn().Err(err).Str("txn", st.TxnID).Msg("adding X-Spam-Status")
	}
	if v.flagged && v.top.limits.SubjectPrefix != "" {
		s.prefixSubject(st, mod, v.top.limits.SubjectPrefix)
	}
}

// prefixSubject puts the tenant's prefix before the Subject, once.
func (s *session) prefixSubject(st *milterrt.State, mod milterrt.Modifier, prefix string) {
	for _, h := range st.Headers {
		if !strings.EqualFold(h.Name, "Subject") {
			continue
		}
		if strings.HasPrefix(strings.TrimLeft(h.Value, " \t"), prefix) {
			return
		}
		if err := mod.ChangeHeader(1, "Subject", " "+prefix+" "+strings.TrimLeft(h.Raw, " \t")); err != nil {
			s.m.log.Warn().Err(err).Str("txn", st.TxnID).Msg("prefixing the Subject")
		}
		return
	}
	_ = mod.AddHeader("Subject", " "+prefix)
}
