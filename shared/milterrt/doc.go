// Package milterrt is the milter runtime every geomilter milter is written against.
//
// It speaks milter protocol version 6 (wire.go; go-milter v0.5.0 supplies the
// constants and, for tests and the load generator, the client), so that a
// milter only implements Milter/Session and returns Decision values, and the
// runtime takes care of the rest (see docs/runtime.md):
//
//   - Postfix does not wait for replies where a decision can wait (headers,
//     end of headers, body, and envelope stages a Decider only observes): a
//     decision made there is held until the next reply;
//   - connection state (client, HELO, connect macros) survives every
//     transaction of the connection; transactions are reset by the runtime;
//   - macros are merged across stages and headers are kept in arrival order;
//   - one function (toResponse) turns a Decision into the milter reply, with
//     Postfix's rules for reply codes applied;
//   - a panic in a Session method answers TEMPFAIL for that transaction only;
//   - sessions have an idle timeout, a global limit, and a graceful Shutdown;
//   - OnTransaction is called exactly once per transaction, when it ends.
//
// A Session runs on one goroutine (the connection's); its methods are never
// called concurrently, and the *State passed to them belongs to that session.
package milterrt
