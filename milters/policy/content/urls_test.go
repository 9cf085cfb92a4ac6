package content

import (
	"reflect"
	"strings"
	"testing"
)

func TestURLHosts(t *testing.T) {
	tests := []struct {
		text           string
		hosts, domains []string
	}{
		{"http://" + strings.Repeat("u", 1100) + "@Padded.Example/", []string{"padded.example"}, []string{"padded.example"}},
		{`http:\\back.example\p`, []string{"back.example"}, []string{"back.example"}},
		{"www.ex%41mple.org.", []string{"www.example.org"}, []string{"example.org"}},
		{"http://1.2.3.4:80/ http://3232235777/ http://0x7f.1/", []string{"1.2.3.4", "3232235777", "0x7f.1"}, nil},
		{"http://localhost/ http://co.uk/ https://a.b.example.co.uk/", []string{"localhost", "co.uk", "a.b.example.co.uk"}, []string{"example.co.uk"}},
		{"https://%7e.example http://a..b/ http://.x/ hxxp://x.example http:x.example https://", nil, nil},
		{"<http://A.Example>, 'www.b.example'; (https://c.example:8080)", []string{"a.example", "www.b.example", "c.example"}, []string{"a.example", "b.example", "c.example"}},
		{"xhttp://no.example awww.no.example x.www.no.example", nil, nil},
		{"http://пример.рф/ и www.bücher.example’s", []string{"пример.рф", "www.bücher.example"}, []string{"xn--e1afmkfd.xn--p1ai", "xn--bcher-kva.example"}},
	}
	for _, tc := range tests {
		var r rec
		rep, err := Walk(strings.NewReader("Subject: u\r\n\r\n"+tc.text+"\r\n"), 0, &r, Limits{})
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(r.urls, tc.hosts) || !reflect.DeepEqual(rep.URLDomains, tc.domains) {
			t.Errorf("%.60q: hosts %q, domains %q; want %q, %q", tc.text, r.urls, rep.URLDomains, tc.hosts, tc.domains)
		}
	}
}
