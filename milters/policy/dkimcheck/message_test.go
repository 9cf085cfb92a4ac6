package dkimcheck

import (
	"context"
	"strings"
	"testing"
)

// VerifyMessage takes a stored message with CRLF or LF line ends, and a
// one-byte change still fails it.
func TestVerifyMessage(t *testing.T) {
	for algo, key := range testKeys() {
		t.Run(algo, func(t *testing.T) {
			z := keyZone(t, key)
			signed := HeaderName + ":" + signWith(t, key, testMessage, SignOptions{}) + "\r\n" + testMessage
			cases := []struct {
				name, msg, want string
			}{
				{"crlf", signed, ResultPass},
				{"lf", strings.ReplaceAll(signed, "\r\n", "\n"), ResultPass},
				{"body byte", strings.Replace(signed, "Hello Bob", "Hello Bib", 1), ResultFail},
			}
			for _, tc := range cases {
				res, err := VerifyMessage(context.Background(), strings.NewReader(tc.msg), VerifyOptions{LookupTXT: z.lookup})
				if err != nil || len(res) != 1 || res[0].Result != tc.want {
					t.Errorf("%s: %+v, %v; want one %s", tc.name, res, err, tc.want)
				}
			}
		})
	}
}
