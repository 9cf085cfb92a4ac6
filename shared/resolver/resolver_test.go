package resolver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
)

type netDNSError = net.DNSError

func TestClassify(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want Outcome
	}{
		{"no error", nil, Found},
		{"nxdomain", &netDNSError{IsNotFound: true}, NotFound},
		{"timeout", &netDNSError{IsTimeout: true}, Temporary},
		{"servfail", &netDNSError{IsTemporary: true}, Temporary},
		{"other dns error", &netDNSError{Err: "refused"}, Permanent},
		{"wrapped nxdomain", fmt.Errorf("spf: %w", &netDNSError{IsNotFound: true}), NotFound},
		{"deadline", context.DeadlineExceeded, Temporary},
		{"unknown", errors.New("boom"), Permanent},
	}
	for _, tc := range tests {
		if got := Classify(tc.err); got != tc.want {
			t.Errorf("%s: Classify = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestTXTFunc(t *testing.T) {
	if TXTFunc(context.Background(), nil) != nil {
		t.Error("nil resolver gave a function")
	}
}
