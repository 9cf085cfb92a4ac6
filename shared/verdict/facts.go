package verdict

import (
	"mime"
	"net/netip"
	"strings"

	"github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/rules"
)

// Facts returns what the rules match a transaction's recipient on: the
// client, HELO, sender ("<>" for the null sender), SASL login and rcpt,
// and, once the header section is known (from end of headers on), the
// content facts of ContentFacts. Direction is left unknown: the rules take
// a message from a tenant's relay as outbound, anything else as inbound.
func Facts(st *milterrt.State, rcpt string) rules.Facts {
	var f rules.Facts
	if st.Headers != nil {
		f = ContentFacts(st)
	}
	if a, ok := netip.AddrFromSlice(st.ClientAddr); ok {
		f.ClientIP = a.Unmap()
	}
	f.ClientName, f.Helo, f.Rcpt = st.ClientHost, st.Helo, rcpt
	f.Sender = st.Sender
	if f.Sender == "" {
		f.Sender = "<>"
	}
	f.SASLUser = st.Macro("auth_authen")
	return f
}

// ContentFacts gives the rules the message's header section: every field
// in order, and the Subject unfolded with its RFC 2047 encoded words
// decoded (left as is when they do not decode).
func ContentFacts(st *milterrt.State) rules.Facts {
	f := rules.Facts{ContentKnown: true}
	dec := mime.WordDecoder{}
	for _, h := range st.Headers {
		f.Headers = append(f.Headers, rules.Header{Name: h.Name, Value: h.Value})
		if f.Subject == "" && strings.EqualFold(h.Name, "Subject") {
			if d, err := dec.DecodeHeader(h.Value); err == nil {
				f.Subject = d
			} else {
				f.Subject = h.Value
			}
		}
	}
	return f
}

// RelayTenant returns the tenant whose relay the transaction's client is
// (one of its relay networks, or its SASL login): the message is then
// outbound, as the rules take it (docs/rules.md); nil means inbound.
func RelayTenant(snap *rules.Snapshot, st *milterrt.State) *rules.Tenant {
	var ip netip.Addr
	if a, ok := netip.AddrFromSlice(st.ClientAddr); ok {
		ip = a.Unmap()
	}
	return snap.TenantForRelay(ip, st.Macro("auth_authen"))
}
