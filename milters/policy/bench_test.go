package policy_test

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	milter "github.com/emersion/go-milter"

	"github.com/geomilter/geomilter/shared/dnstest"
	"github.com/geomilter/geomilter/shared/milterrt/miltertest"
	"github.com/geomilter/geomilter/shared/resolver"
)

// BenchmarkInboundSigned: one DKIM-signed message over the milter protocol
// per op — SPF at MAIL, DKIM streamed, DMARC at end of message, the
// Authentication-Results field — with the DNS answers cached after the
// first (as a busy MX sees them).
func BenchmarkInboundSigned(b *testing.B) {
	f := newFixtureTB(b)
	ts := serve(b, f.res, f.rulesTB(b), 2*time.Second)
	c := ts.DialOffer(b, miltertest.PostfixActions, miltertest.PostfixProtocol)
	msg := f.signedTB(b, message("a@example.org", "", strings.Repeat("Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n", 300)))
	b.SetBytes(int64(len(msg)))
	b.ResetTimer()
	for range b.N {
		res := c.Send(b, miltertest.Transaction{
			Peer: peer("192.0.2.1"), Sender: "a@example.org", Rcpts: []miltertest.Rcpt{{Addr: "b@acme.example"}},
			Message: strings.NewReader(msg),
		})
		if res.Reply.Code != milter.ActAccept {
			b.Fatalf("reply %+v", res.Reply)
		}
	}
}

// BenchmarkOutboundSign: one outbound message signed (ed25519) per op over
// the milter protocol.
func BenchmarkOutboundSign(b *testing.B) {
	f := newFixtureTB(b)
	ts := serve(b, f.res, f.rulesTB(b), 2*time.Second)
	c := ts.DialOffer(b, miltertest.PostfixActions, miltertest.PostfixProtocol)
	msg := message("a@acme.example", "", strings.Repeat("Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n", 300))
	b.SetBytes(int64(len(msg)))
	b.ResetTimer()
	for range b.N {
		res := c.Send(b, miltertest.Transaction{
			Peer: peer("203.0.113.5"), Sender: "a@acme.example",
			Macros: map[milter.Code][]string{milter.CodeMail: {"{auth_authen}", "alice"}},
			Rcpts:  []miltertest.Rcpt{{Addr: "x@elsewhere.example"}}, Message: strings.NewReader(msg),
		})
		if res.Reply.Code != milter.ActAccept || len(res.Mods) != 1 {
			b.Fatalf("reply %+v mods %d", res.Reply, len(res.Mods))
		}
	}
}

// BenchmarkDarkDNS: the only DNS server drops every packet. 8 sessions send
// messages at once over the milter protocol, each from a new sender domain
// (nothing cached); it reports the p99 and the largest message time beside
// the configured message budget (issue 14: p99 ≤ budget + 50 ms).
func BenchmarkDarkDNS(b *testing.B) {
	bh := dnstest.StartBlackhole(b)
	res, err := resolver.New(resolver.Options{Servers: []string{bh.Addr()}, Timeout: time.Second})
	if err != nil {
		b.Fatal(err)
	}
	f := newFixtureTB(b)
	const budget = 300 * time.Millisecond
	const sessions = 8
	ts := serve(b, res, f.rulesTB(b), budget)
	var (
		mu  sync.Mutex
		all []time.Duration
		seq atomic.Int64
	)
	b.ResetTimer()
	var wg sync.WaitGroup
	for i := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := ts.DialOffer(b, miltertest.PostfixActions, miltertest.PostfixProtocol)
			for j := i; j < b.N*sessions; j += sessions {
				dom := fmt.Sprintf("d%d.example", seq.Add(1))
				start := time.Now()
				out := c.Send(b, miltertest.Transaction{
					Peer: peer("198.51.100.7"), Sender: "a@" + dom, Rcpts: []miltertest.Rcpt{{Addr: "b@acme.example"}},
					Message: strings.NewReader(message("a@"+dom, "", "x\r\n")),
				})
				took := time.Since(start)
				if out.Reply == nil || out.Reply.Code != milter.ActAccept {
					b.Errorf("reply %+v", out.Reply)
					return
				}
				mu.Lock()
				all = append(all, took)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	slices.Sort(all)
	if len(all) == 0 {
		b.Fatal("no message completed")
	}
	p99 := all[(len(all)*99+99)/100-1]
	b.ReportMetric(float64(budget.Milliseconds()), "budget-ms")
	b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(all[len(all)-1].Microseconds())/1000, "max-ms")
	b.ReportMetric(float64(len(all)), "messages")
}

// BenchmarkInboundPart2: BenchmarkInboundSigned's message with part 2 on
// top — two lists (cached after the first message), the MIME walk, 1,000
// content rules that score (the mix of scripts/bench-compare.sh, none
// matching), the built-in rules and the spam headers.
func BenchmarkInboundPart2(b *testing.B) {
	var r strings.Builder
	r.WriteString(spamRules)
	for i := range 700 {
		fmt.Fprintf(&r, "  - {id: body-%d, milter: policy, scope: global, match: {body: [\"bench phrase number %d\"]}, score: 1}\n", i, i)
	}
	for i := range 100 {
		fmt.Fprintf(&r, "  - {id: bodyre-%d, milter: policy, scope: global, match: {body: [\"/offer-%d[0-9]+x/\"]}, score: 1}\n", i, i)
		fmt.Fprintf(&r, "  - {id: subject-%d, milter: policy, scope: global, match: {subject: [\"cheap thing %d\"]}, score: 1}\n", i, i)
	}
	for i := range 50 {
		fmt.Fprintf(&r, "  - {id: attach-%d, milter: policy, scope: global, match: {attachment: [\"*.ext%d\"]}, score: 1}\n", i, i)
		fmt.Fprintf(&r, "  - {id: url-%d, milter: policy, scope: global, match: {url_domain: [\"d%d.bad.example\"]}, score: 1}\n", i, i)
	}
	f := newSpamFixtureWith(b, r.String())
	for _, lines := range []int{40, 300} { // about 3 KB (bench-compare's message) and 18 KB
		msg := spamMessage("", strings.Repeat("Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n", lines))
		b.Run(fmt.Sprintf("%dKB", len(msg)>>10), func(b *testing.B) {
			c := f.ts.DialOffer(b, miltertest.PostfixActions, miltertest.PostfixProtocol)
			b.SetBytes(int64(len(msg)))
			for range b.N {
				res := c.Send(b, miltertest.Transaction{
					Peer: peer("192.0.2.1"), Sender: "a@sender.example", Rcpts: []miltertest.Rcpt{{Addr: "b@acme.example"}},
					Message: strings.NewReader(msg),
				})
				if res.Reply.Code != milter.ActAccept {
					b.Fatalf("reply %+v", res.Reply)
				}
			}
		})
	}
}
