package spool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"os"
	"sort"
	"sync"
	"time"
)

// Record is one spooled record. Data is a private copy the caller may keep.
// A record appended by AppendFrom with more than 256 KiB is kept in a body
// file: its Data is nil and its content is read with Open.
type Record struct {
	Seq  uint64
	Data []byte    // the content; nil if InFile
	Size int64     // length of the content, in Data or in the body file
	Time time.Time // when it was appended (Options.Clock)

	body *bodyHandle
}

// bodyHandle locates a record's body file.
type bodyHandle struct {
	path   string
	ref    bodyRef
	replay bool // read by a replay reader: a missing file was deleted by retention
}

// InFile reports whether the record's content is in a body file, to be
// read with Open rather than from Data.
func (rec Record) InFile() bool { return rec.body != nil }

// Open returns a reader of the record's content, whichever way it is
// stored; memory use does not depend on the record's size. For a body file
// the reader checks the size and CRC-32C the record holds: a body damaged
// on disk after it was written makes Read return an error wrapping
// ErrCorrupt instead of io.EOF at the end, so a consumer that streams the
// content on must treat the record as delivered only after io.EOF. Open
// must be called before the record is committed: the file is deleted once
// every sink has committed past it (an open reader keeps working).
func (rec Record) Open() (io.ReadCloser, error) {
	if rec.body == nil {
		return io.NopCloser(bytes.NewReader(rec.Data)), nil
	}
	f, err := os.Open(rec.body.path)
	if err != nil {
		switch {
		case errors.Is(err, os.ErrNotExist) && rec.body.replay:
			err = fmt.Errorf("%w: body file deleted: %v", ErrReplayGone, err)
		case errors.Is(err, os.ErrNotExist):
			err = fmt.Errorf("%w: %v", ErrCorrupt, err)
		}
		return nil, fmt.Errorf("spool record %d: %w", rec.Seq, err)
	}
	return &bodyReader{f: f, seq: rec.Seq, ref: rec.body.ref, left: rec.body.ref.size}, nil
}

// bodyReader reads a body file and verifies it as it goes.
type bodyReader struct {
	f    *os.File
	seq  uint64
	ref  bodyRef
	left int64
	crc  uint32
	err  error // sticky end: io.EOF or the verification error
}

func (b *bodyReader) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if b.left == 0 {
		b.err = io.EOF
		if b.crc != b.ref.crc {
			b.err = fmt.Errorf("spool record %d: %w: body checksum %08x, want %08x", b.seq, ErrCorrupt, b.crc, b.ref.crc)
		}
		return 0, b.err
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.f.Read(p)
	b.crc = crc32.Update(b.crc, castagnoli, p[:n])
	b.left -= int64(n)
	if errors.Is(err, io.EOF) {
		if b.left > 0 {
			b.err = fmt.Errorf("spool record %d: %w: body file ends %d bytes short", b.seq, ErrCorrupt, b.left)
			return n, b.err
		}
		err = nil // the check comes with the next Read
	}
	if err != nil {
		return n, fmt.Errorf("spool record %d: read body: %w", b.seq, err)
	}
	return n, nil
}

func (b *bodyReader) Close() error { return b.f.Close() }

// inflight remembers a record returned by Next but not yet committed, so
// that Commit knows where the cursor lands on disk.
type inflight struct {
	seq uint64
	ts  int64
	seg *segment
	end int64 // offset just after the record in seg
}

// Reader reads one sink's records in Seq order and keeps its cursor. Its
// methods are safe for concurrent use, though a sink normally has a single
// drainer goroutine. A replay reader (Spool.ReplayReader) reads the same
// way but has no cursor file: its Commit is in memory only.
type Reader struct {
	s    *Spool
	sink *sinkState // guarded by s.mu; nil for a replay reader
	name string     // "sink NAME" or "replay", for errors

	// A replay reader (Spool.ReplayReader) has no cursor file and pins
	// nothing; it skips records appended before since.
	replay bool
	since  int64
	closed bool          // Close was called (replay readers only)
	done   chan struct{} // closed by Close; nil for a sink's reader

	mu        sync.Mutex
	cur       *cursorFile
	committed uint64
	cSeg      *segment // position just after the committed record
	cOff      int64
	lastSeq   uint64 // last Seq returned by Next
	seg       *segment
	off       int64 // next record to read
	inflight  []inflight

	file    *os.File // open on fileSeg
	fileSeg *segment
	buf     []byte // bytes of bufSeg from offset bufOff
	bufSeg  *segment
	bufOff  int64

	skips []skipped // corrupt ranges stepped over (SkipCorrupt)
}

// fallbackPoll bounds a wait in Next should a notification ever be missed.
const fallbackPoll = time.Second

// Next returns up to max records after the committed cursor, or after the
// last record Next returned if that is further. It blocks until at least one
// record is available (fsynced), ctx is done (ctx.Err()) or the spool is
// closed (ErrClosed). max < 1 is treated as 1.
func (r *Reader) Next(ctx context.Context, max int) ([]Record, error) {
	if max < 1 {
		max = 1
	}
	var tick *time.Ticker
	for {
		recs, wait, err := r.read(max)
		if err != nil || len(recs) > 0 {
			if tick != nil {
				tick.Stop()
			}
			return recs, err
		}
		if tick == nil {
			tick = time.NewTicker(fallbackPoll)
			defer tick.Stop()
		}
		select {
		case <-wait:
		case <-tick.C:
		case <-r.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// read returns the records available now; when there are none, wait is
// closed once more become durable.
func (r *Reader) read(max int) (out []Record, wait <-chan struct{}, err error) {
	s := r.s
	r.mu.Lock()
	defer r.mu.Unlock()
	for len(out) < max {
		s.mu.Lock()
		if s.closed || r.closed {
			s.mu.Unlock()
			return nil, nil, fmt.Errorf("spool %s: %w", s.opts.Dir, ErrClosed)
		}
		if r.replay {
			if err := r.goneLocked(); err != nil {
				s.mu.Unlock()
				if len(out) > 0 {
					return out, nil, nil // the error comes back on the next call
				}
				return nil, nil, err
			}
		}
		wait = s.notify
		r.jumpSkipped()
		r.seg, r.off = s.normalizeLocked(r.seg, r.off)
		limit := r.seg.durable
		s.mu.Unlock()
		if r.off >= limit {
			break
		}
		for len(out) < max && r.off < limit {
			if r.jumpSkipped(); r.off >= limit {
				break
			}
			rec, n, err := r.decode(limit)
			if err != nil {
				if len(out) > 0 {
					return out, nil, nil // the error comes back on the next call
				}
				return nil, nil, err
			}
			if r.replay && rec.Time.UnixNano() < r.since {
				// Before the replay window: step over it for good.
				r.off += n
				r.lastSeq, r.committed = rec.Seq, rec.Seq
				r.cSeg, r.cOff = r.seg, r.off
				continue
			}
			r.since = math.MinInt64 // from here on every record is in the window
			out = append(out, rec)
			r.off += n
			r.lastSeq = rec.Seq
			r.inflight = append(r.inflight, inflight{seq: rec.Seq, ts: rec.Time.UnixNano(), seg: r.seg, end: r.off})
		}
	}
	return out, wait, nil
}

// decode reads and verifies the record at r.off, which lies below limit.
func (r *Reader) decode(limit int64) (Record, int64, error) {
	b, err := r.bytesAt(r.off, recHeaderLen, limit)
	if err != nil {
		return Record{}, 0, err
	}
	h, err := parseHeader(b)
	if err != nil {
		return Record{}, 0, r.corrupt(err)
	}
	b, err = r.bytesAt(r.off, recHeaderLen+int64(h.length), limit)
	if err != nil {
		return Record{}, 0, err
	}
	h, data, n, err := decodeRecord(b)
	if err != nil {
		return Record{}, 0, r.corrupt(err)
	}
	if h.seq <= r.lastSeq {
		return Record{}, 0, r.corrupt(fmt.Errorf("Seq %d after %d", h.seq, r.lastSeq))
	}
	rec := Record{Seq: h.seq, Time: time.Unix(0, h.ts)}
	if r.replay && h.ts < r.since {
		return rec, int64(n), nil // skipped by read: its body is not needed
	}
	if !h.body {
		rec.Data = append([]byte(nil), data...)
		rec.Size = int64(len(data))
		return rec, int64(n), nil
	}
	// A body file is fsynced before its record is written, so one that is
	// missing or of the wrong size was damaged afterwards: like a record
	// that no longer verifies, SkipCorrupt steps over it.
	ref, _ := decodeBodyRef(data) // verified by decodeRecord
	path := bodyPath(r.s.opts.Dir, ref.id)
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist) && r.replay && r.belowFloor():
		return Record{}, 0, r.goneErr(fmt.Sprintf("body file of Seq %d deleted", h.seq))
	case errors.Is(err, os.ErrNotExist):
		return Record{}, 0, r.corrupt(fmt.Errorf("body file of Seq %d: %v", h.seq, err))
	case err != nil:
		return Record{}, 0, fmt.Errorf("spool %s: %s: %w", r.s.opts.Dir, r.name, err)
	case fi.Size() != ref.size:
		return Record{}, 0, r.corrupt(fmt.Errorf("body file %s of Seq %d has %d bytes, want %d", path, h.seq, fi.Size(), ref.size))
	}
	rec.Size = ref.size
	rec.body = &bodyHandle{path: path, ref: ref, replay: r.replay}
	return rec, int64(n), nil
}

func (r *Reader) corrupt(err error) error {
	return fmt.Errorf("spool %s: %s: %s offset %d: %w: %v", r.s.opts.Dir, r.name, r.seg.path, r.off, ErrCorrupt, err)
}

// bytesAt returns n bytes of r.seg at off, reading ahead up to limit.
func (r *Reader) bytesAt(off, n, limit int64) ([]byte, error) {
	if r.bufSeg == r.seg && off >= r.bufOff && off+n <= r.bufOff+int64(len(r.buf)) {
		return r.buf[off-r.bufOff : off-r.bufOff+n], nil
	}
	if off+n > limit {
		return nil, r.corrupt(fmt.Errorf("record of %d bytes crosses the end of fsynced data at %d", n, limit))
	}
	if r.fileSeg != r.seg {
		r.closeFile()
		f, err := os.Open(r.seg.path)
		if err != nil && r.replay && errors.Is(err, os.ErrNotExist) {
			return nil, r.goneErr("segment " + r.seg.path + " deleted")
		}
		if err != nil {
			return nil, fmt.Errorf("spool %s: %s: %w", r.s.opts.Dir, r.name, err)
		}
		r.file, r.fileSeg = f, r.seg
	}
	want := min(max(n, readAhead), limit-off)
	if int64(cap(r.buf)) < want {
		r.buf = make([]byte, want)
	}
	r.buf = r.buf[:want]
	r.bufSeg = nil
	if _, err := r.file.ReadAt(r.buf, off); err != nil {
		return nil, fmt.Errorf("spool %s: %s: read %s: %w", r.s.opts.Dir, r.name, r.seg.path, err)
	}
	r.bufSeg, r.bufOff = r.seg, off
	return r.buf[:n], nil
}

func (r *Reader) closeFile() {
	if r.file != nil {
		r.file.Close()
		r.file, r.fileSeg = nil, nil
	}
	r.bufSeg = nil
}

// Commit durably records that the records up to seq are delivered to this
// sink; they will not be returned again, even after a restart. seq must not
// be beyond the last record Next returned; committing an older seq is a
// no-op. Segments delivered to every sink are deleted (or kept for replay,
// Options.Retain). On a replay reader Commit only moves its position in
// memory, so that Rewind goes back there.
func (r *Reader) Commit(seq uint64) error {
	s := r.s
	r.mu.Lock()
	defer r.mu.Unlock()
	s.mu.Lock()
	closed := s.closed || r.closed
	s.mu.Unlock()
	if closed {
		return fmt.Errorf("spool %s: %w", s.opts.Dir, ErrClosed)
	}
	if seq <= r.committed {
		return nil
	}
	if seq > r.lastSeq {
		return fmt.Errorf("spool %s: %s: commit %d beyond the last record returned (%d)", s.opts.Dir, r.name, seq, r.lastSeq)
	}
	i := sort.Search(len(r.inflight), func(i int) bool { return r.inflight[i].seq > seq }) - 1
	if i < 0 {
		return fmt.Errorf("spool %s: %s: commit %d: record not returned by Next", s.opts.Dir, r.name, seq)
	}
	e := r.inflight[i]
	if r.replay {
		// In memory only: a replay reader pins nothing.
		r.committed = e.seq
		r.cSeg, r.cOff = e.seg, e.end
		r.inflight = append(r.inflight[:0], r.inflight[i+1:]...)
		return nil
	}
	if err := r.cur.write(e.seq); err != nil {
		return fmt.Errorf("spool %s: %s: write cursor: %w", s.opts.Dir, r.name, err)
	}
	r.committed = e.seq
	r.cSeg, r.cOff = e.seg, e.end
	nextTs, haveTs := int64(0), false
	if i+1 < len(r.inflight) {
		nextTs, haveTs = r.inflight[i+1].ts, true
	}
	r.inflight = append(r.inflight[:0], r.inflight[i+1:]...)

	// Find the time of the sink's new oldest unsent record for Stats.
	for {
		s.mu.Lock()
		seg, off := s.normalizeLocked(e.seg, e.end)
		pos := seg.logStart + off
		if !haveTs && pos < s.headPos {
			if off < seg.durable {
				// On disk: read its header without holding s.mu, which
				// Append needs.
				s.mu.Unlock()
				nextTs, haveTs = r.timeAt(seg, off, e.ts), true
				continue
			}
			nextTs, haveTs = s.pendingTsLocked(seg, off)
			if !haveTs {
				nextTs = e.ts // cannot happen; a lower bound is the safe answer
			}
		}
		r.sink.cursor = e.seq
		r.sink.pos = pos
		r.sink.oldest = nextTs
		s.mu.Unlock()
		break
	}
	s.collect()
	return nil
}

// timeAt returns the append time of the durable record at seg/off, or
// fallback if it cannot be read.
func (r *Reader) timeAt(seg *segment, off int64, fallback int64) int64 {
	if r.bufSeg == seg && off >= r.bufOff && off+recHeaderLen <= r.bufOff+int64(len(r.buf)) {
		if h, err := parseHeader(r.buf[off-r.bufOff:]); err == nil {
			return h.ts
		}
		return fallback
	}
	f := r.file
	if r.fileSeg != seg {
		var err error
		if f, err = os.Open(seg.path); err != nil {
			return fallback
		}
		defer f.Close()
	}
	var b [recHeaderLen]byte
	if _, err := f.ReadAt(b[:], off); err != nil {
		return fallback
	}
	h, err := parseHeader(b[:])
	if err != nil {
		return fallback
	}
	return h.ts
}

// SkipCorrupt moves this sink past data that no longer verifies at the point
// where Next stopped with ErrCorrupt: bit rot in fsynced data. If the record
// there verifies it changes nothing and returns 0. Otherwise it scans forward
// for the next record that verifies (its CRC-32C, a Seq above the last one
// read), or to the end of the segment's fsynced data, and returns the bytes
// skipped: the records in them are lost to this sink, which the caller
// reports. The reader remembers the skip, so a Rewind does not meet the same
// bytes again; a restart before a later Commit does, and skips them again.
func (r *Reader) SkipCorrupt() (int64, error) {
	s := r.s
	r.mu.Lock()
	defer r.mu.Unlock()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return 0, fmt.Errorf("spool %s: %w", s.opts.Dir, ErrClosed)
	}
	r.seg, r.off = s.normalizeLocked(r.seg, r.off)
	limit := r.seg.durable
	s.mu.Unlock()
	if r.off >= limit {
		return 0, nil
	}
	_, _, err := r.decode(limit)
	if err == nil {
		return 0, nil
	}
	if !errors.Is(err, ErrCorrupt) {
		return 0, err // an I/O error: nothing known to be corrupt
	}
	start := r.off
	for off := start + 1; off+recHeaderLen <= limit; off++ {
		b, err := r.bytesAt(off, recHeaderLen, limit)
		if err != nil {
			break
		}
		h, err := parseHeader(b)
		if err != nil || h.seq <= r.lastSeq || off+recHeaderLen+int64(h.length) > limit {
			continue
		}
		r.off = off
		if _, _, err := r.decode(limit); err == nil {
			r.remember(start, off)
			return off - start, nil
		}
	}
	r.off = limit // nothing verifies up to the fsynced end; Next goes on from there
	r.remember(start, limit)
	return limit - start, nil
}

// skipped is a range of a segment SkipCorrupt stepped over.
type skipped struct {
	seg      *segment
	from, to int64
}

// maxSkips bounds the remembered ranges; older ones lie behind the cursor.
const maxSkips = 16

func (r *Reader) remember(from, to int64) {
	if len(r.skips) == maxSkips {
		r.skips = append(r.skips[:0], r.skips[1:]...)
	}
	r.skips = append(r.skips, skipped{r.seg, from, to})
}

// jumpSkipped moves the read position over a range skipped before.
func (r *Reader) jumpSkipped() {
	for _, sk := range r.skips {
		if sk.seg == r.seg && sk.from == r.off {
			r.off = sk.to
		}
	}
}

// Rewind makes the next Next start again just after the committed cursor,
// typically after a failed send.
func (r *Reader) Rewind() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seg, r.off = r.cSeg, r.cOff
	r.lastSeq = r.committed
	r.inflight = r.inflight[:0]
}
