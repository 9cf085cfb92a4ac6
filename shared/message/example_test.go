package message_test

import (
	"fmt"
	"io"
	"os"

	"github.com/geomilter/geomilter/shared/message"
)

// What a milter runtime does with one transaction: header fields as the MTA
// sent them (Postfix joins folded lines with "\n"), the end of the header
// block, the body in chunks; at end of message, any number of readers.
func Example() {
	m := message.New(message.Options{Dir: os.TempDir()})
	defer m.Close() // removes the spill file, if there is one

	m.AddHeader("Subject", "\tno space, a tab")
	m.AddHeader("Received", " from a.example.org\n\tby mx.example.net")
	m.EndHeaders()
	io.WriteString(m, "Hello,\r\n")
	io.WriteString(m, "world.\r\n")

	whole, _ := io.ReadAll(m.Reader())
	body, _ := io.ReadAll(m.BodyReader())
	fmt.Printf("%q\n%q\n%d %d %d %v\n", whole, body, m.Size(), m.HeaderSize(), m.BodySize(), m.Spilled())
	// Output:
	// "Subject:\tno space, a tab\r\nReceived: from a.example.org\r\n\tby mx.example.net\r\n\r\nHello,\r\nworld.\r\n"
	// "Hello,\r\nworld.\r\n"
	// 94 76 16 false
}
