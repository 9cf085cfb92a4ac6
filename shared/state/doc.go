// Package state is geomilter's cross-site state layer over site-partitioned
// Redis.
//
// Stock Redis has no multi-master, so every site writes only to its own
// primary, under keys prefixed gm:{SITE}:, and keeps a local read-only
// replica of every peer site's primary (plain Redis replication over the WAN).
// Every read is local: this package reads the site's own primary and the
// local peer replicas in parallel, one pipelined call per instance, and merges
// the per-site data with CRDT rules:
//
//   - rules: last writer wins by hybrid logical clock (HLC), ties broken by the
//     higher site name; deletes are tombstones;
//   - rate-limit counters: fixed windows counted per site, summed over sites;
//   - greylist triplets: earliest first-seen wins, "passed" is an OR;
//   - named sets: union over sites, each member with its own expiry.
//
// Nothing here waits on a remote site: a dark peer's local replica keeps
// serving its last known data. Each instance has a per-call budget and a
// circuit breaker, so an unresponsive instance costs at most one call that
// waits out the budget per breaker cycle and nothing afterwards.
//
// Milters use the state through the Backend interface, never nil: a Store,
// or in standalone mode a MemStore (the same calls in process memory, one
// site), and count rate-limit hits through a BudgetedCounter (the store
// within the call budget, process memory when it does not answer).
//
// The keys, their types, TTLs and merge rules are documented in docs/state.md.
package state
