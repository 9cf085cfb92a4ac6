package target

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// tlsSMTPServer is a small SMTP server with real STARTTLS (crypto/tls over
// TCP): smtp-sink has no TLS. It takes every message and notes whether the
// session was encrypted.
type tlsSMTPServer struct {
	addr string
	cfg  *tls.Config

	mu   sync.Mutex
	msgs []bool // per message: over TLS
}

// writeCert writes a self-signed certificate for 127.0.0.1 and
// archive.test and returns the PEM file and the server's TLS config.
func writeCert(t *testing.T) (string, *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "archive.test"},
		DNSNames: []string{"archive.test"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return file, &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
}

func startTLSSMTPServer(t *testing.T, cfg *tls.Config) *tlsSMTPServer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &tlsSMTPServer{addr: l.Addr().String(), cfg: cfg}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); s.session(c) }()
		}
	}()
	return s
}

func (s *tlsSMTPServer) session(c net.Conn) {
	defer func() { c.Close() }()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	r, w := bufio.NewReader(c), bufio.NewWriter(c)
	say := func(line string) { w.WriteString(line + "\r\n"); w.Flush() }
	encrypted := false
	say("220 tls.test ESMTP")
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		verb := strings.ToUpper(strings.Fields(line + " x")[0])
		switch verb {
		case "EHLO":
			if encrypted {
				say("250-tls.test\r\n250 8BITMIME")
			} else {
				say("250-tls.test\r\n250-8BITMIME\r\n250 STARTTLS")
			}
		case "STARTTLS":
			say("220 2.0.0 go ahead")
			tc := tls.Server(c, s.cfg)
			if err := tc.Handshake(); err != nil {
				return // the client refused our certificate
			}
			c, encrypted = tc, true
			r, w = bufio.NewReader(tc), bufio.NewWriter(tc)
		case "DATA":
			say("354 go ahead")
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if l == ".\r\n" {
					break
				}
			}
			s.mu.Lock()
			s.msgs = append(s.msgs, encrypted)
			s.mu.Unlock()
			say("250 2.0.0 queued")
		case "QUIT":
			say("221 bye")
			return
		default: // MAIL, RCPT, RSET
			say("250 2.0.0 ok")
		}
	}
}

func TestSMTPStartTLS(t *testing.T) {
	caFile, srvCfg := writeCert(t)
	tests := []struct {
		name      string
		mode      string
		ca        bool
		server    string // tls_server_name
		wantTLS   bool
		wantError string // "" = delivered
	}{
		{"require, verified by IP", StartTLSRequire, true, "", true, ""},
		{"require, verified by name", StartTLSRequire, true, "archive.test", true, ""},
		{"require, wrong name", StartTLSRequire, true, "other.test", false, "TLS handshake"},
		{"require, system roots do not know the CA", StartTLSRequire, false, "", false, "TLS handshake"},
		{"may: encrypted, certificate not checked", StartTLSMay, false, "", true, ""},
		{"off: plain text though offered", StartTLSOff, false, "", false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := startTLSSMTPServer(t, srvCfg)
			dead, _ := newDead(t)
			ts := newTestSpool(t)
			ts.add(t, testHeader("lax-1", testMsg8), testMsg8)
			c := smtpConfig(bracket(srv.addr))
			c.StartTLS, c.TLSServerName = tt.mode, tt.server
			if tt.ca {
				c.TLSCAFile = caFile
			}
			tg := newTarget(t, c, dead)
			err := tg.Send(sendCtx(t), ts.batch(t, 1))
			srv.mu.Lock()
			defer srv.mu.Unlock()
			if tt.wantError != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantError) {
					t.Fatalf("Send = %v, want an error with %q", err, tt.wantError)
				}
				if len(srv.msgs) != 0 || dead.Status("vault").Count != 0 {
					t.Fatalf("delivered %d, dead %d: want neither", len(srv.msgs), dead.Status("vault").Count)
				}
				return
			}
			if err != nil {
				t.Fatalf("Send: %v", err)
			}
			if len(srv.msgs) != 1 || srv.msgs[0] != tt.wantTLS {
				t.Fatalf("server got %v (over TLS per message), want one, TLS %v", srv.msgs, tt.wantTLS)
			}
		})
	}
}
