package main

import (
	"reflect"
	"testing"
)

func TestCheckVersion(t *testing.T) {
	for _, tc := range []struct {
		v  string
		ok bool
	}{
		{"0.0~git85.570c324", true},
		{"0.0~git85.570c324.dirty+upgrade1", true},
		{"1.2.0+git5.abc1234", true},
		{"570c324-dirty", false}, // git describe --always: a hyphen starts a Debian revision
		{"v1.2.0", false},
		{"", false},
		{"1.0 beta", false},
	} {
		if err := checkVersion(tc.v); (err == nil) != tc.ok {
			t.Errorf("checkVersion(%q) = %v, want ok=%v", tc.v, err, tc.ok)
		}
	}
}

func TestFileName(t *testing.T) {
	for _, tc := range []struct{ format, want string }{
		{"deb", "geomilter_1.0~git1.abc_amd64.deb"},
		{"rpm", "geomilter-1.0~git1.abc.x86_64.rpm"},
		{"apk", ""},
	} {
		got, err := fileName(tc.format, "1.0~git1.abc")
		if got != tc.want || (err != nil) != (tc.want == "") {
			t.Errorf("fileName(%q) = %q, %v; want %q", tc.format, got, err, tc.want)
		}
	}
}

func TestRoffLines(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"plain\n", "plain\n"},
		{`a\b`, `a\eb` + "\n"},
		{".TH not a request", `\&.TH not a request` + "\n"},
		{"'quote", `\&'quote` + "\n"},
		{"down (since …)", `down (since \[u2026])` + "\n"},
	} {
		if got := roffLines(tc.in); got != tc.want {
			t.Errorf("roffLines(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestCommands(t *testing.T) {
	usage := "usage: geomilter <command>\n\nmilters:\n  access        who may send\n  policy        SPF\n\nops:\n" +
		"  bench milter  drive a socket\n  version       print\n  help          this text\n"
	want := []string{"access", "policy", "bench milter", "version", "help"}
	if got := commands(usage, commandLine); !reflect.DeepEqual(got, want) {
		t.Errorf("commands = %q, want %q", got, want)
	}
	ctl := "usage: geomilter ctl\n\ncommands:\n  rules apply -f FILE   x\n  rules list   y\n  status   z\n\nflags:\n  --config FILE   c\n"
	if got := commands(sectionAfter(ctl, "commands:"), ctlLine); !reflect.DeepEqual(got, []string{"rules", "status"}) {
		t.Errorf("ctl commands = %q", got)
	}
}
