package drain

import (
	"encoding/json"
	"testing"

	"github.com/geomilter/geomilter/shared/spool"
)

func TestEventID(t *testing.T) {
	tests := []struct {
		name, data, want string
	}{
		{"trail event", `{"schema":1,"event_id":"0190abcd1234-9f","time":"x"}`, "0190abcd1234-9f"},
		{"spaces", `{ "event_id" : "abc" }`, "abc"},
		{"absent", `{"schema":1}`, "seq-42"},
		{"not a string", `{"event_id":17}`, "seq-42"},
		{"empty", `{"event_id":""}`, "seq-42"},
		{"escaped key in a value is skipped", `{"subject":"\"event_id\":\"fake\"","event_id":"real"}`, "real"},
		{"escaped value", `{"event_id":"a\"b"}`, `a"b`},
		{"not json", `hello`, "seq-42"},
		{"truncated", `{"event_id":"abc`, "seq-42"},
		{"empty record", ``, "seq-42"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := EventID(spool.Record{Seq: 42, Data: []byte(tt.data)}); got != tt.want {
				t.Fatalf("EventID(%s) = %q, want %q", tt.data, got, tt.want)
			}
		})
	}
}

// FuzzEventID checks the scanner against encoding/json on objects whose
// earlier field (sorted first) may contain anything, including text that
// looks like the key.
func FuzzEventID(f *testing.F) {
	f.Add("abc", `"event_id":"x"`)
	f.Add(`q"uote`, `\"event_id\":\"x\"`)
	f.Add("", "")
	f.Add("é\u2028", "event_id")
	f.Fuzz(func(t *testing.T, id, before string) {
		data, err := json.Marshal(map[string]string{"a": before, "event_id": id})
		if err != nil {
			t.Skip()
		}
		got := EventID(spool.Record{Seq: 7, Data: data})
		want := id
		var back map[string]string
		if json.Unmarshal(data, &back) == nil {
			want = back["event_id"] // invalid UTF-8 is replaced by Marshal
		}
		if want == "" {
			want = "seq-7"
		}
		if got != want {
			t.Fatalf("EventID(%s) = %q, want %q", data, got, want)
		}
	})
}
