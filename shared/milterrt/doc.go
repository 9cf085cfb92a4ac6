// Package milterrt is the milter runtime every geomilter milter is written against.
//
// It wraps github.com/emersion/go-milter v0.5.0 once, so that a milter only
// implements Milter/Session and returns Decision values, and the runtime takes
// care of what the library leaves rough (see docs/runtime.md):
//
//   - connection state (client, HELO, connect macros) survives every transaction
//     of the connection: the runtime never hands go-milter a response whose
//     Continue() is false, because go-milter would then build a new backend and
//     drop that state; transactions are reset by the runtime itself;
//   - macros are merged across stages (go-milter replaces them per packet) and
//     headers are kept in arrival order;
//   - one function (toResponse) turns a Decision into the milter reply, with
//     Postfix's rules for reply codes applied;
//   - a panic in a Session method answers TEMPFAIL for that transaction only;
//   - sessions have an idle timeout, a global limit, and a graceful Shutdown;
//   - OnTransaction is called exactly once per transaction, when it ends.
//
// A Session runs on one goroutine (the connection's); its methods are never
// called concurrently, and the *State passed to them belongs to that session.
package milterrt
