package miltertest

import (
	"bytes"
	"io"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
)

func TestSplitMessage(t *testing.T) {
	cases := []struct {
		name    string
		in      string
		headers []Header
		body    string
	}{
		{"crlf", "From: a@example.org\r\nSubject:x\r\n\r\nhello\r\nworld\r\n",
			[]Header{{"From", " a@example.org"}, {"Subject", "x"}}, "hello\r\nworld\r\n"},
		{"lf, tab, fold, empty value, space before colon", "A:\tt\nB: one\n two\n\tthree\nC:\nD : d\n\nbody\nlast",
			[]Header{{"A", "\tt"}, {"B", " one\n two\n\tthree"}, {"C", ""}, {"D", " d"}}, "body\r\nlast"},
		{"no body", "A: 1\n", []Header{{"A", " 1"}}, ""},
		{"non-header line starts the body", "A: 1\nnot a header\nmore\n", []Header{{"A", " 1"}}, "not a header\r\nmore\r\n"},
		{"bare CR kept", "A: 1\n\nx\ry\r\n", []Header{{"A", " 1"}}, "x\ry\r\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			hs, body, err := SplitMessage(iotest.OneByteReader(strings.NewReader(tc.in)))
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(body)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(hs, tc.headers) || string(b) != tc.body {
				t.Errorf("got %q body %q, want %q body %q", hs, b, tc.headers, tc.body)
			}
		})
	}
	if _, _, err := SplitMessage(strings.NewReader(" starts folded\n")); err == nil {
		t.Error("message starting with a continuation line accepted")
	}
}

// A line longer than the reader's buffer, with its CR at a buffer boundary,
// still ends in a single CRLF.
func TestSplitMessageLongLines(t *testing.T) {
	for _, n := range []int{4095, 4096, 4097, 10000} {
		line := strings.Repeat("x", n)
		for _, end := range []string{"\n", "\r\n"} {
			_, body, err := SplitMessage(strings.NewReader("A: 1\n\n" + line + end + line + end))
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(body)
			if want := line + "\r\n" + line + "\r\n"; !bytes.Equal(b, []byte(want)) {
				t.Errorf("line of %d bytes ending %q: body of %d bytes, want %d", n, end, len(b), len(want))
			}
		}
	}
}
