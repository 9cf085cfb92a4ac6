package rules

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
)

// Snapshot is a compiled, immutable rule set. All methods are safe for
// concurrent use; a newer Snapshot replaces an older one as a whole
// (the owner keeps it in an atomic.Pointer), so a session never sees half a
// reload.
type Snapshot struct {
	set    *Set    // private copy, in the caller's order
	crules []crule // in precedence order; the index refers to positions here
	// milters holds one index per milter that has enabled rules.
	milters map[string]*index

	tenantByID     map[string]*Tenant
	tenantByDomain map[string]*Tenant
	tenantBySASL   map[string]*Tenant
	relayNets      prefixTable // values index set.Tenants
	signing        signingIndex
	// scanners caches each milter's Scanner (scan.go), built on first use.
	scanners map[string]*scannerSlot

	version  string
	sumOnce  sync.Once
	checksum string
}

// Compile validates set and builds its Snapshot. The Snapshot owns a deep
// copy, so the caller may keep changing set. An invalid set is an error
// listing every problem (sets from Parse, SetFromDocs and LoadSaved are
// valid already).
func Compile(set *Set) (*Snapshot, error) {
	own := set.Clone()
	if err := own.Validate(); err != nil {
		return nil, fmt.Errorf("compile rules: %w", err)
	}

	s := &Snapshot{
		set:            own,
		milters:        make(map[string]*index),
		tenantByID:     make(map[string]*Tenant, len(own.Tenants)),
		tenantByDomain: make(map[string]*Tenant),
		tenantBySASL:   make(map[string]*Tenant),
		version:        own.Version,
		scanners:       make(map[string]*scannerSlot),
	}
	for _, m := range Milters() {
		s.scanners[m] = &scannerSlot{}
	}
	for i := range own.Tenants {
		t := &own.Tenants[i]
		s.tenantByID[t.ID] = t
		for _, d := range t.Domains {
			s.tenantByDomain[d] = t
		}
		for _, u := range t.Relay.SASLUsers {
			s.tenantBySASL[u] = t
		}
		for _, p := range t.Relay.Networks {
			s.relayNets.add(p, int32(i))
		}
	}
	s.signing = compileSigning(own.Signing)
	order := precedenceOrder(own.Rules)
	s.crules = make([]crule, len(order))
	slabSize := 0
	for i := range own.Rules {
		if needsConds(&own.Rules[i].Match) {
			slabSize++
		}
	}
	slab := make([]conds, 0, slabSize) // never grows, so pointers into it stay valid
	scanSlots := make(map[string]int32)
	for rank, i := range order {
		r := &own.Rules[i]
		s.crules[rank] = compileRule(r, s.tenantByID, &slab)
		if !r.Enabled {
			continue
		}
		if r.Match.HasScan() {
			// Slots number a milter's enabled scan rules in precedence
			// order; its Scanner keeps per-slot state in the same order.
			s.crules[rank].scan = scanSlots[r.Milter]
			scanSlots[r.Milter]++
		}
		ix := s.milters[r.Milter]
		if ix == nil {
			ix = newIndex()
			s.milters[r.Milter] = ix
		}
		ix.add(int32(rank), r, s.crules[rank].scan)
	}
	return s, nil
}

// precedenceOrder returns the positions of rs in the order Match returns
// them: by milter (to keep each milter's rules together), then the most
// specific scope first (domain, tenant, global), lower priority first,
// restrictive actions before permissive ones, and finally by id, so equal
// rules have one order on every node. The index stores ranks in this
// order, so sorting candidate ranks sorts a result.
func precedenceOrder(rs []Rule) []int32 {
	type key struct {
		milter     string
		scope      ScopeKind
		priority   int
		permissive bool
		id         string
		i          int32
	}
	keys := make([]key, len(rs))
	for i := range rs {
		r := &rs[i]
		keys[i] = key{r.Milter, r.Scope.Kind, r.Priority, !r.Restrictive(), r.ID, int32(i)}
	}
	slices.SortFunc(keys, func(a, b key) int {
		if c := strings.Compare(a.milter, b.milter); c != 0 {
			return c
		}
		if c := cmp.Compare(b.scope, a.scope); c != 0 {
			return c
		}
		if c := cmp.Compare(a.priority, b.priority); c != 0 {
			return c
		}
		if a.permissive != b.permissive {
			if a.permissive {
				return 1
			}
			return -1
		}
		return strings.Compare(a.id, b.id)
	})
	order := make([]int32, len(keys))
	for rank, k := range keys {
		order[rank] = k.i
	}
	return order
}

// Checksum is "sha256:" and the hash of the canonical documents (the body
// Save writes), so two nodes with the same rules report the same checksum.
// It is computed on first use: hashing 100,000 documents costs more than
// compiling them, and the mail path never needs it.
func (s *Snapshot) Checksum() string {
	s.sumOnce.Do(func() {
		h := sha256.New()
		if _, err := writeBody(h, s.set); err != nil {
			// Only an unencodable document gets here, which validation
			// rules out; say so rather than return a plausible checksum.
			s.checksum = "error: " + err.Error()
			return
		}
		s.checksum = "sha256:" + hex.EncodeToString(h.Sum(nil))
	})
	return s.checksum
}

// Len is the number of rules in the snapshot, disabled ones included.
func (s *Snapshot) Len() int { return len(s.set.Rules) }

// Version is the set's version label, or a short form of the checksum when
// the set had none.
func (s *Snapshot) Version() string {
	if s.version != "" {
		return s.version
	}
	return s.Checksum()[:min(len(s.Checksum()), len("sha256:")+16)]
}

// Set returns a deep copy of the snapshot's rules and tenants, in the order
// of the set it was compiled from.
func (s *Snapshot) Set() *Set { return s.set.Clone() }

// Rule returns the rule with the given id, or nil. The rule is shared and
// must not be modified.
func (s *Snapshot) Rule(id string) *Rule {
	for i := range s.set.Rules {
		if s.set.Rules[i].ID == id {
			return &s.set.Rules[i]
		}
	}
	return nil
}

// Tenant returns the tenant with the given id, or nil. Shared; do not modify.
func (s *Snapshot) Tenant(id string) *Tenant { return s.tenantByID[id] }

// TenantOf returns the tenant owning exactly this domain (subdomains are not
// included), or nil.
func (s *Snapshot) TenantOf(domain string) *Tenant {
	if len(s.tenantByDomain) == 0 {
		return nil
	}
	return s.tenantByDomain[NormDomain(domain)]
}

// TenantForRelay returns the tenant whose outbound relay this client is: the
// tenant listing the SASL login if there is one (an authenticated login is
// the stronger proof), otherwise the tenant with the longest relay network
// containing ip. Nil if neither.
func (s *Snapshot) TenantForRelay(ip netip.Addr, saslUser string) *Tenant {
	if saslUser != "" && len(s.tenantBySASL) > 0 {
		if t := s.tenantBySASL[NormName(saslUser)]; t != nil {
			return t
		}
	}
	if s.relayNets.empty() || !ip.IsValid() {
		return nil
	}
	if i, ok := s.relayNets.longest(ip.Unmap().WithZone("")); ok {
		return &s.set.Tenants[i]
	}
	return nil
}

// keyKind names what an index entry is keyed by.
type keyKind uint8

const (
	kSenderAddr keyKind = iota // full address
	kSenderDom                 // exact domain
	kSenderSub                 // parent domain of a ".suffix" pattern
	kRcptAddr
	kRcptDom
	kRcptSub
	kSASL
	kHeloExact
	kHeloSub
	kNameExact
	kNameSub
	kScopeDomain
	kScopeTenant
	numKinds
)

// index finds the candidate rules of one milter for a message. Every rule
// is filed under the values of exactly one of its conditions (every
// condition must hold, so any one of them is a necessary condition): the
// most selective it has, or its scope, or — a global rule without any
// indexable condition — the scan list. A lookup gathers the candidates
// from every table the message's facts touch and verifies each in full.
// Values are rule ranks (positions in Snapshot.crules).
type index struct {
	ips        prefixTable
	strs       [numKinds]map[string]int32 // nil when a kind is unused
	post       postings
	nullSender []int32
	scan       []int32
	// scanned are rules that would be in scan but have a scan key (body,
	// attachment, size, url_domain): a lookup takes only those whose scan
	// keys held, so a thousand content rules cost nothing per lookup but
	// for the ones that matched.
	scanned     []int32
	scannedSlot []int32
}

func newIndex() *index { return &index{} }

func (ix *index) put(k keyKind, val string, i int32) {
	m := ix.strs[k]
	if m == nil {
		m = make(map[string]int32)
		ix.strs[k] = m
	}
	cur, ok := m[val]
	m[val] = ix.post.add(cur, ok, i)
}

// putAddr files an address-pattern condition (sender, rcpt).
func (ix *index) putAddr(addr, dom, sub keyKind, vs []string, i int32) {
	for _, v := range vs {
		switch {
		case v == "<>":
			ix.nullSender = append(ix.nullSender, i)
		case strings.HasPrefix(v, "@"):
			ix.put(dom, v[1:], i)
		case strings.Contains(v, "@"):
			ix.put(addr, v, i)
		case strings.HasPrefix(v, "."):
			ix.put(sub, v[1:], i)
		default:
			ix.put(dom, v, i)
		}
	}
}

// putHost files a host-pattern condition (helo, client_name, *_domain).
func (ix *index) putHost(exact, sub keyKind, vs []string, i int32) {
	for _, v := range vs {
		if strings.HasPrefix(v, ".") {
			ix.put(sub, v[1:], i)
		} else {
			ix.put(exact, v, i)
		}
	}
}

func (ix *index) add(i int32, r *Rule, slot int32) {
	m := &r.Match
	switch {
	case len(m.SASLUser) > 0:
		for _, v := range m.SASLUser {
			ix.put(kSASL, v, i)
		}
	case len(m.Rcpt) > 0:
		ix.putAddr(kRcptAddr, kRcptDom, kRcptSub, m.Rcpt, i)
	case len(m.Sender) > 0:
		ix.putAddr(kSenderAddr, kSenderDom, kSenderSub, m.Sender, i)
	case len(m.ClientIP) > 0:
		for _, p := range m.ClientIP {
			ix.ips.add(p, i)
		}
	case len(m.Helo) > 0:
		ix.putHost(kHeloExact, kHeloSub, m.Helo, i)
	case len(m.ClientName) > 0:
		ix.putHost(kNameExact, kNameSub, m.ClientName, i)
	case len(m.RcptDomain) > 0:
		ix.putHost(kRcptDom, kRcptSub, m.RcptDomain, i)
	case len(m.SenderDomain) > 0:
		ix.putHost(kSenderDom, kSenderSub, m.SenderDomain, i)
	case r.Scope.Kind == ScopeDomain:
		ix.put(kScopeDomain, r.Scope.Name, i)
	case r.Scope.Kind == ScopeTenant:
		ix.put(kScopeTenant, r.Scope.Name, i)
	case m.HasScan() && slot >= 0:
		ix.scanned = append(ix.scanned, i)
		ix.scannedSlot = append(ix.scannedSlot, slot)
	default:
		ix.scan = append(ix.scan, i)
	}
}

// strSet is a set of strings: a slice while small (faster than hashing),
// a map once large.
type strSet struct {
	list []string
	m    map[string]struct{}
}

const strSetMapAt = 12

func newStrSet(vs []string) strSet {
	if len(vs) < strSetMapAt {
		return strSet{list: vs}
	}
	m := make(map[string]struct{}, len(vs))
	for _, v := range vs {
		m[v] = struct{}{}
	}
	return strSet{m: m}
}

func (s *strSet) has(v string) bool {
	if s.m != nil {
		_, ok := s.m[v]
		return ok
	}
	for _, x := range s.list {
		if x == v {
			return true
		}
	}
	return false
}

func (s *strSet) empty() bool { return len(s.list) == 0 && len(s.m) == 0 }

// hostSet matches host names: exact names, and ".suffix" patterns matching
// names strictly below suffix.
type hostSet struct {
	exact strSet
	sub   strSet // suffixes without the leading dot
}

func newHostSet(vs []string) hostSet {
	var exact, sub []string
	for _, v := range vs {
		if strings.HasPrefix(v, ".") {
			sub = append(sub, v[1:])
		} else {
			exact = append(exact, v)
		}
	}
	return hostSet{exact: newStrSet(exact), sub: newStrSet(sub)}
}

func (h *hostSet) match(name string) bool {
	if name == "" {
		return false
	}
	if h.exact.has(name) {
		return true
	}
	if h.sub.empty() {
		return false
	}
	for p := parent(name); p != ""; p = parent(p) {
		if h.sub.has(p) {
			return true
		}
	}
	return false
}

// parent returns the domain one label up ("b.c" for "a.b.c"), "" at the top.
func parent(d string) string {
	if i := strings.IndexByte(d, '.'); i >= 0 {
		return d[i+1:]
	}
	return ""
}

// addrSet matches envelope addresses: full addresses, domain patterns
// (exact or ".suffix") and the null sender.
type addrSet struct {
	addr strSet
	dom  hostSet
	null bool
}

func newAddrSet(vs []string) addrSet {
	var addrs, doms []string
	var s addrSet
	for _, v := range vs {
		switch {
		case v == "<>":
			s.null = true
		case strings.HasPrefix(v, "@"):
			doms = append(doms, v[1:])
		case strings.Contains(v, "@"):
			addrs = append(addrs, v)
		default:
			doms = append(doms, v)
		}
	}
	s.addr = newStrSet(addrs)
	s.dom = newHostSet(doms)
	return s
}

func (s *addrSet) match(addr, dom string, null bool) bool {
	if null {
		return s.null
	}
	if addr == "" {
		return false
	}
	return s.addr.has(addr) || s.dom.match(dom)
}

// Condition bits of a crule.
const (
	cName uint8 = 1 << iota
	cHelo
	cSender
	cRcpt
	cSenderDom
	cRcptDom
	cSASL
	cContent // subject or header
)

// crule is a rule in matchable form. Its first fields are what rejects
// most candidates (scope, direction, addresses) and fit in about one cache
// line; the string conditions live behind a pointer, touched only when the
// rule has them. With 100,000 rules, memory traffic rather than
// instructions is what a lookup costs.
type crule struct {
	has         uint8 // condition bits
	res         uint8 // result condition bits (rSPF, rDMARC, rDetect)
	dir         Direction
	scopeKind   ScopeKind
	scan        int32 // slot in the milter's Scanner, -1: no scan keys (fits the padding before scopeDomain)
	scopeDomain string
	scopeTenant *Tenant
	ips         []netip.Prefix
	c           *conds
	rule        *Rule
}

type conds struct {
	name      hostSet
	helo      hostSet
	sender    addrSet
	rcpt      addrSet
	senderDom hostSet
	rcptDom   hostSet
	sasl      strSet
	content   *contentConds
}

func compileRule(r *Rule, tenants map[string]*Tenant, slab *[]conds) crule {
	m := &r.Match
	c := crule{rule: r, dir: m.Direction, scopeKind: r.Scope.Kind, ips: m.ClientIP, scan: -1}
	if len(m.SPF) > 0 {
		c.res |= rSPF
	}
	if len(m.DMARC) > 0 {
		c.res |= rDMARC
	}
	if len(m.Detect) > 0 {
		c.res |= rDetect
	}
	switch r.Scope.Kind {
	case ScopeDomain:
		c.scopeDomain = r.Scope.Name
	case ScopeTenant:
		c.scopeTenant = tenants[r.Scope.Name]
	}
	for _, k := range []struct {
		bit uint8
		vs  []string
	}{{cName, m.ClientName}, {cHelo, m.Helo}, {cSender, m.Sender}, {cRcpt, m.Rcpt}, {cSenderDom, m.SenderDomain}, {cRcptDom, m.RcptDomain}, {cSASL, m.SASLUser}, {cContent, m.Subject}, {cContent, m.Header}} {
		if len(k.vs) > 0 {
			c.has |= k.bit
		}
	}
	if c.has == 0 {
		return c
	}
	// Carve from a slab sized in advance: one allocation for all rules.
	*slab = append(*slab, conds{
		name:      newHostSet(m.ClientName),
		helo:      newHostSet(m.Helo),
		sender:    newAddrSet(m.Sender),
		rcpt:      newAddrSet(m.Rcpt),
		senderDom: newHostSet(m.SenderDomain),
		rcptDom:   newHostSet(m.RcptDomain),
		sasl:      newStrSet(m.SASLUser),
		content:   compileContent(m),
	})
	c.c = &(*slab)[len(*slab)-1]
	return c
}

// needsConds reports whether compileRule will take a conds from the slab.
func needsConds(m *Match) bool {
	return len(m.ClientName)+len(m.Helo)+len(m.Sender)+len(m.Rcpt)+len(m.SenderDomain)+len(m.RcptDomain)+len(m.SASLUser) > 0 ||
		m.HasContent()
}
