package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCheckConfig drives `geomilter check-config` as an operator does: the
// binary links all four milters, so their own options are checked with the
// rest of the file, and a valid file is then checked against this host.
func TestCheckConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	rulesFile := write("rules.yaml", "rules:\n  - {id: r1, milter: access, scope: global, match: {client_ip: [203.0.113.0/24]}, action: reject}\n")
	host := "site: lax\nrules_file: " + rulesFile + "\nstate_dir: " + dir + "/state\nspool_dir: " + dir + "/spool\n" +
		"milters:\n  access: {listen: \"unix:" + dir + "/access.sock\"}\n"
	good := write("good.yaml", host+`  policy: {listen: "unix:`+dir+`/policy.sock", authserv_id: mx1.example.net, dkim: {max_signatures: 4}}
  archive: {listen: "unix:`+dir+`/archive.sock", journal: {max_message_size: 50MiB}}
  encrypt: {listen: "unix:`+dir+`/encrypt.sock", subject_tags: ["[secure]"]}
`)
	options := write("options.yaml", host+`  policy:
    listen: "unix:`+dir+`/policy.sock"
    authserv_idd: mx1
  encrypt:
    listen: "unix:`+dir+`/encrypt.sock"
    subject_tags: ["[secure]", "[SECURE]"]
`)
	noSocketDir := write("nosocketdir.yaml", strings.Replace(host, dir+"/access.sock", dir+"/missing/access.sock", 1))
	for _, tt := range []struct {
		name string
		args []string
		code int
		out  []string // lines of stdout, "" for FILE
	}{
		{"good", []string{"--config", good}, 0, []string{good + ": ok"}},
		{"milter options", []string{"--config", options}, 1, []string{
			options + `:9:5: milters.policy.authserv_idd: unknown key, did you mean "authserv_id"? (known: listen, metrics_listen, max_sessions, idle_timeout, shutdown_timeout, max_procs, message_dir, message_memory, authserv_id, dkim, dnsbl, dnswl, uribl, greylist, scoring, content, scanners)`,
			options + `:12:32: milters.encrypt.subject_tags[1]: duplicate tag "[SECURE]" (also subject_tags[0]; tags match case-insensitively)`,
		}},
		{"host", []string{"--config", noSocketDir}, 1, []string{
			noSocketDir + `:6:12: milters.access.listen: the socket directory ` + dir + `/missing does not exist (the milter creates the socket, not its directory; e.g. RuntimeDirectory=geomilter in the systemd unit makes /run/geomilter)`,
		}},
		{"rules file", []string{"--config", rulesFile}, 1, []string{
			rulesFile + `: this looks like a rules file (rules:); check-config wants a host config, see deploy/examples/geomilter.yaml (rules files are checked with geomilter ctl rules apply -f FILE --dry-run)`,
		}},
		{"positional file", []string{good}, 2, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(append([]string{"check-config"}, tt.args...), &stdout, &stderr)
			got := strings.Split(strings.TrimSpace(stdout.String()), "\n")
			if tt.out == nil {
				got = nil
				if stdout.Len() != 0 {
					got = []string{stdout.String()}
				}
			}
			if code != tt.code || strings.Join(got, "\n") != strings.Join(tt.out, "\n") {
				t.Errorf("exit %d, want %d; stdout:\n%s\nwant:\n%s\nstderr: %s", code, tt.code, stdout.String(), strings.Join(tt.out, "\n"), stderr.String())
			}
		})
	}
}
