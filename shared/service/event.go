package service

import (
	"strings"
	"time"

	"github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/trail"
)

// eventFromState turns the runtime's view of a finished transaction into its
// trail event. It copies what it keeps: the runtime reuses State afterwards.
func eventFromState(st *milterrt.State, now time.Time) *trail.Event {
	ev := &trail.Event{
		Time:       now,
		SessionID:  st.SessionID,
		TxnID:      st.TxnID,
		QueueID:    st.QueueID(),
		MessageID:  headerValue(st.Headers, "Message-Id"),
		ClientName: st.ClientHost,
		ClientPort: int(st.ClientPort),
		Helo:       st.Helo,
		SASLUser:   st.Macro("auth_authen"),
		TLS:        st.Macro("tls_version"),
		Sender:     st.Sender,
		NoSender:   st.TxnStart.IsZero(),
		Rcpts:      make([]trail.Rcpt, 0, len(st.Rcpts)),
		Stage:      stageName(st),
		Action:     finalAction(st),
		Reasons:    cloneStrings(st.Reasons),
		RuleIDs:    cloneStrings(st.RuleIDs),
		Degraded:   cloneStrings(st.Degraded),
		Size:       st.BodyBytes,
	}
	if st.ClientAddr != nil {
		ev.ClientIP = st.ClientAddr.String()
	}
	// The section is the milter's own per-transaction value: the event may
	// keep it (the runtime drops its reference when the transaction ends).
	if sec, ok := st.Section.(trail.Section); ok {
		ev.SetSection(sec)
	}
	if st.Final.IsFailure() {
		ev.Reply = st.Final.Reply()
	}
	if st.Final.Reason != "" {
		ev.Reasons = append(ev.Reasons, st.Final.Reason)
	}
	if st.Final.RuleID != "" && !contains(ev.RuleIDs, st.Final.RuleID) {
		ev.RuleIDs = append(ev.RuleIDs, st.Final.RuleID)
	}
	if len(st.Scores) > 0 {
		ev.Scores = make(map[string]float64, len(st.Scores))
		for k, v := range st.Scores {
			ev.Scores[k] = v
		}
	}
	for _, r := range st.Rcpts {
		rc := trail.Rcpt{Addr: r.Addr, Action: rcptAction(r.Decision), Reason: r.Decision.Reason, RuleID: r.Decision.RuleID}
		if r.Decision.IsFailure() {
			rc.Reply = r.Decision.Reply()
		}
		ev.Rcpts = append(ev.Rcpts, rc)
	}
	start := st.TxnStart
	if start.IsZero() {
		start = st.ConnStart
	}
	if !start.IsZero() {
		ev.LatencyMS = float64(now.Sub(start).Microseconds()) / 1000
	}
	ev.BusyMS = float64(st.Busy.Microseconds()) / 1000
	return ev
}

func stageName(st *milterrt.State) string {
	if st.Aborted {
		return "abort"
	}
	return st.FinalStage.String()
}

// finalAction names the transaction's outcome: a continue that reached the end
// of the message is an accept; one cut short by an abort stays "continue" (this
// milter never decided).
func finalAction(st *milterrt.State) string {
	if st.Final.Action == milterrt.ActionContinue && !st.Aborted {
		return milterrt.ActionAccept.String()
	}
	return st.Final.Action.String()
}

// rcptAction names a recipient's verdict: it was accepted unless rejected.
func rcptAction(d milterrt.Decision) string {
	if d.IsFailure() {
		return d.Action.String()
	}
	return milterrt.ActionAccept.String()
}

func headerValue(hs []milterrt.HeaderField, name string) string {
	for _, h := range hs {
		if strings.EqualFold(h.Name, name) {
			return strings.TrimSpace(h.Value)
		}
	}
	return ""
}

func cloneStrings(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return append([]string(nil), s...)
}

func contains(s []string, x string) bool {
	for _, v := range s {
		if v == x {
			return true
		}
	}
	return false
}
