package scanner

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"
)

// rspamd speaks rspamd's HTTP protocol to a normal worker (or a
// controller, with Password): POST /checkv2 with the envelope in request
// headers and the message as body; a JSON verdict back. GET /ping is the
// probe. https://rspamd.com/doc/developers/protocol.html
type rspamd struct {
	base     string // URL without trailing slash
	password string
	hc       *http.Client
}

func newRspamd(c Config) *rspamd {
	tr := &http.Transport{
		// The request's context bounds the dial; the dialer's own
		// timeout only guards a context without deadline.
		DialContext:         (&net.Dialer{Timeout: c.Budget, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     60 * time.Second,
		DisableCompression:  true,
		// No environment proxy: the scanner is addressed directly.
		Proxy: nil,
	}
	return &rspamd{base: strings.TrimRight(c.Address, "/"), password: c.Password,
		hc: &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		}}}
}

// check asks rspamd about m.
func (r *rspamd) check(ctx context.Context, m Message) (reply, error) {
	var text io.Reader = http.NoBody
	if m.Size > 0 {
		var err error
		if text, err = body(m); err != nil {
			return reply{}, err
		}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.base+"/checkv2", text)
	if err != nil {
		return reply{}, fmt.Errorf("request: %w", err)
	}
	req.ContentLength = m.Size
	h := req.Header
	// Header names as rspamd's protocol document spells them; values with
	// control characters are left out (they could split the request).
	set := func(k, v string) {
		if v != "" && headerSafe(v) {
			h[k] = append(h[k], v)
		}
	}
	set("IP", m.ClientIP)
	set("Helo", m.Helo)
	set("Hostname", m.ClientHost)
	if m.From == "" {
		set("From", "<>") // the null sender (RFC 5321 §4.5.5)
	} else {
		set("From", m.From)
	}
	for _, rc := range m.Rcpts {
		set("Rcpt", rc)
	}
	set("Queue-Id", m.QueueID)
	set("User", m.User)
	set("Password", r.password)
	resp, err := r.hc.Do(req)
	if err != nil {
		if errors.Is(err, errMessage) {
			return reply{}, fmt.Errorf("sending: %w", err)
		}
		return reply{}, fmt.Errorf("POST /checkv2: %w", unwrapURLError(err))
	}
	defer resp.Body.Close()
	b, err := readBounded(resp.Body)
	if err != nil {
		return reply{}, fmt.Errorf("reading the reply: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return reply{}, fmt.Errorf("reply: HTTP %d%s", resp.StatusCode, rspamdError(b))
	}
	rep, err := parseRspamd(b)
	if err != nil {
		return reply{}, fmt.Errorf("reply: %w", err)
	}
	return rep, nil
}

// ping is the breaker's probe: GET /ping answers "pong".
func (r *rspamd) ping(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.base+"/ping", nil)
	if err != nil {
		return fmt.Errorf("ping request: %w", err)
	}
	if r.password != "" {
		req.Header.Set("Password", r.password)
	}
	resp, err := r.hc.Do(req)
	if err != nil {
		return fmt.Errorf("GET /ping: %w", unwrapURLError(err))
	}
	defer resp.Body.Close()
	b, err := readBounded(resp.Body)
	if err != nil {
		return fmt.Errorf("reading the ping reply: %w", err)
	}
	if resp.StatusCode != http.StatusOK || !bytes.HasPrefix(bytes.TrimSpace(b), []byte("pong")) {
		return fmt.Errorf("GET /ping: HTTP %d, not pong", resp.StatusCode)
	}
	return nil
}

// rspamdReply is the part of rspamd's /checkv2 JSON reply we use.
type rspamdReply struct {
	Score         *float64 `json:"score"`
	RequiredScore *float64 `json:"required_score"`
	Action        *string  `json:"action"`
	Symbols       map[string]struct {
		Score float64 `json:"score"`
	} `json:"symbols"`
}

// parseRspamd reads a /checkv2 reply body. A reply without score, required
// score or action, or with a name we would not put in a header, is an error.
func parseRspamd(b []byte) (reply, error) {
	var v rspamdReply
	if err := json.Unmarshal(b, &v); err != nil {
		return reply{}, fmt.Errorf("not the JSON of a verdict: %w", err)
	}
	switch {
	case v.Score == nil:
		return reply{}, errors.New("no score")
	case v.RequiredScore == nil:
		return reply{}, errors.New("no required_score")
	case v.Action == nil:
		return reply{}, errors.New("no action")
	}
	rep := reply{score: *v.Score, required: *v.RequiredScore, action: *v.Action}
	if err := checkAction(rep.action); err != nil {
		return reply{}, err
	}
	for name, s := range v.Symbols {
		if err := checkSymbol(name); err != nil {
			return reply{}, err
		}
		rep.symbols = append(rep.symbols, Symbol{Name: name, Score: s.Score})
	}
	sortSymbols(rep.symbols)
	return rep, nil
}

// rspamdError is the "error" field of an error reply, quoted and cut short
// (it is the scanner's text, not ours).
func rspamdError(b []byte) string {
	var v struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(b, &v) != nil || v.Error == "" {
		return ""
	}
	e := v.Error
	if len(e) > 200 {
		e = e[:200] + "…"
	}
	return fmt.Sprintf(": %q", e)
}

// Bounds on what a scanner may call its rules and actions: they end up in
// trail events and X-Spam-Status headers.
const (
	maxSymbolLen = 128
	maxActionLen = 64
)

// checkSymbol accepts a rule name of printable ASCII without spaces or
// commas (rspamd's and SpamAssassin's are letters, digits and "_").
func checkSymbol(name string) error {
	if name == "" || len(name) > maxSymbolLen {
		return fmt.Errorf("symbol name of %d bytes (want 1 to %d)", len(name), maxSymbolLen)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c <= ' ' || c >= 0x7f || c == ',' || c == ';' || c == '"' || c == '\\' {
			return fmt.Errorf("symbol name %q has a character not allowed", name)
		}
	}
	return nil
}

// checkAction accepts printable ASCII ("no action", "add header", …).
func checkAction(a string) error {
	if a == "" || len(a) > maxActionLen {
		return fmt.Errorf("action of %d bytes (want 1 to %d)", len(a), maxActionLen)
	}
	for i := 0; i < len(a); i++ {
		if c := a[i]; c < ' ' || c >= 0x7f {
			return fmt.Errorf("action %q has a character not allowed", a)
		}
	}
	return nil
}

// checkScore refuses what no scanner means (JSON cannot say NaN, spamd's
// text can).
func checkScore(what string, v float64) error {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return fmt.Errorf("%s is %v", what, v)
	}
	return nil
}

// sortSymbols orders symbols by score, highest first, then by name, so a
// result reads the same every time.
func sortSymbols(s []Symbol) {
	sort.Slice(s, func(i, j int) bool {
		if s[i].Score != s[j].Score {
			return s[i].Score > s[j].Score
		}
		return s[i].Name < s[j].Name
	})
}

// readBounded reads a reply of at most maxReply bytes; a longer one is an
// error (a verdict is a few kilobytes).
func readBounded(r io.Reader) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxReply+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxReply {
		return nil, fmt.Errorf("reply longer than %d bytes", maxReply)
	}
	return b, nil
}

// headerSafe reports whether v can be sent as a header value as it is.
func headerSafe(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < ' ' || c == 0x7f {
			return false
		}
	}
	return len(v) <= 1000
}

// unwrapURLError drops net/http's *url.Error wrapper, which repeats the
// method and URL we already name.
func unwrapURLError(err error) error {
	if ue, ok := err.(*url.Error); ok && ue.Err != nil {
		return ue.Err
	}
	return err
}
