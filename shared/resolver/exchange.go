package resolver

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/miekg/dns"
)

// udpBufs holds read buffers for UDP replies. A reply is at most ednsSize
// bytes if the server honours EDNS0, but one that does not may send up to
// 64 KiB, and a short buffer would cut it into a malformed message.
var udpBufs = sync.Pool{New: func() any { b := make([]byte, 65535); return &b }}

// newQuery builds the query: recursion desired, a random ID (miekg/dns
// draws it from crypto/rand), EDNS0 advertising ednsSize (RFC 6891).
func newQuery(qname string, qtype uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(qname, qtype)
	m.RecursionDesired = true
	m.SetEdns0(ednsSize, false)
	return m
}

// exchange asks one server, over UDP and again over TCP when the reply is
// truncated (RFC 7766 §5), within ctx's deadline.
func (c *Client) exchange(ctx context.Context, addr, qname string, qtype uint16) (*dns.Msg, error) {
	q := newQuery(qname, qtype)
	wire, err := q.Pack()
	if err != nil {
		return nil, fmt.Errorf("packing query: %w", err)
	}
	r, err := c.exchangeUDP(ctx, addr, q, wire)
	if err != nil || !r.Truncated {
		return r, err
	}
	return c.exchangeTCP(ctx, addr, q, wire)
}

// exchangeUDP sends the query from a fresh socket (a random source port,
// RFC 5452 §9.2) and reads until a datagram answers it: replies with
// another ID or question are counted and ignored (a spoofer must then beat
// the real answer and guess ID and port), malformed ones too.
func (c *Client) exchangeUDP(ctx context.Context, addr string, q *dns.Msg, wire []byte) (*dns.Msg, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "udp", addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if _, err := conn.Write(wire); err != nil {
		return nil, err
	}
	bp := udpBufs.Get().(*[]byte)
	defer udpBufs.Put(bp)
	for {
		n, err := conn.Read(*bp)
		if err != nil {
			return nil, err
		}
		r, err := checkReply(q, (*bp)[:n])
		switch {
		case errors.Is(err, errMismatch):
			c.met.spoofed.Inc()
			continue
		case err != nil:
			c.met.malformed.Inc()
			continue
		}
		return r, nil
	}
}

// exchangeTCP asks over TCP with the two-byte length prefix of RFC 1035
// §4.2.2. A connection that answers something else is dropped: on TCP a
// spoofer would have to own the connection.
func (c *Client) exchangeTCP(ctx context.Context, addr string, q *dns.Msg, wire []byte) (*dns.Msg, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	out := make([]byte, 2+len(wire))
	binary.BigEndian.PutUint16(out, uint16(len(wire)))
	copy(out[2:], wire)
	if _, err := conn.Write(out); err != nil {
		return nil, err
	}
	var lb [2]byte
	if _, err := io.ReadFull(conn, lb[:]); err != nil {
		return nil, err
	}
	buf := make([]byte, binary.BigEndian.Uint16(lb[:]))
	if _, err := io.ReadFull(conn, buf); err != nil {
		return nil, err
	}
	r, err := checkReply(q, buf)
	switch {
	case errors.Is(err, errMismatch):
		c.met.spoofed.Inc()
		return nil, fmt.Errorf("%s over TCP: %w", addr, err)
	case err != nil:
		c.met.malformed.Inc()
		return nil, fmt.Errorf("%s over TCP: %w", addr, err)
	}
	return r, nil
}

// typeLabel is a query type's metric label (a fixed, small set).
func typeLabel(qtype uint16) string {
	if s, ok := dns.TypeToString[qtype]; ok {
		return s
	}
	return "other"
}
