package policy_test

import (
	"strings"
	"testing"
	"time"

	milter "github.com/emersion/go-milter"

	"github.com/geomilter/geomilter/shared/milterrt/miltertest"
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
