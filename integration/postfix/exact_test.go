package postfix

import (
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/geomilter/geomilter/shared/milterrt"
)

// exactMessage is sent by swaks as is (--data): a header with no space after
// the colon, one with a tab, a folded one, an empty one, trailing space.
const exactMessage = "From: Alice <alice@client.exa.test>\n" +
	"To: Bob <bob@acme.example>\n" +
	"Date: Mon, 7 Dec 2026 01:02:03 +0000\n" +
	"Message-ID: <exact-1@client.exa.test>\n" +
	"X-NoSpace:value\n" +
	"X-Tab:\tvalue with tab\n" +
	"Subject: a folded\n subject line\n\tand a tab fold \n" +
	"X-Empty:\n" +
	"\n" +
	"Body line 1\n" +
	"\n" +
	"  indented, trailing space \n" +
	"last line" // swaks ends the data with "\r\n." itself

// captured is what the capturing milter saw of one transaction.
type captured struct {
	headers  []milterrt.HeaderField
	envelope milterrt.Envelope
	message  []byte
}

// capturer is a milter on the geomilter runtime that keeps, at end of
// message, the header fields, the envelope and the whole message.
type capturer struct {
	mu   sync.Mutex
	txns []captured
}

func (*capturer) Name() string { return "capture" }
func (*capturer) Stages() milterrt.Stages {
	return milterrt.StageConnect | milterrt.StageHelo | milterrt.StageMail | milterrt.StageRcpt | milterrt.StageHeaders
}
func (*capturer) Modifications() milterrt.Modifications { return 0 }
func (*capturer) UsesMessage() bool                     { return true }
func (c *capturer) NewSession(*milterrt.State) milterrt.Session {
	return &captureSession{c: c}
}

var _ milterrt.MessageUser = (*capturer)(nil)

type captureSession struct {
	milterrt.BaseSession
	c *capturer
}

func (s *captureSession) EndOfMessage(st *milterrt.State, _ milterrt.Modifier) milterrt.Decision {
	msg, err := io.ReadAll(st.Message.Reader())
	if err != nil {
		return milterrt.TempFail("", "", "").WithReason(err.Error())
	}
	s.c.mu.Lock()
	s.c.txns = append(s.c.txns, captured{headers: append([]milterrt.HeaderField(nil), st.Headers...), envelope: st.Envelope(), message: msg})
	s.c.mu.Unlock()
	return milterrt.Continue()
}

func (c *capturer) snapshot() []captured {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]captured(nil), c.txns...)
}

// serveCapturer runs the capturing milter on a unix socket Postfix (user
// postfix) can reach, until the test ends. Messages past 64 bytes go to files
// in messages/ beside the socket.
func serveCapturer(t testing.TB, path string) *capturer {
	t.Helper()
	c := &capturer{}
	serveForPostfix(t, c, path, milterrt.Options{MessageMemory: 64})
	return c
}

// TestExactHeadersAndParams: through real Postfix, a milter on the runtime
// sees header bytes, the whole message and the ESMTP parameters of MAIL and
// RCPT exactly as swaks sent them.
//
// swaks (20201014) has no option for ESMTP parameters; they ride in the
// address, after a '>' of their own: swaks writes "MAIL FROM:<" + from + ">",
// so the last parameter of each command carries swaks's closing '>' (allowed
// in xtext, so ENVID and ORCPT stay valid for Postfix).
func TestExactHeadersAndParams(t *testing.T) {
	h := newHarness(t)
	s := h.newSite("exa", "")
	sock := filepath.Join(s.sockDir, "capture.sock")
	capt := serveCapturer(t, sock)
	s.startSinks()
	s.startPostfix(siteOpts{mainCf: map[string]string{
		"smtpd_milters":     "{ unix:" + sock + ", default_action=tempfail }",
		"non_smtpd_milters": "",
		"smtputf8_enable":   "yes",
		// No header rewriting for this client (127.0.0.1 is an inet
		// interface): the message must reach the milter as sent.
		"local_header_rewrite_clients": "",
	}})

	file := filepath.Join(s.dir, "exact.eml")
	if err := os.WriteFile(file, []byte(exactMessage), 0o644); err != nil {
		t.Fatal(err)
	}
	mailParams := []string{"SIZE=4096", "BODY=8BITMIME", "SMTPUTF8", "RET=HDRS", "ENVID=env+2B1"}
	bobParams := []string{"NOTIFY=SUCCESS", "ORCPT=rfc822;bob+2Bx@acme.example"}
	carolParams := []string{"NOTIFY=NEVER", "ORCPT=rfc822;carol@acme.example"}
	out, err := s.swaks("--from", "alice@client.exa.test> "+strings.Join(mailParams, " "),
		"--to", "bob@acme.example> "+strings.Join(bobParams, " ")+",carol@acme.example> "+strings.Join(carolParams, " "),
		"--data", "@"+file)
	if err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	waitFor(t, 30*time.Second, "the capturing milter's end of message", func() bool { return len(capt.snapshot()) >= 1 })
	got := capt.snapshot()[0]
	waitFor(t, 10*time.Second, "the message file removed", func() bool {
		es, err := os.ReadDir(filepath.Join(s.sockDir, "messages"))
		return err == nil && len(es) == 0 // the directory exists: the message went to a file
	})

	// Headers: Raw is the bytes after the colon, HDR_LEADSPC negotiated.
	wantHeaders := map[string][2]string{ // name → Raw, Value
		"X-NoSpace": {"value", "value"},
		"X-Tab":     {"\tvalue with tab", "value with tab"},
		"Subject":   {" a folded\r\n subject line\r\n\tand a tab fold ", "a folded subject line\tand a tab fold "},
		"X-Empty":   {"", ""},
		"From":      {" Alice <alice@client.exa.test>", "Alice <alice@client.exa.test>"},
	}
	seen := map[string]bool{}
	for _, hf := range got.headers {
		if w, ok := wantHeaders[hf.Name]; ok {
			seen[hf.Name] = true
			if hf.Raw != w[0] || hf.Value != w[1] {
				t.Errorf("header %s: Raw %q Value %q, want %q %q", hf.Name, hf.Raw, hf.Value, w[0], w[1])
			}
		}
	}
	if len(seen) != len(wantHeaders) {
		t.Errorf("headers seen %v of %d; all: %q", seen, len(wantHeaders), got.headers)
	}
	// The whole message, as swaks sent it: CRLF line ends, and the last line
	// ended by the CRLF before swaks's final dot.
	if want := strings.ReplaceAll(exactMessage, "\n", "\r\n") + "\r\n"; string(got.message) != want {
		t.Errorf("message read at end of message:\n%q\nwant\n%q", got.message, want)
	}

	// The envelope: parameters byte for byte, the last one with swaks's '>'.
	e := got.envelope
	wantMail := params(append(mailParams[:len(mailParams)-1:len(mailParams)-1], mailParams[len(mailParams)-1]+">"))
	if e.Sender != "alice@client.exa.test" || !reflect.DeepEqual(e.MailParams, wantMail) {
		t.Errorf("sender %q params %+v, want %+v", e.Sender, e.MailParams, wantMail)
	}
	if e.EnvID != "env+1>" {
		t.Errorf("ENVID decoded %q", e.EnvID)
	}
	wantRcpts := []milterrt.EnvelopeRcpt{
		{Addr: "bob@acme.example", Params: params([]string{"NOTIFY=SUCCESS", "ORCPT=rfc822;bob+2Bx@acme.example>"}),
			Notify: "SUCCESS", ORCPTType: "rfc822", ORCPT: "bob+x@acme.example>", Action: "continue"},
		{Addr: "carol@acme.example", Params: params([]string{"NOTIFY=NEVER", "ORCPT=rfc822;carol@acme.example>"}),
			Notify: "NEVER", ORCPTType: "rfc822", ORCPT: "carol@acme.example>", Action: "continue"},
	}
	if !reflect.DeepEqual(e.Rcpts, wantRcpts) {
		t.Errorf("recipients %+v\nwant %+v", e.Rcpts, wantRcpts)
	}
	if e.QueueID == "" || e.Helo != "client.exa.test" || e.Client.Addr != "127.0.0.1" || len(e.Invalid) != 0 {
		t.Errorf("envelope %+v", e)
	}
	t.Logf("envelope seen through Postfix: %+v", e)
}

// params parses "KEY=VALUE" strings the way the runtime keeps them.
func params(args []string) milterrt.Params {
	var ps milterrt.Params
	for _, a := range args {
		k, v, _ := strings.Cut(a, "=")
		ps = append(ps, milterrt.Param{Key: k, Value: v})
	}
	return ps
}
