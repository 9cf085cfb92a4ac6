package journal

import (
	"bytes"
	"os/exec"
	"strings"
	"testing"
)

// pythonCheck parses a report with Python's email package (another
// implementation than ours and go-message), prints the decoded text part,
// "\n----\n", then the attached message as Python writes it back.
const pythonCheck = `
import sys, email, email.policy
raw = sys.stdin.buffer.read()
m = email.message_from_bytes(raw, policy=email.policy.compat32)
assert not m.defects, m.defects
assert m.get_content_type() == 'multipart/mixed', m.get_content_type()
assert 'X-MS-Journal-Report' in m, 'no X-MS-Journal-Report'
parts = m.get_payload()
assert len(parts) == 2, len(parts)
assert parts[0].get_content_type() == 'text/plain'
# Everything through the binary buffer: mixing sys.stdout.write (the text
# layer, buffered) with sys.stdout.buffer.write reorders the output unless
# the environment makes stdout unbuffered.
sys.stdout.buffer.write(parts[0].get_payload(decode=True))
sys.stdout.buffer.write(b'\n----\n')
assert parts[1].get_content_type() == 'message/rfc822'
inner = parts[1].get_payload()[0]
sys.stdout.buffer.write(inner.as_bytes(policy=email.policy.compat32.clone(linesep='\r\n')))
`

func TestReportPython(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("no python3")
	}
	msg := "From: Alice <alice@example.org>\r\nTo: Bob <bob@example.com>\r\nCc: carol@example.com\r\n" +
		"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nMessage-ID: <m1@example.org>\r\n\r\nHello\r\n\r\n--not a boundary\r\n"
	h := reportHeader(msg, "bob@example.com", "carol@example.com", "dave@example.com")
	var report bytes.Buffer
	if err := WriteReport(&report, h, strings.NewReader(msg), reportOpts); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(py, "-c", pythonCheck)
	cmd.Stdin = &report
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python3: %v\n%s", err, stderr.String())
	}
	text, attached, ok := strings.Cut(string(out), "\n----\n")
	if !ok {
		t.Fatalf("python3 output %q", out)
	}
	wantText := "Sender: alice@example.org\r\nSubject: Grüße\r\nMessage-ID: <m1@example.org>\r\n" +
		"To: bob@example.com\r\nCc: carol@example.com\r\nBcc: dave@example.com\r\n"
	if text != wantText {
		t.Errorf("text part as Python reads it:\n got %q\nwant %q", text, wantText)
	}
	if attached != msg {
		t.Errorf("attached message as Python writes it back:\n got %q\nwant %q", attached, msg)
	}
}
