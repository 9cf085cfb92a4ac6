package milterrt

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	milter "github.com/emersion/go-milter"
)

// The runtime speaks the milter protocol itself rather than through go-milter's
// server loop (go-milter's constants and client are still used). Measured in
// BENCHMARKS.md, the server loop set the floor of every milter:
//   - it announces protocol version 2, so Postfix waits for a reply after every
//     header line, end of headers and body chunk, and after the envelope stages
//     a milter only observes; version 6 lets the milter say "no reply" there
//     (SMFIP_NR_*), which removes most round trips of a message;
//   - it allocates a writer for every packet and sends each modification in a
//     system call of its own; here the modifications and the final reply of a
//     message leave in one write from a reused buffer;
//   - it allocates every packet it reads; here one buffer per connection is
//     reused.

const (
	// protocolVersion is the highest milter protocol version spoken (Postfix
	// 2.6+ and Sendmail 8.14+ speak 6).
	protocolVersion = 6
	// maxPacket bounds one command from the MTA. Postfix sends body chunks of
	// at most 64 KiB and headers up to header_size_limit (100 KiB by default).
	maxPacket = 1 << 20
	// keepBuffer is the largest packet buffer a connection keeps between
	// packets; a larger packet gets a buffer of its own.
	keepBuffer = 128 << 10
	// flushAt sends queued modifications early so that a large body
	// replacement does not sit in memory whole.
	flushAt = 256 << 10
)

// protocolError is input from the MTA that breaks the milter protocol. The
// connection is closed (Postfix then applies milter_default_action) and the
// transaction, if any, is reported as aborted.
type protocolError struct{ msg string }

func (e *protocolError) Error() string { return "milter protocol: " + e.msg }

func protoErrorf(format string, a ...any) error {
	return &protocolError{msg: fmt.Sprintf(format, a...)}
}

// response is one reply packet to the MTA.
type response struct {
	code byte
	data []byte
}

// Replies without data are shared; they are only read.
var (
	respContinue = &response{code: byte(milter.ActContinue)}
	respAccept   = &response{code: byte(milter.ActAccept)}
	respDiscard  = &response{code: byte(milter.ActDiscard)}
)

// readPacket returns the next command and its payload. The payload is valid
// until the next call.
func (c *connection) readPacket() (byte, []byte, error) {
	if _, err := io.ReadFull(c.br, c.hdr[:]); err != nil {
		if err == io.ErrUnexpectedEOF {
			return 0, nil, protoErrorf("connection closed inside a packet header")
		}
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(c.hdr[:])
	if n == 0 {
		return 0, nil, protoErrorf("packet of length 0")
	}
	if n > maxPacket {
		return 0, nil, protoErrorf("packet of %d bytes, more than the %d allowed", n, maxPacket)
	}
	var buf []byte
	if int(n) <= cap(c.in) {
		buf = c.in[:n]
	} else {
		buf = make([]byte, n)
		if n <= keepBuffer {
			c.in = buf
		}
	}
	if _, err := io.ReadFull(c.br, buf); err != nil {
		if err == io.ErrUnexpectedEOF || err == io.EOF {
			return 0, nil, protoErrorf("connection closed inside a %q packet", buf[0])
		}
		return 0, nil, err
	}
	return buf[0], buf[1:], nil
}

// queue appends one packet to the output buffer; parts are concatenated.
func (c *connection) queue(code byte, parts ...[]byte) {
	n := 1
	for _, p := range parts {
		n += len(p)
	}
	c.out = binary.BigEndian.AppendUint32(c.out, uint32(n))
	c.out = append(c.out, code)
	for _, p := range parts {
		c.out = append(c.out, p...)
	}
}

// flush writes the queued packets in one system call.
func (c *connection) flush() error {
	if len(c.out) == 0 {
		return nil
	}
	c.raw.SetWriteDeadline(time.Now().Add(c.srv.opts.IdleTimeout))
	_, err := c.raw.Write(c.out)
	if cap(c.out) > keepBuffer {
		c.out = nil
	} else {
		c.out = c.out[:0]
	}
	return err
}

// send queues r after any queued modifications and writes them all.
func (c *connection) send(r *response) error {
	c.queue(r.code, r.data)
	return c.flush()
}

// negotiate answers SMFIC_OPTNEG: the MTA's version, at most 6, and of the
// actions and protocol flags the milter wants, those the MTA offers. A milter
// action the MTA does not offer is left out (its Modifier call then fails with
// ErrNotNegotiated) rather than asked for: Postfix drops a milter that asks
// for more than it offered.
func (c *connection) negotiate(data []byte) error {
	if len(data) < 12 {
		return protoErrorf("option negotiation of %d bytes, want 12", len(data))
	}
	ver := binary.BigEndian.Uint32(data[0:])
	offerAct := milter.OptAction(binary.BigEndian.Uint32(data[4:]))
	offerProto := milter.OptProtocol(binary.BigEndian.Uint32(data[8:]))
	if ver < 2 {
		return protoErrorf("MTA speaks milter protocol version %d; at least 2 is needed", ver)
	}
	ver = min(ver, protocolVersion)
	want := c.srv.actions.optAction()
	act := want & offerAct
	if act != want {
		c.srv.log.Warn().Str("session", c.id).Uint32("wanted", uint32(want)).Uint32("offered", uint32(offerAct)).
			Msg("MTA does not offer every modification this milter uses; those calls will fail")
	}
	wantProto := c.srv.protocolFor()
	if c.srv.stages&StageHeaders != 0 {
		// Header values exactly as received (HeaderField.Raw).
		wantProto |= milter.OptHeaderLeadingSpace // SMFIP_HDR_LEADSPC, 0x00100000
	}
	proto := wantProto & offerProto
	c.proto, c.actions = proto, actionsOf(act)
	c.srv.log.Debug().Str("session", c.id).Uint32("version", ver).Uint32("actions", uint32(act)).
		Uint32("protocol", uint32(proto)).Uint32("offered_protocol", uint32(offerProto)).Msg("milter options negotiated")
	c.queue('O', binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(
		make([]byte, 0, 12), ver), uint32(act)), uint32(proto)))
	return c.flush()
}

// replies reports whether the MTA waits for a reply to stage's event.
func (c *connection) replies(stage Stages) bool {
	return c.proto&noReplyFlag(stage) == 0
}

// cstring returns the NUL-terminated string at the start of b (all of b if
// there is no NUL) and what follows the NUL.
func cstring(b []byte) (string, []byte) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return string(b), nil
	}
	return string(b[:i]), b[i+1:]
}

// connectInfo is the payload of SMFIC_CONNECT.
type connectInfo struct {
	host, family string
	port         uint16
	addr         net.IP
}

// parseConnect reads "host\0 family [port] addr\0". Postfix sends a port for
// every family but unknown; go-milter's client omits it for unix, and Sendmail
// writes IPv6 addresses as "IPv6:…".
func parseConnect(data []byte) (connectInfo, error) {
	var ci connectInfo
	host, rest := cstring(data)
	if rest == nil || len(rest) < 1 {
		return ci, protoErrorf("connect without address family")
	}
	ci.host = host
	fam := rest[0]
	rest = rest[1:]
	switch fam {
	case 'U':
		ci.family = "unknown"
		return ci, nil
	case 'L':
		ci.family = "unix" // the socket path says nothing about the client
		return ci, nil
	case '4', '6':
	default:
		return ci, protoErrorf("connect with unknown address family %q", fam)
	}
	if len(rest) < 2 {
		return ci, protoErrorf("connect without port")
	}
	ci.port = binary.BigEndian.Uint16(rest)
	addr, _ := cstring(rest[2:])
	addr = strings.TrimPrefix(addr, "IPv6:")
	ci.family = "tcp" + string(fam)
	ci.addr = net.ParseIP(addr)
	return ci, nil
}

// headerPacket splits SMFIC_HEADER into name and value. leadSpace says
// whether SMFIP_HDR_LEADSPC was negotiated: without it Postfix has removed
// one space after the colon (see HeaderField.Raw).
func headerPacket(data []byte, leadSpace bool) (HeaderField, error) {
	name, rest := cstring(data)
	if name == "" {
		return HeaderField{}, protoErrorf("header without name")
	}
	value, _ := cstring(rest)
	if !leadSpace {
		value = " " + value
	}
	return NewHeaderField(name, value), nil
}

// addrArg returns the address of SMFIC_MAIL or SMFIC_RCPT without "<>",
// and the ESMTP parameters that follow it.
func addrArg(data []byte) (string, Params) {
	a, rest := cstring(data)
	return strings.Trim(a, "<>"), parseParams(rest)
}

// macroPairs decodes SMFIC_MACRO into kv (appended, as name, value, …): the
// command the macros belong to, then name/value pairs. A name without value
// gets "".
func macroPairs(kv []string, data []byte) (byte, []string, error) {
	if len(data) == 0 {
		return 0, kv, protoErrorf("macro packet without command")
	}
	cmd, rest := data[0], data[1:]
	n := len(kv)
	for len(rest) > 0 {
		var s string
		s, rest = cstring(rest)
		kv = append(kv, s)
	}
	if (len(kv)-n)%2 == 1 {
		kv = append(kv, "")
	}
	return cmd, kv, nil
}
