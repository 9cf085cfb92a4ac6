package state

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestMemCounter(t *testing.T) {
	base := time.UnixMilli(1_700_000_040_000).Truncate(time.Minute) // start of a minute
	clk := newManualClock(base)
	m := NewMemCounter(clk.Now)
	ctx := context.Background()
	type step struct {
		advance time.Duration
		subject string
		want    Count
	}
	steps := []step{
		{0, "x", Count{Local: 1, Total: 1, Estimate: 1}},
		{0, "x", Count{Local: 2, Total: 2, Estimate: 2}},
		{0, "y", Count{Local: 1, Total: 1, Estimate: 1}},                                      // subjects are independent
		{90 * time.Second, "x", Count{Local: 1, Total: 1, PrevTotal: 2, Estimate: 2*0.5 + 1}}, // next window, half gone
		{30 * time.Second, "x", Count{Local: 1, Total: 1, PrevTotal: 1, Estimate: 2}},         // next again
		{5 * time.Minute, "x", Count{Local: 1, Total: 1, Estimate: 1}},                        // windows long gone
	}
	for i, s := range steps {
		clk.Add(s.advance)
		got, err := m.Incr(ctx, s.subject, time.Minute)
		if err != nil || got != s.want {
			t.Fatalf("step %d: Incr = %+v, %v; want %+v", i, got, err, s.want)
		}
	}
	if _, err := m.Incr(ctx, "x", 0); err == nil {
		t.Fatal("zero window accepted")
	}
}

func TestMemCounterSweeps(t *testing.T) {
	clk := newManualClock(time.UnixMilli(1_700_000_000_000))
	m := NewMemCounter(clk.Now)
	ctx := context.Background()
	for i := 0; i < 3*sweepEvery; i++ {
		clk.Add(time.Second) // every increment opens a new 1s window
		if _, err := m.Incr(ctx, "s", time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if n := m.Len(); n > sweepEvery+2 {
		t.Fatalf("%d windows held after %d increments; expired windows are not swept", n, 3*sweepEvery)
	}
}

func TestPeerCountCache(t *testing.T) {
	c := newPeerCountCache()
	k := peerCacheKey{site: "b", subject: "s", window: time.Minute}
	if got := c.get(k, 60_000, 0); got != (SiteCount{}) {
		t.Fatalf("empty cache gave %+v", got)
	}
	c.put(k, 60_000, SiteCount{Cur: 7, Prev: 3}, 180_000)
	tests := []struct {
		start, prev int64
		want        SiteCount
	}{
		{60_000, 0, SiteCount{Cur: 7, Prev: 3}}, // same window: last known counts
		{120_000, 60_000, SiteCount{Prev: 7}},   // next window: what it had becomes the previous count
		{180_000, 120_000, SiteCount{}},         // later: nothing known
	}
	for _, tc := range tests {
		if got := c.get(k, tc.start, tc.prev); got != tc.want {
			t.Errorf("get(%d) = %+v, want %+v", tc.start, got, tc.want)
		}
	}
	c.put(k, 0, SiteCount{Cur: 1}, 120_000) // older window must not replace a newer one
	if got := c.get(k, 60_000, 0); got.Cur != 7 {
		t.Fatalf("older window overwrote newer: %+v", got)
	}
}

func TestReadPassword(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ content, want string }{
		{"s3cret\n", "s3cret"}, {"s3cret\r\n", "s3cret"}, {"s3cret", "s3cret"}, {"with space \n", "with space "},
	} {
		p := filepath.Join(dir, "pass")
		if err := os.WriteFile(p, []byte(tc.content), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := readPassword(p)
		if err != nil || got != tc.want {
			t.Errorf("readPassword(%q) = %q, %v; want %q", tc.content, got, err, tc.want)
		}
	}
	if got, err := readPassword(""); got != "" || err != nil {
		t.Errorf("no file: %q, %v", got, err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := readPassword(empty); err == nil || !strings.Contains(err.Error(), "is empty") {
		t.Errorf("empty password file: err %v, want a clear error", err)
	}
}

func TestBuildTLS(t *testing.T) {
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "redis.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, DNSNames: []string{"redis.test"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600)

	conf, err := buildTLS(&TLSConfig{CAFile: certFile, CertFile: certFile, KeyFile: keyFile}, "redis.test:6380")
	if err != nil {
		t.Fatal(err)
	}
	if conf.ServerName != "redis.test" || conf.RootCAs == nil || len(conf.Certificates) != 1 {
		t.Fatalf("tls config: server name %q, roots %v, certs %d", conf.ServerName, conf.RootCAs != nil, len(conf.Certificates))
	}
	conf, err = buildTLS(&TLSConfig{ServerName: "other"}, "[::1]:6380")
	if err != nil || conf.ServerName != "other" {
		t.Fatalf("explicit server name: %v, %v", conf, err)
	}
	if _, err := buildTLS(&TLSConfig{CAFile: keyFile}, "x:1"); err == nil {
		t.Fatal("a CA file without certificates was accepted")
	}
	if conf, err := buildTLS(nil, "x:1"); conf != nil || err != nil {
		t.Fatal("nil TLS config must mean plain TCP")
	}
}

func TestMemCounterIncrMany(t *testing.T) {
	clk := newManualClock(time.UnixMilli(1_700_000_040_000).Truncate(time.Hour).Add(30 * time.Minute))
	m := NewMemCounter(clk.Now)
	ctx := context.Background()
	got, err := m.IncrMany(ctx, []IncrReq{{"x", time.Minute}, {"y", time.Hour}, {"x", time.Minute}, {"x", time.Hour}})
	want := []Count{
		{Local: 1, Total: 1, Estimate: 1},
		{Local: 1, Total: 1, Estimate: 1},
		{Local: 2, Total: 2, Estimate: 2}, // a repeated request counts twice
		{Local: 1, Total: 1, Estimate: 1}, // each window length is its own counter
	}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("IncrMany = %+v, %v; want %+v", got, err, want)
	}
	if c, err := m.Incr(ctx, "x", time.Minute); err != nil || c.Total != 3 {
		t.Fatalf("Incr after IncrMany = %+v, %v; want the same counter (3)", c, err)
	}
	// One invalid window: an error, and nothing counted.
	if _, err := m.IncrMany(ctx, []IncrReq{{"x", time.Minute}, {"z", 0}}); err == nil {
		t.Fatal("zero window accepted")
	}
	if c, _ := m.Incr(ctx, "x", time.Minute); c.Total != 4 {
		t.Fatalf("a failed IncrMany counted: x = %d, want 4", c.Total)
	}
	if cs, err := m.IncrMany(ctx, nil); cs != nil || err != nil {
		t.Fatalf("IncrMany(nil) = %v, %v", cs, err)
	}
}
