package mimewalk_test

import (
	"bufio"
	"fmt"
	"io"
	"strings"

	"github.com/geomilter/geomilter/shared/mimewalk"
)

// What a content milter does at end of message: scan the text of text parts,
// check each attachment's name and first bytes, and score the problems.
func Example() {
	msg := strings.Join([]string{
		"Subject: order",
		`Content-Type: multipart/mixed; boundary="b"`,
		"",
		"--b",
		"Content-Type: text/html; charset=iso-8859-1",
		"Content-Transfer-Encoding: quoted-printable",
		"",
		"<p>Caf=E9 order &amp; card</p><script>hidden()</script>",
		"--b",
		`Content-Disposition: attachment; filename="invoice.pdf.exe"`,
		"Content-Transfer-Encoding: base64",
		"",
		"TVqQAAMAAAAEAAAA",
		"--b",
	}, "\r\n")

	res, err := mimewalk.Walk(strings.NewReader(msg), mimewalk.Limits{}, func(p *mimewalk.Part, body io.Reader) error {
		if p.Text {
			sc := bufio.NewScanner(mimewalk.TextReader(p, body))
			for sc.Scan() {
				if line := strings.TrimSpace(sc.Text()); line != "" {
					fmt.Printf("%s text: %q\n", p.Path, line)
				}
			}
			return sc.Err()
		}
		first := make([]byte, mimewalk.SniffLen)
		n, _ := io.ReadFull(body, first)
		fmt.Printf("%s attachment %q: %s\n", p.Path, p.FileName, mimewalk.Sniff(first[:n]))
		return nil
	})
	fmt.Println(res.Visited, res.Problems, err)
	// Output:
	// 1 text: "Café order & card"
	// 2 attachment "invoice.pdf.exe": exe
	// 2 [{ boundary close delimiter missing}] <nil>
}
