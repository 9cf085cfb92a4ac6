package postfix

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/geomilter/geomilter/shared/trail"
)

// The access milter with real Postfix at both sites (docs/access.md): what an
// SMTP client sees for a blocked sender, an allowed one, a blocked recipient
// among three, a relay attempt with and without a tenant's relay network, and
// a rate limit counted across the two sites. One pair of sites serves every
// subtest; each uses its own senders, so the rules of one do not touch the
// mail of another.

const (
	blockedSender = "blocked@client.lax.test"
	blockedRcpt   = "blocked@acme.example"
	rateRule      = "gmtest-rate"
	rateLimit     = 5 // messages per minute, counted over both sites
	rateAtLax     = 2 // of them sent through lax, the rest through dal

	senderReply = "550 5.7.1 Sender blocked by geomilter-test"
	rcptReply   = "550 5.7.1 Recipient blocked by geomilter-test"
	rateReply   = "451 4.7.1 Sending rate exceeded (geomilter-test)"
	relayReply  = "554 5.7.1"
)

// accessRules extends testRules (tenant acme, relay 127.0.0.0/8) with a
// second tenant whose relay network is dal's address on the link, and the
// rules the subtests exercise. The sender rule has priority -1 so that no
// later-evaluated rule holds it back: it is final, and applied, at MAIL FROM.
var accessRules = strings.Replace(testRules, "rules: []\n", `  - id: relayco
    domains: [relayco.example]
    relay: {networks: [`+dalAddr+`/32]}
rules:
  - id: gmtest-block-sender
    milter: access
    scope: global
    priority: -1
    match: {sender: [`+blockedSender+`]}
    action: reject
    reply: "`+senderReply+`"
  - id: gmtest-block-rcpt
    milter: access
    scope: global
    match: {rcpt: [`+blockedRcpt+`]}
    action: reject
    reply: "`+rcptReply+`"
  - id: `+rateRule+`
    milter: access
    scope: global
    match: {sender_domain: [rate.example]}
    rate: {key: sender, limit: `+fmt.Sprint(rateLimit)+`, per: 1m}
    action: tempfail
    reply: "`+rateReply+`"
`, 1)

func TestAccessMilter(t *testing.T) {
	setup := time.Now()
	dal, lax := twoSites(t)
	lax.applyRules(accessRules)
	for _, s := range []*site{dal, lax} {
		s.waitRules("3 rules, 2 tenants")
	}
	t.Logf("two sites up with the access rules in force at both in %s", time.Since(setup).Round(time.Millisecond))
	local := "127.0.0.1:25"

	t.Run("BlockedSenderGetsRuleReply", func(t *testing.T) {
		out := swaksAt(lax.ns, local, "client.lax.test", "--from", blockedSender, "--to", "u1@acme.example")
		if !replyAfter(out, "MAIL FROM:<"+blockedSender+">", senderReply) || queuedAs(out) != "" {
			t.Fatalf("blocked sender: want %q in reply to MAIL FROM and nothing queued; swaks:\n%s", senderReply, out)
		}
		ev := accessEvent(t, lax, "the blocked sender", func(ev trail.Event) bool { return ev.Sender == blockedSender })
		if ev.Action != "reject" || ev.Stage != "mail" || ev.Reply != senderReply || !hasString(ev.RuleIDs, "gmtest-block-sender") {
			t.Errorf("trail: action %q stage %q reply %q rule_ids %v, want reject/mail/%q/[gmtest-block-sender]", ev.Action, ev.Stage, ev.Reply, ev.RuleIDs, senderReply)
		}
	})

	t.Run("AllowedSenderReachesSink", func(t *testing.T) {
		before := lax.sink.Load()
		out := swaksAt(lax.ns, local, "client.lax.test", "--from", "allowed@client.lax.test", "--to", "u2@acme.example")
		qid := queuedAs(out)
		if qid == "" || len(refusals(out)) != 0 {
			t.Fatalf("allowed sender not accepted; swaks:\n%s", out)
		}
		if got := waitSent(t, lax, qid, 1); len(got) != 1 || got[0] != "u2@acme.example" {
			t.Fatalf("message %s delivered to %v, want [u2@acme.example]", qid, got)
		}
		waitFor(t, 10*time.Second, "smtp-sink to count the message", func() bool { return lax.sink.Load() > before })
		ev := accessEvent(t, lax, qid, func(ev trail.Event) bool { return ev.QueueID == qid })
		if ev.Action != "accept" {
			t.Errorf("trail: action %q for %s, want accept", ev.Action, qid)
		}
	})

	t.Run("RcptRuleRefusesOneOfThree", func(t *testing.T) {
		rcpts := []string{"r1@acme.example", blockedRcpt, "r3@acme.example"}
		out := swaksAt(lax.ns, local, "client.lax.test", "--from", "three@client.lax.test", "--to", strings.Join(rcpts, ","))
		qid := queuedAs(out)
		if qid == "" || !replyAfter(out, "RCPT TO:<"+blockedRcpt+">", rcptReply) || len(refusals(out)) != 1 {
			t.Fatalf("want %s refused with %q and the message queued for the other two; swaks:\n%s", blockedRcpt, rcptReply, out)
		}
		waitSent(t, lax, qid, 2)
		time.Sleep(500 * time.Millisecond) // a wrongly delivered third recipient would be logged by now
		got := sentRcpts(lax, qid)
		if fmt.Sprint(got) != "[r1@acme.example r3@acme.example]" && fmt.Sprint(got) != "[r3@acme.example r1@acme.example]" {
			t.Fatalf("message %s delivered to %v, want r1 and r3 only", qid, got)
		}
		ev := accessEvent(t, lax, qid, func(ev trail.Event) bool { return ev.QueueID == qid })
		if len(ev.Rcpts) != 3 {
			t.Fatalf("trail: %d recipients %+v, want 3", len(ev.Rcpts), ev.Rcpts)
		}
		for i, r := range ev.Rcpts {
			want := trail.Rcpt{Addr: rcpts[i], Action: "accept"}
			if rcpts[i] == blockedRcpt {
				want = trail.Rcpt{Addr: blockedRcpt, Action: "reject", Reply: rcptReply, RuleID: "gmtest-block-rcpt"}
			}
			if r.Addr != want.Addr || r.Action != want.Action || r.Reply != want.Reply || r.RuleID != want.RuleID {
				t.Errorf("trail: recipient %d = %+v, want %+v", i, r, want)
			}
		}
		if ev.Action != "accept" {
			t.Errorf("trail: message action %q, want accept (one recipient refused, two accepted)", ev.Action)
		}
	})

	t.Run("RelayOnlyForTenantRelays", func(t *testing.T) {
		// lax to its own link address: client 10.77.0.2, in Postfix's
		// mynetworks (so Postfix itself permits relaying) but no tenant's
		// relay: the milter refuses.
		out := swaksAt(lax.ns, laxAddr+":25", "client.lax.test", "--from", "nobody@client.lax.test", "--to", "someone@outside.example")
		if !replyAfter(out, "RCPT TO:<someone@outside.example>", relayReply) || queuedAs(out) != "" {
			t.Fatalf("unauthorised relay from %s: want %q at RCPT and nothing queued; swaks:\n%s", laxAddr, relayReply, out)
		}
		ev := accessEvent(t, lax, "the refused relay", func(ev trail.Event) bool { return ev.Sender == "nobody@client.lax.test" })
		if ev.ClientIP != laxAddr || len(ev.Rcpts) != 1 || ev.Rcpts[0].RuleID != "builtin:relay" || !strings.HasPrefix(ev.Rcpts[0].Reply, relayReply) {
			t.Errorf("trail: client %q rcpts %+v, want client %s and the recipient refused by builtin:relay", ev.ClientIP, ev.Rcpts, laxAddr)
		}

		// dal's address is relayco's relay network: the same relay from dal
		// to lax is accepted and delivered.
		out = swaksAt(dal.ns, laxAddr+":25", "client.dal.test", "--from", "relay@relayco.example", "--to", "someone@outside.example")
		qid := queuedAs(out)
		if qid == "" || len(refusals(out)) != 0 {
			t.Fatalf("relay from tenant relay network %s refused; swaks:\n%s", dalAddr, out)
		}
		if got := waitSent(t, lax, qid, 1); got[0] != "someone@outside.example" {
			t.Fatalf("message %s delivered to %v, want [someone@outside.example]", qid, got)
		}
		ev = accessEvent(t, lax, qid, func(ev trail.Event) bool { return ev.QueueID == qid })
		if ev.ClientIP != dalAddr || ev.Action != "accept" {
			t.Errorf("trail: client %q action %q, want %s accept", ev.ClientIP, ev.Action, dalAddr)
		}
	})

	t.Run("RateLimitAcrossSites", func(t *testing.T) {
		testRateAcrossSites(t, dal, lax)
	})
}

// testRateAcrossSites: the limit is rateLimit messages per minute for one
// sender, counted over both sites: rateAtLax go through lax, the rest
// through dal once dal sees lax's count (and the other way round), then the
// next message is refused with the rule's 4xx at lax and at dal alike.
//
// The windows are fixed minutes, so a run that straddles a minute boundary
// starts counting afresh; the test starts early enough in a minute and, if
// it still crossed one, tries once more with a new sender.
func testRateAcrossSites(t *testing.T, dal, lax *site) {
	const margin = 15 * time.Second // twice what one attempt takes on a loaded machine (4-7 s)
	for attempt := 1; ; attempt++ {
		now := time.Now()
		if left := time.Duration(minuteWindow(now)+60000-now.UnixMilli()) * time.Millisecond; left < margin {
			t.Logf("%s left in this minute's window: waiting for the next one", left.Round(time.Millisecond))
			time.Sleep(left + 200*time.Millisecond)
		}
		sender := fmt.Sprintf("r%d@rate.example", time.Now().UnixNano())
		w := minuteWindow(time.Now())
		began := time.Now()
		err := rateAttempt(t, dal, lax, sender)
		crossed := minuteWindow(time.Now()) != w
		switch {
		case err == nil:
			t.Logf("limit %d/min: %d accepted via lax, %d via dal, the next refused at both sites, in %s",
				rateLimit, rateAtLax, rateLimit-rateAtLax, time.Since(began).Round(time.Millisecond))
			return
		case crossed && attempt < 2:
			t.Logf("attempt %d crossed a minute boundary (%v): trying again with a new sender", attempt, err)
		default:
			t.Fatal(err)
		}
	}
}

// rateAttempt runs one attempt with a fresh sender; an error describes what
// went wrong.
func rateAttempt(t *testing.T, dal, lax *site, sender string) error {
	send := func(s *site) string {
		return swaksAt(s.ns, "127.0.0.1:25", "client."+s.name+".test", "--from", sender, "--to", "rate@acme.example")
	}
	// sendCounted sends through s until s's own primary holds n hits for
	// the sender, each message accepted. Normally that is n messages; a hit
	// the milter had to count in memory (its primary did not answer within
	// redis.timeout, docs/access.md "Degraded behaviour") is not in Redis
	// and is made up by one more message.
	sendCounted := func(s *site, n int64) error {
		for sent := 0; ; sent++ {
			c, err := rateCount(s.primary, s.name, rateRule, sender)
			if err != nil {
				return err
			}
			if c >= n {
				if c > n {
					return fmt.Errorf("%s counted %d hits for %s, want %d", s.name, c, sender, n)
				}
				return nil
			}
			if sent >= int(n)+3 {
				return fmt.Errorf("%s: %d messages sent but only %d counted in Redis", s.name, sent, c)
			}
			out := send(s)
			if queuedAs(out) == "" {
				return fmt.Errorf("message %d of %d (limit %d) refused at %s; swaks:\n%s", c+1, n, rateLimit, s.name, out)
			}
		}
	}
	// seen waits until s's replica of its peer shows the peer's n hits.
	seen := func(s *site, n int64) error {
		deadline := time.Now().Add(20 * time.Second)
		for {
			c, err := rateCount(s.replica, s.peer.name, rateRule, sender)
			if err == nil && c >= n {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s's replica of %s shows %d hits for %s after 20s, want %d (err %v)", s.name, s.peer.name, c, sender, n, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	// refused expects the next message at s to get the rule's 4xx. An
	// acceptance is a failure unless the milter's trail event says why it
	// could not see the full count (degraded Redis), then it tries again.
	refused := func(s *site) error {
		for try := 1; try <= 3; try++ {
			out := send(s)
			if qid := queuedAs(out); qid != "" {
				ev := accessEvent(t, s, qid, func(ev trail.Event) bool { return ev.QueueID == qid })
				if len(ev.Degraded) == 0 {
					return fmt.Errorf("message over the limit accepted at %s (queue id %s, not degraded, reasons %v); swaks:\n%s", s.name, qid, ev.Reasons, out)
				}
				t.Logf("over-limit message %s at %s accepted while degraded (%v): retrying", qid, s.name, ev.Degraded)
				continue
			}
			rs := refusals(out)
			if len(rs) == 0 || rs[0] != rateReply {
				return fmt.Errorf("message over the limit at %s: want %q, got refusals %q; swaks:\n%s", s.name, rateReply, rs, out)
			}
			return nil
		}
		return fmt.Errorf("message over the limit at %s accepted 3 times while degraded", s.name)
	}

	if err := sendCounted(lax, rateAtLax); err != nil {
		return err
	}
	if err := seen(dal, rateAtLax); err != nil {
		return err
	}
	if err := sendCounted(dal, rateLimit-rateAtLax); err != nil {
		return err
	}
	if err := seen(lax, rateLimit-rateAtLax); err != nil {
		return err
	}
	if err := refused(lax); err != nil {
		return err
	}
	if err := refused(dal); err != nil {
		return err
	}
	// lax's refusal names the rule and the sum over both sites.
	ev := accessEvent(t, lax, "the refused over-limit message", func(ev trail.Event) bool {
		return ev.Sender == sender && ev.Action == "tempfail"
	})
	if !hasString(ev.RuleIDs, rateRule) || ev.Reply != rateReply {
		return fmt.Errorf("trail of the refused message at lax: rule_ids %v reply %q, want %s and %q", ev.RuleIDs, ev.Reply, rateRule, rateReply)
	}
	t.Logf("lax's trail for the refused message: %v", ev.Reasons)
	return nil
}
