// Package dkimcheck verifies and makes DKIM signatures (RFC 6376) for the
// policy milter, with the ed25519-sha256 algorithm of RFC 8463 beside
// rsa-sha256.
//
// Verification streams: a Verifier is fed the header fields and the body
// chunks as the milter receives them, and passes them through an io.Pipe to
// github.com/emersion/go-msgauth/dkim running in a goroutine, the way
// go-msgauth's own dkim-milter does, so a message is never whole in memory.
// A message without a DKIM-Signature field costs no goroutine at all.
//
// Signing (Sign) reads a message from an io.Reader and returns the value of
// the DKIM-Signature field to prepend: relaxed/relaxed, the header fields of
// RFC 6376 §5.4.1 that are present, From oversigned. It is our own code,
// not go-msgauth's Signer, because the signature time t= must come from an
// injectable clock and go-msgauth reads time.Now.
//
// Keys: LoadKey reads PEM files (PKCS#1 or PKCS#8 RSA, PKCS#8 Ed25519),
// GenerateKey and MarshalKeyPEM make new ones, DNSRecord and SplitTXT give
// the TXT record to publish (RFC 6376 §3.6.1, RFC 8463 §4).
package dkimcheck

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"

	"github.com/emersion/go-msgauth/dkim"
)

// Result words of RFC 8601 §2.7.1 for one signature.
const (
	ResultPass      = "pass"
	ResultFail      = "fail"
	ResultNeutral   = "neutral"
	ResultPolicy    = "policy"
	ResultTempError = "temperror"
	ResultPermError = "permerror"
)

// DefaultMaxSignatures is how many signatures of one message are verified
// when VerifyOptions.MaxSignatures is 0 (config milters.policy.dkim.max_signatures).
const DefaultMaxSignatures = 8

// HeaderName is the name of the header field a signature goes in.
const HeaderName = "DKIM-Signature"

// bPrefixLen is how much of b= goes into header.b (RFC 6008 §4: at least 8
// characters tell signatures of one domain apart).
const bPrefixLen = 8

// VerifyOptions are the dependencies and bounds of a Verifier.
type VerifyOptions struct {
	// LookupTXT looks up the key records (<selector>._domainkey.<domain>). It
	// is called with the Verifier's context, so a per-message budget
	// (resolver.WithBudget) and Abort both bound it; it must honour ctx.
	// Pass a resolver's method value: opts.LookupTXT = res.LookupTXT.
	// Errors are read as the shared/resolver package returns them: a
	// *net.DNSError with IsTemporary/IsTimeout is a temporary failure
	// (temperror), any other error a permanent one (permerror). Nil makes
	// every look-up a temporary failure: no resolver, no verdict.
	LookupTXT func(ctx context.Context, name string) ([]string, error)
	// MaxSignatures bounds the signatures verified, first ones first (each
	// costs a DNS query and a body hash); 0 means DefaultMaxSignatures.
	// RFC 6376 §6.1: a verifier MAY limit the signatures it tries. Those
	// beyond the bound are reported as "policy" (RFC 8601 §2.7.1: not
	// accepted because of local policy), not verified.
	MaxSignatures int
}

// Result is the verification of one DKIM-Signature field, in the order the
// fields appear in the message.
type Result struct {
	Domain     string // d= (the SDID)
	Identifier string // i= (the AUID), "" when absent
	Selector   string // s=
	Algorithm  string // a=, e.g. rsa-sha256
	// BPrefix is the first 8 characters of b=, for header.b (RFC 6008).
	BPrefix string
	// Result is an RFC 8601 §2.7.1 word: pass, fail, neutral, policy,
	// temperror or permerror.
	Result string
	// Err says why the result is not pass (for the trail); nil on pass.
	Err error
}

// Errors a Result's Err or Close may hold.
var (
	// ErrAborted: the transaction ended before the end of the message.
	ErrAborted = errors.New("dkimcheck: verification aborted")
	// ErrNotVerified: the signature was beyond MaxSignatures.
	ErrNotVerified = errors.New("dkimcheck: not verified: more signatures than max_signatures")
	// errVerifierDone closes the pipe once the library stopped reading, so
	// Body never blocks on a reader that has gone.
	errVerifierDone = errors.New("dkimcheck: verifier finished")
)

// Verifier verifies the DKIM signatures of one message fed to it as it
// arrives: Header for each field, EndHeaders, Body for each chunk, then
// Close (end of message) or Abort (transaction aborted). Its methods are
// called from one goroutine, the milter session's.
type Verifier struct {
	ctx    context.Context
	cancel context.CancelFunc
	opts   VerifyOptions

	header bytes.Buffer // the header as received, until EndHeaders
	sigs   []sigInfo    // DKIM-Signature fields in order

	started bool // the goroutine runs
	ended   bool // EndHeaders was called
	stopped bool // the library stopped reading (or the pipe failed)
	closed  bool // Close or Abort was called
	pw      *io.PipeWriter
	cut     atomic.Bool // the context ended the stream early
	done    chan outcome
	stopCtx func() bool

	results []Result
	err     error
}

// sigInfo is what we read from a DKIM-Signature field ourselves: go-msgauth
// reports domain and identifier only, the A-R header wants s=, a= and b=.
type sigInfo struct {
	domain, identifier, selector, algorithm, bPrefix string
	// syntax is what is wrong with the tag list, "" if nothing.
	syntax string
	hasL   bool
}

type outcome struct {
	verifs []*dkim.Verification
	err    error
}

// NewVerifier starts the verification of one message. ctx bounds every
// DNS look-up and Close's wait: give it the message's budget.
func NewVerifier(ctx context.Context, opts VerifyOptions) *Verifier {
	if opts.MaxSignatures <= 0 {
		opts.MaxSignatures = DefaultMaxSignatures
	}
	ctx, cancel := context.WithCancel(ctx)
	return &Verifier{ctx: ctx, cancel: cancel, opts: opts}
}

// Header takes one header field: its name and raw, the bytes after the
// colon exactly as received, folded lines joined by "\r\n" (a bare "\n" is
// taken as "\r\n"), no final line end — milterrt.HeaderField's Name and Raw.
// Fields after EndHeaders are ignored.
func (v *Verifier) Header(name, raw string) {
	if v.ended || v.closed {
		return
	}
	if !validFieldName(name) {
		// RFC 5322 §2.2: a field name is printable ASCII but ':'. Postfix
		// never sends another, and such a field cannot be in any h= list;
		// keeping it would let it split into fields the signer never saw.
		return
	}
	raw = foldSafe(raw)
	v.header.WriteString(name)
	v.header.WriteByte(':')
	v.header.WriteString(raw)
	v.header.WriteString("\r\n")
	if strings.EqualFold(name, HeaderName) {
		v.sigs = append(v.sigs, parseSignature(raw))
	}
}

// EndHeaders marks the end of the header. Without a DKIM-Signature field
// nothing more is done for this message (Body and Close are cheap);
// otherwise the verification starts and is given the header.
func (v *Verifier) EndHeaders() {
	if v.ended || v.closed {
		return
	}
	v.ended = true
	if len(v.sigs) == 0 {
		v.header = bytes.Buffer{}
		return
	}
	pr, pw := io.Pipe()
	v.pw = pw
	v.done = make(chan outcome, 1)
	v.started = true
	// A context that ends (budget spent, Abort) ends the stream: a Write
	// waiting in Body returns at once. It is an end of file, never a read
	// error: go-msgauth's parallel path (several signatures) leaves its
	// per-signature goroutines blocked forever when its reader fails, but
	// finishes them on EOF. What the cut stream gives is not trusted (cut).
	v.stopCtx = context.AfterFunc(v.ctx, func() {
		v.cut.Store(true)
		pw.Close()
	})
	ctx := v.ctx
	lookup := v.opts.LookupTXT
	opts := &dkim.VerifyOptions{
		MaxVerifications: v.opts.MaxSignatures,
		LookupTXT: func(name string) ([]string, error) {
			if lookup == nil {
				return nil, &net.DNSError{Err: "no resolver configured", Name: name, IsTemporary: true}
			}
			if err := ctx.Err(); err != nil {
				return nil, &net.DNSError{Err: "message DNS budget spent: " + err.Error(), Name: name, IsTimeout: true}
			}
			txts, err := lookup(ctx, name)
			return txts, dnsError(name, err)
		},
	}
	go func() {
		verifs, err := dkim.VerifyWithOptions(pr, opts)
		// The library may stop before the end (one signature that failed
		// early): make the writer's next Write return at once.
		pr.CloseWithError(errVerifierDone)
		v.done <- outcome{verifs, err}
	}()
	v.header.WriteString("\r\n")
	v.write(v.header.Bytes())
	v.header = bytes.Buffer{}
}

// Body takes the next chunk of the body (CRLF line ends, as Postfix sends
// it). It returns once the verifier has read the chunk, or at once when
// verification no longer needs it; it never keeps chunk.
func (v *Verifier) Body(chunk []byte) {
	if !v.started || v.stopped || v.closed {
		return
	}
	v.write(chunk)
}

func (v *Verifier) write(b []byte) {
	if _, err := v.pw.Write(b); err != nil {
		v.stopped = true
	}
}

// Close ends the message and returns one Result per DKIM-Signature field,
// in message order; none when there was none (RFC 8601 "dkim=none"). It
// waits for the verification, which the Verifier's context bounds (the
// look-ups honour it). If the context ended before the whole message went
// through, the signatures that would otherwise read "fail" are temperror
// and err says why; err is also set, with temperror results, when the
// verification failed as a whole. Use the results either way.
func (v *Verifier) Close() ([]Result, error) {
	if v.closed {
		return v.results, v.err
	}
	if !v.ended {
		// No EndHeaders: a message without a body separator; verify what
		// came (RFC 5322 §3.5: the body is optional).
		v.EndHeaders()
	}
	v.closed = true
	if !v.started {
		v.cancel()
		return nil, nil
	}
	// Data can only have been lost to an ended context before this point:
	// the AfterFunc sets cut before it closes the pipe.
	cut := v.cut.Load()
	v.pw.Close()
	out := <-v.done
	v.stopCtx()
	v.cancel()
	v.results, v.err = v.assemble(out)
	if cut {
		// The stream was cut before the end (budget spent): a body hash
		// that did not match proves nothing.
		cause := fmt.Errorf("dkimcheck: verification cut short: %w", context.Cause(v.ctx))
		for i := range v.results {
			if v.results[i].Result == ResultFail {
				v.results[i].Result, v.results[i].Err = ResultTempError, cause
			}
		}
		if v.err == nil {
			v.err = cause
		}
	}
	return v.results, v.err
}

// Abort ends a transaction that will not reach the end of the message:
// the look-ups are cancelled, the goroutine is waited for (it ends at once
// because the look-ups honour the context), nothing is left running.
func (v *Verifier) Abort() {
	if v.closed {
		return
	}
	v.closed = true
	if v.started {
		v.stopCtx()
		v.cancel()   // look-ups in progress return
		v.pw.Close() // end of file, see EndHeaders
		<-v.done
	}
	v.cancel()
	v.err = ErrAborted
}

// assemble turns the library's verifications into one Result per field.
func (v *Verifier) assemble(out outcome) ([]Result, error) {
	results := make([]Result, len(v.sigs))
	verifs, err := out.verifs, out.err
	if errors.Is(err, dkim.ErrTooManySignatures) {
		err = nil // expected: the rest are "policy" below
	}
	if err == nil && len(verifs) != min(len(v.sigs), v.opts.MaxSignatures) {
		// Cannot happen with the header Header builds; never guess which
		// verification is whose.
		err = fmt.Errorf("dkimcheck: %d verifications for %d signatures", len(verifs), len(v.sigs))
		verifs = nil
	}
	for i, s := range v.sigs {
		r := Result{Domain: s.domain, Identifier: s.identifier, Selector: s.selector, Algorithm: s.algorithm, BPrefix: s.bPrefix}
		switch {
		case i >= v.opts.MaxSignatures:
			r.Result, r.Err = ResultPolicy, ErrNotVerified
		case s.syntax != "":
			// RFC 8601 §2.7.1 neutral: "the signature ... contained syntax
			// errors or were not otherwise able to be processed".
			r.Result, r.Err = ResultNeutral, errors.New("dkimcheck: "+s.syntax)
		case err != nil || verifs == nil:
			// The verification as a whole did not finish: no verdict.
			r.Result, r.Err = ResultTempError, err
			if r.Err == nil {
				r.Err = errors.New("dkimcheck: no verification result")
			}
		default:
			r.Result, r.Err = classify(verifs[i].Err, s)
		}
		results[i] = r
	}
	return results, err
}

// classify maps a go-msgauth verification error to an RFC 8601 word.
func classify(err error, s sigInfo) (string, error) {
	switch {
	case err == nil:
		return ResultPass, nil
	case dkim.IsTempFail(err):
		// RFC 6376 §6.1.2: key unavailable for now → TEMPFAIL.
		return ResultTempError, err
	case dkim.IsPermFail(err):
		// RFC 6376 §6.1.1, §6.1.2: no key, bad key record, expired,
		// unacceptable algorithm → PERMFAIL.
		return ResultPermError, err
	case s.hasL:
		// go-msgauth refuses every l= (part of the body would be unsigned):
		// that is our local policy, not a broken signature.
		return ResultPolicy, err
	}
	// RFC 6376 §6.1.3: body hash or signature did not verify.
	return ResultFail, err
}

// dnsError keeps what go-msgauth needs to tell temporary from permanent:
// it asserts net.Error and asks Temporary(), which *net.DNSError answers
// from IsTemporary/IsTimeout. Context errors become temporary DNS errors.
func dnsError(name string, err error) error {
	if err == nil {
		return nil
	}
	var de *net.DNSError
	if errors.As(err, &de) {
		return de
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return &net.DNSError{Err: err.Error(), Name: name, IsTimeout: true}
	}
	return err
}

// validFieldName: RFC 5322 §2.2 ftext, printable US-ASCII but ':'.
func validFieldName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 33 || c > 126 || c == ':' {
			return false
		}
	}
	return true
}

// foldSafe makes raw one header field whatever it holds: every line end
// becomes CRLF and a continuation line that does not start with space or
// tab gets a space, so the library cannot read a new field or the end of
// the header inside it (RFC 5322 §2.2.3). Raw from the MTA is unchanged.
func foldSafe(raw string) string {
	if !strings.ContainsAny(raw, "\r\n") {
		return raw
	}
	var b strings.Builder
	b.Grow(len(raw) + 8)
	lines := strings.Split(strings.ReplaceAll(raw, "\r\n", "\n"), "\n")
	for i, l := range lines {
		l = strings.ReplaceAll(l, "\r", " ") // a bare CR is no line end
		if i > 0 {
			b.WriteString("\r\n")
			if l == "" || (l[0] != ' ' && l[0] != '\t') {
				b.WriteByte(' ')
			}
		}
		b.WriteString(l)
	}
	return b.String()
}

// parseSignature reads the tags we report of a DKIM-Signature field
// (RFC 6376 §3.5). The library checks the signature itself; what we check
// here is only what makes it "neutral" (syntax), RFC 6376 §3.2 tag-list.
func parseSignature(raw string) sigInfo {
	var s sigInfo
	tags := map[string]string{}
	for _, spec := range strings.Split(raw, ";") {
		if strings.TrimSpace(spec) == "" {
			continue // RFC 6376 §3.2: a final ';' is allowed
		}
		k, val, ok := strings.Cut(spec, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			s.syntax = "malformed tag list"
			continue
		}
		if _, dup := tags[k]; dup {
			s.syntax = "duplicate tag " + k + "="
			continue
		}
		tags[k] = stripFWS(val)
	}
	s.domain = tags["d"]
	s.identifier = tags["i"]
	s.selector = tags["s"]
	s.algorithm = tags["a"]
	s.bPrefix = tags["b"]
	if len(s.bPrefix) > bPrefixLen {
		s.bPrefix = s.bPrefix[:bPrefixLen]
	}
	_, s.hasL = tags["l"]
	if s.syntax == "" {
		if tags["v"] != "1" {
			s.syntax = "v= is not 1"
		}
		// RFC 6376 §3.5: v, a, b, bh, d, h, s are required.
		for _, k := range []string{"v", "a", "b", "bh", "d", "h", "s"} {
			if _, ok := tags[k]; !ok {
				s.syntax = "missing required tag " + k + "="
				break
			}
		}
	}
	return s
}

// stripFWS removes folding and other white space (RFC 6376 §3.2: values
// may contain FWS; none of the ones we report mean anything by it).
func stripFWS(s string) string {
	return strings.Map(func(r rune) rune {
		switch r {
		case ' ', '\t', '\r', '\n':
			return -1
		}
		return r
	}, s)
}
