package milterrt_test

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	milter "github.com/emersion/go-milter"

	. "github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/milterrt/miltertest"
)

// TestEnvelope: the ESMTP parameters of MAIL and RCPT, the SASL and TLS
// macros and the queue id reach the milter and its Envelope, recipient
// verdicts included; the Envelope serialises.
func TestEnvelope(t *testing.T) {
	var got Envelope
	tm := &testMilter{mk: func() *funcSession {
		return &funcSession{
			rcpt: func(_ *State, r *Recipient) Decision {
				if r.Addr == "no@example.net" {
					return Reject("550", "5.1.1", "No such user").WithRule("unknown")
				}
				return Continue()
			},
			eom: func(st *State, _ Modifier) Decision { got = st.Envelope(); return Continue() },
		}
	}}
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	ts := start(t, tm, Options{Clock: func() time.Time { return at }}, false)
	c := ts.DialOffer(t, miltertest.PostfixActions, miltertest.PostfixProtocol)
	res := c.Send(t, miltertest.Transaction{
		Peer: &miltertest.Peer{Host: "mx.example.org", Family: milter.FamilyInet6, Port: 2525, Addr: "2001:db8::25", Helo: "mx.example.org"},
		Macros: map[milter.Code][]string{
			milter.CodeHelo: {"{tls_version}", "TLSv1.3", "{cipher}", "TLS_AES_256_GCM_SHA384", "{cipher_bits}", "256", "{cert_subject}", "CN=mx.example.org", "{cert_issuer}", "CN=CA"},
			milter.CodeMail: {"{auth_type}", "PLAIN", "{auth_authen}", "bob", "{auth_author}", "alice@example.org"},
			milter.CodeEOB:  {"i", "4ABC123"},
		},
		Sender:   "bob@example.org",
		MailArgs: []string{"SIZE=1234", "BODY=8BITMIME", "SMTPUTF8", "RET=HDRS", "ENVID=id+2B1", "AUTH=alice@example.org", "=bad"},
		Rcpts: []miltertest.Rcpt{
			{Addr: "a@example.net", Args: []string{"NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;a+2Bx@example.net"}},
			{Addr: "no@example.net"},
			{Addr: "b@example.net", Args: []string{"ORCPT=rfc822;b+zz"}},
		},
	})
	if res.Reply.Code != milter.ActAccept || len(res.RcptReplies) != 3 || res.RcptReplies[1].SMTPCode != 550 {
		t.Fatalf("result %v, rcpt replies %+v", res, res.RcptReplies)
	}
	want := Envelope{
		SessionID: got.SessionID, TxnID: got.SessionID + ".1", QueueID: "4ABC123",
		Client: EnvelopeClient{Host: "mx.example.org", Addr: "2001:db8::25", Port: 2525, Family: "tcp6"},
		Helo:   "mx.example.org",
		SASL:   &EnvelopeSASL{Method: "PLAIN", Username: "bob", Author: "alice@example.org"},
		TLS:    &EnvelopeTLS{Version: "TLSv1.3", Cipher: "TLS_AES_256_GCM_SHA384", CipherBits: 256, CertSubject: "CN=mx.example.org", CertIssuer: "CN=CA"},
		Sender: "bob@example.org",
		MailParams: Params{{Key: "SIZE", Value: "1234"}, {Key: "BODY", Value: "8BITMIME"}, {Key: "SMTPUTF8"}, {Key: "RET", Value: "HDRS"},
			{Key: "ENVID", Value: "id+2B1"}, {Key: "AUTH", Value: "alice@example.org"}, {Invalid: "parameter without keyword", Raw: "=bad"}},
		EnvID: "id+1",
		Rcpts: []EnvelopeRcpt{
			{Addr: "a@example.net", Params: Params{{Key: "NOTIFY", Value: "SUCCESS,FAILURE"}, {Key: "ORCPT", Value: "rfc822;a+2Bx@example.net"}},
				Notify: "SUCCESS,FAILURE", ORCPTType: "rfc822", ORCPT: "a+x@example.net", Action: "continue"},
			{Addr: "no@example.net", Action: "reject", RuleID: "unknown"},
			{Addr: "b@example.net", Params: Params{{Key: "ORCPT", Value: "rfc822;b+zz"}}, Action: "continue"},
		},
		ConnStart: at, TxnStart: at,
		Invalid: []string{`rcpt b@example.net: ORCPT: xtext "b+zz": '+' at 1 not followed by two upper-case hex digits`},
	}
	if !reflect.DeepEqual(got, want) {
		g, _ := json.MarshalIndent(got, "", " ")
		w, _ := json.MarshalIndent(want, "", " ")
		t.Fatalf("envelope\n%s\nwant\n%s", g, w)
	}
	b, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	var back Envelope
	if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back, want) {
		t.Errorf("JSON round trip: %v\n%s", err, b)
	}
	// The reported State keeps the parameters too.
	r := ts.WaitTxns(t, 1)[0]
	if v, _ := r.MailParams.Get("size"); v != "1234" || len(r.Rcpts) != 3 || len(r.Rcpts[0].Params) != 2 {
		t.Errorf("reported MailParams %+v, rcpts %+v", r.MailParams, r.Rcpts)
	}
}
