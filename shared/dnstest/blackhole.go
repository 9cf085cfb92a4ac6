package dnstest

import (
	"io"
	"net"
	"sync"
	"testing"
)

// Blackhole is a dark DNS server: it takes every UDP datagram and TCP
// connection on its address, reads what comes, and never answers (packets
// dropped, as a server behind a dropping firewall looks).
type Blackhole struct {
	addr string
	pc   net.PacketConn
	ln   net.Listener

	mu     sync.Mutex
	conns  []net.Conn
	n      int
	closed bool
}

// StartBlackhole starts a Blackhole on 127.0.0.1 and stops it when the
// test ends.
func StartBlackhole(t testing.TB) *Blackhole {
	t.Helper()
	pc, ln := listenPair(t)
	b := &Blackhole{addr: pc.LocalAddr().String(), pc: pc, ln: ln}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		buf := make([]byte, 65535)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			b.mu.Lock()
			b.n++
			b.mu.Unlock()
		}
	}()
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			b.n++
			if b.closed {
				c.Close()
			}
			b.conns = append(b.conns, c)
			b.mu.Unlock()
			wg.Add(1)
			go func() { defer wg.Done(); _, _ = io.Copy(io.Discard, c) }()
		}
	}()
	t.Cleanup(func() {
		pc.Close()
		ln.Close()
		b.mu.Lock()
		b.closed = true
		for _, c := range b.conns {
			c.Close()
		}
		b.mu.Unlock()
		wg.Wait()
	})
	return b
}

// Addr is the blackhole's address, 127.0.0.1:port, for UDP and TCP.
func (b *Blackhole) Addr() string { return b.addr }

// Received returns how many datagrams and connections arrived.
func (b *Blackhole) Received() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.n
}
