package milterrt_test

import (
	"bytes"
	"testing"

	milter "github.com/emersion/go-milter"

	. "github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/milterrt/miltertest"
)

// BenchmarkTransaction measures one transaction through go-milter's client and
// a real Server on a unix socket: new-conn includes dialing and negotiation
// (Postfix opens a milter connection per SMTP session), same-conn reuses one.
// The client offers protocol 2 masks (every event answered) except in the
// postfix-offer cases, which offer what Postfix offers (no reply to headers,
// end of headers and body).
func BenchmarkTransaction(b *testing.B) {
	body := bytes.Repeat([]byte("a line of message body text, seventy-odd bytes long, for benchmarks.\r\n"), 30)
	headers := [][2]string{{"From", "a@example.org"}, {"To", "b@example.net"}, {"Subject", "benchmark"},
		{"Message-ID", "<1@example.org>"}, {"Date", "Mon, 1 Jan 2024 00:00:00 +0000"}}
	txn := func(b *testing.B, c *miltertest.Client) {
		if _, err := c.Mail("a@example.org", nil); err != nil {
			b.Fatal(err)
		}
		if _, err := c.Rcpt("b@example.net", nil); err != nil {
			b.Fatal(err)
		}
		for _, h := range headers {
			if _, err := c.HeaderField(h[0], h[1]); err != nil {
				b.Fatal(err)
			}
		}
		if _, err := c.HeaderEnd(); err != nil {
			b.Fatal(err)
		}
		if _, err := c.BodyChunk(body); err != nil {
			b.Fatal(err)
		}
		if _, act, err := c.End(); err != nil || act.Code != milter.ActAccept {
			b.Fatalf("end: %v %v", act, err)
		}
	}
	for _, bc := range []struct {
		name    string
		stages  Stages
		newConn bool
		v6      bool
	}{
		{"eom-only/new-conn", 0, true, false},
		{"all-stages/new-conn", AllStages, true, false},
		{"all-stages/same-conn", AllStages, false, false},
		{"all-stages/new-conn/postfix-offer", AllStages, true, true},
		{"all-stages/same-conn/postfix-offer", AllStages, false, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			ts := start(b, NoopMilter{Want: bc.stages}, Options{OnTransaction: func(*State) {}}, false)
			dial := func() (*miltertest.Client, error) {
				if bc.v6 {
					return ts.DialOffer(b, miltertest.PostfixActions, miltertest.PostfixProtocol), nil
				}
				return ts.TryDial(miltertest.Proto2Actions, miltertest.Proto2Protocol)
			}
			var c *miltertest.Client
			if !bc.newConn {
				var err error
				if c, err = dial(); err != nil {
					b.Fatal(err)
				}
				c.Conn("client.example", milter.FamilyInet, 40000, "192.0.2.10")
				c.Helo("helo.example")
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if bc.newConn {
					var err error
					if c, err = dial(); err != nil {
						b.Fatal(err)
					}
					c.Conn("client.example", milter.FamilyInet, 40000, "192.0.2.10")
					c.Helo("helo.example")
				}
				txn(b, c)
				if bc.newConn {
					c.Close()
				}
			}
		})
	}
}
