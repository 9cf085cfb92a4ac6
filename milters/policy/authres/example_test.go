package authres_test

import (
	"fmt"
	"strings"

	"github.com/geomilter/geomilter/milters/policy/authres"
)

func ExampleFormat() {
	v := authres.Format("mx.example.org", authres.Results{
		authres.SPF("pass", "example.com", "mail.example.com"),
		authres.DKIM("pass", "example.com", "sel", "abcdefghijklmnopqrstuvwxyz"),
		authres.DMARC("pass", "p=reject dis=none", "example.com"),
	})
	fmt.Println("Authentication-Results: " + strings.ReplaceAll(v, "\r\n", "\n"))
	// Output:
	// Authentication-Results: mx.example.org;
	// 	spf=pass smtp.mailfrom=example.com (smtp.helo=mail.example.com);
	// 	dkim=pass header.d=example.com header.s=sel header.b=abcdefgh;
	// 	dmarc=pass (p=reject dis=none) header.from=example.com
}

func ExampleClaimsAuthservID() {
	fmt.Println(authres.ClaimsAuthservID("(forged) MX.Example.Org 1; dkim=pass header.d=bank.example", "mx.example.org"))
	fmt.Println(authres.ClaimsAuthservID("relay.example.net; spf=pass smtp.mailfrom=a.example", "mx.example.org"))
	// Output:
	// true
	// false
}
