package dkimcheck

import (
	"bytes"
	"context"
	"errors"
	"net"
	"runtime"
	"strings"
	"testing"
)

// RFC 8463 Appendix A.3: both signatures (ed25519-sha256 and rsa-sha256)
// of the RFC's example message verify against the Appendix A.2 records.
func TestVerifyRFC8463(t *testing.T) {
	msg := readFile(t, "testdata/rfc8463-a3.eml")
	z := rfc8463Zone(t)
	for _, size := range []int{1, 7, 64 << 10} {
		v := NewVerifier(context.Background(), VerifyOptions{LookupTXT: z.lookup})
		feed(t, v, msg, size)
		res, err := v.Close()
		if err != nil {
			t.Fatalf("chunk %d: Close: %v", size, err)
		}
		want := []Result{
			{Domain: "football.example.com", Identifier: "@football.example.com", Selector: "brisbane", Algorithm: "ed25519-sha256", BPrefix: "/gCrinpc", Result: ResultPass},
			{Domain: "football.example.com", Identifier: "@football.example.com", Selector: "test", Algorithm: "rsa-sha256", BPrefix: "F45dVWDf", Result: ResultPass},
		}
		if len(res) != len(want) {
			t.Fatalf("chunk %d: %d results, want %d: %+v", size, len(res), len(want), res)
		}
		for i := range want {
			if res[i] != want[i] {
				t.Errorf("chunk %d: result %d = %+v, want %+v", size, i, res[i], want[i])
			}
		}
	}
}

func TestVerifyResults(t *testing.T) {
	msg := readFile(t, "testdata/rfc8463-a3.eml")
	z := rfc8463Zone(t)
	temp := func(_ context.Context, name string) ([]string, error) {
		return nil, &net.DNSError{Err: "server misbehaving", Name: name, IsTemporary: true}
	}
	edOnly := func(m []byte) []byte { // drop the RSA signature (lines 8-15)
		lines := strings.SplitAfter(string(m), "\r\n")
		return []byte(strings.Join(append(lines[:7:7], lines[15:]...), ""))
	}
	tests := []struct {
		name   string
		msg    []byte
		lookup func(context.Context, string) ([]string, error)
		max    int
		want   []string
	}{
		{"both pass", msg, z.lookup, 0, []string{"pass", "pass"}},
		{"body altered by one byte", bytes.Replace(msg, []byte("Joe."), []byte("Joe!"), 1), z.lookup, 0, []string{"fail", "fail"}},
		{"signed header altered", bytes.Replace(msg, []byte("dinner"), []byte("Dinner"), 1), z.lookup, 0, []string{"fail", "fail"}},
		{"header canonicalised away", bytes.Replace(msg, []byte("Subject: Is dinner"), []byte("Subject:  Is   dinner"), 1), z.lookup, 0, []string{"pass", "pass"}},
		{"no key record", msg, zone{}.lookup, 0, []string{"permerror", "permerror"}},
		{"DNS temporary failure", msg, temp, 0, []string{"temperror", "temperror"}},
		{"no resolver", msg, nil, 0, []string{"temperror", "temperror"}},
		{"revoked key", msg, zone{"brisbane._domainkey.football.example.com": "v=DKIM1; k=ed25519; p=", "test._domainkey.football.example.com": "v=DKIM1; p="}.lookup, 0, []string{"permerror", "permerror"}},
		{"bound: second not verified", msg, z.lookup, 1, []string{"pass", "policy"}},
		{"one signature", edOnly(msg), z.lookup, 0, []string{"pass"}},
		{"one signature, body altered", bytes.Replace(edOnly(msg), []byte("hungry"), []byte("Hungry"), 1), z.lookup, 0, []string{"fail"}},
		{"syntax: no v=", bytes.Replace(msg, []byte("v=1; a=ed25519"), []byte("a=ed25519"), 1), z.lookup, 0, []string{"neutral", "pass"}},
		{"l= tag", bytes.Replace(edOnly(msg), []byte("q=dns/txt;"), []byte("q=dns/txt; l=10;"), 1), z.lookup, 0, []string{"policy"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := NewVerifier(context.Background(), VerifyOptions{LookupTXT: tc.lookup, MaxSignatures: tc.max})
			feed(t, v, tc.msg, 16)
			res, err := v.Close()
			if err != nil {
				t.Fatalf("Close: %v", err)
			}
			var got []string
			for _, r := range res {
				got = append(got, r.Result)
				if (r.Result == ResultPass) != (r.Err == nil) {
					t.Errorf("%s: result %s with Err %v", r.Selector, r.Result, r.Err)
				}
			}
			if strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Errorf("results %v, want %v (%+v)", got, tc.want, res)
			}
		})
	}
}

// A message without DKIM-Signature starts nothing and gives no result.
func TestVerifyUnsigned(t *testing.T) {
	before := runtime.NumGoroutine()
	v := NewVerifier(context.Background(), VerifyOptions{LookupTXT: zone{}.lookup})
	v.Header("From", " a@example.org")
	v.Header("Subject", " hi")
	v.EndHeaders()
	if v.started {
		t.Error("verification started for an unsigned message")
	}
	v.Body(bytes.Repeat([]byte("x"), 1<<20))
	res, err := v.Close()
	if res != nil || err != nil {
		t.Errorf("Close = %v, %v; want nothing", res, err)
	}
	checkNoLeak(t, before)
}

// The library stops reading early when a lone signature fails before the
// body hash (no key): Body must not block, whatever comes after.
func TestVerifyEarlyStopDoesNotBlock(t *testing.T) {
	before := runtime.NumGoroutine()
	v := NewVerifier(context.Background(), VerifyOptions{LookupTXT: zone{}.lookup})
	v.Header(HeaderName, " v=1; a=rsa-sha256; d=example.org; s=none; h=from; bh=AA==; b=AA==")
	v.Header("From", " a@example.org")
	v.EndHeaders()
	chunk := bytes.Repeat([]byte("line of body\r\n"), 4096)
	for i := 0; i < 100; i++ {
		v.Body(chunk)
	}
	res, err := v.Close()
	if err != nil || len(res) != 1 || res[0].Result != ResultPermError {
		t.Errorf("Close = %+v, %v; want one permerror", res, err)
	}
	checkNoLeak(t, before)
}

// Abort in the middle of the body ends the goroutine; so does a context
// that ends while a look-up waits (the message budget spent).
func TestVerifyAbortAndBudget(t *testing.T) {
	msg := readFile(t, "testdata/rfc8463-a3.eml")
	fields, body := splitMessage(t, msg)
	blocked := make(chan struct{}, 4)
	wait := func(ctx context.Context, name string) ([]string, error) {
		blocked <- struct{}{}
		<-ctx.Done()
		return nil, &net.DNSError{Err: ctx.Err().Error(), Name: name, IsTimeout: true}
	}

	t.Run("abort", func(t *testing.T) {
		before := runtime.NumGoroutine()
		v := NewVerifier(context.Background(), VerifyOptions{LookupTXT: wait})
		for _, f := range fields {
			v.Header(f.name, f.raw)
		}
		v.EndHeaders()
		<-blocked // a look-up is waiting
		v.Abort()
		v.Body(body) // after Abort: ignored, never blocks
		if res, err := v.Close(); res != nil || !errors.Is(err, ErrAborted) {
			t.Errorf("Close after Abort = %v, %v", res, err)
		}
		checkNoLeak(t, before)
	})

	// The budget ends while Body waits on the look-ups (a body larger than
	// the pipe's buffers): the stream is cut, Close says so.
	t.Run("budget", func(t *testing.T) {
		body := append(bytes.Repeat([]byte("filler line\r\n"), 1<<16), body...)
		before := runtime.NumGoroutine()
		ctx, cancel := context.WithCancel(context.Background())
		v := NewVerifier(ctx, VerifyOptions{LookupTXT: wait})
		for _, f := range fields {
			v.Header(f.name, f.raw)
		}
		v.EndHeaders()
		done := make(chan struct{})
		var res []Result
		var err error
		go func() {
			v.Body(body) // blocks while the look-ups wait
			res, err = v.Close()
			close(done)
		}()
		<-blocked
		cancel()
		<-done
		if err == nil || len(res) != 2 {
			t.Fatalf("Close = %+v, %v; want 2 results and an error", res, err)
		}
		for _, r := range res {
			if r.Result != ResultTempError {
				t.Errorf("%s: %s, want temperror", r.Selector, r.Result)
			}
		}
		checkNoLeak(t, before)
	})
}

// Field names and values the MTA would never send must not shift which
// verification belongs to which signature.
func TestVerifyOddFields(t *testing.T) {
	msg := readFile(t, "testdata/rfc8463-a3.eml")
	z := rfc8463Zone(t)
	fields, body := splitMessage(t, msg)
	v := NewVerifier(context.Background(), VerifyOptions{LookupTXT: z.lookup})
	v.Header("X-Odd", " a\r\n\r\nDKIM-Signature: v=1") // would end the header and add a field
	v.Header("Bad Name", " x")
	v.Header("", " x")
	for _, f := range fields {
		v.Header(f.name, f.raw)
	}
	v.EndHeaders()
	v.Body(body)
	res, err := v.Close()
	if err != nil || len(res) != 2 || res[0].Result != ResultPass || res[1].Result != ResultPass {
		t.Errorf("Close = %+v, %v; want two passes", res, err)
	}
}

func TestFoldSafe(t *testing.T) {
	tests := []struct{ in, want string }{
		{" plain", " plain"},
		{" a\r\n b", " a\r\n b"},
		{" a\n\tb", " a\r\n\tb"},
		{" a\r\n\r\nX: y", " a\r\n \r\n X: y"},
		{" a\rb", " a b"},
	}
	for _, tc := range tests {
		if got := foldSafe(tc.in); got != tc.want {
			t.Errorf("foldSafe(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestParseSignature(t *testing.T) {
	tests := []struct {
		raw    string
		want   sigInfo
		syntax bool
	}{
		{" v=1; a=rsa-sha256; d=example.org; s=sel;\r\n h=from; bh=AA==; b=abcd\r\n efghijkl", sigInfo{domain: "example.org", selector: "sel", algorithm: "rsa-sha256", bPrefix: "abcdefgh"}, false},
		{" v=1; a=rsa-sha256; d=example.org; s=sel; h=from; bh=AA==; b=ab; i=u@example.org; l=5;", sigInfo{domain: "example.org", identifier: "u@example.org", selector: "sel", algorithm: "rsa-sha256", bPrefix: "ab", hasL: true}, false},
		{" v=1; v=1; a=x", sigInfo{algorithm: "x"}, true},
		{" garbage", sigInfo{}, true},
		{" v=2; a=rsa-sha256; d=e; s=s; h=from; bh=A; b=B", sigInfo{domain: "e", selector: "s", algorithm: "rsa-sha256", bPrefix: "B"}, true},
	}
	for _, tc := range tests {
		got := parseSignature(tc.raw)
		if (got.syntax != "") != tc.syntax {
			t.Errorf("%q: syntax %q, want error %v", tc.raw, got.syntax, tc.syntax)
		}
		got.syntax = ""
		if got != tc.want {
			t.Errorf("%q: %+v, want %+v", tc.raw, got, tc.want)
		}
	}
}
