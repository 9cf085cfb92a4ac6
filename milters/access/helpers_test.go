package access

import (
	"context"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/rules"
	"github.com/geomilter/geomilter/shared/rulesync"
)

type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}

// TestMain silences go-redis's process-wide logger: some tests freeze Redis
// on purpose.
func TestMain(m *testing.M) {
	redis.SetLogger(quietLogger{})
	os.Exit(m.Run())
}

// tenantsYAML is shared by most tests: two tenants with domains, relay
// networks (v4 and v6) and relay logins.
const tenantsYAML = `
tenants:
  - id: acme
    domains: [acme.example, acme-mail.example]
    relay: {networks: [198.51.100.0/24, "2001:db8:acce::/48"], sasl_users: [acme-relay]}
  - id: beta
    domains: [beta.example]
    relay: {networks: [192.0.2.128/25], sasl_users: [beta-relay]}
`

// compile parses a rules file (tenantsYAML is prepended unless the text
// has its own tenants) and compiles it.
func compile(t testing.TB, rulesYAML string) *rules.Snapshot {
	t.Helper()
	text := rulesYAML
	if !strings.Contains(text, "tenants:") {
		text = tenantsYAML + text
	}
	set, err := rules.Parse("test.yaml", []byte(text))
	if err != nil {
		t.Fatalf("rules:\n%s\n%v", text, err)
	}
	snap, err := rules.Compile(set)
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

func newTestMilter(t testing.TB, snap *rules.Snapshot, o Options) *Milter {
	t.Helper()
	o.Rules = rulesync.NewHolder(snap)
	m, err := NewMilter(o)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// client describes the SMTP client of a simulated connection.
type client struct {
	ip     string // "" = local submission (no address)
	name   string
	port   uint16
	helo   string
	sasl   string
	family string // default from ip
}

func (c client) state() *milterrt.State {
	st := &milterrt.State{Milter: Name, ClientHost: c.name, ClientPort: c.port, Family: c.family, Macros: map[string]string{}}
	if st.ClientPort == 0 && c.ip != "" && c.family == "" {
		st.ClientPort = 40000
	}
	if c.ip != "" {
		ip := net.ParseIP(c.ip)
		if v4 := ip.To4(); v4 != nil {
			ip = v4
			if st.Family == "" {
				st.Family = "tcp4"
			}
		} else if st.Family == "" {
			st.Family = "tcp6"
		}
		st.ClientAddr = ip
	} else if st.Family == "" {
		st.Family = "unix"
	}
	if st.ClientHost == "" {
		st.ClientHost = "unknown"
	}
	return st
}

// outcome is what a simulated transaction produced.
type outcome struct {
	steps []string // one per non-continue decision: "stage:action:rule"
	st    *milterrt.State
	last  milterrt.Decision // the last non-continue decision
}

// summary is "stage:action:rule ..." for every decision that was not a
// continue, or "accept", followed by the trail's rule ids.
func (o outcome) summary() string {
	s := "accept"
	if len(o.steps) > 0 {
		s = strings.Join(o.steps, " ")
	}
	return s + " rules=" + strings.Join(o.st.RuleIDs, ",")
}

// driver drives one connection the way milterrt does: connect, helo, then
// transactions of MAIL and RCPTs; a decision that ends the connection or
// the transaction stops it, a reject or tempfail at RCPT refuses only that
// recipient.
type driver struct {
	t    testing.TB
	sess milterrt.Session
	st   *milterrt.State
	c    client
	dead bool // refused at connect or helo, or discarded there
	out  outcome
	conn []string // steps of connect and helo, which hold for every transaction
}

func (d *driver) record(stage string, dec milterrt.Decision) {
	if dec.Action == milterrt.ActionContinue {
		return
	}
	rule := dec.RuleID
	if rule == "" {
		rule = "-"
	}
	d.out.steps = append(d.out.steps, stage+":"+dec.Action.String()+":"+rule)
	d.out.last = dec
}

func connect(t testing.TB, m *Milter, c client) *driver {
	t.Helper()
	d := &driver{t: t, c: c, st: c.state()}
	d.out.st = d.st
	d.sess = m.NewSession(d.st)
	dec := d.sess.Connect(d.st)
	d.record("connect", dec)
	if dec.Action != milterrt.ActionContinue && dec.Action != milterrt.ActionQuarantine {
		d.dead = true
		return d
	}
	d.st.Helo = c.helo
	dec = d.sess.Helo(d.st)
	d.record("helo", dec)
	if dec.Action != milterrt.ActionContinue && dec.Action != milterrt.ActionQuarantine {
		d.dead = true
	}
	d.conn = d.out.steps
	return d
}

// txn runs one transaction and returns its outcome; the State is fresh
// per transaction, as the runtime resets it.
func (d *driver) txn(sender string, rcpts ...string) outcome {
	d.t.Helper()
	if d.dead {
		return d.out
	}
	st := d.st
	st.Sender, st.Rcpts, st.Reasons, st.RuleIDs, st.Degraded = sender, nil, nil, nil, nil
	st.Macros = map[string]string{}
	if d.c.sasl != "" {
		st.Macros["{auth_authen}"] = d.c.sasl
	}
	d.out = outcome{st: st, steps: append([]string(nil), d.conn...)}
	defer func() { d.sess.Abort(st) }()
	dec := d.sess.MailFrom(st)
	d.record("mail", dec)
	if dec.Action != milterrt.ActionContinue && dec.Action != milterrt.ActionQuarantine {
		return d.out
	}
	for _, r := range rcpts {
		rc := &milterrt.Recipient{Addr: r}
		st.Rcpts = append(st.Rcpts, rc)
		dec := d.sess.RcptTo(st, rc)
		rc.Decision = dec
		d.record("rcpt("+r+")", dec)
		if dec.Action == milterrt.ActionDiscard || dec.Action == milterrt.ActionAccept {
			break
		}
	}
	return d.out
}

// run is one connection with one transaction.
func run(t testing.TB, m *Milter, c client, sender string, rcpts ...string) outcome {
	t.Helper()
	return connect(t, m, c).txn(sender, rcpts...)
}

// fixedClock is a settable clock.
type fixedClock struct{ t time.Time }

func (c *fixedClock) now() time.Time { return c.t }
