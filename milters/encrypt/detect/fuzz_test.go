package detect

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

var fuzzConfig = Config{Cards: true, IBAN: true, Patterns: []Pattern{
	{Name: "ssn", Regexp: `\b\d{3}-\d{2}-\d{4}\b`},
	{Name: "conf", Regexp: `(?i)confidential`},
}}

// FuzzScanner: no input panics, and the findings do not depend on how the
// input is cut into Write calls (cut first at split, then every step bytes).
func FuzzScanner(f *testing.F) {
	for _, seed := range []string{
		"Card: 4111 1111 1111 1111 exp 12/28\n",
		"IBAN DE89 3704 0044 0532 0130 00, gb82west12345698765432",
		"IMEI 356938035643809 +49 30 1234 5678 12/05/2026 4111111111111111.5",
		"4111\u00a01111\u2009\u202f1111-1111 123-45-6789 Confidential\r\n",
	} {
		f.Add([]byte(seed), uint16(7), uint8(3))
	}
	d := mustNew(f, fuzzConfig)
	f.Fuzz(func(t *testing.T, data []byte, split uint16, step uint8) {
		want := scan(d, string(data))
		s := d.Scanner()
		cut := 0
		if len(data) > 0 {
			cut = int(split) % (len(data) + 1)
		}
		s.Write(data[:cut])
		rest := data[cut:]
		n := int(step)%64 + 1
		for len(rest) > 0 {
			k := min(n, len(rest))
			s.Write(rest[:k])
			rest = rest[k:]
		}
		if got := s.Close(); !sameFindings(got, want) {
			t.Fatalf("cut at %d then every %d bytes: %+v, one Write: %+v", cut, n, got, want)
		}
	})
}

// BenchmarkScan measures throughput on 1 MiB of mixed mail text (the
// corpora, repeated), fed in 32 KiB Writes as a MIME walk would: with cards
// and IBANs on, and with the two patterns of fuzzConfig as well.
func BenchmarkScan(b *testing.B) {
	var mixed []byte
	for _, dir := range []string{"negative", "positive"} {
		files, _ := filepath.Glob(filepath.Join("testdata", dir, "*.txt"))
		for _, p := range files {
			t, err := os.ReadFile(p)
			if err != nil {
				b.Fatal(err)
			}
			mixed = append(mixed, t...)
		}
	}
	text := bytes.Repeat(mixed, (1<<20)/len(mixed)+1)[:1<<20]
	for _, bc := range []struct {
		name string
		cfg  Config
	}{
		{"cards+iban", Config{Cards: true, IBAN: true}},
		{"cards+iban+patterns", fuzzConfig},
	} {
		b.Run(bc.name, func(b *testing.B) {
			d := mustNew(b, bc.cfg)
			b.SetBytes(int64(len(text)))
			b.ReportAllocs()
			for b.Loop() {
				s := d.Scanner()
				for p := text; len(p) > 0; {
					k := min(32<<10, len(p))
					s.Write(p[:k])
					p = p[k:]
				}
				if f := s.Close(); f.Cards == 0 {
					b.Fatal("no cards found in the mixed text")
				}
			}
		})
	}
}
