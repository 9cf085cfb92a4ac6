package access

import (
	"strings"
	"testing"
	"time"

	"github.com/geomilter/geomilter/shared/config"
	"github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/rulesync"
	"github.com/geomilter/geomilter/shared/service"
)

var (
	outside  = client{ip: "203.0.113.9", name: "mail.outside.example", helo: "mail.outside.example"}
	outside5 = client{ip: "203.0.113.5", name: "mx.outside.example", helo: "mx.outside.example"}
	outside6 = client{ip: "2001:db8:bad::9", name: "v6.outside.example", helo: "v6.outside.example"}
	acmeNet  = client{ip: "198.51.100.7", name: "relay.acme.example", helo: "relay.acme.example"}
	acmeNet6 = client{ip: "2001:db8:acce::25", name: "relay6.acme.example", helo: "relay6.acme.example"}
)

func with(c client, f func(*client)) client { f(&c); return c }

// TestDecisions drives the milter's session (the decision function the
// runtime calls) through connect, helo, MAIL and RCPT for every match key,
// scope and action. want is "stage:action:rule …" for each decision that
// was not a plain continue ("accept" if none), then the trail's rule ids.
func TestDecisions(t *testing.T) {
	tests := []struct {
		name   string
		rules  string
		c      client
		sender string
		rcpts  []string
		want   string
	}{
		// --- match keys ---
		{"client_ip v4 network, at connect",
			`rules: [{id: bad-net, milter: access, scope: global, match: {client_ip: [203.0.113.0/24]}, action: reject}]`,
			outside, "a@outside.example", []string{"bob@acme.example"}, "connect:reject:bad-net rules=bad-net"},
		{"client_ip single address",
			`rules: [{id: bad-host, milter: access, scope: global, match: {client_ip: [203.0.113.9]}, action: reject}]`,
			outside, "a@outside.example", []string{"bob@acme.example"}, "connect:reject:bad-host rules=bad-host"},
		{"client_ip single address, other client",
			`rules: [{id: bad-host, milter: access, scope: global, match: {client_ip: [203.0.113.9]}, action: reject}]`,
			outside5, "a@outside.example", []string{"bob@acme.example"}, "accept rules="},
		{"client_ip v6 network",
			`rules: [{id: bad-v6, milter: access, scope: global, match: {client_ip: ["2001:db8:bad::/48"]}, action: reject}]`,
			outside6, "a@outside.example", []string{"bob@acme.example"}, "connect:reject:bad-v6 rules=bad-v6"},
		{"client_ip v6 network, v4 client",
			`rules: [{id: bad-v6, milter: access, scope: global, match: {client_ip: ["2001:db8:bad::/48", "::/0"]}, action: reject}]`,
			outside, "a@outside.example", []string{"bob@acme.example"}, "accept rules="},
		{"client_name exact, case-insensitive",
			`rules: [{id: bad-name, milter: access, scope: global, match: {client_name: [MAIL.Outside.Example]}, action: reject}]`,
			outside, "a@outside.example", []string{"bob@acme.example"}, "connect:reject:bad-name rules=bad-name"},
		{"client_name suffix matches below",
			`rules: [{id: bad-zone, milter: access, scope: global, match: {client_name: [.outside.example]}, action: reject}]`,
			outside, "a@outside.example", []string{"bob@acme.example"}, "connect:reject:bad-zone rules=bad-zone"},
		{"client_name suffix does not match the domain itself",
			`rules: [{id: bad-zone, milter: access, scope: global, match: {client_name: [.outside.example]}, action: reject}]`,
			with(outside, func(c *client) { c.name = "outside.example" }), "a@outside.example", []string{"bob@acme.example"}, "accept rules="},
		{"helo exact, at helo",
			`rules: [{id: bad-helo, milter: access, scope: global, match: {helo: [mail.outside.example]}, action: reject}]`,
			outside, "a@outside.example", []string{"bob@acme.example"}, "helo:reject:bad-helo rules=bad-helo"},
		{"helo suffix",
			`rules: [{id: bad-helo, milter: access, scope: global, match: {helo: [.outside.example]}, action: tempfail}]`,
			outside, "a@outside.example", []string{"bob@acme.example"}, "helo:tempfail:bad-helo rules=bad-helo"},
		{"helo address literal",
			`rules: [{id: literal, milter: access, scope: global, match: {helo: ["[203.0.113.9]"]}, action: reject}]`,
			with(outside, func(c *client) { c.helo = "[203.0.113.9]" }), "a@outside.example", []string{"bob@acme.example"}, "helo:reject:literal rules=literal"},
		{"sender address, case-insensitive, at mail",
			`rules: [{id: spammer, milter: access, scope: global, match: {sender: [Spam@Bad.Example]}, action: reject}]`,
			outside, "SPAM@bad.example", []string{"bob@acme.example"}, "mail:reject:spammer rules=spammer"},
		{"sender domain is exact",
			`rules: [{id: bad-dom, milter: access, scope: global, match: {sender: [bad.example]}, action: reject}]`,
			outside, "x@sub.bad.example", []string{"bob@acme.example"}, "accept rules="},
		{"sender @domain",
			`rules: [{id: bad-dom, milter: access, scope: global, match: {sender: ["@bad.example"]}, action: reject}]`,
			outside, "x@bad.example", []string{"bob@acme.example"}, "mail:reject:bad-dom rules=bad-dom"},
		{"sender .domain matches subdomains",
			`rules: [{id: bad-sub, milter: access, scope: global, match: {sender: [.bad.example]}, action: reject}]`,
			outside, "x@a.sub.bad.example", []string{"bob@acme.example"}, "mail:reject:bad-sub rules=bad-sub"},
		{"sender .domain not the domain itself",
			`rules: [{id: bad-sub, milter: access, scope: global, match: {sender: [.bad.example]}, action: reject}]`,
			outside, "x@bad.example", []string{"bob@acme.example"}, "accept rules="},
		{"null sender",
			`rules: [{id: no-bounces, milter: access, scope: global, match: {sender: ["<>"]}, action: reject}]`,
			outside, "", []string{"bob@acme.example"}, "mail:reject:no-bounces rules=no-bounces"},
		{"null sender rule, real sender",
			`rules: [{id: no-bounces, milter: access, scope: global, match: {sender: ["<>"]}, action: reject}]`,
			outside, "a@outside.example", []string{"bob@acme.example"}, "accept rules="},
		{"sender_domain",
			`rules: [{id: sd, milter: access, scope: global, match: {sender_domain: [bad.example]}, action: discard}]`,
			outside, "x@bad.example", []string{"bob@acme.example"}, "mail:discard:sd rules=sd"},
		{"sender_domain does not match the null sender",
			`rules: [{id: sd, milter: access, scope: global, match: {sender_domain: [bad.example]}, action: discard}]`,
			outside, "", []string{"bob@acme.example"}, "accept rules="},
		{"rcpt address, per recipient",
			`rules: [{id: no-eve, milter: access, scope: global, match: {rcpt: [eve@acme.example]}, action: reject}]`,
			outside, "a@outside.example", []string{"bob@acme.example", "EVE@acme.example", "carol@acme.example"},
			"rcpt(EVE@acme.example):reject:no-eve rules=no-eve"},
		{"rcpt_domain",
			`rules: [{id: closed, milter: access, scope: global, match: {rcpt_domain: [acme-mail.example]}, action: tempfail}]`,
			outside, "a@outside.example", []string{"bob@acme.example", "bob@acme-mail.example"},
			"rcpt(bob@acme-mail.example):tempfail:closed rules=closed"},
		{"sasl_user, at mail",
			`rules: [{id: stolen, milter: access, scope: global, match: {sasl_user: [Stolen-Login]}, action: reject}]`,
			with(outside, func(c *client) { c.sasl = "stolen-login" }), "a@outside.example", []string{"bob@acme.example"},
			"mail:reject:stolen rules=stolen"},
		{"sasl_user, unauthenticated client",
			`rules: [{id: stolen, milter: access, scope: global, match: {sasl_user: [stolen-login]}, action: reject}]`,
			outside, "a@outside.example", []string{"bob@acme.example"}, "accept rules="},
		{"direction outbound: tenant relay network",
			`rules: [{id: out, milter: access, scope: global, match: {direction: outbound}, action: quarantine}]`,
			acmeNet, "a@acme.example", []string{"x@gmail.example"}, "mail:quarantine:out rules=out"},
		{"direction outbound: tenant relay login",
			`rules: [{id: out, milter: access, scope: global, match: {direction: outbound}, action: quarantine}]`,
			with(outside, func(c *client) { c.sasl = "beta-relay" }), "a@beta.example", []string{"x@gmail.example"}, "mail:quarantine:out rules=out"},
		{"direction outbound: other client is inbound",
			`rules: [{id: out, milter: access, scope: global, match: {direction: outbound}, action: quarantine}]`,
			outside, "a@outside.example", []string{"bob@acme.example"}, "accept rules="},
		{"direction inbound",
			`rules: [{id: in, milter: access, scope: global, match: {direction: inbound}, action: tempfail}]`,
			outside, "a@outside.example", []string{"bob@acme.example"}, "mail:tempfail:in rules=in"},
		{"direction inbound: relay client is outbound",
			`rules: [{id: in, milter: access, scope: global, match: {direction: inbound}, action: tempfail}]`,
			acmeNet6, "a@acme.example", []string{"x@gmail.example"}, "accept rules="},

		// --- scopes ---
		{"tenant scope, inbound: that tenant's recipients only",
			`rules: [{id: acme-block, milter: access, scope: "tenant:acme", match: {client_ip: [203.0.113.0/24]}, action: reject}]`,
			outside, "a@outside.example", []string{"bob@acme.example", "bob@beta.example", "x@acme-mail.example"},
			"rcpt(bob@acme.example):reject:acme-block rcpt(x@acme-mail.example):reject:acme-block rules=acme-block"},
		{"tenant scope, outbound: the tenant's relay, at mail",
			`rules: [{id: acme-out, milter: access, scope: "tenant:acme", match: {sender: [bad@acme.example]}, action: reject}]`,
			acmeNet, "bad@acme.example", []string{"x@gmail.example"}, "mail:reject:acme-out rules=acme-out"},
		{"tenant scope, outbound: another tenant's relay",
			`rules: [{id: beta-out, milter: access, scope: "tenant:beta", action: reject}]`,
			acmeNet, "a@acme.example", []string{"x@gmail.example"}, "accept rules="},
		{"domain scope, inbound: recipient domain exactly",
			`rules: [{id: dom, milter: access, scope: "domain:acme-mail.example", action: reject}]`,
			outside, "a@outside.example", []string{"a@acme.example", "a@acme-mail.example", "a@sub.acme-mail.example"},
			"rcpt(a@acme-mail.example):reject:dom rcpt(a@sub.acme-mail.example):reject:builtin:relay rules=dom,builtin:relay"},
		{"domain scope, outbound: sender domain",
			`rules: [{id: dom, milter: access, scope: "domain:acme.example", action: tempfail}]`,
			acmeNet, "a@acme.example", []string{"x@gmail.example"}, "mail:tempfail:dom rules=dom"},
		{"domain scope, outbound: other sender domain",
			`rules: [{id: dom, milter: access, scope: "domain:acme.example", action: tempfail}]`,
			acmeNet, "a@acme-mail.example", []string{"x@gmail.example"}, "accept rules="},

		// --- actions ---
		{"allow, found final at connect, noted per transaction",
			`rules: [{id: ok-net, milter: access, scope: global, match: {client_ip: [203.0.113.0/24]}, action: allow},
			         {id: spammer, milter: access, scope: global, match: {sender: [x@bad.example]}, action: reject, priority: 1}]`,
			outside, "x@bad.example", []string{"bob@acme.example"}, "accept rules=ok-net"},
		{"tempfail", `rules: [{id: tf, milter: access, scope: global, match: {sender: [x@bad.example]}, action: tempfail}]`,
			outside, "x@bad.example", []string{"bob@acme.example"}, "mail:tempfail:tf rules=tf"},
		{"discard at rcpt ends the message",
			`rules: [{id: drop, milter: access, scope: global, match: {rcpt: [trap@acme.example]}, action: discard}]`,
			outside, "x@bad.example", []string{"trap@acme.example", "bob@acme.example"}, "rcpt(trap@acme.example):discard:drop rules=drop"},
		{"quarantine at mail, recipients go on",
			`rules: [{id: hold, milter: access, scope: global, match: {sender: [x@bad.example]}, action: quarantine}]`,
			outside, "x@bad.example", []string{"bob@acme.example", "x@gmail.example"},
			"mail:quarantine:hold rcpt(x@gmail.example):reject:builtin:relay rules=hold,builtin:relay"},
		{"quarantine at connect",
			`rules: [{id: hold, milter: access, scope: global, match: {client_ip: [203.0.113.9]}, action: quarantine}]`,
			outside, "x@bad.example", []string{"bob@acme.example"}, "connect:quarantine:hold rules=hold"},
		{"relay_permit authorises relaying",
			`rules: [{id: partner, milter: access, scope: global, match: {client_ip: [203.0.113.0/24]}, action: relay_permit}]`,
			outside, "a@outside.example", []string{"x@gmail.example", "bob@acme.example"}, "accept rules=partner"},
		{"relay_deny refuses a tenant relay's relaying, not its local mail",
			`rules: [{id: no-relay, milter: access, scope: global, match: {client_ip: [198.51.100.7]}, action: relay_deny, reply: "554 5.7.1 Relaying suspended"}]`,
			acmeNet, "a@acme.example", []string{"x@gmail.example", "bob@beta.example"}, "rcpt(x@gmail.example):reject:no-relay rules=no-relay"},
		{"allow does not authorise relaying",
			`rules: [{id: ok-net, milter: access, scope: global, match: {client_ip: [203.0.113.0/24]}, action: allow}]`,
			outside, "a@outside.example", []string{"x@gmail.example"}, "rcpt(x@gmail.example):reject:builtin:relay rules=ok-net,builtin:relay"},

		// --- precedence ---
		{"more specific scope first: tenant allow over a global block, for its recipients only",
			`rules: [{id: block-net, milter: access, scope: global, match: {client_ip: [203.0.113.0/24]}, action: reject},
			         {id: acme-allow, milter: access, scope: "tenant:acme", match: {client_ip: [203.0.113.5]}, action: allow}]`,
			outside5, "a@outside.example", []string{"u@acme.example", "u@beta.example"},
			"rcpt(u@beta.example):reject:block-net rules=acme-allow,block-net"},
		{"a tenant allow for another client does not hold the block back",
			`rules: [{id: block-net, milter: access, scope: global, match: {client_ip: [203.0.113.0/24]}, action: reject},
			         {id: acme-allow, milter: access, scope: "tenant:acme", match: {client_ip: [203.0.113.5]}, action: allow}]`,
			outside, "a@outside.example", []string{"u@acme.example"}, "connect:reject:block-net rules=block-net"},
		{"a tenant allow by client name holds the block for those names",
			`rules: [{id: block-net, milter: access, scope: global, match: {client_ip: [203.0.113.0/24]}, action: reject},
			         {id: partner, milter: access, scope: "tenant:acme", match: {client_name: [.outside.example]}, action: allow}]`,
			outside, "a@outside.example", []string{"u@acme.example", "u@beta.example"},
			"rcpt(u@beta.example):reject:block-net rules=partner,block-net"},
		{"… and not for other names",
			`rules: [{id: block-net, milter: access, scope: global, match: {client_ip: [203.0.113.0/24]}, action: reject},
			         {id: partner, milter: access, scope: "tenant:acme", match: {client_name: [.outside.example]}, action: allow}]`,
			with(outside, func(c *client) { c.name = "mail.elsewhere.example" }), "a@outside.example", []string{"u@acme.example"},
			"connect:reject:block-net rules=block-net"},
		{"a tenant rule on the sender holds a global block until RCPT",
			`rules: [{id: block-net, milter: access, scope: global, match: {client_ip: [203.0.113.0/24]}, action: reject},
			         {id: acme-tf, milter: access, scope: "tenant:acme", match: {sender: [x@partner.example]}, action: tempfail}]`,
			outside, "x@partner.example", []string{"u@acme.example", "u@beta.example"},
			"rcpt(u@acme.example):tempfail:acme-tf rcpt(u@beta.example):reject:block-net rules=acme-tf,block-net"},
		{"lower priority first within a scope",
			`rules: [{id: block, milter: access, scope: global, match: {client_ip: [203.0.113.0/24]}, action: reject, priority: 5},
			         {id: vip, milter: access, scope: global, match: {client_ip: [203.0.113.9]}, action: allow, priority: 1}]`,
			outside, "a@outside.example", []string{"bob@acme.example"}, "accept rules=vip"},
		{"restrictive before permissive at equal priority",
			`rules: [{id: a-allow, milter: access, scope: global, match: {client_ip: [203.0.113.9]}, action: allow},
			         {id: z-block, milter: access, scope: global, match: {client_ip: [203.0.113.0/24]}, action: reject}]`,
			outside, "a@outside.example", []string{"bob@acme.example"}, "connect:reject:z-block rules=z-block"},
		{"then by id",
			`rules: [{id: b-block, milter: access, scope: global, match: {client_ip: [203.0.113.9]}, action: reject},
			         {id: a-block, milter: access, scope: global, match: {client_ip: [203.0.113.0/24]}, action: tempfail}]`,
			outside, "a@outside.example", []string{"bob@acme.example"}, "connect:tempfail:a-block rules=a-block"},
		{"a later-stage rule of higher priority holds an earlier decision",
			`rules: [{id: block, milter: access, scope: global, match: {client_ip: [203.0.113.0/24]}, action: reject},
			         {id: vip-sender, milter: access, scope: global, match: {sender: [vip@outside.example]}, action: allow, priority: -1}]`,
			outside, "vip@outside.example", []string{"bob@acme.example"}, "accept rules=vip-sender"},
		{"… and lets it apply when it does not match",
			`rules: [{id: block, milter: access, scope: global, match: {client_ip: [203.0.113.0/24]}, action: reject},
			         {id: vip-sender, milter: access, scope: global, match: {sender: [vip@outside.example]}, action: allow, priority: -1}]`,
			outside, "other@outside.example", []string{"bob@acme.example"}, "mail:reject:block rules=block"},
		{"disabled rules never match",
			`rules: [{id: off, milter: access, scope: global, match: {client_ip: [203.0.113.0/24]}, action: reject, enabled: false}]`,
			outside, "a@outside.example", []string{"bob@acme.example"}, "accept rules="},
		{"other milters' rules are ignored",
			`rules: [{id: pol, milter: policy, scope: global, match: {client_ip: [203.0.113.0/24]}, action: reject}]`,
			outside, "a@outside.example", []string{"bob@acme.example"}, "accept rules="},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := newTestMilter(t, compile(t, tc.rules), Options{})
			got := run(t, m, tc.c, tc.sender, tc.rcpts...).summary()
			if got != tc.want {
				t.Errorf("\n got  %s\n want %s", got, tc.want)
			}
		})
	}
}

// TestDocsExample checks the precedence example of docs/rules.md.
func TestDocsExample(t *testing.T) {
	m := newTestMilter(t, compile(t, `
rules:
- {id: block-net,   milter: access, scope: global,                match: {client_ip: [203.0.113.0/24]},     action: reject}
- {id: acme-allow,  milter: access, scope: "tenant:acme",         match: {client_ip: [203.0.113.5]},        action: allow}
- {id: dom-quar,    milter: access, scope: "domain:acme.example", match: {sender: [.lookalike.example]},   action: quarantine}
- {id: late-allow,  milter: access, scope: global,                action: allow, priority: 10}
- {id: early-allow, milter: access, scope: global,                action: allow, priority: -1}
`), Options{})
	for _, tc := range []struct {
		c      client
		sender string
		want   string
	}{
		{outside5, "x@a.lookalike.example", "rcpt(u@acme.example):quarantine:dom-quar rules=dom-quar"},
		{outside5, "x@other.example", "accept rules=acme-allow"},
		{outside, "x@other.example", "accept rules=early-allow"},
	} {
		if got := run(t, m, tc.c, tc.sender, "u@acme.example").summary(); got != tc.want {
			t.Errorf("%s from %s:\n got  %s\n want %s", tc.sender, tc.c.ip, got, tc.want)
		}
	}
}

// TestRelay: the milter never makes an open relay, even with no rules.
func TestRelay(t *testing.T) {
	m := newTestMilter(t, compile(t, "rules: []"), Options{})
	const refused = "rcpt(x@gmail.example):reject:builtin:relay rules=builtin:relay"
	for _, tc := range []struct {
		name  string
		c     client
		rcpts []string
		want  string
	}{
		{"unauthorised client, external domain", outside, []string{"x@gmail.example"}, refused},
		{"unauthorised client, v6", outside6, []string{"x@gmail.example"}, refused},
		{"one refused, the tenant's recipient kept", outside, []string{"bob@acme.example", "x@gmail.example", "c@beta.example"}, refused},
		{"subdomain of a tenant domain is not protected", outside, []string{"x@sub.acme.example"},
			"rcpt(x@sub.acme.example):reject:builtin:relay rules=builtin:relay"},
		{"trailing dot and case in the domain", outside, []string{"bob@ACME.Example."}, "accept rules="},
		{"recipient without a domain is local", outside, []string{"postmaster"}, "accept rules="},
		{"tenant relay network", acmeNet, []string{"x@gmail.example"}, "accept rules="},
		{"tenant relay network v6", acmeNet6, []string{"x@gmail.example"}, "accept rules="},
		{"tenant relay login", with(outside, func(c *client) { c.sasl = "ACME-relay" }), []string{"x@gmail.example"}, "accept rules="},
		{"unknown login", with(outside, func(c *client) { c.sasl = "someone" }), []string{"x@gmail.example"}, refused},
		{"local submission without address", client{name: "localhost"}, []string{"x@gmail.example"}, "accept rules="},
		{"cleanup's local submission: 127.0.0.1 port 0", client{ip: "127.0.0.1", name: "localhost", family: "tcp4", port: 0},
			[]string{"x@gmail.example"}, "accept rules="},
		{"loopback TCP client is not trusted", client{ip: "127.0.0.1", name: "localhost", port: 34567},
			[]string{"x@gmail.example"}, refused},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := run(t, m, tc.c, "a@outside.example", tc.rcpts...).summary()
			if got != tc.want {
				t.Errorf("\n got  %s\n want %s", got, tc.want)
			}
		})
	}
}

// TestReplies checks the SMTP replies the client sees.
func TestReplies(t *testing.T) {
	for _, tc := range []struct {
		name, rules string
		c           client
		rcpt        string
		want        string
	}{
		{"reject default", `rules: [{id: r, milter: access, scope: global, match: {client_ip: [203.0.113.9]}, action: reject}]`,
			outside, "bob@acme.example", "550 5.7.1 Access denied"},
		{"reject with the rule's reply", `rules: [{id: r, milter: access, scope: global, match: {client_ip: [203.0.113.9]}, action: reject, reply: "554 5.7.1 Your network is blocked"}]`,
			outside, "bob@acme.example", "554 5.7.1 Your network is blocked"},
		{"reply with a code only", `rules: [{id: r, milter: access, scope: global, match: {client_ip: [203.0.113.9]}, action: reject, reply: "521"}]`,
			outside, "bob@acme.example", "521 5.7.1 Access denied"},
		{"tempfail default", `rules: [{id: r, milter: access, scope: global, match: {client_ip: [203.0.113.9]}, action: tempfail}]`,
			outside, "bob@acme.example", "451 4.7.1 Try again later"},
		{"tempfail with reply", `rules: [{id: r, milter: access, scope: global, match: {rcpt: [bob@acme.example]}, action: tempfail, reply: "450 4.2.1 Mailbox busy"}]`,
			outside, "bob@acme.example", "450 4.2.1 Mailbox busy"},
		{"relay refused", `rules: []`, outside, "x@gmail.example", "554 5.7.1 Relay access denied"},
		{"relay_deny default", `rules: [{id: r, milter: access, scope: global, match: {client_ip: [198.51.100.0/24]}, action: relay_deny}]`,
			acmeNet, "x@gmail.example", "554 5.7.1 Relay access denied"},
		{"rate limit default", `rules: [{id: r, milter: access, scope: global, rate: {key: client_ip, limit: 1, per: 1h}, action: tempfail}]`,
			outside, "bob@acme.example", "451 4.7.1 Rate limit exceeded"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newTestMilter(t, compile(t, tc.rules), Options{})
			var o outcome
			for i := 0; i < 2; i++ { // twice, for the rate limit
				o = run(t, m, tc.c, "a@outside.example", tc.rcpt)
			}
			if got := o.last.Reply(); got != tc.want {
				t.Errorf("reply %q, want %q (%s)", got, tc.want, o.summary())
			}
			if o.last.RuleID == "" || o.last.Reason == "" {
				t.Errorf("decision %+v does not name its rule and reason", o.last)
			}
		})
	}
}

// TestTrailFields: the state the trail event is built from names the
// deciding rule and says why.
func TestTrailFields(t *testing.T) {
	m := newTestMilter(t, compile(t, `
rules:
  - {id: vip, milter: access, scope: "tenant:acme", match: {sender: [boss@partner.example]}, action: allow}
  - {id: no-eve, milter: access, scope: global, match: {rcpt: [eve@acme.example]}, action: reject, reply: "550 5.1.1 No such user"}
`), Options{})
	o := run(t, m, outside, "boss@partner.example", "bob@acme.example", "eve@acme.example", "x@gmail.example")
	st := o.st
	if got := strings.Join(st.RuleIDs, ","); got != "vip,builtin:relay" {
		t.Errorf("rule ids %s", got)
	}
	// vip (tenant scope) precedes no-eve (global) for eve@acme.example too.
	want := []string{"continue", "continue", "reject"}
	for i, r := range st.Rcpts {
		if r.Decision.Action.String() != want[i] {
			t.Errorf("rcpt %s: %s, want %s", r.Addr, r.Decision.Action, want[i])
		}
	}
	if r := st.Rcpts[2].Decision; r.RuleID != RelayRuleID || !strings.Contains(r.Reason, "gmail.example") {
		t.Errorf("relay refusal %+v", r)
	}
	if len(st.Reasons) != 1 || !strings.Contains(st.Reasons[0], "vip") {
		t.Errorf("reasons %q", st.Reasons)
	}

	o = run(t, m, outside, "other@partner.example", "eve@acme.example", "bob@acme.example")
	if r := o.st.Rcpts[0].Decision; r.RuleID != "no-eve" || r.Reply() != "550 5.1.1 No such user" || !strings.Contains(r.Reason, "no-eve") {
		t.Errorf("eve: %+v", r)
	}
	if o.st.Rcpts[1].Decision.Action != milterrt.ActionContinue {
		t.Errorf("bob: %+v", o.st.Rcpts[1].Decision)
	}
}

// TestConnectionVerdicts: a verdict found at connect holds for every
// transaction of the connection and is named in each one's trail.
func TestConnectionVerdicts(t *testing.T) {
	m := newTestMilter(t, compile(t, `
rules:
  - {id: ok-net, milter: access, scope: global, match: {client_ip: [203.0.113.0/24]}, action: allow}
  - {id: hold-net, milter: access, scope: global, match: {client_ip: [198.51.100.0/24]}, action: quarantine}
  - {id: spam, milter: access, scope: global, match: {sender: [x@bad.example]}, action: reject, priority: 1}
`), Options{})
	d := connect(t, m, outside)
	for i := 0; i < 3; i++ {
		if got := d.txn("x@bad.example", "bob@acme.example").summary(); got != "accept rules=ok-net" {
			t.Fatalf("txn %d: %s", i, got)
		}
	}
	d = connect(t, m, acmeNet)
	if got := d.out.summary(); got != "connect:quarantine:hold-net rules=hold-net" {
		t.Fatalf("connect: %s", got)
	}
	for i := 0; i < 2; i++ {
		if got := d.txn("x@bad.example", "x@gmail.example").summary(); got != "connect:quarantine:hold-net rules=hold-net" {
			t.Fatalf("txn %d: %s", i, got)
		}
	}
}

// TestAnalysisPending: while the analysis of a new snapshot is being built,
// decisions are taken at RCPT — later, never differently; once it is built
// they are taken as early as they are final.
func TestAnalysisPending(t *testing.T) {
	snap := compile(t, `rules: [{id: block, milter: access, scope: global, match: {client_ip: [203.0.113.0/24]}, action: reject}]`)
	m := newTestMilter(t, compile(t, "rules: []"), Options{})
	m.anMu.Lock()
	m.building = snap // as if its build were under way
	m.anMu.Unlock()
	m.rules.(*rulesync.Holder).Swap(snap)
	if got := run(t, m, outside, "a@outside.example", "bob@acme.example", "c@acme.example").summary(); got !=
		"rcpt(bob@acme.example):reject:block rcpt(c@acme.example):reject:block rules=block" {
		t.Errorf("analysis pending: %s", got)
	}

	m.anMu.Lock()
	m.building = nil
	m.anMu.Unlock()
	m.analysisFor(snap) // starts the build
	deadline := time.Now().Add(10 * time.Second)
	for a := m.an.Load(); a == nil || a.snap != snap; a = m.an.Load() {
		if time.Now().After(deadline) {
			t.Fatal("analysis never built")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := run(t, m, outside, "a@outside.example", "bob@acme.example").summary(); got != "connect:reject:block rules=block" {
		t.Errorf("analysis built: %s", got)
	}
}

// TestNewFromEnv: the factory the geomilter binary uses.
func TestNewFromEnv(t *testing.T) {
	holder := rulesync.NewHolder(compile(t, "rules: []"))
	m, err := New(&service.Env{Name: Name, Rules: holder, Config: &config.Config{Redis: &config.RedisConfig{Timeout: 40 * time.Millisecond}}})
	if err != nil {
		t.Fatal(err)
	}
	am := m.(*Milter)
	if !am.counter.InMemory() || am.counter.Timeout() != 40*time.Millisecond {
		t.Errorf("in memory %v timeout %v: want memory only (no store) and redis.timeout", am.counter.InMemory(), am.counter.Timeout())
	}
	if m.Name() != "access" || m.Modifications() != milterrt.MayQuarantine ||
		m.Stages() != milterrt.StageConnect|milterrt.StageHelo|milterrt.StageMail|milterrt.StageRcpt {
		t.Errorf("name %s, actions %v, stages %v", m.Name(), m.Modifications(), m.Stages())
	}
	if _, err := New(&service.Env{Name: Name}); err == nil {
		t.Error("no rules view: want an error")
	}
}

// TestDecidesAt: Postfix is asked to wait for a reply at connect and helo only
// when a current rule can decide there; MAIL and RCPT always.
func TestDecidesAt(t *testing.T) {
	const env = milterrt.StageConnect | milterrt.StageHelo | milterrt.StageMail | milterrt.StageRcpt
	cases := []struct {
		name, rules string
		want        milterrt.Stages
	}{
		{"no rules", `rules: []`, milterrt.StageMail | milterrt.StageRcpt},
		{"a network rule", `rules: [{id: n, milter: access, scope: global, match: {client_ip: [203.0.113.0/24]}, action: reject}]`,
			milterrt.StageConnect | milterrt.StageMail | milterrt.StageRcpt},
		{"a helo rule", `rules: [{id: h, milter: access, scope: global, match: {helo: [bad.example]}, action: reject}]`,
			milterrt.StageHelo | milterrt.StageMail | milterrt.StageRcpt},
		{"sender and rate rules", `rules: [{id: s, milter: access, scope: global, match: {sender_domain: [spam.example]}, action: reject},
  {id: r, milter: access, scope: global, rate: {key: client_ip, limit: 10, per: 1m}, action: tempfail}]`,
			milterrt.StageMail | milterrt.StageRcpt},
		{"a tenant's network rule (decided per recipient inbound)", `rules: [{id: t, milter: access, scope: "tenant:acme", match: {client_ip: [203.0.113.0/24]}, action: reject}]`,
			milterrt.StageMail | milterrt.StageRcpt},
		{"another milter's network rule", `rules: [{id: p, milter: policy, scope: global, match: {client_ip: [203.0.113.0/24]}, action: reject}]`,
			milterrt.StageMail | milterrt.StageRcpt},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			snap := compile(t, tc.rules)
			m := newTestMilter(t, compile(t, "rules: []"), Options{})
			m.rules.(*rulesync.Holder).Swap(snap)
			if got := m.DecidesAt(); got != env {
				t.Errorf("analysis not built yet: DecidesAt = %v, want every envelope stage", got)
			}
			waitAnalysis(t, m, snap)
			if got := m.DecidesAt(); got != tc.want {
				t.Errorf("DecidesAt = %v, want %v", got, tc.want)
			}
		})
	}
}
