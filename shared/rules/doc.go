// Package rules is the rules model every milter decides from: the ops rules
// file (tenants and rules, YAML), its validation with positioned problems, the
// per-rule JSON documents the state layer replicates, and the compiled,
// immutable Snapshot the mail path queries.
//
// The mail path never makes a network call to decide: Compile turns a Set
// into in-memory indexes (per-prefix-length tables for client addresses,
// parent-domain maps for subdomain matches, exact maps for addresses, logins
// and HELO names), and a Snapshot is never modified after Compile, so any
// number of sessions may query it while the owner swaps in a newer one
// (atomic.Pointer). Save and LoadSaved keep the last snapshot on local disk so
// a restart with Redis down still has current tables.
//
// The policy milter's scan keys (body, attachment, size, url_domain) are
// decided by a Scanner compiled once per Snapshot: one pass over the
// message feeds a Scan, and Match reads what the Scan recorded (scan.go).
//
// docs/rules.md describes the file format, scopes and precedence for users.
package rules
