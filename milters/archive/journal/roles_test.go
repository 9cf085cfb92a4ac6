package journal

import (
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
)

func TestRoles(t *testing.T) {
	rcpts := []string{"bob@example.com", "carol@example.com", "dave@example.com"}
	tests := []struct {
		name    string
		headers string
		rcpts   []string // nil: rcpts above
		want    string   // "addr=Role ..." in envelope order
	}{
		{"to cc bcc",
			"From: a@example.org\r\nTo: bob@example.com\r\nCc: carol@example.com\r\n\r\n",
			nil, "bob@example.com=To carol@example.com=Cc dave@example.com=Bcc"},
		{"no To or Cc",
			"From: a@example.org\r\nSubject: x\r\n\r\nTo: bob@example.com\r\n",
			nil, "bob@example.com=Bcc carol@example.com=Bcc dave@example.com=Bcc"},
		{"empty header section", "", nil, "bob@example.com=Bcc carol@example.com=Bcc dave@example.com=Bcc"},
		{"in To and Cc is To",
			"Cc: bob@example.com, carol@example.com\r\nTo: carol@example.com\r\n\r\n",
			nil, "bob@example.com=Cc carol@example.com=To dave@example.com=Bcc"},
		{"names, comments, angle brackets",
			"To: \"Smith, Bob\" <bob@example.com> (work), Carol (home) <carol@example.com>\r\n\r\n",
			nil, "bob@example.com=To carol@example.com=To dave@example.com=Bcc"},
		{"group syntax",
			"To: undisclosed-recipients:;\r\nCc: Team: bob@example.com, Carol <carol@example.com>;, x@example.net\r\n\r\n",
			nil, "bob@example.com=Cc carol@example.com=Cc dave@example.com=Bcc"},
		{"case-insensitive",
			"TO: Bob@Example.COM\r\ncc: CAROL@example.com\r\n\r\n",
			[]string{"BOB@example.com", "carol@EXAMPLE.com"}, "BOB@example.com=To carol@EXAMPLE.com=Cc"},
		{"envelope in angle brackets",
			"To: bob@example.com\r\n\r\n", []string{"<bob@example.com>"}, "<bob@example.com>=To"},
		{"quoted local part",
			"To: \"bob smith\"@example.com, \"Carol\" <\"c.\\\"x\\\"\"@example.com>\r\n\r\n",
			[]string{`"bob smith"@example.com`, `"c.\"x\""@example.com`, "dave@example.com"},
			`"bob smith"@example.com=To "c.\"x\""@example.com=To dave@example.com=Bcc`},
		{"duplicate envelope recipients listed once",
			"To: bob@example.com\r\n\r\n",
			[]string{"bob@example.com", "dave@example.com", "Bob@Example.com", "dave@example.com"},
			"bob@example.com=To dave@example.com=Bcc"},
		{"duplicate header addresses",
			"To: bob@example.com, bob@example.com\r\nTo: BOB@example.com\r\n\r\n",
			nil, "bob@example.com=To carol@example.com=Bcc dave@example.com=Bcc"},
		{"several To and Cc fields",
			"To: bob@example.com\r\nSubject: s\r\nTo: carol@example.com\r\nCc: x@example.net\r\nCc: dave@example.com\r\n\r\n",
			nil, "bob@example.com=To carol@example.com=To dave@example.com=Cc"},
		{"folded",
			"To: Bob\r\n <bob@example.com>,\r\n\tcarol@example.com\r\n\r\n",
			nil, "bob@example.com=To carol@example.com=To dave@example.com=Bcc"},
		{"LF line ends",
			"To: bob@example.com\nCc:\n carol@example.com\n\n",
			nil, "bob@example.com=To carol@example.com=Cc dave@example.com=Bcc"},
		{"broken To: unbalanced bracket",
			"To: bob@example.com, <<broken, carol@example.com\r\n\r\n",
			nil, "bob@example.com=To carol@example.com=To dave@example.com=Bcc"},
		{"broken To: unterminated quote",
			"To: \"Bob <bob@example.com>, carol@example.com\r\n\r\n",
			nil, "bob@example.com=To carol@example.com=To dave@example.com=Bcc"},
		{"broken To: bare names and semicolons",
			"To: Bob Smith bob@example.com; carol@example.com;;\r\nCc: ,,,\r\n\r\n",
			nil, "bob@example.com=To carol@example.com=To dave@example.com=Bcc"},
		{"broken To: unknown RFC 2047 charset and 8-bit name",
			"To: =?x-unknown?q?B=F6b?= <bob@example.com>, J\xf6rg <carol@example.com>\r\n\r\n",
			nil, "bob@example.com=To carol@example.com=To dave@example.com=Bcc"},
		{"empty To",
			"To:\r\nCc: \r\n\r\n", nil, "bob@example.com=Bcc carol@example.com=Bcc dave@example.com=Bcc"},
		{"resent fields",
			"To: x@example.net\r\nResent-To: bob@example.com\r\nResent-Cc: carol@example.com\r\n\r\n",
			nil, "bob@example.com=To carol@example.com=Cc dave@example.com=Bcc"},
		{"Bcc field does not make To",
			"Bcc: bob@example.com\r\nX-To: carol@example.com\r\n\r\n",
			nil, "bob@example.com=Bcc carol@example.com=Bcc dave@example.com=Bcc"},
		{"garbage lines skipped",
			"From alice Mon Dec 7\r\n continuation first\r\nno colon here\r\nTo: bob@example.com\r\n\r\n",
			nil, "bob@example.com=To carol@example.com=Bcc dave@example.com=Bcc"},
		{"no recipients", "To: bob@example.com\r\n\r\n", []string{}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc := tt.rcpts
			if rc == nil {
				rc = rcpts
			}
			got, err := Roles(strings.NewReader(tt.headers), rc)
			if err != nil {
				t.Fatal(err)
			}
			if s := rolesString(got); s != tt.want {
				t.Errorf("got  %s\nwant %s", s, tt.want)
			}
		})
	}
}

func rolesString(rs []RcptRole) string {
	var parts []string
	for _, r := range rs {
		parts = append(parts, r.Addr+"="+r.Role)
	}
	return strings.Join(parts, " ")
}

func TestRolesHeaderSectionBound(t *testing.T) {
	// A To past MaxHeaderSection is not seen: its recipient is Bcc, no error.
	headers := "To: bob@example.com\r\n" + strings.Repeat("X-Pad: "+strings.Repeat("p", 90)+"\r\n", MaxHeaderSection/99+1) +
		"Cc: carol@example.com\r\n\r\n"
	got, err := Roles(strings.NewReader(headers), []string{"bob@example.com", "carol@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	if s := rolesString(got); s != "bob@example.com=To carol@example.com=Bcc" {
		t.Errorf("got %s", s)
	}
}

func TestRolesReadError(t *testing.T) {
	boom := errors.New("disk on fire")
	r := io.MultiReader(strings.NewReader("To: bob@example.com\r\n"), &errReader{strings.NewReader(""), boom})
	got, err := Roles(r, []string{"bob@example.com", "carol@example.com"})
	if !errors.Is(err, boom) {
		t.Errorf("err %v, want %v", err, boom)
	}
	want := []RcptRole{{"bob@example.com", RoleTo}, {"carol@example.com", RoleBcc}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("roles with the error: %v, want %v", got, want)
	}
}

func TestScanAddrs(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"@", nil},
		{"a@", nil},
		{"@b", nil},
		{"<a@b>", []string{"a@b"}},
		{"x a@b,c@d;(e@f)", []string{"a@b", "c@d", "e@f"}},
		{"a@b@c", []string{"a@b"}},
	}
	for _, tt := range tests {
		if got := scanAddrs(tt.in); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("scanAddrs(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// FuzzRoles: any header section gives every distinct envelope recipient one
// of the three roles, never an error or a panic.
func FuzzRoles(f *testing.F) {
	f.Add("To: bob@example.com\r\nCc: Team: carol@example.com;\r\n\r\n", "bob@example.com")
	f.Add("To: \"a\\\"b\" <x@y>, (c) z@w\r\n broken <<\r\n\r\n", "Z@W")
	f.Add("Cc: =?utf-8?b?w6k=?= <\xff@\xfe>\n\n", "\xff@\xfe")
	f.Fuzz(func(t *testing.T, headers, rcpt string) {
		roles, err := Roles(strings.NewReader(headers), []string{rcpt, "fixed@example.com", rcpt})
		if err != nil {
			t.Fatal(err)
		}
		if len(roles) < 1 || len(roles) > 2 {
			t.Fatalf("%d roles for 2 distinct recipients at most", len(roles))
		}
		for _, r := range roles {
			if r.Role != RoleTo && r.Role != RoleCc && r.Role != RoleBcc {
				t.Fatalf("role %q", r.Role)
			}
		}
	})
}
