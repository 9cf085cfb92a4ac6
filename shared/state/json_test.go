package state

import "testing"

func TestSameJSON(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{`{"a":1}`, `{"a":1}`, true},
		{`{"a":1,"b":[1,2]}`, ` { "b" : [ 1 , 2 ] , "a" : 1 } `, true},
		{`{"s":"<&>"}`, `{"s":"\u003c\u0026\u003e"}`, true},
		{`{"s":"é"}`, `{"s":"\u00e9"}`, true},
		{`{"a":{"x":null,"y":true}}`, `{"a":{"y":true,"x":null}}`, true},
		{`{"a":1}`, `{"a":2}`, false},
		{`{"a":1}`, `{"a":1.0}`, false}, // numbers as written: a rewrite, never a lost change
		{`{"a":12345678901234567891}`, `{"a":12345678901234567892}`, false},
		{`[1,2]`, `[2,1]`, false},
		{`{"a":1}`, `{"a":1,"b":null}`, false},
		{`{"a":"x"}`, `{"a":"X"}`, false},
		{`{"a":1}`, `{"a":1} {"a":1}`, false},
		{`not json`, `not json`, true}, // equal bytes
		{`not json`, `{"a":1}`, false},
	}
	for _, tc := range tests {
		if got := sameJSON([]byte(tc.a), []byte(tc.b)); got != tc.want {
			t.Errorf("sameJSON(%s, %s) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
		if got := sameJSON([]byte(tc.b), []byte(tc.a)); got != tc.want {
			t.Errorf("sameJSON(%s, %s) = %v, want %v", tc.b, tc.a, got, tc.want)
		}
	}
}
