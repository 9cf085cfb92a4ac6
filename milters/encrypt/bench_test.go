package encrypt_test

import (
	"strings"
	"testing"
)

// BenchmarkEncrypt: one outbound 18 KB message over the milter protocol per
// op, as the encrypt milter decides it: with no trigger (the common case),
// with a subject tag (subject changed, marker added), and with a detect rule
// in force (the message is walked and scanned for cards and IBANs).
func BenchmarkEncrypt(b *testing.B) {
	body := strings.Repeat("Order 12345678 shipped on 2026-12-07, tracking 1Z999AA10123456784, total 1234.56 EUR.\r\n", 200)
	for _, bc := range []struct {
		name, rules, subject string
		mods                 int
	}{
		{"no-trigger", "", "Quarterly figures", 0},
		{"subject-tag", "", "[secure] Quarterly figures", 2},
		{"detectors", "rules:\n  - {id: pci, milter: encrypt, scope: global, match: {detect: [card, iban]}, action: encrypt}\n", "Quarterly figures", 0},
	} {
		b.Run(bc.name, func(b *testing.B) {
			h := newHarness(b, bc.rules, "")
			msg := message(bc.subject, body)
			b.SetBytes(int64(len(msg)))
			b.ResetTimer()
			for range b.N {
				res := h.send(b, relayIP, msg)
				if len(res.Mods) != bc.mods {
					b.Fatalf("%d modifications, want %d", len(res.Mods), bc.mods)
				}
			}
		})
	}
}
