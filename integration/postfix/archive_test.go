package postfix

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The archive milter (issue 16) with real Postfix: the journal report and
// the directory target of one message with To, Cc and Bcc recipients; what
// it journals in a chain of milters; SIGKILL of the milter under load; a
// dark journal target beside a working one; and the journal's disk bound.
// The milter is the real binary (`geomilter archive`), the journal targets
// real smtp-sink instances and a directory (archive_helpers_test.go).

// arcRolesMessage has a To and a Cc recipient; the third recipient (Bcc) is in
// the envelope only. Header spelling is the client's (Postfix hands the
// milters the client's header fields as sent).
const arcRolesMessage = "From: Sender <sender@client.arc.test>\n" +
	"To: To Person <to@acme.example>\n" +
	"cc: cc@acme.example\n" +
	"Date: Mon, 7 Dec 2026 05:00:00 +0000\n" +
	"Message-ID: <roles-1@client.arc.test>\n" +
	"Subject: journal roles\n" +
	"X-Spelling:kept as is\n" +
	"\n" +
	"Body line 1\n" +
	".leading dot\n" +
	"last line"

// TestArchiveRoles: one message through Postfix to a To, a Cc and a Bcc
// recipient. The SMTP journal target receives an envelope journal report
// naming all three with their roles and carrying the original unaltered; the
// directory target's .eml is byte-identical to what the final smtp-sink
// received less Postfix's own Received: field (the only field Postfix adds
// with no milter after archive: cleanup records the first Received: field —
// the one smtpd prepends — in auto_hdrs, postfix/src/cleanup/cleanup_message.c,
// and milter8_header in src/milter/milter8.c does not send it to milters;
// the test checks that exactly that field is the difference); its .json carries the envelope. A second message, sent
// without Date: and Message-ID:, is journaled with the fields cleanup adds
// for them: those are added before the milters run.
func TestArchiveRoles(t *testing.T) {
	a := newArchiveSite(t, archiveOpts{smtpTargets: []string{"vault"}, dirTarget: true})
	file := filepath.Join(a.dir, "roles.eml")
	if err := os.WriteFile(file, []byte(arcRolesMessage), 0o644); err != nil {
		t.Fatal(err)
	}
	const to, cc, bcc = "to@acme.example", "cc@acme.example", "bcc@acme.example"
	out, err := a.swaks("--from", "sender@client.arc.test", "--to", to+","+cc+","+bcc, "--data", "@"+file)
	qid := queuedAs(out)
	if err != nil || qid == "" {
		t.Fatalf("swaks: %v\n%s", err, out)
	}

	delivered := a.delivery.waitDumps(t, 30*time.Second, 1)[0]
	reports := a.targets["vault"].waitDumps(t, 30*time.Second, 1)
	var recs map[string]arcDirRecord
	waitFor(t, 30*time.Second, "one record in the directory target", func() bool {
		recs, err = a.dirRecords()
		return err == nil && len(recs) == 1
	})
	if err != nil || len(recs) != 1 {
		t.Fatalf("directory target: %d records, %v", len(recs), err)
	}
	var rec arcDirRecord
	for _, r := range recs {
		rec = r
	}

	// What the milter saw (and journaled) is what Postfix delivered, less
	// Postfix's own first Received: field.
	wantEml, removed := arcDropField(delivered.msg, "Received")
	if !regexp.MustCompile(`(?s)^Received: from client\.arc\.test .*by mx1\.arc\.test \(Postfix\) with E?SMTP id ` + qid + `\b`).Match(removed) {
		t.Errorf("the delivered message's first field is not Postfix's Received: for %s: %q", qid, removed)
	}
	if !bytes.Equal(rec.eml, wantEml) {
		t.Errorf("directory target .eml differs from the delivered message less Postfix's Received: field\n.eml:\n%q\ndelivered less Received:\n%q", rec.eml, wantEml)
	}
	// And it is the message as the client sent it (swaks ends the data with
	// CRLF "." CRLF after the file).
	if sent := strings.ReplaceAll(arcRolesMessage, "\n", "\r\n") + "\r\n"; string(rec.eml) != sent {
		t.Errorf(".eml is not the message the client sent:\n%q\nsent:\n%q", rec.eml, sent)
	}
	t.Logf("Postfix added after the milters only: %q", removed)

	// The envelope beside it.
	e := rec.hdr.Envelope
	var rcpts []string
	for _, r := range e.Rcpts {
		rcpts = append(rcpts, r.Addr)
	}
	if e.Client.Addr != "127.0.0.1" || e.Helo != "client.arc.test" || e.Sender != "sender@client.arc.test" ||
		strings.Join(rcpts, ",") != to+","+cc+","+bcc || e.QueueID != qid {
		t.Errorf("directory target .json envelope: client %q helo %q sender %q rcpts %q queue id %q; want 127.0.0.1 client.arc.test sender@client.arc.test [%s %s %s] %s",
			e.Client.Addr, e.Helo, e.Sender, rcpts, e.QueueID, to, cc, bcc, qid)
	}
	if rec.hdr.MessageID != "<roles-1@client.arc.test>" || rec.hdr.Site != "arc" {
		t.Errorf(".json: message_id %q site %q", rec.hdr.MessageID, rec.hdr.Site)
	}

	// The journal report.
	if len(reports) != 1 {
		t.Fatalf("journal target received %d messages, want 1", len(reports))
	}
	d := reports[0]
	if len(d.rcpts) != 1 || !strings.HasPrefix(d.rcpts[0], "<"+arcJournalTo+">") || !strings.HasPrefix(d.mail, "<"+arcJournalFrom+">") {
		t.Errorf("journal report envelope: MAIL %q RCPT %q, want <%s> and <%s>", d.mail, d.rcpts, arcJournalFrom, arcJournalTo)
	}
	r, err := parseArcReport(d)
	if err != nil {
		t.Fatalf("%v\n%s", err, d.msg)
	}
	if !r.hasMSField || r.id != rec.hdr.ID {
		t.Errorf("report: X-MS-Journal-Report present %v, X-Geomilter-Journal-Id %q (directory target's id %q)", r.hasMSField, r.id, rec.hdr.ID)
	}
	for _, want := range []string{"Sender: sender@client.arc.test", "Message-ID: <roles-1@client.arc.test>", "To: " + to, "Cc: " + cc, "Bcc: " + bcc} {
		if !arcHasLine(r.lines, want) {
			t.Errorf("report text part lacks %q:\n%s", want, strings.Join(r.lines, "\n"))
		}
	}
	if !bytes.Equal(r.original, rec.eml) {
		t.Errorf("report's message/rfc822 part differs from the original\npart:\n%q\noriginal:\n%q", r.original, rec.eml)
	}
	t.Logf("journal report text part:\n%s", strings.Join(r.lines, "\n"))

	// A message without Date: and Message-ID: — Postfix's cleanup adds
	// them before the milters run, so they are in the journal too: the
	// .eml is still the delivered message less the first Received: field.
	bare := filepath.Join(a.dir, "bare.eml")
	if err := os.WriteFile(bare, []byte("From: <sender@client.arc.test>\nTo: <to@acme.example>\nSubject: bare\n\nno date, no id\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = a.swaks("--from", "sender@client.arc.test", "--to", to, "--data", "@"+bare)
	qid2 := queuedAs(out)
	if err != nil || qid2 == "" {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	var rec2 *arcDirRecord
	waitFor(t, 30*time.Second, "the second message in the directory target", func() bool {
		recs, err := a.dirRecords()
		if err != nil {
			return false
		}
		for _, r := range recs {
			if r.hdr.Envelope.QueueID == qid2 {
				rec2 = &r
			}
		}
		return rec2 != nil
	})
	var eml2 []byte
	for _, d := range a.delivery.waitDumps(t, 30*time.Second, 2) {
		if rest, f := arcDropField(d.msg, "Received"); regexp.MustCompile(`\bid ` + qid2 + `\b`).Match(f) {
			eml2 = rest
		}
	}
	if !bytes.Equal(rec2.eml, eml2) {
		t.Errorf("second message: .eml differs from the delivered message less Postfix's Received: field\n.eml:\n%q\ndelivered less Received:\n%q", rec2.eml, eml2)
	}
	if arcField(rec2.eml, "Date") == "" || !strings.Contains(arcField(rec2.eml, "Message-Id"), qid2) {
		t.Errorf("second message: Postfix's Date: and Message-Id: not in the journaled message:\n%q", rec2.eml)
	}
	t.Logf("a message sent without Date: and Message-ID: is journaled with the ones cleanup added:\n%s", bytes.SplitN(rec2.eml, []byte("\r\n\r\n"), 2)[0])
}

// TestArchiveChainOrder: what the archive milter journals, in a chain. Each
// milter's end-of-message edits are applied to the queue file before the
// next milter is sent the message (cleanup reads the queue file again,
// following its pointer records, for every milter: milter8_message in
// postfix/src/milter/milter8.c), so the journal has the header a milter
// listed before archive added, and lacks the one a milter listed after it
// added. The .eml is the delivered message less Postfix's own Received:
// and less the later milter's field.
func TestArchiveChainOrder(t *testing.T) {
	a := newArchiveSite(t, archiveOpts{dirTarget: true, chain: func(a *archiveSite) (before, after []string) {
		for _, m := range []struct{ name, field string }{{"earlier", "X-Earlier-Milter"}, {"later", "X-Later-Milter"}} {
			sock := filepath.Join(a.sockDir, m.name+".sock")
			r := startRecorder(t, sock, 6)
			field := m.field
			r.addHeader = func(map[string]string) (string, string, bool) { return field, "added", true }
			entry := "{ unix:" + sock + ", default_action=tempfail }"
			if m.name == "earlier" {
				before = append(before, entry)
			} else {
				after = append(after, entry)
			}
		}
		return before, after
	}})
	out, err := a.swaks("--from", "sender@client.arc.test", "--to", "to@acme.example", "--header", "Subject: chain")
	qid := queuedAs(out)
	if err != nil || qid == "" {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	delivered := a.delivery.waitDumps(t, 30*time.Second, 1)[0]
	var recs map[string]arcDirRecord
	waitFor(t, 30*time.Second, "one record in the directory target", func() bool {
		recs, err = a.dirRecords()
		return err == nil && len(recs) == 1
	})
	var eml []byte
	for _, r := range recs {
		eml = r.eml
	}
	rest, received := arcDropField(delivered.msg, "Received")
	rest, later := arcDropField(rest, "X-Later-Milter")
	if !bytes.HasPrefix(received, []byte("Received: from client.arc.test")) || string(later) != "X-Later-Milter: added\r\n" {
		t.Errorf("delivered message: first Received: %q, later milter's field %q", received, later)
	}
	if arcField(eml, "X-Earlier-Milter") != "added" || arcField(eml, "X-Later-Milter") != "" {
		t.Errorf("journaled message: X-Earlier-Milter %q (want added), X-Later-Milter %q (want none)", arcField(eml, "X-Earlier-Milter"), arcField(eml, "X-Later-Milter"))
	}
	if !bytes.Equal(eml, rest) {
		t.Errorf(".eml differs from the delivered message less Postfix's Received: and the later milter's field\n.eml:\n%q\nwant:\n%q", eml, rest)
	}
	t.Logf("journaled header section with a milter before and one after archive:\n%s", bytes.SplitN(eml, []byte("\r\n\r\n"), 2)[0])
}

// arcHasLine reports whether lines has want, ignoring the case of the label
// before the first ':' (Sender:, Message-ID:, To: …) and angle brackets
// around a recipient address.
func arcHasLine(lines []string, want string) bool {
	wl, wv, _ := strings.Cut(want, ":")
	wv = strings.TrimSpace(wv)
	for _, l := range lines {
		ll, lv, ok := strings.Cut(l, ":")
		if !ok || !strings.EqualFold(ll, wl) {
			continue
		}
		lv = strings.TrimSpace(lv)
		if lv == wv || lv == "<"+wv+">" {
			return true
		}
	}
	return false
}

// arcDropField removes the first header field named name (with its
// continuation lines) from a CRLF message, returning the rest and the
// removed field.
func arcDropField(msg []byte, name string) (rest, field []byte) {
	head := msg
	if i := bytes.Index(msg, []byte("\r\n\r\n")); i >= 0 {
		head = msg[:i+2] // the last field with its CRLF
	}
	lines := bytes.SplitAfter(head, []byte("\r\n"))
	start := 0
	for i, l := range lines {
		if f, _, ok := bytes.Cut(l, []byte(":")); ok && strings.EqualFold(string(f), name) {
			end := i + 1
			for end < len(lines) && len(lines[end]) > 0 && (lines[end][0] == ' ' || lines[end][0] == '\t') {
				end++
			}
			field = bytes.Join(lines[i:end], nil)
			rest = append(append([]byte{}, msg[:start]...), msg[start+len(field):]...)
			return rest, field
		}
		start += len(l)
	}
	return msg, nil
}

// TestArchiveSIGKILLUnderLoad: steady load through Postfix while the archive
// milter is SIGKILLed several times and restarted. Postfix answers tempfail
// while it is down (default_action=tempfail): refused messages are counted,
// never accepted. Every message the final smtp-sink received has its journal
// record in the directory target (by Message-ID: zero missing), and after
// the last restart the journal drains (backlog 0).
func TestArchiveSIGKILLUnderLoad(t *testing.T) {
	a := newArchiveSite(t, archiveOpts{dirTarget: true})
	const n = 300
	done := make(chan sourceResult, 1)
	start := time.Now()
	go func() {
		// 8 sessions, each waiting 0 or 1 s (at random) between messages:
		// steady arrivals of about 10 messages a second.
		done <- a.smtpSource(3*time.Minute, "-m", fmt.Sprint(n), "-s", "8", "-R", "1", "-l", "2000",
			"-f", "load@client.arc.test", "-t", "rcpt@acme.example")
	}()
	// Kill as the load progresses (by messages delivered), not by the
	// clock, so that every kill lands in the middle of it whatever the
	// machine's speed; the milter stays down a second each time, which
	// arrivals always hit.
	thresholds := []int64{30, 80, 130, 180}
	kills := 0
	var r sourceResult
	for finished := false; !finished; {
		select {
		case r = <-done:
			finished = true
			continue
		case <-time.After(100 * time.Millisecond):
		}
		if kills == len(thresholds) || a.delivery.count.Load() < thresholds[kills] {
			continue
		}
		a.killArchive()
		kills++
		killedAt := time.Since(start)
		time.Sleep(time.Second)
		a.startMilter("archive")
		t.Logf("kill %d of %s at %s (%d messages delivered); serving again %s later", kills, a.hostOf("archive"), killedAt.Round(time.Millisecond),
			a.delivery.count.Load(), (time.Since(start) - killedAt).Round(time.Millisecond))
	}
	took := time.Since(start)
	if kills < 3 {
		t.Fatalf("the load ended after %s, before 3 kills (%d)", took, kills)
	}
	smtpIDs, _ := a.queueIDs()
	waitFor(t, 60*time.Second, "every accepted message at the final smtp-sink", func() bool {
		smtpIDs, _ = a.queueIDs()
		q, err := a.queueSize()
		return err == nil && q == 0 && a.delivery.count.Load() == int64(len(smtpIDs))
	})
	delivered := a.delivery.waitDumps(t, 10*time.Second, len(smtpIDs))
	want := arcMessageIDs(delivered)
	if len(want) != len(delivered) {
		t.Fatalf("%d delivered messages have %d distinct Message-IDs: smtp-source's ids are not unique", len(delivered), len(want))
	}
	if r.rejects != 0 || len(smtpIDs)+r.tempfails+r.errors < n {
		t.Errorf("smtp-source: %d accepted, %d tempfails, %d rejects, %d errors of %d", len(smtpIDs), r.tempfails, r.rejects, r.errors, n)
	}
	if len(smtpIDs) == n {
		t.Errorf("no message was refused: the kills did not hit the load")
	}

	var recs map[string]arcDirRecord
	var err error
	var lost []string
	eventually(60*time.Second, func() bool {
		recs, err = a.dirRecords()
		if err != nil {
			return false
		}
		lost = arcMissing(want, arcDirMessageIDs(recs))
		return len(lost) == 0
	})
	if err != nil || len(lost) > 0 {
		t.Fatalf("directory target: %v; %d delivered messages without a journal record: %v", err, len(lost), lost)
	}
	waitFor(t, 30*time.Second, "the journal drained (backlog 0)", func() bool {
		b, err := a.archiveBacklog("files")
		return err == nil && b == 0
	})
	// Journaled but not accepted: the milter was killed after the record
	// was on disk and before Postfix had its answer (the safe side).
	extra := arcMissing(arcDirMessageIDs(recs), want)
	t.Logf("%d messages offered in %s with %d SIGKILLs: %d accepted and delivered, %d tempfailed, %d connection errors; %d journal records, 0 delivered without a record; journaled but refused: %v",
		n, took.Round(time.Millisecond), kills, len(smtpIDs), r.tempfails, r.errors, len(recs), extra)
}

// TestArchiveDarkTarget: two SMTP journal targets, B dark (packets dropped)
// for a whole run of messages. A receives every report during the run, mail
// flows as fast as with both up (figures logged, not asserted), and when B
// returns it receives every report too.
func TestArchiveDarkTarget(t *testing.T) {
	a := newArchiveSite(t, archiveOpts{smtpTargets: []string{"a", "b"}, connectTimeout: time.Second})
	const warm, n = 20, 200
	run := func(label, from string, count int) time.Duration {
		start := time.Now()
		r := a.smtpSource(2*time.Minute, "-m", fmt.Sprint(count), "-s", "4", "-l", "1500", "-f", from, "-t", "rcpt@acme.example")
		took := time.Since(start)
		if r.tempfails+r.rejects+r.errors != 0 {
			t.Fatalf("%s: %d tempfails, %d rejects, %d errors:\n%s", label, r.tempfails, r.rejects, r.errors, tail(r.out, 10))
		}
		return took
	}
	// Both up: a warm-up (Postfix starts its processes), then the baseline.
	run("warm-up", "warm@client.arc.test", warm)
	upTook := run("both targets up", "up@client.arc.test", n)
	const before = warm + n
	a.delivery.waitDumps(t, 60*time.Second, before)
	a.targets["a"].waitDumps(t, 60*time.Second, before)
	a.targets["b"].waitDumps(t, 60*time.Second, before)
	// Every report acknowledged (cursors committed) before b goes dark, so
	// that b's backlog during the dark run is exactly that run.
	waitFor(t, 30*time.Second, "both backlogs 0 before b goes dark", func() bool {
		ba, err1 := a.archiveBacklog("a")
		bb, err2 := a.archiveBacklog("b")
		return err1 == nil && err2 == nil && ba == 0 && bb == 0
	})

	// B dark for the whole second run.
	a.darken("b")
	darkTook := run("target b dark", "dark@client.arc.test", n)
	delivered := a.delivery.waitDumps(t, 60*time.Second, before+n)
	want := arcMessageIDs(delivered)
	lost := a.missingReports(t, "a", want, 60*time.Second)
	if len(lost) > 0 {
		t.Fatalf("while target b was dark, target a did not receive the reports of %d delivered messages: %v", len(lost), lost)
	}
	if got := a.targets["b"].count.Load(); got != before {
		t.Fatalf("target b received %d reports while dark, want still %d: the drop did not hold", got, before)
	}
	backlogB, err := a.archiveBacklog("b")
	if err != nil || backlogB != n {
		t.Errorf("target b's backlog while dark: %d (%v), want %d", backlogB, err, n)
	}
	t.Logf("%d messages: %s with both targets up, %s with target b dark (%.1f and %.1f messages/s); b's backlog %v",
		n, upTook.Round(time.Millisecond), darkTook.Round(time.Millisecond), float64(n)/upTook.Seconds(), float64(n)/darkTook.Seconds(), backlogB)

	// B returns and catches up.
	a.brighten("b")
	back := time.Now()
	lost = a.missingReports(t, "b", want, 90*time.Second)
	if len(lost) > 0 {
		t.Fatalf("after it returned, target b did not receive the reports of %d delivered messages: %v", len(lost), lost)
	}
	t.Logf("target b received the %d reports it missed %s after it returned", n, time.Since(back).Round(time.Millisecond))
	waitFor(t, 30*time.Second, "both backlogs 0", func() bool {
		ba, err1 := a.archiveBacklog("a")
		bb, err2 := a.archiveBacklog("b")
		return err1 == nil && err2 == nil && ba == 0 && bb == 0
	})
	if st, err := a.archiveStatusJSON(); err == nil {
		t.Logf("journal fsyncs (segment files and directory): %d for %d messages from 4 concurrent sessions (%.2f per message)",
			st.Journal.Fsyncs, before+n, float64(st.Journal.Fsyncs)/float64(before+n))
	}
}

// TestArchiveJournalFull: with the only journal target dark, the journal
// fills to journal.max_bytes; from then on new messages are answered with a
// temporary failure (never accepted without a record), the disk stays
// within the bound, and when the target returns every accepted message is
// journaled there.
func TestArchiveJournalFull(t *testing.T) {
	const maxBytes = 256 << 10
	a := newArchiveSite(t, archiveOpts{smtpTargets: []string{"vault"}, connectTimeout: time.Second,
		journal: []string{"max_message_size: 64KiB", "max_bytes: 256KiB"}})
	a.darken("vault")
	// 120 messages of about 4 KiB: about twice the bound.
	const n = 120
	r := a.smtpSource(2*time.Minute, "-m", fmt.Sprint(n), "-s", "2", "-l", "4000", "-f", "full@client.arc.test", "-t", "rcpt@acme.example")
	var smtpIDs map[string]bool
	eventually(20*time.Second, func() bool { // qmgr logs a moment after smtpd's reply
		smtpIDs, _ = a.queueIDs()
		return len(smtpIDs)+r.tempfails >= n
	})
	if r.tempfails == 0 || r.rejects != 0 || r.errors != 0 || len(smtpIDs)+r.tempfails != n {
		t.Fatalf("with the journal full: %d accepted, %d tempfails, %d rejects, %d errors of %d (want some tempfails, the rest accepted)\n%s",
			len(smtpIDs), r.tempfails, r.rejects, r.errors, n, tail(r.out, 5))
	}
	t.Logf("the refusal at the bound: %s", grepLines(r.out, `end of data rejected`, 1))
	used := arcDirBytes(a.journal)
	// The bound is on undelivered record bytes; segment and record framing,
	// the cursors and the dead-letter folder are small beside it.
	if used > maxBytes+64<<10 {
		t.Errorf("journal directory holds %d bytes, bound %d", used, maxBytes)
	}
	st, err := a.archiveStatusJSON()
	if err != nil {
		t.Fatal(err)
	}
	if st.Journal.Bytes > maxBytes || st.Journal.MaxBytes != maxBytes || int(st.Journal.Records) != len(smtpIDs) {
		t.Errorf("archive status journal: %d records, %d bytes, max_bytes %d; want %d records within %d bytes", st.Journal.Records, st.Journal.Bytes, st.Journal.MaxBytes, len(smtpIDs), maxBytes)
	}
	metrics, err := a.metrics("archive")
	if err != nil {
		t.Fatal(err)
	}
	full, _ := metricValue(metrics, "geomilter_archive_journal_failures_total", `reason="full"`)
	failed, _ := metricValue(metrics, "geomilter_archive_messages_total", `result="failed"`)
	if int(full) != r.tempfails || int(failed) != r.tempfails {
		t.Errorf("metrics: %v journal failures (full), %v messages failed; smtp-source saw %d tempfails", full, failed, r.tempfails)
	}
	t.Logf("journal full: %d accepted, %d tempfailed; journal %d records, %d bytes (dir %d bytes) for max_bytes %d; metrics:\n%s",
		len(smtpIDs), r.tempfails, st.Journal.Records, st.Journal.Bytes, used, maxBytes, grepLines(metrics, `^geomilter_archive_(journal_failures|messages_total|journal_bytes|target_backlog)`))

	waitFor(t, 60*time.Second, "every accepted message at the final smtp-sink", func() bool {
		return a.delivery.count.Load() == int64(len(smtpIDs))
	})
	want := arcMessageIDs(a.delivery.waitDumps(t, 10*time.Second, len(smtpIDs)))
	a.brighten("vault")
	lost := a.missingReports(t, "vault", want, 90*time.Second)
	if len(lost) > 0 {
		t.Fatalf("after the target returned, it did not receive the reports of %d accepted messages: %v", len(lost), lost)
	}
	// Room again: a new message is accepted.
	r = a.smtpSource(time.Minute, "-m", "1", "-f", "after@client.arc.test", "-t", "rcpt@acme.example")
	if r.tempfails+r.rejects+r.errors != 0 {
		t.Errorf("after the journal drained: %d tempfails, %d rejects, %d errors", r.tempfails, r.rejects, r.errors)
	}
}
