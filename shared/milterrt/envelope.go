package milterrt

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// Param is one ESMTP parameter of MAIL FROM or RCPT TO (../rfc/5321 4.1.2
// esmtp-param: "KEY" or "KEY=VALUE"), as Postfix passes it on: "SIZE=1000",
// "BODY=8BITMIME", "SMTPUTF8", "RET=HDRS", "ENVID=…", "NOTIFY=SUCCESS,FAILURE",
// "ORCPT=rfc822;…" (../rfc/3461 4, ../rfc/6531 3.4, ../rfc/1870,
// ../rfc/6152). Values are as sent: xtext (ENVID, ORCPT) is not decoded, see
// DecodeXtext.
type Param struct {
	Key   string `json:"key,omitempty"`   // as sent; keywords are case-insensitive (Params.Get)
	Value string `json:"value,omitempty"` // after the first '='; "" for a parameter without value
	// Invalid says why the argument is not KEY[=VALUE] ("" for a good one);
	// then Key and Value are empty and Raw holds the argument as sent (at most
	// MaxParamLen bytes of it).
	Invalid string `json:"invalid,omitempty"`
	Raw     string `json:"raw,omitempty"`
}

// Bounds on the ESMTP parameters kept per MAIL or RCPT: Postfix itself
// accepts few (smtpd_esmtp_line_length_limit), and these come from the SMTP
// client.
const (
	MaxParams   = 32
	MaxParamLen = 1024
)

// Params are the ESMTP parameters of one MAIL or RCPT, in the order sent.
type Params []Param

// Get returns the value of the first valid parameter named key (any case)
// and whether there is one.
func (ps Params) Get(key string) (string, bool) {
	for _, p := range ps {
		if p.Invalid == "" && strings.EqualFold(p.Key, key) {
			return p.Value, true
		}
	}
	return "", false
}

// parseParams reads the ESMTP arguments of SMFIC_MAIL / SMFIC_RCPT (the
// NUL-separated strings after the address). Bad input is kept, flagged,
// never an error: the MTA accepted it, and a milter decides what it means.
func parseParams(rest []byte) Params {
	var ps Params
	dropped := 0
	for len(rest) > 0 {
		var arg string
		arg, rest = cstring(rest)
		if len(ps) >= MaxParams {
			dropped++
			continue
		}
		ps = append(ps, parseParam(arg))
	}
	if dropped > 0 {
		ps = append(ps, Param{Invalid: fmt.Sprintf("%d more parameters dropped (at most %d are kept)", dropped, MaxParams)})
	}
	return ps
}

func parseParam(arg string) Param {
	bad := func(why string) Param {
		if len(arg) > MaxParamLen {
			arg = arg[:MaxParamLen]
		}
		return Param{Invalid: why, Raw: arg}
	}
	if len(arg) > MaxParamLen {
		return bad(fmt.Sprintf("parameter of %d bytes, more than %d", len(arg), MaxParamLen))
	}
	key, value, hasValue := strings.Cut(arg, "=")
	if key == "" {
		return bad("parameter without keyword")
	}
	// esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
	for i := 0; i < len(key); i++ {
		c := key[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' && i > 0) {
			return bad(fmt.Sprintf("keyword %q: byte %#x not allowed", key, c))
		}
	}
	if hasValue && value == "" {
		return bad(fmt.Sprintf("keyword %s: empty value after '='", key))
	}
	// esmtp-value = 1*(%d33-60 / %d62-126), and UTF-8 with SMTPUTF8
	// (../rfc/6531 3.3): no controls, space or DEL.
	for i := 0; i < len(value); i++ {
		if c := value[i]; c <= ' ' || c == 0x7f {
			return bad(fmt.Sprintf("keyword %s: byte %#x not allowed in the value", key, c))
		}
	}
	return Param{Key: key, Value: value}
}

// DecodeXtext decodes an xtext value (../rfc/3461 4: "+" and two upper-case
// hex digits stand for one byte), as used by ENVID and ORCPT.
func DecodeXtext(s string) (string, error) {
	if !strings.Contains(s, "+") {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '+' {
			b.WriteByte(s[i])
			continue
		}
		if i+2 >= len(s) || !upperHex(s[i+1]) || !upperHex(s[i+2]) {
			return "", fmt.Errorf("xtext %q: '+' at %d not followed by two upper-case hex digits", s, i)
		}
		v, _ := strconv.ParseUint(s[i+1:i+3], 16, 8)
		b.WriteByte(byte(v))
		i += 2
	}
	return b.String(), nil
}

func upperHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'A' && c <= 'F' }

// ParseORCPT splits an ORCPT value, "addr-type;xtext" (../rfc/3461 4.2),
// into the address type ("rfc822", "utf-8") and the decoded address.
func ParseORCPT(v string) (addrType, addr string, err error) {
	t, x, ok := strings.Cut(v, ";")
	if !ok || t == "" {
		return "", "", fmt.Errorf("ORCPT %q: want addr-type;address", v)
	}
	if strings.EqualFold(t, "utf-8") {
		return t, x, nil // utf-8-addr-xtext (../rfc/6533 3): \x{…} escapes left as sent
	}
	addr, err = DecodeXtext(x)
	if err != nil {
		return "", "", fmt.Errorf("ORCPT: %w", err)
	}
	return t, addr, nil
}

// Envelope is the whole envelope of a transaction in one value a milter can
// serialise (an archive's journal, a trail): client, HELO, SASL and TLS as
// Postfix reported them in macros, sender and recipients with their ESMTP
// parameters, and this milter's verdict on each recipient.
type Envelope struct {
	SessionID  string         `json:"session_id"`
	TxnID      string         `json:"txn_id,omitempty"`
	QueueID    string         `json:"queue_id,omitempty"`
	Client     EnvelopeClient `json:"client"`
	Helo       string         `json:"helo,omitempty"`
	SASL       *EnvelopeSASL  `json:"sasl,omitempty"` // nil: not authenticated
	TLS        *EnvelopeTLS   `json:"tls,omitempty"`  // nil: no TLS
	Sender     string         `json:"sender"`         // "" for the null sender
	MailParams Params         `json:"mail_params,omitempty"`
	EnvID      string         `json:"envid,omitempty"` // ENVID decoded (../rfc/3461 4.4)
	Rcpts      []EnvelopeRcpt `json:"rcpts"`
	ConnStart  time.Time      `json:"conn_start"`
	TxnStart   time.Time      `json:"txn_start,omitempty"`
	Invalid    []string       `json:"invalid,omitempty"` // what could not be decoded (bad xtext, …)
}

// EnvelopeClient is the SMTP client.
type EnvelopeClient struct {
	Host   string `json:"host,omitempty"` // the name Postfix found, or "[addr]"
	Addr   string `json:"addr,omitempty"` // "" for a local submission
	Port   uint16 `json:"port,omitempty"`
	Family string `json:"family,omitempty"`
}

// EnvelopeSASL is the client's SMTP AUTH ({auth_type}, {auth_authen},
// {auth_author}).
type EnvelopeSASL struct {
	Method   string `json:"method,omitempty"`
	Username string `json:"username,omitempty"`
	Author   string `json:"author,omitempty"` // AUTH= of MAIL FROM, if any
}

// EnvelopeTLS is the client's TLS session ({tls_version}, {cipher},
// {cipher_bits}, {cert_subject}, {cert_issuer}).
type EnvelopeTLS struct {
	Version     string `json:"version,omitempty"`
	Cipher      string `json:"cipher,omitempty"`
	CipherBits  int    `json:"cipher_bits,omitempty"`
	CertSubject string `json:"cert_subject,omitempty"`
	CertIssuer  string `json:"cert_issuer,omitempty"`
}

// EnvelopeRcpt is one recipient with its parameters and this milter's
// verdict on it.
type EnvelopeRcpt struct {
	Addr      string `json:"addr"`
	Params    Params `json:"params,omitempty"`
	Notify    string `json:"notify,omitempty"`     // NOTIFY as sent
	ORCPTType string `json:"orcpt_type,omitempty"` // ORCPT address type
	ORCPT     string `json:"orcpt,omitempty"`      // ORCPT address, decoded
	Action    string `json:"action"`               // this milter's decision: continue, reject, tempfail, …
	RuleID    string `json:"rule_id,omitempty"`
}

// Envelope returns the transaction's envelope; it shares nothing with st.
func (st *State) Envelope() Envelope {
	e := Envelope{
		SessionID: st.SessionID, TxnID: st.TxnID, QueueID: st.QueueID(),
		Client: EnvelopeClient{Host: st.ClientHost, Port: st.ClientPort, Family: st.Family},
		Helo:   st.Helo, Sender: st.Sender,
		MailParams: append(Params(nil), st.MailParams...),
		ConnStart:  st.ConnStart, TxnStart: st.TxnStart,
		Rcpts: make([]EnvelopeRcpt, 0, len(st.Rcpts)),
	}
	if st.ClientAddr != nil {
		e.Client.Addr = net.IP(st.ClientAddr).String()
	}
	if m, u, a := st.Macro("auth_type"), st.Macro("auth_authen"), st.Macro("auth_author"); m != "" || u != "" || a != "" {
		e.SASL = &EnvelopeSASL{Method: m, Username: u, Author: a}
	}
	if v, c := st.Macro("tls_version"), st.Macro("cipher"); v != "" || c != "" {
		e.TLS = &EnvelopeTLS{Version: v, Cipher: c, CertSubject: st.Macro("cert_subject"), CertIssuer: st.Macro("cert_issuer")}
		if b := st.Macro("cipher_bits"); b != "" {
			n, err := strconv.Atoi(b)
			if err != nil {
				e.Invalid = append(e.Invalid, fmt.Sprintf("{cipher_bits} %q: not a number", b))
			}
			e.TLS.CipherBits = n
		}
	}
	if v, ok := st.MailParams.Get("ENVID"); ok {
		d, err := DecodeXtext(v)
		if err != nil {
			e.Invalid = append(e.Invalid, "ENVID: "+err.Error())
		}
		e.EnvID = d
	}
	for _, r := range st.Rcpts {
		er := EnvelopeRcpt{Addr: r.Addr, Params: append(Params(nil), r.Params...),
			Action: r.Decision.Action.String(), RuleID: r.Decision.RuleID}
		er.Notify, _ = r.Params.Get("NOTIFY")
		if v, ok := r.Params.Get("ORCPT"); ok {
			t, a, err := ParseORCPT(v)
			if err != nil {
				e.Invalid = append(e.Invalid, "rcpt "+r.Addr+": "+err.Error())
			}
			er.ORCPTType, er.ORCPT = t, a
		}
		e.Rcpts = append(e.Rcpts, er)
	}
	return e
}
