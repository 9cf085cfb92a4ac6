package access

import (
	"github.com/geomilter/geomilter/shared/milterrt"
	"net/netip"
	"slices"
	"strings"

	"github.com/geomilter/geomilter/shared/rules"
)

// stage is where in the SMTP dialogue a rule can first be evaluated: the
// stage at which every fact it needs (conditions, scope, rate key) is final.
type stage uint8

const (
	atConnect stage = iota
	atHelo
	atMail
	atRcpt
)

// String names the stage as trail events do.
func (s stage) String() string {
	switch s {
	case atConnect:
		return "connect"
	case atHelo:
		return "helo"
	case atMail:
		return "mail"
	}
	return "rcpt"
}

// condStage is the stage at which all of m's conditions are known, the
// direction condition aside.
func condStage(m *rules.Match) stage {
	switch {
	case len(m.Rcpt) > 0 || len(m.RcptDomain) > 0:
		return atRcpt
	case len(m.Sender) > 0 || len(m.SenderDomain) > 0 || len(m.SASLUser) > 0:
		return atMail
	case len(m.Helo) > 0:
		return atHelo
	}
	return atConnect
}

// stageFor returns the stage at which r can be evaluated for a message of
// direction dir. With DirectionUnknown (before MAIL, when a SASL login may
// still make the client a tenant's relay) it is the later of both
// directions, and a direction condition is not known before MAIL.
//
// Scope: inbound, tenant and domain scopes follow the recipient (RCPT);
// outbound they follow the relay's tenant and the sender's domain, final at
// MAIL (the SASL login arrives with MAIL and may name another tenant than
// the client address). A rate rule counts messages, so it is evaluated at
// MAIL at the earliest; counted per tenant, inbound, it needs the recipient.
func stageFor(r *rules.Rule, dir rules.Direction) stage {
	if dir == rules.DirectionUnknown {
		s := max(stageFor(r, rules.Inbound), stageFor(r, rules.Outbound))
		if r.Match.Direction != rules.DirectionUnknown {
			s = max(s, atMail)
		}
		return s
	}
	s := condStage(&r.Match)
	if r.Scope.Kind != rules.ScopeGlobal {
		if dir == rules.Inbound {
			s = atRcpt
		} else {
			s = max(s, atMail)
		}
	}
	if r.Rate != nil {
		s = max(s, atMail)
		if r.Rate.Key == rules.RateTenant && dir == rules.Inbound {
			s = atRcpt
		}
	}
	return s
}

// prec is a rule's place in the precedence order of docs/rules.md, the
// order in which Snapshot.Match returns rules: most specific scope first,
// then lower priority, then restrictive before permissive, then id.
type prec struct {
	scope      rules.ScopeKind
	priority   int
	permissive bool
	id         string
}

func precOf(r *rules.Rule) prec {
	return prec{scope: r.Scope.Kind, priority: r.Priority, permissive: !r.Restrictive(), id: r.ID}
}

// before reports whether a comes before b in precedence order.
func (a prec) before(b prec) bool {
	if a.scope != b.scope {
		return a.scope > b.scope
	}
	if a.priority != b.priority {
		return a.priority < b.priority
	}
	if a.permissive != b.permissive {
		return !a.permissive
	}
	return a.id < b.id
}

// shadowIndex holds the rules that can only be evaluated after some stage,
// so that a decision found at that stage can be checked: it is final only
// if no such rule comes before it in precedence order, for this client.
// Rules are filed by their client_ip or client_name condition (a necessary
// condition, known at connect) so that a rule written for other clients
// does not hold back decisions for this one; every other rule is "any".
// Each entry keeps only the first rule in precedence order.
type shadowIndex struct {
	anyFirst prec
	hasAny   bool
	v4bits   []int // prefix lengths in use, for lookups
	v6bits   []int
	nets     map[netip.Prefix]prec
	names    map[string]prec // exact client names
	suffixes map[string]prec // ".example.com" stored as "example.com"
}

func keepFirst[K comparable](m map[K]prec, k K, p prec) {
	if cur, ok := m[k]; !ok || p.before(cur) {
		m[k] = p
	}
}

func (ix *shadowIndex) add(r *rules.Rule) {
	p := precOf(r)
	switch {
	case len(r.Match.ClientIP) > 0:
		if ix.nets == nil {
			ix.nets = make(map[netip.Prefix]prec)
		}
		for _, n := range r.Match.ClientIP {
			// Rules hold masked, unmapped prefixes (rules.Compile validated them).
			if n.Addr().Is4() {
				if !slices.Contains(ix.v4bits, n.Bits()) {
					ix.v4bits = append(ix.v4bits, n.Bits())
				}
			} else if !slices.Contains(ix.v6bits, n.Bits()) {
				ix.v6bits = append(ix.v6bits, n.Bits())
			}
			keepFirst(ix.nets, n, p)
		}
	case len(r.Match.ClientName) > 0:
		if ix.names == nil {
			ix.names, ix.suffixes = make(map[string]prec), make(map[string]prec)
		}
		for _, n := range r.Match.ClientName {
			if s, ok := strings.CutPrefix(n, "."); ok {
				keepFirst(ix.suffixes, s, p)
			} else {
				keepFirst(ix.names, n, p)
			}
		}
	default:
		if !ix.hasAny || p.before(ix.anyFirst) {
			ix.anyFirst, ix.hasAny = p, true
		}
	}
}

// first returns the first rule (in precedence order) of the index that may
// still apply to a client with this address and name.
func (ix *shadowIndex) first(ip netip.Addr, name string) (prec, bool) {
	best, found := ix.anyFirst, ix.hasAny
	take := func(p prec) {
		if !found || p.before(best) {
			best, found = p, true
		}
	}
	if ip.IsValid() && len(ix.nets) > 0 {
		bits := ix.v6bits
		if ip.Is4() {
			bits = ix.v4bits
		}
		for _, b := range bits {
			if p, ok := ix.nets[netip.PrefixFrom(ip, b).Masked()]; ok {
				take(p)
			}
		}
	}
	if name != "" && len(ix.names)+len(ix.suffixes) > 0 {
		if p, ok := ix.names[name]; ok {
			take(p)
		}
		for d := parentDomain(name); d != ""; d = parentDomain(d) {
			if p, ok := ix.suffixes[d]; ok {
				take(p)
			}
		}
	}
	return best, found
}

// blocksGlobal reports whether some non-global rule may still apply to
// every client: then no global rule can be final yet, and the stage can
// skip its lookup altogether.
func (ix *shadowIndex) blocksGlobal() bool {
	return ix.hasAny && ix.anyFirst.scope != rules.ScopeGlobal
}

func parentDomain(d string) string {
	if i := strings.IndexByte(d, '.'); i >= 0 {
		return d[i+1:]
	}
	return ""
}

// analysis is what the milter precomputes once per rules snapshot to know
// whether a decision found before RCPT is final.
type analysis struct {
	snap *rules.Snapshot
	// afterConnect and afterHelo hold the rules evaluated later than that
	// stage whatever the direction; afterMail, per direction (index 0
	// inbound, 1 outbound), those evaluated at RCPT.
	afterConnect, afterHelo shadowIndex
	afterMail               [2]shadowIndex
	// decides is where a rule of this set can decide: connect and helo only
	// when some rule's conditions are all known there (a rule not final at
	// connect stays not final at helo unless a helo rule exists), MAIL and
	// RCPT always (relay, sender and rate rules).
	decides milterrt.Stages
}

func dirIndex(d rules.Direction) int {
	if d == rules.Outbound {
		return 1
	}
	return 0
}

// analyse walks the snapshot's access rules once. It copies the rule set
// (Snapshot.Set), which is why it runs off the mail path.
func analyse(snap *rules.Snapshot) *analysis {
	a := &analysis{snap: snap, decides: milterrt.StageMail | milterrt.StageRcpt}
	set := snap.Set()
	for i := range set.Rules {
		r := &set.Rules[i]
		if r.Milter != Name || !r.Enabled {
			continue
		}
		switch stageFor(r, rules.DirectionUnknown) {
		case atConnect:
			a.decides |= milterrt.StageConnect
		case atHelo:
			a.decides |= milterrt.StageHelo
		}
		if s := stageFor(r, rules.DirectionUnknown); s > atConnect {
			a.afterConnect.add(r)
			if s > atHelo {
				a.afterHelo.add(r)
			}
		}
		for _, d := range []rules.Direction{rules.Inbound, rules.Outbound} {
			if r.Match.Direction != rules.DirectionUnknown && r.Match.Direction != d {
				continue // can never apply in this direction
			}
			if stageFor(r, d) > atMail {
				a.afterMail[dirIndex(d)].add(r)
			}
		}
	}
	return a
}
