// Package dmarc evaluates DMARC (RFC 7489) for the policy milter: it reads
// the author domain from the From field (§6.6.1), discovers the policy
// record at _dmarc.<author domain> and then at the organisational domain
// (§6.6.3, the public suffix list through golang.org/x/net/publicsuffix,
// §3.2), checks SPF and DKIM identifier alignment, strict or relaxed (§3.1),
// and chooses the disposition from p or sp and pct (§6.3, §6.6.4).
//
// The SPF and DKIM results come in from the checks that produced them; this
// package only looks up the DMARC records, through the resolver it is given.
//
// From fields that are not exactly one field with one mailbox are outside
// RFC 7489 (§6.6.1: "the handling of those that are forbidden under [MAIL]
// or that contain no or multiple authors is outside of the scope of this
// document (and intentionally left to local policy)"). This package reads
// them as follows and reports each case in Result.FromProblems, so the
// milter's local policy can act on it:
//   - several mailboxes, in one field or in several fields: §6.6.1 "The case
//     of a syntactically valid multi-valued RFC5322.From field presents a
//     particular challenge. The process in this case is to apply the DMARC
//     check using each of those domains found in the RFC5322.From field as
//     the Author Domain and apply the most strict policy selected among the
//     checks that fail." Each distinct domain is evaluated; several From
//     fields are read the same way, so a second From cannot hide a failing
//     author from the check;
//   - no From field, or none with a readable domain: no author domain to
//     evaluate, so result permerror (RFC 7489 §11.2's "permanent error
//     occurred during DMARC evaluation") with disposition none; a local
//     policy may reject such a message (RFC 5322 §3.6 requires one From).
package dmarc

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"golang.org/x/net/publicsuffix"

	"github.com/geomilter/geomilter/shared/resolver"
	"github.com/geomilter/geomilter/shared/trail"
)

// Result keywords (RFC 7489 §11.2, RFC 8601 §2.7.6).
const (
	Pass      = "pass"
	Fail      = "fail"
	None      = "none"
	TempError = "temperror"
	PermError = "permerror"
)

// Dispositions: what the receiver should do with a message (RFC 7489 §6.3
// p, §6.6.4).
const (
	DispositionNone       = "none"
	DispositionQuarantine = "quarantine"
	DispositionReject     = "reject"
)

// DKIMResult is one DKIM signature's verification, as the DKIM check
// reports it.
type DKIMResult struct {
	Domain   string // d=
	Selector string // s=
	Result   string // pass, fail, neutral, policy, temperror, permerror, none
}

// Input is what DMARC needs of a message.
type Input struct {
	// From holds the values of every From header field, raw (folded or
	// not), in message order.
	From []string
	// SPFResult is the SPF result (RFC 7208 keyword) and SPFDomain the
	// domain it was for: the MAIL FROM domain, or the HELO name when MAIL
	// FROM was null (RFC 7489 §3.1.2 uses the RFC5321.MailFrom domain;
	// for a null sender that is the HELO identity, RFC 7208 §2.4).
	SPFResult string
	SPFDomain string
	// DKIM lists every signature's result.
	DKIM []DKIMResult
	// Sample returns a number in [0, 100) for pct sampling (§6.6.4); nil
	// uses math/rand/v2. Tests pass a fixed one.
	Sample func() int
}

// Result is the DMARC evaluation of a message.
type Result struct {
	// Result is pass, fail, none, temperror or permerror.
	Result string
	// Domain is the author domain evaluated (header.from), the one that
	// decided when there were several.
	Domain string
	// OrgDomain is Domain's organisational domain (§3.2).
	OrgDomain string
	// RecordDomain is where the policy record was found (Domain or
	// OrgDomain), "" when none was.
	RecordDomain string
	// Record is the policy record used, nil when none was.
	Record *Record
	// Policy is the policy that applied (the p or sp value: none,
	// quarantine, reject), "" when no policy applied. PolicyTag says which
	// tag it came from: "p" or "sp" (§6.3 sp: the organisational domain's
	// record for a subdomain author).
	Policy    string
	PolicyTag string
	// Disposition is what the policy asks for this message: none,
	// quarantine or reject; none unless Result is fail. SampledOut is true
	// when pct left the message out of the policy, and Disposition is then
	// the next less strict one (§6.6.4).
	Disposition string
	SampledOut  bool
	// SPFAligned and DKIMAligned tell which identifier passed aligned.
	SPFAligned  bool
	DKIMAligned bool
	// FromProblems lists what was irregular about the From fields (the
	// From* constants); empty for a single From with a single mailbox.
	FromProblems []string
	// Authors has one result per author domain when there were several.
	Authors []Result
	// Reason says why, for the trail.
	Reason string
	// Err is the error behind temperror or permerror.
	Err error
	// Duration is how long the evaluation took, DNS included.
	Duration time.Duration
}

// Comment is the Authentication-Results comment DMARC implementations add
// after the result, as OpenDMARC does: "p=reject dis=none" (the policy that
// applied and the disposition chosen); "" when no policy applied.
func (r Result) Comment() string {
	if r.Policy == "" {
		return ""
	}
	return "p=" + r.Policy + " dis=" + r.Disposition
}

// Trail returns the result as the trail records it.
func (r Result) Trail() trail.DMARCResult {
	return trail.DMARCResult{Domain: r.Domain, Policy: r.Policy, Result: r.Result,
		SPFAligned: r.SPFAligned, DKIMAligned: r.DKIMAligned, Disposition: r.Disposition}
}

// Evaluate runs DMARC for one message. Look-ups go through r and end with
// ctx (temperror then).
func Evaluate(ctx context.Context, r resolver.Resolver, in Input) Result {
	start := time.Now()
	domains, problems := authorDomains(in.From)
	if len(domains) == 0 {
		res := Result{Result: PermError, Disposition: DispositionNone, FromProblems: problems}
		res.Err = fmt.Errorf("dmarc: no author domain (%s)", strings.Join(problems, ", "))
		res.Reason = res.Err.Error()
		res.Duration = time.Since(start)
		return res
	}
	var results []Result
	for _, d := range domains {
		results = append(results, evaluate(ctx, r, d, in))
	}
	res := combine(results)
	res.FromProblems = problems
	if len(results) > 1 {
		res.Authors = results
	}
	res.Duration = time.Since(start)
	return res
}

// combine picks the overall result of several author domains (§6.6.1:
// "apply the most strict policy selected among the checks that fail"):
// the failing one with the strictest disposition; else a temperror, a
// permerror, a pass, and none last.
func combine(results []Result) Result {
	best := results[0]
	for _, r := range results[1:] {
		if rank(r) > rank(best) {
			best = r
		}
	}
	return best
}

func rank(r Result) int {
	switch r.Result {
	case Fail:
		return 10 + strictness(r.Disposition)
	case TempError:
		return 4
	case PermError:
		return 3
	case Pass:
		return 2
	}
	return 1
}

func strictness(disposition string) int {
	switch disposition {
	case DispositionReject:
		return 2
	case DispositionQuarantine:
		return 1
	}
	return 0
}

// evaluate runs DMARC for one author domain.
func evaluate(ctx context.Context, r resolver.Resolver, domain string, in Input) Result {
	res := Result{Domain: domain, OrgDomain: orgDomain(domain), Disposition: DispositionNone}
	rec, at, lookup := discover(ctx, r, domain, res.OrgDomain)
	switch lookup.result {
	case TempError, PermError:
		res.Result, res.Err, res.Reason = lookup.result, lookup.err, lookup.err.Error()
		return res
	case None:
		res.Result, res.Reason = None, lookup.reason
		return res
	}
	res.Record, res.RecordDomain = rec, at

	// §3.1.2: SPF aligns when it passed for a domain that matches.
	if strings.EqualFold(in.SPFResult, "pass") && aligned(in.SPFDomain, domain, res.OrgDomain, rec.StrictSPF) {
		res.SPFAligned = true
	}
	// §3.1.1: DKIM aligns when a signature that verified has a d= that
	// matches; any one suffices.
	for _, k := range in.DKIM {
		if strings.EqualFold(k.Result, "pass") && aligned(k.Domain, domain, res.OrgDomain, rec.StrictDKIM) {
			res.DKIMAligned = true
			break
		}
	}

	// §6.3 sp: "Requested Mail Receiver policy for all subdomains"; it
	// applies when the record was found at the organisational domain for
	// an author domain below it (§6.6.3 step 3), else p does.
	res.Policy, res.PolicyTag = rec.Policy, "p"
	if at != domain && rec.SubdomainPolicy != "" {
		res.Policy, res.PolicyTag = rec.SubdomainPolicy, "sp"
	}

	// §4.2: "A message satisfies the DMARC checks if at least one of the
	// supported authentication mechanisms ... produces a "pass" result [and]
	// produces that result based on an identifier that is in alignment".
	if res.SPFAligned || res.DKIMAligned {
		res.Result = Pass
		res.Reason = alignedReason(res)
		return res
	}
	res.Result = Fail
	res.Reason = "no aligned pass"
	res.Disposition = res.Policy
	// §6.6.4 / §6.3 pct: the policy applies to pct% of failing messages;
	// the others get the next less strict one (reject → quarantine,
	// quarantine → none).
	if rec.Percent < 100 && res.Policy != PolicyNone {
		n := sample(in.Sample)
		if n >= rec.Percent {
			res.SampledOut = true
			if res.Policy == PolicyReject {
				res.Disposition = DispositionQuarantine
			} else {
				res.Disposition = DispositionNone
			}
			res.Reason += fmt.Sprintf(", sampled out (pct=%d)", rec.Percent)
		}
	}
	return res
}

func alignedReason(r Result) string {
	switch {
	case r.SPFAligned && r.DKIMAligned:
		return "spf and dkim aligned"
	case r.SPFAligned:
		return "spf aligned"
	}
	return "dkim aligned"
}

func sample(f func() int) int {
	if f == nil {
		return rand.IntN(100)
	}
	return f()
}

// aligned compares an authenticated identifier with the author domain
// (RFC 7489 §3.1): strict mode requires the same name, relaxed the same
// organisational domain.
func aligned(id, author, authorOrg string, strict bool) bool {
	id = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(id), "."))
	if id == "" {
		return false
	}
	if id == author {
		return true
	}
	return !strict && orgDomain(id) == authorOrg
}

// orgDomain is a domain's organisational domain (RFC 7489 §3.2): the public
// suffix plus one label. A name that is itself a public suffix (or that the
// list cannot split) is its own.
func orgDomain(domain string) string {
	org, err := publicsuffix.EffectiveTLDPlusOne(domain)
	if err != nil {
		return domain
	}
	return org
}

type lookupOutcome struct {
	result string // "" found, or None, TempError, PermError
	reason string
	err    error
}

// discover finds the policy record for domain (RFC 7489 §6.6.3).
func discover(ctx context.Context, r resolver.Resolver, domain, org string) (*Record, string, lookupOutcome) {
	if r == nil {
		return nil, "", lookupOutcome{result: TempError, err: fmt.Errorf("dmarc: no DNS resolver")}
	}
	// Step 1: _dmarc.<author domain>.
	recs, out := query(ctx, r, domain)
	if out.result != "" {
		return nil, "", out
	}
	at := domain
	// Step 3: "If the set is now empty, the Mail Receiver MUST query the DNS
	// for a DMARC TXT record at the DNS domain matching the Organizational
	// Domain in place of the RFC5322.From domain".
	if len(recs) == 0 && org != domain {
		recs, out = query(ctx, r, org)
		if out.result != "" {
			return nil, "", out
		}
		at = org
	}
	switch len(recs) {
	case 0:
		// Step 4: no records: "policy discovery terminates and DMARC
		// processing is not applied to this message."
		return nil, "", lookupOutcome{result: None, reason: "no DMARC record"}
	case 1:
	default:
		// Step 4: multiple records: discovery terminates too. We report
		// permerror (RFC 7489 §11.2: "a permanent error ... such as ... a
		// syntactically incorrect DMARC record"), which applies no
		// policy either.
		return nil, "", lookupOutcome{result: PermError, err: fmt.Errorf("dmarc: %d records at _dmarc.%s", len(recs), at)}
	}
	rec, valid := parseRecord(recs[0])
	if !valid {
		// Step 5: "If a retrieved policy record does not contain a valid "p"
		// tag, or contains an "sp" tag that is not valid, then: if a "rua"
		// tag is present and contains at least one syntactically valid
		// reporting URI, the Mail Receiver SHOULD act as if a record
		// containing a valid "v" tag and "p=none" was retrieved, and
		// continue processing; otherwise, the Mail Receiver applies no DMARC
		// processing to this message." With no DMARC processing, the
		// result reported is permerror (§11.2) and nothing is enforced.
		if !rec.HasReportURI {
			return nil, "", lookupOutcome{result: PermError,
				err: fmt.Errorf("dmarc: invalid record at _dmarc.%s: %s", at, strings.Join(rec.Problems, "; "))}
		}
		rec.Policy, rec.SubdomainPolicy = PolicyNone, ""
	}
	return &rec, at, lookupOutcome{}
}

// query returns the DMARC records at _dmarc.<domain> (step 2 discards the
// rest); a name or type that does not exist is no records.
func query(ctx context.Context, r resolver.Resolver, domain string) ([]string, lookupOutcome) {
	name := "_dmarc." + domain
	txts, err := r.LookupTXT(ctx, name)
	switch resolver.Classify(err) {
	case resolver.NotFound:
		return nil, lookupOutcome{}
	case resolver.Temporary, resolver.Permanent:
		// A look-up that did not answer leaves the policy unknown: a
		// retry may learn it, so temperror (RFC 7489 §11.2 "temperror: A
		// temporary error occurred during DMARC evaluation").
		return nil, lookupOutcome{result: TempError, err: fmt.Errorf("dmarc: looking up %s: %w", name, err)}
	}
	var recs []string
	for _, t := range txts {
		if isRecord(t) {
			recs = append(recs, t)
		}
	}
	return recs, lookupOutcome{}
}
