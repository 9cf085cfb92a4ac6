package milterrt

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseParams(t *testing.T) {
	long := strings.Repeat("x", MaxParamLen+10)
	cases := []struct {
		name string
		in   string // NUL-separated, as after the address in SMFIC_MAIL
		want Params
	}{
		{"none", "", nil},
		{"usual", "SIZE=1000\x00BODY=8BITMIME\x00SMTPUTF8\x00", Params{{Key: "SIZE", Value: "1000"}, {Key: "BODY", Value: "8BITMIME"}, {Key: "SMTPUTF8"}}},
		{"xtext and '=' in value kept as sent", "ENVID=a+2Bb=c\x00", Params{{Key: "ENVID", Value: "a+2Bb=c"}}},
		{"UTF-8 value", "ORCPT=utf-8;j\xc3\xb6rg@example.org\x00", Params{{Key: "ORCPT", Value: "utf-8;j\xc3\xb6rg@example.org"}}},
		{"no keyword", "=1\x00", Params{{Invalid: "parameter without keyword", Raw: "=1"}}},
		{"empty argument (NUL NUL)", "\x00SIZE=1\x00", Params{{Invalid: "parameter without keyword"}, {Key: "SIZE", Value: "1"}}},
		{"bad keyword", "SI_ZE=1\x00", Params{{Invalid: `keyword "SI_ZE": byte 0x5f not allowed`, Raw: "SI_ZE=1"}}},
		{"keyword starting with '-'", "-X\x00", Params{{Invalid: `keyword "-X": byte 0x2d not allowed`, Raw: "-X"}}},
		{"empty value", "SIZE=\x00", Params{{Invalid: "keyword SIZE: empty value after '='", Raw: "SIZE="}}},
		{"control in value", "X=a\tb\x00", Params{{Invalid: "keyword X: byte 0x9 not allowed in the value", Raw: "X=a\tb"}}},
		{"overlong", "X=" + long, Params{{Invalid: "parameter of 1036 bytes, more than 1024", Raw: ("X=" + long)[:MaxParamLen]}}},
	}
	for _, tc := range cases {
		if got := parseParams([]byte(tc.in)); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: got %+v, want %+v", tc.name, got, tc.want)
		}
	}
	many := strings.Repeat("K=1\x00", MaxParams+3)
	got := parseParams([]byte(many))
	if len(got) != MaxParams+1 || got[MaxParams].Invalid != "3 more parameters dropped (at most 32 are kept)" {
		t.Errorf("%d parameters: kept %d, last %+v", MaxParams+3, len(got), got[len(got)-1])
	}
	if v, ok := (Params{{Invalid: "x"}, {Key: "size", Value: "5"}}).Get("SIZE"); !ok || v != "5" {
		t.Errorf("Get SIZE = %q %v", v, ok)
	}
	if _, ok := (Params{{Key: "BODY", Value: "7BIT"}}).Get("SIZE"); ok {
		t.Error("Get of a missing key found one")
	}
}

func TestDecodeXtext(t *testing.T) {
	for in, want := range map[string]string{"plain": "plain", "a+2Bb": "a+b", "+3D+2B": "=+", "": ""} {
		if got, err := DecodeXtext(in); err != nil || got != want {
			t.Errorf("DecodeXtext(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"a+", "a+2", "a+2b", "a+G0"} {
		if got, err := DecodeXtext(in); err == nil {
			t.Errorf("DecodeXtext(%q) = %q, want an error", in, got)
		}
	}
	for in, want := range map[string][2]string{"rfc822;a+2Bb@example.net": {"rfc822", "a+b@example.net"}, "utf-8;x\\x{E9}@example.net": {"utf-8", "x\\x{E9}@example.net"}} {
		if ty, a, err := ParseORCPT(in); err != nil || ty != want[0] || a != want[1] {
			t.Errorf("ParseORCPT(%q) = %q %q %v", in, ty, a, err)
		}
	}
	for _, in := range []string{"noseparator", ";a@b", "rfc822;a+zz"} {
		if _, _, err := ParseORCPT(in); err == nil {
			t.Errorf("ParseORCPT(%q): no error", in)
		}
	}
}
