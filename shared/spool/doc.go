// Package spool is the local on-disk buffer between a milter and the sinks
// its trail events (and archive journal records) are shipped to. Appends go
// to this buffer so that the mail path never waits on a remote sink; one
// background drainer per sink reads it through its own Reader and commits a
// cursor once a batch is delivered, so a dark sink never holds back another.
//
// # On-disk format
//
// A spool directory holds:
//
//	LOCK                     flock(2)ed while open: one process per directory
//	NNNNNNNNNNNNNNNNNNNN.seg segments; the name is the Seq of the first record, 20 digits
//	<sink>.cursor            one per sink: the Seq of the last record delivered to it
//	NNNNNNNNNNNNNNNNNNNN.body body files: the content of records over 256 KiB (AppendFrom)
//
// Every segment starts with a 24-byte header, then records back to back:
//
//	segment header: "GMSPOOL1" | base Seq u64 | CRC-32C of the first 16 bytes u32 | 4 zero bytes
//	record:         CRC-32C u32 | length u32 | Seq u64 | time u64 | data[length]
//
// Bit 31 of the length field marks a body record: its data is a 20-byte
// body reference, body id u64 | size u64 | CRC-32C of the content u32, and
// the content is the file NNNN.body named after the id (an id is not reused
// while a record on disk names it). Integers are little-endian; time is the
// Unix nanoseconds of Append (from Options.Clock), kept so that the age of
// the oldest unsent record survives a restart. The CRC-32C (Castagnoli)
// covers everything in the record after the CRC field, so a wrong length,
// flag, Seq, time or data byte is detected. Within a
// segment Seqs are consecutive and start at the base in the file name.
// Records never span segments; a segment is sealed once the next record would
// push it past Options.SegmentBytes, and a new one named after that record's
// Seq is started.
//
// # Records of any size
//
// Append takes a record of up to 16 MiB from memory. AppendFrom streams a
// record of any size from an io.Reader: up to 256 KiB it is read into
// memory and appended like any other; beyond, it is copied through a fixed
// buffer into a new body file, which is fsynced, then the directory, and
// only then is its body record appended. The body record is the commit
// point: it is small and goes through the ordinary path (group commit,
// recovery, SkipCorrupt), and it can only reach disk after the whole body
// has. So a reader sees a body record only when the body is complete; a
// crash while the body is copied leaves a file no record names, which Open
// deletes; a torn body record is truncated like any torn record and its
// file deleted. Records never span segments and body records are 44 bytes,
// so segment roll-over is unchanged. The body's bytes count against
// MaxBytes from the moment AppendFrom starts (a reservation), and a body
// file is deleted once every sink has committed past its record. A body
// record takes its Seq when its body is complete, so concurrent small
// Appends are neither blocked nor reordered behind it.
//
// This design was chosen over frames of one record written in a segment
// because frames must be contiguous: either every other append waits for
// the whole body, or a crash in mid-body leaves a hole in front of records
// already reported durable. With a body file the crash argument reduces to
// the ordering of two fsyncs.
//
// A cursor file is 1024 bytes with two 16-byte slots at offsets 0 and 512:
// magic "GMCU" u32 | Seq u64 | CRC-32C u32. A commit overwrites the slot that
// does not hold the current value and fsyncs; on open the valid slot with the
// larger Seq wins. A torn cursor write therefore leaves the previous value.
//
// # Durability and visibility
//
// Readers only ever see records that are fsynced. A sink can therefore never
// ship a record that a crash (even a power loss) later takes back, and after
// any crash Open resumes Seq numbering above every Seq a sink has seen. In
// GroupCommit mode a background goroutine writes and fsyncs the in-memory
// buffer at most every SyncEvery, so readers see a record within about
// SyncEvery of its Append. In Durable mode Append returns after its record
// is fsynced; concurrent Appends share one fsync (the first waiter writes and
// fsyncs everything buffered so far for everyone).
//
// # Recovery
//
// Open scans every segment not yet delivered to every sink, verifying each
// record. At the first record that is short, has an impossible length, a Seq
// out of order, or a CRC mismatch, the segment is truncated (Stats.CorruptBytes
// counts what was cut). Only unsynced data can be torn by a crash, so this
// drops nothing that was reported durable. The next Seq is above the last
// valid record, above the base of the newest segment and above every sink's
// cursor, so a Seq is never reused. Body files that no record still owed to
// a sink names are deleted; one that such a record names but that is
// missing or of the wrong size is logged, and Reader.Next reports the record
// as ErrCorrupt (SkipCorrupt steps over it). A body whose content changed
// after it was written is caught by its CRC-32C as Record.Open's reader
// reaches the end: Read returns ErrCorrupt instead of io.EOF.
//
// # Retention and replay
//
// With Options.Retain, segments delivered to every sink (and the body files
// of their records) are kept until their newest record is Retain old or the
// retained bytes pass RetainBytes, oldest first; they do not count against
// MaxBytes. Open scans retained segments for their record times. A
// ReplayReader reads from the first record appended at or after a given
// time without a cursor file and pins nothing: records deleted ahead of it
// make it fail with ErrReplayGone (see retain.go and replay.go).
//
// # Sinks
//
// A sink named in Options.Sinks that has no cursor file yet starts at the
// head: it receives records appended after that Open, not the backlog. A
// cursor file whose sink is no longer configured is deleted at Open so it does
// not pin segments. A cursor file that is unreadable (both slots corrupt)
// replays every record still on disk: duplicates rather than loss.
package spool
