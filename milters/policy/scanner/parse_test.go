package scanner

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseRspamd(t *testing.T) {
	cases := []struct {
		name, in string
		want     reply
		err      string // part of the error; "" for none
	}{
		{"gtube (rspamd 3.4)", `{"is_skipped":true,"score":15.0,"required_score":15.0,"action":"reject","symbols":{"GTUBE":{"name":"GTUBE","score":0.0,"metric_score":0.0}},"messages":{"smtp_message":"Gtube pattern"},"message-id":"1@example.com","time_real":0.119359}`,
			reply{score: 15, required: 15, action: "reject", symbols: []Symbol{{"GTUBE", 0}}}, ""},
		{"symbols sorted by score then name", `{"score":3.5,"required_score":15,"action":"no action","symbols":{"B":{"score":1},"A":{"score":1},"MIME_GOOD":{"score":-0.1},"RDNS_NONE":{"score":2.5,"options":["x"]}}}`,
			reply{score: 3.5, required: 15, action: "no action", symbols: []Symbol{{"RDNS_NONE", 2.5}, {"A", 1}, {"B", 1}, {"MIME_GOOD", -0.1}}}, ""},
		{"no symbols", `{"score":0,"required_score":15,"action":"no action"}`, reply{required: 15, action: "no action"}, ""},
		{"negative score", `{"score":-2,"required_score":15,"action":"no action","symbols":{}}`, reply{score: -2, required: 15, action: "no action"}, ""},
		{"not JSON", `<html>502 Bad Gateway</html>`, reply{}, "not the JSON of a verdict"},
		{"empty", ``, reply{}, "not the JSON"},
		{"no score", `{"required_score":15,"action":"no action"}`, reply{}, "no score"},
		{"no required", `{"score":1,"action":"no action"}`, reply{}, "no required_score"},
		{"no action", `{"score":1,"required_score":15}`, reply{}, "no action"},
		{"null score", `{"score":null,"required_score":15,"action":"reject"}`, reply{}, "no score"},
		{"score as text", `{"score":"1","required_score":15,"action":"reject"}`, reply{}, "not the JSON"},
		{"huge exponent", `{"score":1e999,"required_score":15,"action":"reject"}`, reply{}, "not the JSON"},
		{"empty action", `{"score":1,"required_score":15,"action":""}`, reply{}, "action of 0 bytes"},
		{"action with CRLF", `{"score":1,"required_score":15,"action":"reject\r\nX-Evil: 1"}`, reply{}, "character not allowed"},
		{"symbol with a space", `{"score":1,"required_score":15,"action":"reject","symbols":{"A B":{"score":1}}}`, reply{}, "character not allowed"},
		{"symbol with a comma", `{"score":1,"required_score":15,"action":"reject","symbols":{"A,B":{"score":1}}}`, reply{}, "character not allowed"},
		{"symbol too long", `{"score":1,"required_score":15,"action":"reject","symbols":{"` + strings.Repeat("A", 200) + `":{"score":1}}}`, reply{}, "symbol name of 200 bytes"},
		{"symbols not a map", `{"score":1,"required_score":15,"action":"reject","symbols":[1]}`, reply{}, "not the JSON"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseRspamd([]byte(tc.in))
			checkParse(t, got, err, tc.want, tc.err)
		})
	}
}

func TestParseSpamd(t *testing.T) {
	cases := []struct {
		name, in string
		want     reply
		err      string
	}{
		{"gtube (spamd 4.0.1)", "SPAMD/1.1 0 EX_OK\r\nContent-length: 55\r\nSpam: True ; 1000.0 / 5.0\r\n\r\nGTUBE,MSGID_SHORT,NO_RECEIVED,NO_RELAYS,TVD_SPACE_RATIO",
			reply{score: 1000, required: 5, action: "spam", symbols: []Symbol{{"GTUBE", 0}, {"MSGID_SHORT", 0}, {"NO_RECEIVED", 0}, {"NO_RELAYS", 0}, {"TVD_SPACE_RATIO", 0}}}, ""},
		{"ham, -0.0", "SPAMD/1.1 0 EX_OK\r\nContent-length: 33\r\nSpam: False ; -0.0 / 5.0\r\n\r\nNO_RELAYS,MSGID_SHORT,NO_RECEIVED",
			reply{score: 0, required: 5, action: "ham", symbols: []Symbol{{"MSGID_SHORT", 0}, {"NO_RECEIVED", 0}, {"NO_RELAYS", 0}}}, ""},
		{"no symbols", "SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\nSpam: False ; 0.1 / 5.0\r\n\r\n", reply{score: 0.1, required: 5, action: "ham"}, ""},
		{"protocol 1.2 style: no length, trailing CRLF", "SPAMD/1.1 0 EX_OK\r\nSpam: True ; 7.5 / 5.0\r\n\r\nA,B\r\n",
			reply{score: 7.5, required: 5, action: "spam", symbols: []Symbol{{"A", 0}, {"B", 0}}}, ""},
		{"body beyond the length ignored", "SPAMD/1.1 0 EX_OK\r\nContent-length: 1\r\nSpam: True ; 7.5 / 5.0\r\n\r\nA,B C",
			reply{score: 7.5, required: 5, action: "spam", symbols: []Symbol{{"A", 0}}}, ""},
		{"lower-case headers", "SPAMD/1.1 0 EX_OK\r\nspam: Yes ; 7 / 5\r\n\r\n", reply{score: 7, required: 5, action: "spam"}, ""},
		{"error code only", "SPAMD/1.0 76 Bad header line: XYZ\r\n", reply{}, "spamd says 76 Bad header line"},
		{"error code with headers", "SPAMD/1.0 64 EX_USAGE\r\n\r\n", reply{}, "spamd says 64"},
		{"error text with control bytes", "SPAMD/1.0 76 a\x1bb\r\n", reply{}, "spamd says 76 a?b"},
		{"empty", "", reply{}, "no end of headers"},
		{"HTTP, not spamd", "HTTP/1.1 200 OK\r\n\r\n{}", reply{}, "not SPAMD/"},
		{"code not a number", "SPAMD/1.1 x EX_OK\r\n\r\n", reply{}, "code is not a number"},
		{"no Spam header", "SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\n\r\n", reply{}, "no Spam header"},
		{"two Spam headers", "SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1 / 5\r\nSpam: False ; 1 / 5\r\n\r\n", reply{}, "two Spam headers"},
		{"header without colon", "SPAMD/1.1 0 EX_OK\r\nSpam True\r\n\r\n", reply{}, "no colon"},
		{"verdict unknown", "SPAMD/1.1 0 EX_OK\r\nSpam: Maybe ; 1 / 5\r\n\r\n", reply{}, "verdict is not True or False"},
		{"no semicolon", "SPAMD/1.1 0 EX_OK\r\nSpam: True 1 / 5\r\n\r\n", reply{}, "is not <True|False>"},
		{"no slash", "SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1\r\n\r\n", reply{}, "no score / required"},
		{"score NaN", "SPAMD/1.1 0 EX_OK\r\nSpam: True ; NaN / 5\r\n\r\n", reply{}, "score is NaN"},
		{"required Inf", "SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1 / Inf\r\n\r\n", reply{}, "required score is +Inf"},
		{"score text", "SPAMD/1.1 0 EX_OK\r\nSpam: True ; lots / 5\r\n\r\n", reply{}, "score is not a number"},
		{"short body", "SPAMD/1.1 0 EX_OK\r\nContent-length: 99\r\nSpam: True ; 1 / 5\r\n\r\nA", reply{}, "body of 1 bytes, Content-length says 99"},
		{"bad length", "SPAMD/1.1 0 EX_OK\r\nContent-length: -1\r\nSpam: True ; 1 / 5\r\n\r\n", reply{}, "is not a number"},
		{"symbol with a semicolon", "SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1 / 5\r\n\r\nA;B", reply{}, "character not allowed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseSpamd([]byte(tc.in))
			checkParse(t, got, err, tc.want, tc.err)
		})
	}
}

func checkParse(t *testing.T, got reply, err error, want reply, wantErr string) {
	t.Helper()
	if wantErr != "" {
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Fatalf("error %v, want one containing %q", err, wantErr)
		}
		return
	}
	if err != nil {
		t.Fatalf("error %v", err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
}

// FuzzParseRspamd: any reply is a verdict that passes our checks, or an
// error; never a panic, never a NaN or a name unfit for a header.
func FuzzParseRspamd(f *testing.F) {
	f.Add([]byte(`{"score":3.5,"required_score":15,"action":"no action","symbols":{"A":{"score":1}}}`))
	f.Add([]byte(`{"is_skipped":true,"score":15.0,"required_score":15.0,"action":"reject","symbols":{"GTUBE":{"name":"GTUBE","score":0.0}}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		rep, err := parseRspamd(b)
		if err == nil {
			checkReply(t, rep)
		}
	})
}

// FuzzParseSpamd: as FuzzParseRspamd, for spamd's SYMBOLS reply.
func FuzzParseSpamd(f *testing.F) {
	f.Add([]byte("SPAMD/1.1 0 EX_OK\r\nContent-length: 11\r\nSpam: True ; 1000.0 / 5.0\r\n\r\nGTUBE,OTHER"))
	f.Add([]byte("SPAMD/1.0 76 Bad header line\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		rep, err := parseSpamd(b)
		if err == nil {
			checkReply(t, rep)
		}
	})
}

func checkReply(t *testing.T, rep reply) {
	t.Helper()
	if checkScore("score", rep.score) != nil || checkScore("required", rep.required) != nil {
		t.Fatalf("score %v required %v accepted", rep.score, rep.required)
	}
	if err := checkAction(rep.action); err != nil {
		t.Fatalf("action accepted: %v", err)
	}
	for _, s := range rep.symbols {
		if err := checkSymbol(s.Name); err != nil {
			t.Fatalf("symbol accepted: %v", err)
		}
	}
}
