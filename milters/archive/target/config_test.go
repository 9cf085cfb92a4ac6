package target

import (
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"gopkg.in/yaml.v3"
)

func TestConfigCheck(t *testing.T) {
	smtp := func(mod func(*Config)) Config {
		c := Config{Name: "vault", Type: TypeSMTP, Hosts: []string{"[127.0.0.1]:2525", "mx.example"}, To: "journal@archive.example"}
		if mod != nil {
			mod(&c)
		}
		return c
	}
	tests := []struct {
		name string
		c    Config
		want []string // "key: part of the message", in order
	}{
		{"good smtp", smtp(nil), nil},
		{"good dir", Config{Name: "files", Type: TypeDir, Path: "/var/lib/geomilter/archive"}, nil},
		{"good http", Config{Name: "ingest", Type: TypeHTTP, URL: "https://a.example/j", Headers: map[string]string{"Authorization": "Bearer x"}}, nil},
		{"no name, no type", Config{}, []string{"name: is needed", "type: is needed"}},
		{"name unusable as a directory", smtp(func(c *Config) { c.Name = "../x" }), []string{"name: \"../x\""}},
		{"unknown type", Config{Name: "a", Type: "ftp"}, []string{`type: must be smtp, dir or http, got "ftp"`}},
		{"smtp without hosts and to", smtp(func(c *Config) { c.Hosts, c.To = nil, "" }), []string{"hosts: at least one", "to: the journal mailbox"}},
		{"bad host and port", smtp(func(c *Config) { c.Hosts = []string{"mx.example:99999", "[::1"} }), []string{"hosts[0]: \"mx.example:99999\": bad port", "hosts[1]:"}},
		{"bad addresses", smtp(func(c *Config) { c.To, c.From = "journal", "a b@c" }), []string{"to: \"journal\" is not a mailbox", "from: \"a b@c\" is not a mailbox"}},
		{"bad starttls", smtp(func(c *Config) { c.StartTLS = "yes" }), []string{`starttls: must be may, require or off, got "yes"`}},
		{"ca file without require", smtp(func(c *Config) { c.TLSCAFile = "/etc/ca.pem" }), []string{"tls_ca_file: only used with starttls: require"}},
		{"negative timeouts", smtp(func(c *Config) { c.Timeout, c.ConnectTimeout = -1, -time.Second }), []string{"timeout: must not be negative", "connect_timeout: must not be negative"}},
		{"smtp with dir keys", smtp(func(c *Config) { c.Path = "/x" }), []string{`path: not used by a target of type "smtp"`}},
		{"dir, relative path and a url", Config{Name: "f", Type: TypeDir, Path: "archive", URL: "http://x"}, []string{"url: not used", `path: must be an absolute path, got "archive"`}},
		{"http, bad url and header", Config{Name: "h", Type: TypeHTTP, URL: "ftp://x/", Headers: map[string]string{"Bad Name": "v"}}, []string{"url: must be an absolute http", `headers: "Bad Name" is not a valid header name`}},
		{"http header value with a line break", Config{Name: "h", Type: TypeHTTP, URL: "http://x/", Headers: map[string]string{"X-A": "a\r\nX-B: b"}}, []string{"headers.X-A: value holds a line break"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ps := tt.c.Check()
			if len(ps) != len(tt.want) {
				t.Fatalf("Check = %v, want %d problems %v", ps, len(tt.want), tt.want)
			}
			for i, w := range tt.want {
				if !strings.HasPrefix(ps[i].String(), w[:strings.Index(w, ":")+1]) || !strings.Contains(ps[i].String(), w) {
					t.Errorf("problem %d = %q, want %q", i, ps[i], w)
				}
			}
			dead, _ := newDead(t)
			_, err := New(tt.c, dead, zerolog.Nop())
			if (err != nil) != (len(tt.want) > 0) {
				t.Fatalf("New = %v, want an error iff Check found problems", err)
			}
		})
	}
}

// The lead decodes the plan's YAML straight into Config.
func TestConfigYAML(t *testing.T) {
	const doc = `
- {name: vault, type: smtp, hosts: ["[127.0.0.1]:2525", "[10.0.0.2]:25"], to: "journal@archive.example",
   from: "postmaster@mx1.example", helo: "mx1.example", starttls: may, timeout: 60s, connect_timeout: 10s}
- {name: files, type: dir, path: /var/lib/geomilter/archive}
- {name: ingest, type: http, url: "http://127.0.0.1:8080/journal", timeout: 30s, headers: {Authorization: "Bearer x"}}
`
	var cs []Config
	if err := yaml.Unmarshal([]byte(doc), &cs); err != nil {
		t.Fatal(err)
	}
	if len(cs) != 3 || cs[0].ConnectTimeout != 10*time.Second || cs[0].Hosts[1] != "[10.0.0.2]:25" ||
		cs[1].Path != "/var/lib/geomilter/archive" || cs[2].Headers["Authorization"] != "Bearer x" || cs[2].Timeout != 30*time.Second {
		t.Fatalf("decoded %+v", cs)
	}
	for _, c := range cs {
		if ps := c.Check(); ps != nil {
			t.Errorf("%s: %v", c.Name, ps)
		}
	}
}
