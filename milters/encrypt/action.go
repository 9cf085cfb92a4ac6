package encrypt

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/geomilter/geomilter/milters/encrypt/inline"
	"github.com/geomilter/geomilter/shared/message"
	"github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/rules"
	"github.com/geomilter/geomilter/shared/trail"
)

// inlineResult is a message encrypted inline, waiting to replace the
// original: the new body in an unlinked temporary file and the header
// fields that go with it.
type inlineResult struct {
	body    *os.File
	headers []milterrt.HeaderField
}

func (r *inlineResult) close() {
	if r != nil && r.body != nil {
		r.body.Close()
	}
}

// encrypt chooses how a message that must be encrypted leaves: inline when
// configured and every recipient has a key, else the route to the gateway,
// else a reject. It changes nothing yet (edit does); on inline it returns
// the encrypted message.
func (s *session) encrypt(st *milterrt.State, sec *trail.EncryptSection, pl *plan) (string, milterrt.Decision, *inlineResult) {
	m := s.m
	if m.keys != nil {
		res, why, err := m.encryptInline(st, pl)
		if err == nil {
			sec.Route = m.settings.Inline.Method
			return ActionInline, milterrt.Continue(), res
		}
		m.met.inlineFailures.WithLabelValues(why).Inc()
		sec.Fallback = why
		if why == "error" {
			sec.Fallback += ": " + err.Error()
			m.log.Warn().Err(err).Str("txn", st.TxnID).Str("queue_id", st.QueueID()).Msg("inline encryption failed; the message is routed or rejected instead")
		}
	}
	if m.settings.Route {
		sec.Route = TransportEncrypt
		return ActionRoute, milterrt.Continue(), nil
	}
	return ActionReject, m.rejectDecision(pl), nil
}

// rejectDecision is 550 5.7.1 with the first deciding encrypt rule's reply,
// else milters.encrypt.reject_text. 5.7.1: delivery not authorized, message
// refused (RFC 3463 §3.8).
func (m *Milter) rejectDecision(pl *plan) milterrt.Decision {
	for _, rp := range pl.rcpts {
		if r := rp.rule; rp.encrypt && r != nil && r.Action == rules.ActionEncrypt && !r.Reply.IsZero() {
			code := strconv.Itoa(r.Reply.Code)
			text := r.Reply.Text
			if text == "" {
				text = m.settings.RejectText
			}
			return milterrt.Reject(code, r.Reply.Enhanced, text).WithRule(r.ID).
				WithReason("encrypt rule " + r.ID + ": must be encrypted; no route and no inline key")
		}
	}
	return milterrt.Reject("550", "5.7.1", m.settings.RejectText).
		WithReason("encrypt: must be encrypted; no route and no inline key")
}

// encryptInline encrypts the message for every accepted recipient into a
// temporary file. why is no_key, too_large or error when it cannot.
func (m *Milter) encryptInline(st *milterrt.State, pl *plan) (res *inlineResult, why string, err error) {
	in := &m.settings.Inline
	method := inline.Method(in.Method)
	snap := m.rules.Current()
	var keys []inline.Key
	for _, rp := range pl.rcpts {
		tenant := pl.tenant
		if !pl.outbound {
			tenant = ""
			if t := snap.TenantOf(rules.DomainOf(rp.rcpt)); t != nil {
				tenant = t.ID
			}
		}
		k, ok := m.keys.Lookup(tenant, rp.rcpt)
		if !ok || !k.Has(method) {
			return nil, "no_key", fmt.Errorf("no %s key for a recipient", method)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, "no_key", errors.New("no recipient")
	}
	// Escrow keys: the journal keeps the message as delivered, so an
	// inline-encrypted message without them could not be read from the
	// archive. Without every one, route instead.
	var escrow []inline.Key
	for _, a := range in.Escrow {
		k, ok := m.keys.Lookup(pl.tenant, a)
		if !ok && pl.tenant != "" {
			k, ok = m.keys.Lookup("", a)
		}
		if !ok || !k.Has(method) {
			return nil, "no_escrow_key", fmt.Errorf("no %s key for escrow address %s", method, a)
		}
		escrow = append(escrow, k)
	}
	msg := st.Message
	if msg == nil {
		return nil, "error", errors.New("no message in this transaction")
	}
	if method == inline.SMIME && msg.Size() > int64(in.MaxSize) {
		// S/MIME is built in memory: do not even start.
		return nil, "too_large", inline.ErrTooLarge
	}
	// message.FilePrefix: a file a crash leaves behind is removed at
	// start-up with the message files; it is unlinked at once anyway.
	// The directory exists only once a message has spilled into it.
	if err := os.MkdirAll(m.messageDir, 0o700); err != nil {
		return nil, "error", fmt.Errorf("inline encryption: %w", err)
	}
	f, err := os.CreateTemp(m.messageDir, message.FilePrefix+"enc-*")
	if err != nil {
		return nil, "error", fmt.Errorf("inline encryption: temporary file: %w", err)
	}
	os.Remove(f.Name())
	hs, err := inline.Encrypt(f, st.Headers, msg.BodyReader(), method, keys, inline.Options{
		Cipher: inline.Cipher(in.Cipher), OAEP: in.OAEP, MaxSize: int64(in.MaxSize), Now: m.clock, Escrow: escrow,
	})
	if err == nil {
		_, err = f.Seek(0, io.SeekStart)
	}
	if err != nil {
		f.Close()
		if errors.Is(err, inline.ErrTooLarge) {
			return nil, "too_large", err
		}
		return nil, "error", err
	}
	return &inlineResult{body: f, headers: hs}, "", nil
}

// edit applies the message changes of an action other than reject: client-
// sent markers removed, subject tags removed, the marker added, and for
// inline the Content-* fields and the body replaced. A failure to replace
// the body after part of it may have left is a temporary failure: the
// message must not leave half encrypted.
func (s *session) edit(st *milterrt.State, mod milterrt.Modifier, sec *trail.EncryptSection, pl *plan, action string, inl *inlineResult) milterrt.Decision {
	m := s.m
	warn := func(err error, what string) {
		if err != nil {
			m.log.Warn().Err(err).Str("txn", st.TxnID).Msg("encrypt: " + what)
		}
	}
	// A marker the client sent is not ours: milter_header_checks ignores it
	// (it sees only fields milters add), but it must not reach anyone.
	for _, name := range []string{MarkerEncrypt, MarkerTLS} {
		n := countFields(st.Headers, name)
		for i := n; i >= 1; i-- { // from the last, so the indexes stay right
			warn(mod.ChangeHeader(i, name, ""), "removing a client-sent "+name)
		}
	}
	if pl.tagEdit.found > 0 {
		warn(mod.ChangeHeader(pl.tagIndex, "Subject", pl.tagEdit.raw), "removing the subject tag")
		st.AddReason("encrypt: subject tag removed")
	}
	switch action {
	case ActionRoute:
		warn(mod.AddHeader(MarkerEncrypt, " "+markerValue(sec)), "adding "+MarkerEncrypt)
	case ActionRequireTLS:
		warn(mod.AddHeader(MarkerTLS, " required"), "adding "+MarkerTLS)
	case ActionInline:
		if err := replaceContent(st, mod, inl); err != nil {
			m.log.Error().Err(err).Str("txn", st.TxnID).Str("queue_id", st.QueueID()).Msg("encrypt: replacing the body with the encrypted one failed; temporary failure")
			return milterrt.TempFail("451", "4.3.0", "Message could not be encrypted, try again later").WithReason("encrypt: replace body: " + err.Error())
		}
	}
	return milterrt.Continue()
}

// replaceContent swaps the original's MIME fields (Content-*, MIME-Version)
// for the encrypted entity's and replaces the body.
func replaceContent(st *milterrt.State, mod milterrt.Modifier, inl *inlineResult) error {
	type field struct {
		name string
		raws []string
	}
	var order []*field
	byName := map[string]*field{}
	get := func(name string) *field {
		k := strings.ToLower(name)
		f := byName[k]
		if f == nil {
			f = &field{name: name}
			byName[k] = f
			order = append(order, f)
		}
		return f
	}
	isMIME := func(name string) bool { return inline.IsContentField(name) || strings.EqualFold(name, "MIME-Version") }
	orig := map[string]int{}
	for _, h := range st.Headers {
		if isMIME(h.Name) {
			get(h.Name)
			orig[strings.ToLower(h.Name)]++
		}
	}
	for _, h := range inl.headers {
		f := get(h.Name)
		// Folded lines as Postfix writes them: LF, not CRLF.
		f.raws = append(f.raws, strings.ReplaceAll(h.Raw, "\r\n", "\n"))
	}
	for _, f := range order {
		n := orig[strings.ToLower(f.name)]
		for i := 0; i < len(f.raws) && i < n; i++ {
			if err := mod.ChangeHeader(i+1, f.name, f.raws[i]); err != nil {
				return err
			}
		}
		for i := n; i > len(f.raws); i-- {
			if err := mod.ChangeHeader(i, f.name, ""); err != nil {
				return err
			}
		}
		for i := n; i < len(f.raws); i++ {
			if err := mod.AddHeader(f.name, f.raws[i]); err != nil {
				return err
			}
		}
	}
	return mod.ReplaceBody(inl.body)
}

func countFields(hs []milterrt.HeaderField, name string) int {
	n := 0
	for _, h := range hs {
		if strings.EqualFold(h.Name, name) {
			n++
		}
	}
	return n
}
