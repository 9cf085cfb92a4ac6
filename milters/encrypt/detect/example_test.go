package detect_test

import (
	"fmt"
	"io"
	"strings"

	"github.com/geomilter/geomilter/milters/encrypt/detect"
)

func Example() {
	d, err := detect.New(detect.Config{
		Cards:    true,
		IBAN:     true,
		Patterns: []detect.Pattern{{Name: "project", Regexp: `(?i)\bproject falcon\b`, MinCount: 2}},
	})
	if err != nil {
		panic(err)
	}
	s := d.Scanner()
	// One text part, from any io.Reader (a MIME walk's decoded text).
	io.Copy(s, strings.NewReader("Card: 4111 1111 1111 1111, exp 12/28.\nPay to DE89 3704 0044 0532 0130 00.\n"))
	s.Break() // the next part (or attachment name) joins nothing of this one
	io.WriteString(s, "Project Falcon budget.xlsx")
	f := s.Close()
	fmt.Printf("cards %d (high %d), IBANs %d, project %d\n", f.Cards, f.CardsHigh, f.IBANs, f.Patterns["project"])
	for _, h := range f.Hits {
		fmt.Println("fired:", h.Detector, h.Count)
	}
	// Output:
	// cards 1 (high 1), IBANs 1, project 1
	// fired: card 1
	// fired: iban 1
}
