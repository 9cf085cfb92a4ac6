package rules

import (
	"strconv"
	"strings"
	"time"
)

// The spec types are the written form of tenants and rules, shared by the
// YAML file and the JSON documents so both spell every key the same way.
// Values stay strings here; toRule/toTenant parse them, so a bad value is a
// positioned problem rather than a decode failure of the whole entry.

type fileSpec struct {
	Tenants []tenantSpec  `yaml:"tenants"`
	Rules   []ruleSpec    `yaml:"rules"`
	Signing []signingSpec `yaml:"signing"`
}

type tenantSpec struct {
	ID      string    `yaml:"id" json:"id"`
	Domains []string  `yaml:"domains" json:"domains,omitempty"`
	Relay   relaySpec `yaml:"relay" json:"relay,omitzero"`
	Comment string    `yaml:"comment" json:"comment,omitempty"`
}

type relaySpec struct {
	Networks  []string `yaml:"networks" json:"networks,omitempty"`
	SASLUsers []string `yaml:"sasl_users" json:"sasl_users,omitempty"`
}

type ruleSpec struct {
	ID       string    `yaml:"id" json:"id"`
	Milter   string    `yaml:"milter" json:"milter"`
	Scope    string    `yaml:"scope" json:"scope"`
	Match    matchSpec `yaml:"match" json:"match,omitzero"`
	Action   string    `yaml:"action" json:"action"`
	Reply    string    `yaml:"reply" json:"reply,omitempty"`
	Rate     *rateSpec `yaml:"rate" json:"rate,omitempty"`
	Priority int       `yaml:"priority" json:"priority,omitempty"`
	Score    float64   `yaml:"score" json:"score,omitempty"`
	Enabled  *bool     `yaml:"enabled" json:"enabled,omitempty"`
	Comment  string    `yaml:"comment" json:"comment,omitempty"`
	Targets  []string  `yaml:"targets" json:"targets,omitempty"`
}

type matchSpec struct {
	ClientIP     []string `yaml:"client_ip" json:"client_ip,omitempty"`
	ClientName   []string `yaml:"client_name" json:"client_name,omitempty"`
	Helo         []string `yaml:"helo" json:"helo,omitempty"`
	Sender       []string `yaml:"sender" json:"sender,omitempty"`
	SenderDomain []string `yaml:"sender_domain" json:"sender_domain,omitempty"`
	Rcpt         []string `yaml:"rcpt" json:"rcpt,omitempty"`
	RcptDomain   []string `yaml:"rcpt_domain" json:"rcpt_domain,omitempty"`
	SASLUser     []string `yaml:"sasl_user" json:"sasl_user,omitempty"`
	Direction    string   `yaml:"direction" json:"direction,omitempty"`
	Subject      []string `yaml:"subject" json:"subject,omitempty"`
	Header       []string `yaml:"header" json:"header,omitempty"`
	SPF          []string `yaml:"spf" json:"spf,omitempty"`
	DMARC        []string `yaml:"dmarc" json:"dmarc,omitempty"`
	Detect       []string `yaml:"detect" json:"detect,omitempty"`
	Body         []string `yaml:"body" json:"body,omitempty"`
	Attachment   []string `yaml:"attachment" json:"attachment,omitempty"`
	Size         []string `yaml:"size" json:"size,omitempty"`
	URLDomain    []string `yaml:"url_domain" json:"url_domain,omitempty"`
}

type rateSpec struct {
	Key   string `yaml:"key" json:"key"`
	Limit int    `yaml:"limit" json:"limit"`
	Per   string `yaml:"per" json:"per"`
}

// toRule parses a spec into a normalized, checked Rule. It returns every
// problem, relative to the rule.
func (s *ruleSpec) toRule() (Rule, problems) {
	var ps problems
	r := Rule{
		ID:       strings.TrimSpace(s.ID),
		Milter:   strings.TrimSpace(s.Milter),
		Action:   Action(strings.TrimSpace(s.Action)),
		Priority: s.Priority,
		Score:    s.Score,
		Enabled:  s.Enabled == nil || *s.Enabled,
		Comment:  s.Comment,
		Targets:  s.Targets,
	}
	if r.ID == "" {
		ps.add("id", "required")
	}
	if r.Action == "" && r.Score != 0 && r.Milter == "policy" {
		// "score: 2" says what the rule does; action score is implied.
		r.Action = ActionScore
	}
	if r.Milter == "" {
		ps.add("milter", "required (one of: %s)", strings.Join(Milters(), ", "))
	}
	scopeOK := true
	if strings.TrimSpace(s.Scope) == "" {
		ps.add("scope", "required (global, tenant:ID or domain:DOMAIN)")
		scopeOK = false
	} else if sc, err := ParseScope(s.Scope); err != nil {
		ps.add("scope", "%v", err)
		scopeOK = false
	} else {
		r.Scope = sc
	}
	replyOK := true
	if strings.TrimSpace(s.Reply) != "" {
		rp, err := ParseReply(s.Reply)
		if err != nil {
			ps.add("reply", "%v", err)
			replyOK = false
		}
		r.Reply = rp
	}
	perOK := true
	if s.Rate != nil {
		r.Rate = &Rate{Key: RateKey(strings.TrimSpace(s.Rate.Key)), Limit: s.Rate.Limit}
		switch per := strings.TrimSpace(s.Rate.Per); {
		case per == "":
			ps.add("rate.per", "required (a duration such as 1m or 1h)")
			perOK = false
		default:
			d, err := time.ParseDuration(per)
			if err != nil {
				ps.add("rate.per", "invalid duration %q (want e.g. 30s, 1m, 1h)", s.Rate.Per)
				perOK = false
			}
			r.Rate.Per = d
		}
		if s.Rate.Key == "" {
			ps.add("rate.key", "required (one of: %s)", joinRateKeys())
		}
	}
	m := &s.Match
	for i, v := range m.ClientIP {
		p, err := parsePrefix(v)
		if err != nil {
			ps.add("match.client_ip["+strconv.Itoa(i)+"]", "%v", err)
			continue
		}
		r.Match.ClientIP = append(r.Match.ClientIP, p)
	}
	r.Match.ClientName = m.ClientName
	r.Match.Helo = m.Helo
	r.Match.Sender = m.Sender
	r.Match.SenderDomain = m.SenderDomain
	r.Match.Rcpt = m.Rcpt
	r.Match.RcptDomain = m.RcptDomain
	r.Match.SASLUser = m.SASLUser
	r.Match.Subject = m.Subject
	r.Match.Header = m.Header
	r.Match.SPF = m.SPF
	r.Match.DMARC = m.DMARC
	r.Match.Detect = m.Detect
	r.Match.Body = m.Body
	r.Match.Attachment = m.Attachment
	r.Match.Size = m.Size
	r.Match.URLDomain = m.URLDomain
	if strings.TrimSpace(m.Direction) != "" {
		d, err := ParseDirection(m.Direction)
		if err != nil {
			ps.add("match.direction", "%v", err)
		}
		r.Match.Direction = d
	}
	r = r.clone() // the spec's slices are not ours to normalize in place
	r.normalize()
	// Check the parsed rule, but do not repeat what parsing already said.
	for _, p := range r.check() {
		switch {
		case p.path == "id" && r.ID == "",
			p.path == "milter" && r.Milter == "",
			p.path == "scope" && !scopeOK,
			p.path == "reply" && !replyOK,
			p.path == "rate.per" && !perOK,
			p.path == "rate.key" && s.Rate.Key == "":
			continue
		}
		ps = append(ps, p)
	}
	return r, ps
}

func (s *tenantSpec) toTenant() (Tenant, problems) {
	var ps problems
	t := Tenant{
		ID:      strings.TrimSpace(s.ID),
		Domains: s.Domains,
		Comment: s.Comment,
		Relay:   Relay{SASLUsers: s.Relay.SASLUsers},
	}
	if t.ID == "" {
		ps.add("id", "required")
	}
	for i, v := range s.Relay.Networks {
		p, err := parsePrefix(v)
		if err != nil {
			ps.add("relay.networks["+strconv.Itoa(i)+"]", "%v", err)
			continue
		}
		t.Relay.Networks = append(t.Relay.Networks, p)
	}
	t = t.clone()
	t.normalize()
	for _, p := range t.check() {
		if p.path == "id" && t.ID == "" {
			continue
		}
		ps = append(ps, p)
	}
	return t, ps
}

// ruleToSpec is the inverse of toRule, in canonical form.
func ruleToSpec(r *Rule) ruleSpec {
	s := ruleSpec{
		ID:       r.ID,
		Milter:   r.Milter,
		Scope:    r.Scope.String(),
		Action:   string(r.Action),
		Reply:    r.Reply.String(),
		Priority: r.Priority,
		Score:    r.Score,
		Comment:  r.Comment,
		Targets:  r.Targets,
	}
	if !r.Enabled {
		f := false
		s.Enabled = &f
	}
	if r.Rate != nil {
		s.Rate = &rateSpec{Key: string(r.Rate.Key), Limit: r.Rate.Limit, Per: formatPer(r.Rate.Per)}
	}
	m := &r.Match
	for _, p := range m.ClientIP {
		s.Match.ClientIP = append(s.Match.ClientIP, p.String())
	}
	s.Match.ClientName = m.ClientName
	s.Match.Helo = m.Helo
	s.Match.Sender = m.Sender
	s.Match.SenderDomain = m.SenderDomain
	s.Match.Rcpt = m.Rcpt
	s.Match.RcptDomain = m.RcptDomain
	s.Match.SASLUser = m.SASLUser
	s.Match.Direction = m.Direction.String()
	s.Match.Subject = m.Subject
	s.Match.Header = m.Header
	s.Match.SPF = m.SPF
	s.Match.DMARC = m.DMARC
	s.Match.Detect = m.Detect
	s.Match.Body = m.Body
	s.Match.Attachment = m.Attachment
	s.Match.Size = m.Size
	s.Match.URLDomain = m.URLDomain
	return s
}

func tenantToSpec(t *Tenant) tenantSpec {
	s := tenantSpec{ID: t.ID, Domains: t.Domains, Comment: t.Comment}
	s.Relay.SASLUsers = t.Relay.SASLUsers
	for _, p := range t.Relay.Networks {
		s.Relay.Networks = append(s.Relay.Networks, p.String())
	}
	return s
}

// formatPer writes a rate window the way people write it ("1m", "1h"),
// not time.Duration's "1m0s".
func formatPer(d time.Duration) string {
	for _, u := range []struct {
		unit time.Duration
		sfx  string
	}{{time.Hour, "h"}, {time.Minute, "m"}, {time.Second, "s"}} {
		if d >= u.unit && d%u.unit == 0 {
			return strconv.FormatInt(int64(d/u.unit), 10) + u.sfx
		}
	}
	return d.String()
}
