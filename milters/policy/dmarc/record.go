package dmarc

import (
	"net/url"
	"strconv"
	"strings"
)

// Policy values of the p and sp tags (RFC 7489 §6.3).
const (
	PolicyNone       = "none"
	PolicyQuarantine = "quarantine"
	PolicyReject     = "reject"
)

// Record is a DMARC policy record, the tags this package uses (RFC 7489
// §6.3). parseRecord fills defaults for absent or malformed optional tags.
type Record struct {
	Policy          string // p
	SubdomainPolicy string // sp; "" when absent (p applies)
	StrictDKIM      bool   // adkim=s; default relaxed
	StrictSPF       bool   // aspf=s; default relaxed
	Percent         int    // pct, 0..100; default 100
	// HasReportURI is true when rua names at least one URI that parses:
	// §6.6.3 step 5 keeps a record with a bad p (as p=none) only then.
	HasReportURI bool
	// Problems lists the tags that were malformed and replaced by their
	// defaults (§6.3: "syntax errors in the remainder of the record SHOULD
	// be discarded in favor of default values").
	Problems []string
}

// Why go-msgauth/dmarc.Parse is not used: it fails the whole record on any
// bad optional tag (a pct of 150, an unknown fo value), while RFC 7489 §6.3
// says such errors fall back to the defaults, and §6.6.3 step 5 keeps a
// record whose p is bad as p=none when it has a usable rua. The tag-list
// grammar is small enough to read here with those rules.

// isRecord tells whether txt starts with the version tag (RFC 7489 §6.6.3
// step 2: "Records that do not start with a "v=" tag that identifies the
// current version of DMARC are discarded"; §6.3 v: "MUST have the value of
// "DMARC1" ... MUST match precisely ... MUST be the first tag").
func isRecord(txt string) bool {
	first, _, _ := strings.Cut(txt, ";")
	name, value, ok := strings.Cut(first, "=")
	// §6.4: dmarc-version = "v" *WSP "=" *WSP %x44 %x4d %x41 %x52 %x43 %x31:
	// the tag name is an ABNF string (any case, RFC 5234 §2.3), the value
	// exact octets.
	return ok && strings.EqualFold(strings.TrimSpace(name), "v") && strings.TrimSpace(value) == "DMARC1"
}

// parseRecord reads a record isRecord accepted. valid is false when p is
// absent or bad, or sp is present and bad (§6.6.3 step 5); the caller then
// uses the record as p=none only if HasReportURI.
func parseRecord(txt string) (rec Record, valid bool) {
	rec = Record{Percent: 100}
	var pSeen, pOK, spOK = false, false, true
	// §6.4: dmarc-record = dmarc-version dmarc-sep *(dmarc-tag dmarc-sep);
	// tag names and the values of p, sp, adkim and aspf are ABNF strings,
	// so compared without case (RFC 5234 §2.3).
	for i, part := range strings.Split(txt, ";") {
		if i == 0 {
			continue // v=DMARC1, checked by isRecord
		}
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, value, ok := strings.Cut(part, "=")
		name, value = strings.ToLower(strings.TrimSpace(name)), strings.TrimSpace(value)
		if !ok {
			rec.Problems = append(rec.Problems, "malformed tag "+quoteShort(part))
			continue
		}
		switch name {
		case "p":
			pSeen = true
			rec.Policy, pOK = policyValue(value)
		case "sp":
			rec.SubdomainPolicy, spOK = policyValue(value)
			if !spOK {
				rec.SubdomainPolicy = ""
			}
		case "adkim", "aspf":
			strict := strings.EqualFold(value, "s")
			if !strict && !strings.EqualFold(value, "r") {
				rec.Problems = append(rec.Problems, name+": "+quoteShort(value))
			}
			if name == "adkim" {
				rec.StrictDKIM = strict
			} else {
				rec.StrictSPF = strict
			}
		case "pct":
			// §6.3 pct: "Integer percentage of messages from the Domain
			// Owner's mail stream to which the DMARC policy is to be
			// applied ... 0 to 100".
			n, err := strconv.Atoi(value)
			if err != nil || n < 0 || n > 100 {
				rec.Problems = append(rec.Problems, "pct: "+quoteShort(value))
				continue
			}
			rec.Percent = n
		case "rua":
			for _, u := range strings.Split(value, ",") {
				// §6.2: a DMARC URI is a URI with an optional "!" size
				// suffix.
				u, _, _ = strings.Cut(strings.TrimSpace(u), "!")
				if pu, err := url.Parse(u); err == nil && pu.Scheme != "" {
					rec.HasReportURI = true
				}
			}
		default:
			// §6.3: "Unknown tags MUST be ignored." (ruf, fo, rf, ri are
			// reporting tags this receiver does not act on.)
		}
	}
	if !pSeen {
		rec.Problems = append(rec.Problems, "p: missing")
	} else if !pOK {
		rec.Problems = append(rec.Problems, "p: not none, quarantine or reject")
	}
	if !spOK {
		rec.Problems = append(rec.Problems, "sp: not none, quarantine or reject")
	}
	return rec, pSeen && pOK && spOK
}

func policyValue(v string) (string, bool) {
	switch p := strings.ToLower(v); p {
	case PolicyNone, PolicyQuarantine, PolicyReject:
		return p, true
	}
	return "", false
}

// quoteShort quotes a piece of a record for an error text, cut to a length
// a log line can carry.
func quoteShort(s string) string {
	if len(s) > 40 {
		s = s[:40] + "…"
	}
	return strconv.Quote(s)
}
