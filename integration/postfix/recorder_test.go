package postfix

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
)

// recorder is a minimal milter that speaks the wire protocol itself, so it
// sees exactly what Postfix sends: which macros arrive with which command,
// and what the CONNECT packet holds. It negotiates a chosen protocol version
// (2, as go-milter does, or 6) with every event and every reply enabled,
// answers continue to everything, and optionally adds a header at end of
// message (to drive milter_header_checks).
type recorder struct {
	version uint32
	ln      net.Listener
	// addHeader returns a header to add at end of message, given the headers.
	addHeader func(hdrs map[string]string) (name, value string, ok bool)

	mu    sync.Mutex
	conns []*recConn
	wg    sync.WaitGroup
}

// recConn is what one milter connection (one SMTP session, or one local
// submission) delivered.
type recConn struct {
	offered  [3]uint32 // MTA's OPTNEG: version, actions, protocol
	connect  recConnect
	macros   map[byte]map[string]string // command code -> macros sent for it
	commands []byte                     // command codes in arrival order
	headers  map[string]string
	helo     string
	mail     []string // MAIL FROM address and ESMTP arguments
}

type recConnect struct {
	host, family, addr string
	port               uint16
	seen               bool
}

// Protocol constants (libmilter's mfdef.h).
const (
	smfifAddHdrs = 0x01
)

func startRecorder(t testing.TB, path string, version uint32) *recorder {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	// smtpd and cleanup run as user postfix.
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	r := &recorder{version: version, ln: ln}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			rc := &recConn{macros: map[byte]map[string]string{}, headers: map[string]string{}}
			r.mu.Lock()
			r.conns = append(r.conns, rc)
			r.mu.Unlock()
			r.wg.Add(1)
			go func() { defer r.wg.Done(); defer c.Close(); r.serve(c, rc) }()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return r
}

func (r *recorder) snapshot() []*recConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*recConn(nil), r.conns...)
}

func writePacket(w io.Writer, code byte, data []byte) error {
	var hdr [5]byte
	binary.BigEndian.PutUint32(hdr[:4], uint32(len(data)+1))
	hdr[4] = code
	if _, err := w.Write(append(hdr[:], data...)); err != nil {
		return err
	}
	return nil
}

func cstrings(b []byte) []string {
	parts := strings.Split(string(b), "\x00")
	if len(parts) > 0 && parts[len(parts)-1] == "" {
		parts = parts[:len(parts)-1]
	}
	return parts
}

func (r *recorder) serve(c net.Conn, rc *recConn) {
	br := bufio.NewReader(c)
	for {
		var n uint32
		if err := binary.Read(br, binary.BigEndian, &n); err != nil || n == 0 || n > 1<<20 {
			return
		}
		pkt := make([]byte, n)
		if _, err := io.ReadFull(br, pkt); err != nil {
			return
		}
		code, data := pkt[0], pkt[1:]
		r.mu.Lock()
		rc.commands = append(rc.commands, code)
		r.mu.Unlock()
		var err error
		switch code {
		case 'O': // option negotiation
			if len(data) >= 12 {
				r.mu.Lock()
				rc.offered = [3]uint32{binary.BigEndian.Uint32(data), binary.BigEndian.Uint32(data[4:]), binary.BigEndian.Uint32(data[8:])}
				r.mu.Unlock()
			}
			var b [12]byte
			binary.BigEndian.PutUint32(b[:], r.version)
			binary.BigEndian.PutUint32(b[4:], smfifAddHdrs)
			binary.BigEndian.PutUint32(b[8:], 0) // every event, every reply
			err = writePacket(c, 'O', b[:])
		case 'D': // macros for the command named in the first byte; no reply
			if len(data) > 0 {
				kv := cstrings(data[1:])
				m := map[string]string{}
				for i := 0; i+1 < len(kv); i += 2 {
					m[kv[i]] = kv[i+1]
				}
				r.mu.Lock()
				rc.macros[data[0]] = m
				r.mu.Unlock()
			}
		case 'C': // host\0 family [port addr\0]
			cc := recConnect{seen: true}
			if i := bytes.IndexByte(data, 0); i >= 0 {
				cc.host = string(data[:i])
				rest := data[i+1:]
				if len(rest) > 0 {
					cc.family = string(rest[:1])
					if len(rest) >= 3 {
						cc.port = binary.BigEndian.Uint16(rest[1:3])
						cc.addr = strings.TrimRight(string(rest[3:]), "\x00")
					}
				}
			}
			r.mu.Lock()
			rc.connect = cc
			r.mu.Unlock()
			err = writePacket(c, 'c', nil)
		case 'L': // header name\0value\0
			if kv := cstrings(data); len(kv) == 2 {
				r.mu.Lock()
				rc.headers[kv[0]] = strings.TrimSpace(kv[1])
				r.mu.Unlock()
			}
			err = writePacket(c, 'c', nil)
		case 'E': // end of message
			if r.addHeader != nil {
				r.mu.Lock()
				hdrs := map[string]string{}
				for k, v := range rc.headers {
					hdrs[k] = v
				}
				r.mu.Unlock()
				if name, value, ok := r.addHeader(hdrs); ok {
					if err = writePacket(c, 'h', []byte(name+"\x00"+value+"\x00")); err != nil {
						return
					}
				}
			}
			err = writePacket(c, 'c', nil)
		case 'H':
			r.mu.Lock()
			rc.helo = strings.TrimRight(string(data), "\x00")
			r.mu.Unlock()
			err = writePacket(c, 'c', nil)
		case 'M':
			r.mu.Lock()
			rc.mail = cstrings(data)
			r.mu.Unlock()
			err = writePacket(c, 'c', nil)
		case 'A': // abort: no reply; a new transaction may follow
			r.mu.Lock()
			rc.headers = map[string]string{}
			r.mu.Unlock()
		case 'Q': // quit
			return
		case 'K': // quit, new connection follows (v6): no reply
		default: // R T N B U: continue
			err = writePacket(c, 'c', nil)
		}
		if err != nil {
			return
		}
	}
}

// stageNames maps milter command codes to stage names.
var stageNames = []struct {
	code byte
	name string
}{{'C', "connect"}, {'H', "helo"}, {'M', "mail"}, {'R', "rcpt"}, {'T', "data"}, {'L', "header"}, {'N', "eoh"}, {'B', "body"}, {'E', "eom"}, {'U', "unknown"}}

// macroTable renders, per stage, the macros that arrived and the commands
// Postfix sent, for the log and docs/postfix.md.
func macroTable(label string, conns []*recConn) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n", label)
	for i, rc := range conns {
		fmt.Fprintf(&b, "  connection %d: offered version %d actions 0x%x protocol 0x%x; commands %q\n", i+1, rc.offered[0], rc.offered[1], rc.offered[2], dedupCodes(rc.commands))
		if rc.connect.seen {
			fmt.Fprintf(&b, "    CONNECT packet: host=%q family=%q port=%d addr=%q\n", rc.connect.host, rc.connect.family, rc.connect.port, rc.connect.addr)
		}
		fmt.Fprintf(&b, "    HELO packet: %q; MAIL packet: %q\n", rc.helo, rc.mail)
		for _, st := range stageNames {
			m, ok := rc.macros[st.code]
			if !ok {
				continue
			}
			keys := make([]string, 0, len(m))
			for k, v := range m {
				keys = append(keys, fmt.Sprintf("%s=%q", k, v))
			}
			sort.Strings(keys)
			fmt.Fprintf(&b, "    %-7s %s\n", st.name+":", strings.Join(keys, " "))
		}
	}
	return b.String()
}

// dedupCodes squeezes runs of the same command (many headers, body chunks).
func dedupCodes(codes []byte) string {
	var out []byte
	for _, c := range codes {
		if len(out) == 0 || out[len(out)-1] != c {
			out = append(out, c)
		}
	}
	return string(out)
}
