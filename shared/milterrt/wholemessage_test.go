package milterrt_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	milter "github.com/emersion/go-milter"

	. "github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/milterrt/miltertest"
)

// wholeMilter is a MessageUser: it lists only end of message, yet gets the
// whole message.
type wholeMilter struct{ *testMilter }

func (wholeMilter) UsesMessage() bool { return true }

var _ MessageUser = wholeMilter{}

// rawMessage has what DKIM's simple canonicalization must see unchanged: no
// space after a colon, a tab, folds, an empty value, trailing space.
const rawMessage = "From: A <a@example.org>\n" +
	"X-NoSpace:value\n" +
	"X-Tab:\tvalue\n" +
	"Subject: a folded\n subject\n\tline \n" +
	"X-Empty:\n" +
	"To : b@example.net\n" +
	"\n" +
	"Body line 1\n" +
	"\n" +
	"  indented line with trailing space \n" +
	"last line without end"

// TestWholeMessageByteExact: a milter that reads the message at end of
// message gets byte for byte what the SMTP client sent (with CRLF line ends,
// as on the wire), in memory and spilled to a file alike; the file is gone
// once the transaction ends.
func TestWholeMessageByteExact(t *testing.T) {
	// Postfix drops the space between a name and its colon ("To :"); the
	// rest arrives as sent.
	want := strings.ReplaceAll(strings.Replace(rawMessage, "To :", "To:", 1), "\n", "\r\n")
	wantHeader, wantBody, _ := strings.Cut(want, "\r\n\r\n")
	for _, memory := range []int64{0, 64} { // default (in memory); 64 bytes (spilled)
		t.Run(fmt.Sprintf("memory=%d", memory), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "messages")
			var got, gotHeader, gotBody []byte
			var headerCalls atomic.Int32
			var files int
			m := wholeMilter{&testMilter{stages: StageMail, mk: func() *funcSession {
				return &funcSession{
					header: func(*State, HeaderField) Decision { headerCalls.Add(1); return Continue() },
					eom: func(st *State, _ Modifier) Decision {
						var err error
						if got, err = io.ReadAll(st.Message.Reader()); err != nil {
							t.Error(err)
						}
						gotHeader, _ = io.ReadAll(st.Message.HeaderReader())
						gotBody, _ = io.ReadAll(st.Message.BodyReader())
						files = countFiles(t, dir)
						return Continue()
					},
				}
			}}}
			ts := start(t, m, Options{MessageDir: dir, MessageMemory: memory}, false)
			c := ts.DialOffer(t, miltertest.PostfixActions, miltertest.PostfixProtocol)
			if c.ProtocolOption(milter.OptNoHeaders|milter.OptNoEOH|milter.OptNoBody) || !c.ProtocolOption(milter.OptHeaderLeadingSpace) {
				t.Fatalf("negotiated protocol %#x: want headers, end of headers, body and LEADSPC", c.ProtocolOpts)
			}
			res := c.Send(t, miltertest.Transaction{Sender: "a@example.org", Rcpts: []miltertest.Rcpt{{Addr: "b@example.net"}},
				Message: strings.NewReader(rawMessage)})
			if res.Reply.Code != milter.ActAccept {
				t.Fatalf("result %v", res)
			}
			if string(got) != want {
				t.Errorf("message\n%q\nwant\n%q", got, want)
			}
			if string(gotHeader) != wantHeader+"\r\n" || string(gotBody) != wantBody {
				t.Errorf("header %q body %q", gotHeader, gotBody)
			}
			if headerCalls.Load() != 0 {
				t.Errorf("Session.Header called %d times for a milter that did not list headers", headerCalls.Load())
			}
			if wantFiles := map[int64]int{0: 0, 64: 1}[memory]; files != wantFiles {
				t.Errorf("%d message files during end of message, want %d", files, wantFiles)
			}
			r := ts.WaitTxns(t, 1)[0]
			if r.Message != nil {
				t.Error("reported State still holds the message")
			}
			if n := countFiles(t, dir); n != 0 {
				t.Errorf("%d message files left after the transaction", n)
			}
		})
	}
}

func countFiles(t testing.TB, dir string) int {
	t.Helper()
	es, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

// TestWholeMessageRemovedHoweverTheTransactionEnds: the message file is
// removed at end of message, at ABORT, after a panic, when the connection
// drops, and when a decision ends the transaction early.
func TestWholeMessageRemovedHoweverTheTransactionEnds(t *testing.T) {
	body := bytes.Repeat([]byte("0123456789\r\n"), 1000)
	cases := []struct {
		name  string
		drive func(t *testing.T, c *miltertest.Client)
	}{
		{"end of message", func(t *testing.T, c *miltertest.Client) { c.EndExpect(t, milter.ActAccept, 0, "") }},
		{"abort", func(t *testing.T, c *miltertest.Client) { c.Abort() }},
		{"panic", func(t *testing.T, c *miltertest.Client) {
			miltertest.Cont(t, "header")(c.HeaderField("X-Panic", " 1"))
			c.EndExpect(t, milter.ActReplyCode, 451, "4.3.0 Temporary failure")
		}},
		{"connection dropped", func(t *testing.T, c *miltertest.Client) { c.Raw.Close() }},
		{"reject at a header", func(t *testing.T, c *miltertest.Client) {
			miltertest.Cont(t, "header")(c.HeaderField("X-Reject", " 1"))
			c.EndExpect(t, milter.ActReplyCode, 550, "5.7.1 Message rejected")
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			var during int
			var mu sync.Mutex
			m := wholeMilter{&testMilter{stages: StageHeaders, mk: func() *funcSession {
				return &funcSession{header: func(st *State, h HeaderField) Decision {
					mu.Lock()
					during = countFiles(t, dir)
					mu.Unlock()
					switch h.Name {
					case "X-Panic":
						panic("in header")
					case "X-Reject":
						return Reject("", "", "")
					}
					return Continue()
				}}
			}}}
			ts := start(t, m, Options{MessageDir: dir, MessageMemory: 1024}, false)
			c := ts.DialOffer(t, miltertest.PostfixActions, miltertest.PostfixProtocol)
			c.Envelope(t, "a@example.org", "b@example.net")
			miltertest.Cont(t, "header")(c.HeaderField("Subject", " x"))
			miltertest.Cont(t, "eoh")(c.HeaderEnd())
			miltertest.Cont(t, "body")(c.BodyChunk(body)) // 12 KB: past MessageMemory, in a file
			tc.drive(t, c)
			ts.WaitTxns(t, 1)
			if n := countFiles(t, dir); n != 0 {
				t.Errorf("%d message files left", n)
			}
			if tc.name == "panic" || tc.name == "reject at a header" {
				mu.Lock()
				defer mu.Unlock()
				if during != 1 {
					t.Errorf("%d message files while the transaction was open, want 1", during)
				}
			}
		})
	}
}

// TestWholeMessageStoreFailure: a message that cannot be stored whole is
// tempfailed at end of message without asking the milter, and counted.
func TestWholeMessageStoreFailure(t *testing.T) {
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	var eoms, aborts atomic.Int32
	m := wholeMilter{&testMilter{mk: func() *funcSession {
		return &funcSession{
			eom:   func(*State, Modifier) Decision { eoms.Add(1); return Continue() },
			abort: func(*State) { aborts.Add(1) },
		}
	}}}
	// A directory below a regular file cannot be created, even by root.
	ts := start(t, m, Options{MessageDir: filepath.Join(notDir, "messages"), MessageMemory: 16}, false)
	c := ts.DialOffer(t, miltertest.PostfixActions, miltertest.PostfixProtocol)
	res := c.Send(t, miltertest.Transaction{Sender: "a@example.org", Rcpts: []miltertest.Rcpt{{Addr: "b@example.net"}},
		Message: strings.NewReader(rawMessage)})
	if res.Reply.Code != milter.ActReplyCode || res.Reply.SMTPCode != 451 || res.Reply.SMTPText != "4.3.0 Temporary failure" {
		t.Fatalf("result %v, want 451 4.3.0", res)
	}
	r := ts.WaitTxns(t, 1)[0]
	if r.Final.Action != ActionTempFail || !strings.Contains(r.Final.Reason, "message not stored whole") {
		t.Errorf("final %+v", r.Final)
	}
	if eoms.Load() != 0 || aborts.Load() != 1 {
		t.Errorf("EndOfMessage called %d times, Abort %d; want 0 and 1", eoms.Load(), aborts.Load())
	}
	if got := ts.Counter(t, "geomilter_milter_message_errors_total"); got != 1 {
		t.Errorf("message_errors_total = %v, want 1", got)
	}
	// The next transaction on the connection is not affected by the last one's error state.
	res = c.Send(t, miltertest.Transaction{Sender: "a@example.org", Rcpts: []miltertest.Rcpt{{Addr: "b@example.net"}}})
	if res.Reply.Code != milter.ActAccept || eoms.Load() != 1 {
		t.Errorf("message without header and body: %v, EndOfMessage calls %d", res, eoms.Load())
	}
}

// TestWholeMessage50MB: a 50 MB message through a milter that reads all of
// it at end of message keeps the heap growth of the process (server and
// client) under 64 MB.
func TestWholeMessage50MB(t *testing.T) {
	if testing.Short() {
		t.Skip("50 MB message")
	}
	const size = 50 << 20
	line := []byte("0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789\r\n")
	want := sha256.New()
	io.WriteString(want, "Subject: big\r\n\r\n")
	body := func(h io.Writer) io.Reader {
		pr, pw := io.Pipe()
		go func() {
			var err error
			for n := 0; n < size && err == nil; n += len(line) {
				_, err = pw.Write(line)
			}
			pw.CloseWithError(err)
		}()
		if h == nil {
			return pr
		}
		return io.TeeReader(pr, h)
	}
	var gotSum []byte
	var gotSize int64
	m := wholeMilter{&testMilter{mk: func() *funcSession {
		return &funcSession{eom: func(st *State, _ Modifier) Decision {
			h := sha256.New()
			n, err := io.Copy(h, st.Message.Reader())
			if err != nil {
				t.Error(err)
			}
			gotSum, gotSize = h.Sum(nil), n
			return Continue()
		}}
	}}}
	dir := t.TempDir()
	ts := start(t, m, Options{MessageDir: dir}, false)
	c := ts.DialOffer(t, miltertest.PostfixActions, miltertest.PostfixProtocol)

	watch := miltertest.WatchHeap()
	res := c.Send(t, miltertest.Transaction{Sender: "a@example.org", Rcpts: []miltertest.Rcpt{{Addr: "b@example.net"}},
		Headers: []miltertest.Header{{Name: "Subject", Value: " big"}}, Body: body(want)})
	growth := watch.Stop()
	if res.Reply.Code != milter.ActAccept {
		t.Fatalf("result %v", res)
	}
	if !bytes.Equal(gotSum, want.Sum(nil)) || gotSize < size {
		t.Errorf("message read at end of message: %d bytes, digest differs: %v", gotSize, !bytes.Equal(gotSum, want.Sum(nil)))
	}
	t.Logf("50 MB message: peak heap in use %.1f MB above the %.1f MB before (limit 64 MB)", float64(growth)/(1<<20), float64(watch.Base())/(1<<20))
	if growth > 64<<20 {
		t.Errorf("heap grew by %d MB for a 50 MB message, more than 64 MB", growth>>20)
	}
	ts.WaitTxns(t, 1)
	if n := countFiles(t, dir); n != 0 {
		t.Errorf("%d message files left", n)
	}
}
