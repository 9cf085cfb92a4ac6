package archive_test

import (
	"io"
	"os"
	"testing"

	milter "github.com/emersion/go-milter"

	"github.com/geomilter/geomilter/shared/milterrt/miltertest"
)

// TestJournal50MB: a 50 MB message is journaled — into the message file as
// it arrives, into the journal's body file at end of message, then to the
// dir target — while the heap of the process (milter, spool, target and
// client) grows by less than 64 MB.
func TestJournal50MB(t *testing.T) {
	if testing.Short() {
		t.Skip("50 MB message")
	}
	const size = 50 << 20
	const line = "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789\r\n"
	body := func() io.Reader { return miltertest.RepeatedLines(line, size) }
	h := newHarness(t, "rules: []\n", "")
	c := h.srv.DialOffer(t, miltertest.PostfixActions, miltertest.PostfixProtocol)
	defer c.Close()
	watch := miltertest.WatchHeap()
	res := c.Send(t, miltertest.Transaction{
		Peer:   &miltertest.Peer{Host: "client.example", Family: milter.FamilyInet, Port: 4567, Addr: "192.0.2.10", Helo: "client.example"},
		Sender: "a@example.org", Rcpts: []miltertest.Rcpt{{Addr: "b@rcpt.example"}},
		Headers: []miltertest.Header{{Name: "From", Value: " <a@example.org>"}, {Name: "To", Value: " <b@rcpt.example>"},
			{Name: "Subject", Value: " big"}, {Name: "Message-ID", Value: " <big@x>"}},
		Body: body(),
	})
	files := waitFiles(t, h.files, 1)
	growth := watch.Stop()
	if res.Reply == nil || res.Reply.Code != milter.ActAccept {
		t.Fatalf("reply %+v", res)
	}
	fi, err := os.Stat(files[0] + ".eml")
	if err != nil {
		t.Fatal(err)
	}
	head := "From: <a@example.org>\r\nTo: <b@rcpt.example>\r\nSubject: big\r\nMessage-ID: <big@x>\r\n\r\n"
	want := int64(len(head)) + int64((size+len(line)-1)/len(line)*len(line))
	if fi.Size() != want {
		t.Errorf("journaled message is %d bytes, want %d", fi.Size(), want)
	}
	t.Logf("50 MB message journaled and delivered to the dir target: peak heap in use %.1f MB above the %.1f MB before (limit 64 MB)",
		float64(growth)/(1<<20), float64(watch.Base())/(1<<20))
	if growth > 64<<20 {
		t.Errorf("heap grew by %d MB for a 50 MB message, more than 64 MB", growth>>20)
	}
}
