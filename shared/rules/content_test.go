package rules

import (
	"reflect"
	"testing"
)

// TestMatchContent checks the subject and header keys: substrings and
// regular expressions, case, several values (OR), several keys (AND), and
// that they never match while the content is unknown.
func TestMatchContent(t *testing.T) {
	s := mustSnapshot(t, `
rules:
  - {id: subj-sub, milter: policy, scope: global, action: quarantine, match: {subject: ["cheap pills"]}}
  - {id: subj-re, milter: policy, scope: global, action: reject, match: {subject: ["/^\\[SPAM\\]/"]}}
  - {id: subj-cs, milter: policy, scope: global, action: reject, match: {subject: ["/(?-i)^URGENT$/"]}}
  - {id: hdr-flag, milter: policy, scope: global, action: quarantine, match: {header: ["X-Spam-Flag: yes"]}}
  - {id: hdr-present, milter: encrypt, scope: global, action: encrypt, match: {header: ["X-Secret: //"]}}
  - {id: hdr-re, milter: encrypt, scope: global, action: encrypt, match: {header: ["X-Class: /^(secret|restricted)$/", "Sensitivity: private"]}}
  - {id: both, milter: archive, scope: global, action: archive, match: {subject: [invoice], header: ["X-Dept: finance"], sender_domain: [corp.example]}}
`)
	content := func(subject string, hs ...Header) Facts {
		return Facts{ContentKnown: true, Subject: subject, Headers: hs}
	}
	tests := []struct {
		name   string
		milter string
		f      Facts
		want   []string
	}{
		{"substring any case", "policy", content("Buy CHEAP Pills now"), []string{"subj-sub"}},
		{"substring absent", "policy", content("cheap-pills"), nil},
		{"regex anchored", "policy", content("[spam] hello"), []string{"subj-re"}},
		{"regex not at start", "policy", content("re: [SPAM] hello"), nil},
		{"regex case-sensitive on request", "policy", content("URGENT"), []string{"subj-cs"}},
		{"regex case-sensitive miss", "policy", content("Urgent"), nil},
		{"content unknown", "policy", Facts{Subject: "cheap pills", Headers: []Header{{"X-Spam-Flag", "YES"}}}, nil},
		{"header value any case, name any case", "policy", content("", Header{"x-spam-FLAG", "YES"}), []string{"hdr-flag"}},
		{"header of another name", "policy", content("", Header{"X-Spam-Status", "yes"}), nil},
		{"header present", "encrypt", content("", Header{"X-Secret", ""}), []string{"hdr-present"}},
		{"header absent", "encrypt", content("", Header{"X-Other", "1"}), nil},
		{"header regex first value", "encrypt", content("", Header{"X-Class", "Secret"}), []string{"hdr-re"}},
		{"header regex second value", "encrypt", content("", Header{"Sensitivity", "Private"}), []string{"hdr-re"}},
		{"header regex whole value", "encrypt", content("", Header{"X-Class", "top secret"}), nil},
		{"second field of a name matches", "policy", content("", Header{"X-Spam-Flag", "no"}, Header{"X-Spam-Flag", "yes"}), []string{"hdr-flag"}},
		{"all keys hold", "archive", func() Facts {
			f := content("Invoice 42", Header{"X-Dept", "Finance"})
			f.Sender = "a@corp.example"
			return f
		}(), []string{"both"}},
		{"one key fails", "archive", func() Facts {
			f := content("Invoice 42", Header{"X-Dept", "Sales"})
			f.Sender = "a@corp.example"
			return f
		}(), nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := ids(s.Match(tc.milter, tc.f))
			if len(got) == 0 {
				got = nil
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Match(%s) = %v, want %v", tc.milter, got, tc.want)
			}
		})
	}
}

// TestNormalisation pins the one set of normalisation functions.
func TestNormalisation(t *testing.T) {
	tests := []struct {
		in        string
		addr, dom string
		null      bool
	}{
		{"User@Example.COM", "user@example.com", "example.com", false},
		{"<user@example.com.>", "user@example.com", "example.com", false},
		{" <@relay.example,@b.example:User@Dom.example> ", "user@dom.example", "dom.example", false},
		{"<>", "", "", true},
		{"postmaster", "postmaster", "", false},
		{"", "", "", false},
	}
	for _, tc := range tests {
		addr, dom, null := SplitAddr(tc.in)
		if addr != tc.addr || dom != tc.dom || null != tc.null {
			t.Errorf("SplitAddr(%q) = %q, %q, %v; want %q, %q, %v", tc.in, addr, dom, null, tc.addr, tc.dom, tc.null)
		}
		if got := DomainOf(tc.in); got != tc.dom {
			t.Errorf("DomainOf(%q) = %q, want %q", tc.in, got, tc.dom)
		}
	}
	if got := NormDomain(" Mail.Example.ORG. "); got != "mail.example.org" {
		t.Errorf("NormDomain = %q", got)
	}
	if got := NormName(" Alice "); got != "alice" {
		t.Errorf("NormName = %q", got)
	}
}
