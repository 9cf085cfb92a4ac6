package policy_test

import (
	"io"
	"strings"
	"testing"
	"time"

	milter "github.com/emersion/go-milter"

	"github.com/geomilter/geomilter/milters/policy/dkimcheck"
	"github.com/geomilter/geomilter/shared/milterrt/miltertest"
)

// TestVerify50MB: a DKIM-signed 50 MB message is verified (dkim=pass)
// while the heap of the process (milter and client) grows by less than
// 64 MB: the body streams through the verifier and into the message file.
func TestVerify50MB(t *testing.T) {
	if testing.Short() {
		t.Skip("50 MB message")
	}
	const size = 50 << 20
	const line = "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789\r\n"
	body := func() io.Reader { return miltertest.RepeatedLines(line, size) }
	head := "From: <a@example.org>\r\nTo: <b@acme.example>\r\nSubject: big\r\nMessage-ID: <big@x>\r\n\r\n"
	f := newFixture(t)
	sig, err := dkimcheck.Sign(io.MultiReader(strings.NewReader(head), body()), dkimcheck.SignOptions{Domain: "example.org", Selector: "sel", Key: f.key})
	if err != nil {
		t.Fatal(err)
	}
	ts := serve(t, f.res, f.rules(t), 2*time.Second)
	c := ts.DialOffer(t, miltertest.PostfixActions, miltertest.PostfixProtocol)

	watch := miltertest.WatchHeap()
	res := c.Send(t, miltertest.Transaction{
		Peer: peer("192.0.2.1"), Sender: "a@example.org", Rcpts: []miltertest.Rcpt{{Addr: "b@acme.example"}},
		Headers: []miltertest.Header{
			{Name: dkimcheck.HeaderName, Value: strings.ReplaceAll(sig, "\r\n", "\n")},
			{Name: "From", Value: " <a@example.org>"}, {Name: "To", Value: " <b@acme.example>"},
			{Name: "Subject", Value: " big"}, {Name: "Message-ID", Value: " <big@x>"},
		},
		Body: body(),
	})
	growth := watch.Stop()
	if res.Reply.Code != milter.ActAccept {
		t.Fatalf("reply %+v", res.Reply)
	}
	added, _ := authRes(res.Mods)
	if len(added) != 1 || !strings.Contains(added[0], "dkim=pass") || !strings.Contains(added[0], "dmarc=pass") {
		t.Errorf("A-R %q", added)
	}
	t.Logf("50 MB message verified: peak heap in use %.1f MB above the %.1f MB before (limit 64 MB)", float64(growth)/(1<<20), float64(watch.Base())/(1<<20))
	if growth > 64<<20 {
		t.Errorf("heap grew by %d MB for a 50 MB message, more than 64 MB", growth>>20)
	}
}

// TestContent50MB: a 50 MB multipart message goes through the whole of
// part 2 — lists, the MIME walk with the content rules and the built-in
// ones, the score — while the heap grows by less than 64 MB: the walk
// streams the message back from the message file.
func TestContent50MB(t *testing.T) {
	if testing.Short() {
		t.Skip("50 MB message")
	}
	const size = 50 << 20
	f := newSpamFixture(t)
	c := f.ts.DialOffer(t, miltertest.PostfixActions, miltertest.PostfixProtocol)
	head := "--b\r\nContent-Type: text/plain\r\n\r\nHello, you have won.\r\n--b\r\n" +
		"Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"data.bin\"\r\n" +
		"Content-Transfer-Encoding: base64\r\n\r\n"
	const line = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\r\n"
	watch := miltertest.WatchHeap()
	res := c.Send(t, miltertest.Transaction{
		Peer: peer("192.0.2.1"), Sender: "a@sender.example", Rcpts: []miltertest.Rcpt{{Addr: "b@acme.example"}},
		Headers: []miltertest.Header{
			{Name: "From", Value: " <a@sender.example>"}, {Name: "To", Value: " <b@acme.example>"},
			{Name: "Subject", Value: " big"}, {Name: "MIME-Version", Value: " 1.0"},
			{Name: "Content-Type", Value: ` multipart/mixed; boundary="b"`},
		},
		Body: io.MultiReader(strings.NewReader(head), miltertest.RepeatedLines(line, size), strings.NewReader("--b--\r\n")),
	})
	growth := watch.Stop()
	if res.Reply.Code != milter.ActAccept {
		t.Fatalf("reply %+v", res.Reply)
	}
	st := f.ts.WaitTxns(t, 1)[0]
	sec := policySection(t, st)
	if sec.Content == nil || sec.Content.Parts < 2 || st.Scores["rule:lottery"] != 3 {
		t.Fatalf("content %+v scores %v: the walk did not reach the text part", sec.Content, st.Scores)
	}
	t.Logf("50 MB message walked in %.0f ms: peak heap in use %.1f MB above the %.1f MB before (limit 64 MB)",
		sec.Content.DurationMS, float64(growth)/(1<<20), float64(watch.Base())/(1<<20))
	if growth > 64<<20 {
		t.Errorf("heap grew by %d MB for a 50 MB message, more than 64 MB", growth>>20)
	}
}
