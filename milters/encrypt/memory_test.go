package encrypt_test

import (
	"io"
	"strings"
	"testing"

	milter "github.com/emersion/go-milter"

	"github.com/geomilter/geomilter/shared/milterrt/miltertest"
)

// TestMessage50MB: a 50 MB outbound message with a subject tag, scanned by
// the detectors (a detect rule is enabled), is marked for the gateway while
// the heap of the process (milter and client) grows by less than 64 MB: the
// message streams into the message file and through the MIME walk.
func TestMessage50MB(t *testing.T) {
	if testing.Short() {
		t.Skip("50 MB message")
	}
	const size = 50 << 20
	const line = "Order 12345678 shipped, tracking 1Z999AA10123456784, total 1234.56 EUR\r\n"
	body := func() io.Reader { return miltertest.RepeatedLines(line, size) }
	h := newHarness(t, `
rules:
  - {id: cards, milter: encrypt, scope: global, match: {detect: [card, iban]}, action: encrypt}
`, "")
	c := h.srv.DialOffer(t, miltertest.PostfixActions, miltertest.PostfixProtocol)
	watch := miltertest.WatchHeap()
	res := c.Send(t, miltertest.Transaction{
		Peer:   &miltertest.Peer{Host: "relay.acme.example", Family: milter.FamilyInet, Port: 4567, Addr: relayIP, Helo: "relay.acme.example"},
		Sender: "alice@acme.example", Rcpts: []miltertest.Rcpt{{Addr: "bob@partner.example"}},
		Headers: []miltertest.Header{
			{Name: "From", Value: " <alice@acme.example>"}, {Name: "To", Value: " <bob@partner.example>"},
			{Name: "Subject", Value: " [secure] big"}, {Name: "Message-ID", Value: " <big@x>"},
			{Name: "MIME-Version", Value: " 1.0"}, {Name: "Content-Type", Value: " text/plain; charset=us-ascii"},
		},
		Body: body(),
	})
	growth := watch.Stop()
	accepted(t, res)
	same(t, "50 MB", mods(res), []string{"change Subject[1]: big", "add X-Geomilter-Encrypt: subject_tag"})
	if got := h.srv.Counter(t, "geomilter_encrypt_scans_total", "result", "clean"); got != 1 {
		t.Errorf("clean scans %v, want 1", got)
	}
	t.Logf("50 MB message: peak heap in use %.1f MB above the %.1f MB before (limit 64 MB)", float64(growth)/(1<<20), float64(watch.Base())/(1<<20))
	if growth > 64<<20 {
		t.Errorf("heap grew by %d MB for a 50 MB message, more than 64 MB", growth>>20)
	}
	if sec := h.section(t, 1); sec.Action != "route" || !strings.Contains(strings.Join(h.srv.Txns()[0].Degraded, ";"), "decoded bytes") {
		t.Errorf("section %+v degraded %q", sec, h.srv.Txns()[0].Degraded)
	}
}
