package resolver

import (
	"errors"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// answerKind is what a server's reply says about a question.
type answerKind uint8

const (
	kindData     answerKind = iota // records of the asked type
	kindNXDomain                   // the name does not exist (RCODE 3)
	kindNoData                     // the name exists, the type does not (RFC 2308 §2.2)
	kindServFail                   // the server could not answer (RCODE 2): ask another
	kindRefused                    // REFUSED, NOTIMP, FORMERR...: ask another
)

// answer is the part of a reply the look-ups use, and what the cache keeps.
type answer struct {
	kind answerKind
	// rrs are the records of the asked type at the end of the CNAME chain.
	rrs []dns.RR
	// ttl is how long the answer may be cached (0: not at all), capped.
	ttl time.Duration
	// server is the address that gave it (for net.DNSError.Server).
	server string
}

// maxCNAMEHops bounds the CNAME chain followed inside one reply (a loop or
// an absurd chain is a server failure, not a reason to spin).
const maxCNAMEHops = 8

var (
	// errMalformed: the bytes are not a DNS message.
	errMalformed = errors.New("malformed DNS reply")
	// errMismatch: a DNS message that does not answer our query (another
	// ID, another question, or not a response): a late reply to an
	// earlier query, or a spoofing attempt. The reader ignores it.
	errMismatch = errors.New("DNS reply does not match the query")
)

// checkReply parses b as the reply to q and checks that it answers q: the
// QR bit, the query ID, and the question (name compared without regard to
// case, RFC 4343; type; class), as RFC 5452 §9.1 asks of a resolver. It
// never panics on arbitrary input (FuzzAnswer).
func checkReply(q *dns.Msg, b []byte) (*dns.Msg, error) {
	r := new(dns.Msg)
	if err := r.Unpack(b); err != nil {
		return nil, errMalformed
	}
	if !r.Response || r.Id != q.Id {
		return nil, errMismatch
	}
	// A reply with an error code may come without the question (RFC 1035
	// leaves it open, and some servers drop it on FORMERR); any other
	// reply must repeat it exactly.
	if len(r.Question) == 0 && r.Rcode != dns.RcodeSuccess && r.Rcode != dns.RcodeNameError {
		return r, nil
	}
	if len(r.Question) != 1 || len(q.Question) != 1 {
		return nil, errMismatch
	}
	rq, qq := r.Question[0], q.Question[0]
	if rq.Qtype != qq.Qtype || rq.Qclass != qq.Qclass || !strings.EqualFold(rq.Name, qq.Name) {
		return nil, errMismatch
	}
	return r, nil
}

// interpret reads what reply r says about (qname, qtype): the records at
// the end of the CNAME chain that starts at qname (RFC 1034 §3.6.2), or
// which negative answer, and for how long it may be cached. qname is
// lower-case and fully qualified.
func interpret(qname string, qtype uint16, r *dns.Msg, maxTTL, maxNegTTL time.Duration) *answer {
	switch r.Rcode {
	case dns.RcodeSuccess, dns.RcodeNameError:
	case dns.RcodeServerFailure:
		return &answer{kind: kindServFail}
	default:
		return &answer{kind: kindRefused}
	}
	name := qname
	// chainTTL bounds every answer reached through a CNAME: the alias may
	// change when its own record expires.
	chainTTL := ^uint32(0)
	for hops := 0; ; hops++ {
		var found []dns.RR
		var cname *dns.CNAME
		for _, rr := range r.Answer {
			h := rr.Header()
			if h.Class != dns.ClassINET || !strings.EqualFold(h.Name, name) {
				continue
			}
			switch {
			case h.Rrtype == qtype:
				found = append(found, rr)
			case h.Rrtype == dns.TypeCNAME && cname == nil:
				cname = rr.(*dns.CNAME)
			}
		}
		if len(found) > 0 {
			// A positive answer lives as long as the shortest TTL of the
			// RRset (RFC 2181 §5.2: the TTLs of an RRset should agree;
			// the minimum is the safe reading when they do not).
			ttl := chainTTL
			for _, rr := range found {
				ttl = min(ttl, rr.Header().Ttl)
			}
			return &answer{kind: kindData, rrs: found, ttl: capTTL(ttl, maxTTL)}
		}
		if cname == nil || qtype == dns.TypeCNAME {
			break
		}
		if hops == maxCNAMEHops {
			return &answer{kind: kindServFail}
		}
		chainTTL = min(chainTTL, cname.Hdr.Ttl)
		name = strings.ToLower(dns.Fqdn(cname.Target))
	}
	a := &answer{kind: kindNoData}
	if r.Rcode == dns.RcodeNameError {
		a.kind = kindNXDomain
	}
	// RFC 2308 §5: a negative answer is cached for the minimum of the SOA
	// record's TTL and its MINIMUM field; one without an SOA in the
	// authority section SHOULD NOT be cached (ttl stays 0).
	for _, rr := range r.Ns {
		if soa, ok := rr.(*dns.SOA); ok && soa.Hdr.Class == dns.ClassINET {
			a.ttl = capTTL(min(soa.Hdr.Ttl, soa.Minttl, chainTTL), maxNegTTL)
			break
		}
	}
	return a
}

// capTTL turns a TTL in seconds into a duration no longer than max.
// RFC 2181 §8: a TTL with the top bit set is treated as zero.
func capTTL(ttl uint32, max time.Duration) time.Duration {
	if ttl > 1<<31-1 {
		return 0
	}
	return min(time.Duration(ttl)*time.Second, max)
}
