// Package trail defines the trail event — one JSON record per message decision of
// one milter — and the Emitter that puts events into the process's local spool.
// The mail path only ever appends to the local spool; shipping the events to
// Redis, HTTP receivers or files happens in the background (package drain), so an
// unresponsive sink never costs a message any time. docs/trail-events.md documents
// every field.
package trail

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"time"
)

// SchemaVersion is bumped when a field changes meaning; readers must accept
// unknown fields (new fields are added without a bump).
const SchemaVersion = 1

// Event is one milter's decision about one SMTP transaction (or one connection
// refused before any transaction).
type Event struct {
	Schema    int       `json:"schema"`
	EventID   string    `json:"event_id"`
	Time      time.Time `json:"time"`
	Site      string    `json:"site"`
	Host      string    `json:"host"`
	Milter    string    `json:"milter"`
	SessionID string    `json:"session_id"`
	TxnID     string    `json:"txn_id"`
	QueueID   string    `json:"queue_id,omitempty"`
	MessageID string    `json:"message_id,omitempty"`

	ClientIP   string `json:"client_ip,omitempty"`
	ClientName string `json:"client_name,omitempty"`
	ClientPort int    `json:"client_port,omitempty"`
	Helo       string `json:"helo,omitempty"`
	SASLUser   string `json:"sasl_user,omitempty"`
	TLS        string `json:"tls,omitempty"`
	// Sender is the envelope sender without angle brackets; "" is the null sender,
	// and NoSender is true when the transaction ended before MAIL FROM.
	Sender   string `json:"sender"`
	NoSender bool   `json:"no_sender,omitempty"`
	Rcpts    []Rcpt `json:"rcpts"`

	Stage    string             `json:"stage"` // where the final decision was made: connect, helo, mail, rcpt, eom, abort
	Action   string             `json:"action"`
	Reply    string             `json:"reply,omitempty"` // SMTP reply we gave, e.g. "550 5.7.1 Access denied"
	Reasons  []string           `json:"reasons,omitempty"`
	RuleIDs  []string           `json:"rule_ids,omitempty"`
	Scores   map[string]float64 `json:"scores,omitempty"`
	Degraded []string           `json:"degraded,omitempty"`
	Size     int64              `json:"size,omitempty"` // body bytes seen by this milter
	// LatencyMS is this milter's own processing time for the transaction, from
	// MAIL FROM (or connect) to its final reply, in milliseconds.
	LatencyMS float64 `json:"latency_ms"`
	// BusyMS is the part of it the MTA waited on this milter: for each of
	// the transaction's events, from its arrival to this milter's reply
	// (milterrt.State.Busy). LatencyMS also holds the client's and the
	// MTA's time between events; BusyMS is this milter's cost on the mail
	// path.
	BusyMS float64 `json:"busy_ms"`

	// The milter's typed section (sections.go): at most one is set, the
	// one of Milter.
	Access  *AccessSection  `json:"access,omitempty"`
	Policy  *PolicySection  `json:"policy,omitempty"`
	Archive *ArchiveSection `json:"archive,omitempty"`
	Encrypt *EncryptSection `json:"encrypt,omitempty"`
}

// Rcpt is one recipient with its own verdict.
type Rcpt struct {
	Addr   string `json:"addr"`
	Action string `json:"action"`
	Reply  string `json:"reply,omitempty"`
	Reason string `json:"reason,omitempty"`
	RuleID string `json:"rule_id,omitempty"`
}

// NewEventID returns a unique, time-ordered id: 12 hex digits of milliseconds
// since the epoch and 20 of randomness. Sinks deduplicate on it, so redelivery
// after a crash (at-least-once) never double-counts.
func NewEventID(now time.Time) string {
	var b [16]byte
	ms := uint64(now.UnixMilli())
	for i := 5; i >= 0; i-- {
		b[i] = byte(ms)
		ms >>= 8
	}
	if _, err := rand.Read(b[6:]); err != nil {
		// crypto/rand does not fail on Linux; if it ever did, the time prefix
		// plus zero bytes still yields a well-formed id.
		clear(b[6:])
	}
	return hex.EncodeToString(b[:])
}

// Marshal encodes the event as one line of JSON (no trailing newline).
func (e *Event) Marshal() ([]byte, error) {
	if e.Schema == 0 {
		e.Schema = SchemaVersion
	}
	return json.Marshal(e)
}
