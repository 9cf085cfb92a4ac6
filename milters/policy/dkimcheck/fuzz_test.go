package dkimcheck

import (
	"context"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/dkim"
)

// FuzzVerifierFeed: any header fields and body, fed in any chunk size,
// never panic, never block, and give exactly one result per
// DKIM-Signature field the Verifier kept (the checks of the library's
// answers against our own parse of the fields). Close waits for the
// verification goroutine, so returning is the no-leak check here;
// TestVerifyAbortAndBudget counts goroutines.
//
// Run with -fuzzminimizetime 2s: the coverage of an input varies from run
// to run (the pipe's two goroutines interleave differently), so the
// engine's minimisation of a new input otherwise spends its full minute
// retrying it and the run seems to stall.
func FuzzVerifierFeed(f *testing.F) {
	msg := readFile(f, "testdata/rfc8463-a3.eml")
	head, body, _ := strings.Cut(string(msg), "\r\n\r\n")
	f.Add(head, []byte(body), uint16(7), uint8(0))
	f.Add(head, []byte(body), uint16(1), uint8(1))
	f.Add("DKIM-Signature: v=1; a=rsa-sha256; d=x; s=y; h=from; bh=; b=\nFrom: a", []byte("x"), uint16(100), uint8(2))
	f.Add("DKIM-Signature:\r\n\r\n\nDKIM-Signature: ;;;==;\nFrom:\r\n", []byte("\r\n\r\n"), uint16(3), uint8(3))
	z := rfc8463Zone(f)
	f.Fuzz(func(t *testing.T, header string, body []byte, chunk uint16, maxSigs uint8) {
		// What is fuzzed is the header handling; a long body fed byte by
		// byte through the pipe only costs time.
		if len(body) > 4096 {
			body = body[:4096]
		}
		if len(header) > 16384 {
			header = header[:16384]
		}
		v := NewVerifier(context.Background(), VerifyOptions{LookupTXT: z.lookup, MaxSignatures: int(maxSigs % 4)})
		kept := 0
		// One field per line; a line starting with white space continues
		// the last one, as the MTA would join it.
		var fields []field
		for _, line := range strings.Split(header, "\n") {
			line = strings.TrimSuffix(line, "\r")
			if len(fields) > 0 && line != "" && (line[0] == ' ' || line[0] == '\t') {
				fields[len(fields)-1].raw += "\r\n" + line
				continue
			}
			name, raw, _ := strings.Cut(line, ":")
			fields = append(fields, field{name, raw})
		}
		for _, fl := range fields {
			v.Header(fl.name, fl.raw)
			if validFieldName(fl.name) && strings.EqualFold(fl.name, HeaderName) {
				kept++
			}
		}
		v.EndHeaders()
		size := int(chunk%4096) + 1
		for len(body) > 0 {
			n := min(size, len(body))
			v.Body(body[:n])
			body = body[n:]
		}
		res, _ := v.Close()
		if len(res) != kept {
			t.Fatalf("%d results for %d signatures", len(res), kept)
		}
		for _, r := range res {
			switch r.Result {
			case ResultPass:
				if r.Err != nil {
					t.Fatalf("pass with error %v", r.Err)
				}
			case ResultFail, ResultNeutral, ResultPolicy, ResultTempError, ResultPermError:
				if r.Err == nil {
					t.Fatalf("%s without a reason", r.Result)
				}
			default:
				t.Fatalf("result %q is no RFC 8601 word", r.Result)
			}
		}
	})
}

// FuzzSign: any message Sign accepts gives a signature go-msgauth (an
// implementation apart from our canonicalisation) verifies.
func FuzzSign(f *testing.F) {
	f.Add(testMessage)
	f.Add("From: a@example.org\n\n")
	f.Add("From:a@example.org\r\nSubject:\r\n \r\n\r\n  \t\r\n\r\nx\ry \r\n")
	key := testKeys()[AlgEd25519SHA256]
	z := keyZone(f, key)
	f.Fuzz(func(t *testing.T, msg string) {
		value, err := Sign(strings.NewReader(msg), SignOptions{Domain: "example.org", Selector: "sel", Key: key})
		if err != nil {
			return
		}
		if !wellFormed(msg) {
			return // what the library makes of malformed input is its own
		}
		signed := HeaderName + ":" + value + "\r\n" + msg
		vs, err := dkim.VerifyWithOptions(strings.NewReader(signed), &dkim.VerifyOptions{
			LookupTXT: func(name string) ([]string, error) { return z.lookup(context.Background(), name) },
		})
		if err != nil || len(vs) != 1 || vs[0].Err != nil {
			t.Fatalf("signature of %q does not verify: %v %+v", msg, err, vs)
		}
	})
}

// wellFormed: CRLF line ends only, a blank line after the header, every
// header line a field or a continuation, no NUL — a message as an MTA
// passes it on.
func wellFormed(msg string) bool {
	head, _, ok := strings.Cut(msg, "\r\n\r\n")
	if !ok || strings.Contains(strings.ReplaceAll(msg, "\r\n", ""), "\n") ||
		strings.Contains(strings.ReplaceAll(msg, "\r\n", ""), "\r") || strings.ContainsRune(msg, 0) {
		return false
	}
	for i, line := range strings.Split(head, "\r\n") {
		if line == "" {
			return false
		}
		if line[0] == ' ' || line[0] == '\t' {
			if i == 0 {
				return false
			}
			continue
		}
		name, _, ok := strings.Cut(line, ":")
		if !ok || !validFieldName(strings.TrimRight(name, " \t")) {
			return false
		}
	}
	return true
}
