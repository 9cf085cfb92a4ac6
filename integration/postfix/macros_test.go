package postfix

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// What real Postfix sends to a milter, stage by stage, with the macro lists of
// postfix/main.cf.snippet: two recording milters, one negotiating protocol
// version 2 (as go-milter, and so geomilter, does) and one version 6, see an
// SMTP session with STARTTLS, a plain one, and a local submission. The tables
// are logged (-v) and, with GEOMILTER_MACRO_REPORT=FILE, written to FILE; they
// are the source of the table in docs/postfix.md.
//
// The same test checks the encryption route of the snippets: a header added by
// a milter that matches milter_header_checks sends the message through the
// "encrypt" transport to the encryption gateway (here an smtp-sink on
// 127.0.0.1:10026); the same header sent by the client does not.
func TestPostfixMacrosAndEncryptRoute(t *testing.T) {
	h := newHarness(t)
	s := h.newSite("mac", "")
	v2 := startRecorder(t, filepath.Join(s.sockDir, "v2.sock"), 2)
	v6 := startRecorder(t, filepath.Join(s.sockDir, "v6.sock"), 6)
	v2.addHeader = func(hdrs map[string]string) (string, string, bool) {
		if strings.Contains(hdrs["Subject"], "[encrypt]") {
			return "X-Geomilter-Encrypt", "subject-tag", true
		}
		return "", "", false
	}
	milters := "{ unix:" + filepath.Join(s.sockDir, "v2.sock") + ", default_action=tempfail }, { unix:" + filepath.Join(s.sockDir, "v6.sock") + ", default_action=tempfail }"
	o := siteOpts{tls: true, mainCf: map[string]string{"smtpd_milters": milters, "non_smtpd_milters": milters}}
	s.startSinks()
	s.startPostfix(o)

	// 1. STARTTLS, marked for encryption by the (v2) milter.
	if out, err := s.swaks("--tls", "--from", "alice@client.mac.test", "--to", "bob@acme.example,carol@acme.example",
		"--header", "Subject: [encrypt] quarterly figures"); err != nil {
		t.Fatalf("swaks (tls): %v\n%s", err, out)
	}
	// 2. Plain, with the routing header sent by the client itself.
	if out, err := s.swaks("--from", "mallory@client.mac.test", "--to", "bob@acme.example",
		"--header", "Subject: plain", "--header", "X-Geomilter-Encrypt: spoofed-by-client"); err != nil {
		t.Fatalf("swaks (plain): %v\n%s", err, out)
	}
	// 3. Local submission (non_smtpd_milters).
	if err := s.sendmail("root@mx1.mac.test", "ops@acme.example", "local"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "1 message at the encryption gateway and 2 at the final destination", func() bool {
		return s.encSink.Load() >= 1 && s.sink.Load() >= 2
	})
	time.Sleep(500 * time.Millisecond) // nothing else may arrive
	if e, n := s.encSink.Load(), s.sink.Load(); e != 1 || n != 2 {
		t.Fatalf("encryption gateway got %d (want 1: the milter-marked message), final destination %d (want 2: the client-marked and the local message)", e, n)
	}

	// The checks docs/postfix.md tells operators to run.
	if out := s.postconf("-n"); !strings.Contains(out, "milter_header_checks = regexp:") || !strings.Contains(out, "milter_protocol = 6") {
		t.Errorf("postconf -n lacks the snippet's settings:\n%s", out)
	}
	if out := s.postconf("-M", "encrypt/unix", "127.0.0.1:10027/inet"); strings.Count(out, "\n") < 2 {
		t.Errorf("postconf -M: want the encrypt transport and the re-injection listener:\n%s", out)
	}
	if out := s.postconf("-P", "127.0.0.1:10027/inet/receive_override_options"); !strings.Contains(out, "no_milters") {
		t.Errorf("postconf -P: re-injection without no_milters:\n%s", out)
	}

	report := macroTable("protocol version 6 (what geomilter negotiates):", v6.snapshot()) + "\n" +
		macroTable("protocol version 2 (what go-milter's server negotiates, for comparison):", v2.snapshot())
	t.Logf("what Postfix %s sent:\n%s", strings.TrimSpace(s.postconf("-h", "mail_version")), report)
	if f := os.Getenv("GEOMILTER_MACRO_REPORT"); f != "" {
		if err := os.WriteFile(f, []byte(report), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// A version 2 milter gets no DATA or UNKNOWN events.
	for i, rc := range v2.snapshot() {
		if strings.ContainsAny(string(rc.commands), "TU") {
			t.Errorf("connection %d: Postfix sent DATA/UNKNOWN events to a version 2 milter: %q", i+1, dedupCodes(rc.commands))
		}
	}
	// What geomilter relies on, for the version-6 milter: Postfix offers
	// every flag geomilter asks for (skipping DATA and unknown commands, no
	// reply to the envelope stages it observes only, to headers, end of
	// headers and body), so it can drop those round trips.
	const geomilterFlags = 0x100 | 0x200 | 0x80 | 0x1000 | 0x2000 | 0x4000 | 0x8000 | 0x40000 | 0x80000
	conns := v6.snapshot()
	if len(conns) != 3 {
		t.Fatalf("v6 milter saw %d connections, want 3 (two SMTP sessions, one local submission)", len(conns))
	}
	for i, rc := range conns {
		if rc.offered[0] != 6 {
			t.Errorf("connection %d: Postfix offered protocol %d, want 6 (milter_protocol = 6)", i+1, rc.offered[0])
		}
		if rc.offered[2]&geomilterFlags != geomilterFlags {
			t.Errorf("connection %d: Postfix offered protocol flags %#x, lacking %#x of what geomilter asks for",
				i+1, rc.offered[2], geomilterFlags&^rc.offered[2])
		}
		if rc.macros['E']["i"] == "" {
			t.Errorf("connection %d: no queue id (macro i) at end of message: %v", i+1, rc.macros['E'])
		}
		if rc.macros['C']["{client_addr}"] == "" && rc.connect.addr == "" {
			t.Errorf("connection %d: no client address in CONNECT or its macros", i+1)
		}
	}
	if v := conns[0].macros['H']["{tls_version}"]; !strings.HasPrefix(v, "TLS") {
		t.Errorf("STARTTLS session: {tls_version} at HELO = %q, want TLSv1.x", v)
	}
	if v := conns[0].macros['R']["{rcpt_addr}"]; v == "" {
		t.Errorf("no {rcpt_addr} at RCPT")
	}
}
