package mimewalk

import (
	"io"
	"reflect"
	"strings"
	"testing"
)

func TestLinkReader(t *testing.T) {
	long := "http://x.example/" + strings.Repeat("a", 3000)
	tests := []struct {
		name, in, text string
		links          []string
	}{
		{"quoted", `<a href="http://a.example/x">A</a><img src='https://b.example/i.png'>`, "A", []string{"http://a.example/x", "https://b.example/i.png"}},
		{"unquoted and upper case", `<A HREF=http://c.example/>C</A><img SRC=//d.example/p alt=x>`, "C", []string{"http://c.example/", "//d.example/p"}},
		{"entities and spaces", `<a class="x" href = " http://e.example/?a=1&amp;b=2 ">E</a>`, "E", []string{"http://e.example/?a=1&b=2"}},
		{"other attributes ignored", `<a title="http://no.example" data-href="http://no2.example" hrefx="y">t</a>`, "t", nil},
		{"end tags and script ignored", `</a href="http://no.example"><script>var s='<a href="http://no3.example">'</script>`, "", nil},
		{"value with >", `<a href="x>y" title='>'>link</a>`, "link", []string{"x>y"}},
		{"long value cut", `<a href="` + long + `">L</a>`, "L", []string{long[:MaxLinkLen]}},
		{"unterminated", `<a href="http://f.example`, "", nil},
		{"empty", `<a href="">z</a><a href>w</a>`, "zw", nil},
	}
	p := &Part{MediaType: "text/html"}
	for _, tc := range tests {
		for _, chunk := range []int{1, 3, 4096} {
			var got []string
			b, err := io.ReadAll(LinkReader(p, &chunked{strings.NewReader(tc.in), chunk}, func(v []byte) { got = append(got, string(v)) }))
			if err != nil || string(b) != tc.text || !reflect.DeepEqual(got, tc.links) {
				t.Errorf("%s, chunks of %d: text %q, links %q, %v; want %q, %q", tc.name, chunk, b, got, err, tc.text, tc.links)
			}
			// Same text as TextReader.
			plain, _ := io.ReadAll(TextReader(p, strings.NewReader(tc.in)))
			if string(plain) != string(b) {
				t.Errorf("%s: LinkReader text %q differs from TextReader %q", tc.name, b, plain)
			}
		}
	}
	called := false
	b, _ := io.ReadAll(LinkReader(&Part{MediaType: "text/plain"}, strings.NewReader(`<a href="http://x">`), func([]byte) { called = true }))
	if called || string(b) != `<a href="http://x">` {
		t.Errorf("text/plain: called %v, text %q", called, b)
	}
}
