package milterrt_test

import (
	"encoding/binary"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	milter "github.com/emersion/go-milter"

	. "github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/milterrt/miltertest"
)

// packet frames one milter command: 4-byte length, command byte, payload.
func packet(code byte, payload []byte) []byte {
	b := make([]byte, 5, 5+len(payload))
	binary.BigEndian.PutUint32(b, uint32(1+len(payload)))
	b[4] = code
	return append(b, payload...)
}

// FuzzProtocolBytes: whatever bytes a peer sends after option negotiation, the
// server neither crashes nor wedges, and the next well-behaved session is
// served normally. Protocol bytes come from outside (a misbehaving MTA or
// anything that can reach the socket).
func FuzzProtocolBytes(f *testing.F) {
	// A MessageUser with a tiny memory threshold: the message path (files
	// included) is fuzzed too.
	m := wholeMilter{&testMilter{stages: AllStages, actions: MayAddHeader | MayQuarantine}}
	ts := start(f, m, Options{IdleTimeout: 2 * time.Second, MessageDir: f.TempDir(), MessageMemory: 64}, false)

	optneg := make([]byte, 12)
	binary.BigEndian.PutUint32(optneg[0:], 6)
	binary.BigEndian.PutUint32(optneg[4:], 0x1ff)
	binary.BigEndian.PutUint32(optneg[8:], 0x1fffff)

	f.Add(packet('C', []byte("host\x004\x9c\x40192.0.2.1\x00")))
	f.Add(append(packet('D', []byte("Mi\x00ABC\x00{auth_authen}\x00u\x00")), packet('M', []byte("<a@b>\x00"))...))
	f.Add(append(packet('R', []byte("<r@x>\x00")), packet('L', []byte("Subject\x00hi\x00"))...))
	f.Add(append(packet('N', nil), append(packet('B', []byte("body")), packet('E', nil)...)...))
	f.Add(packet('C', []byte("h\x006")))       // truncated connect
	f.Add(packet('L', []byte("only-name")))    // header without value
	f.Add([]byte{0, 0, 0, 0})                  // zero length
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 'C'}) // absurd length
	f.Add(packet('Z', nil))                    // unknown command
	f.Add(append(packet('A', nil), packet('Q', nil)...))

	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := net.DialTimeout(ts.Network, ts.Addr, 5*time.Second)
		if err != nil {
			t.Fatalf("server stopped accepting: %v", err)
		}
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		_, _ = c.Write(packet('O', optneg))
		_, _ = c.Write(data)
		// End of input: the server must finish and close on its own (quit,
		// protocol error or EOF), which also keeps every execution short.
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		buf := make([]byte, 4096)
		for {
			if _, err := c.Read(buf); err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("server did not close the connection within 2s of the end of input")
				}
				break
			}
		}
		c.Close()

		// A well-behaved session right after is served as usual.
		cl, err := ts.TryDial(miltertest.Proto2Actions, miltertest.Proto2Protocol)
		if err != nil {
			t.Fatalf("session after fuzz input: %v", err)
		}
		defer cl.Raw.Close()
		miltertest.Cont(t, "conn")(cl.Conn("client.example", milter.FamilyInet, 40000, "192.0.2.10"))
		miltertest.Cont(t, "mail")(cl.Mail("a@b.example", nil))
		miltertest.Cont(t, "rcpt")(cl.Rcpt("c@d.example", nil))
		cl.EndExpect(t, milter.ActAccept, 0, "")
	})
}
