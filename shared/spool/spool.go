package spool

import (
	"bufio"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

// Durability selects when Append returns relative to the record reaching disk.
type Durability int

const (
	// GroupCommit buffers records in memory and fsyncs at most every
	// SyncEvery; Append never waits for the disk. A crash loses at most the
	// records of the last SyncEvery.
	GroupCommit Durability = iota
	// Durable returns from Append only after the record is fsynced;
	// concurrent Appends share fsyncs.
	Durable
)

// Defaults applied by Open to zero Options fields.
const (
	DefaultMaxBytes     = 1 << 30
	DefaultSegmentBytes = 64 << 20
	DefaultSyncEvery    = 100 * time.Millisecond
	DefaultMaxBuffered  = 64 << 20
	DefaultRetainBytes  = 1 << 30

	chunkSize = 64 << 10 // unit of the in-memory append buffer

	// inlineMax is the largest record AppendFrom keeps in a segment (read
	// whole into memory first); larger ones go to a body file.
	inlineMax  = 256 << 10
	bodyBufLen = 256 << 10 // copy buffer of AppendFrom
	readAhead  = 256 << 10
	maxFree    = 64 // chunk buffers kept for reuse
)

// Options configure a spool. Dir and Sinks are required.
type Options struct {
	Dir          string
	Sinks        []string // names of the consumers; each gets its own persistent cursor
	MaxBytes     int64    // bound on bytes not yet delivered to every sink; 0 = 1 GiB
	SegmentBytes int64    // segment file size; 0 = 64 MiB
	Durability   Durability
	SyncEvery    time.Duration    // GroupCommit fsync interval; 0 = 100ms
	Clock        func() time.Time // record timestamps; nil = time.Now

	// MaxBuffered bounds the bytes appended but not yet written and fsynced,
	// which are held in memory; past it Append returns ErrFull rather than
	// grow memory while the disk stalls. 0 = min(64 MiB, MaxBytes).
	MaxBuffered int64
	// Logger, if set, receives errors of the background flusher (which
	// retries) and of segment deletion; nothing else is logged.
	Logger *zerolog.Logger

	// Retain keeps records delivered to every sink on disk for replay
	// (ReplayReader): a segment every sink has committed past is deleted
	// only once its newest record is Retain old (by Clock), or sooner when
	// the retained bytes exceed RetainBytes. Retained bytes do not count
	// against MaxBytes. 0 = delete delivered segments at once.
	Retain time.Duration
	// RetainBytes bounds the retained bytes: delivered segments and the
	// body files of their records; the oldest go first. Used only when
	// Retain > 0; 0 = 1 GiB.
	RetainBytes int64
}

// Errors returned by the spool; match them with errors.Is.
var (
	ErrFull     = errors.New("spool full")             // Append: the record was not written (dropped)
	ErrClosed   = errors.New("spool closed")           // the spool was closed
	ErrTooLarge = errors.New("spool record too large") // Append: over 16 MiB; AppendFrom: over MaxBytes
	ErrCorrupt  = errors.New("spool data corrupt")     // Reader: a fsynced record no longer verifies
)

var sinkNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$`)

// segment is one segment file. Fields other than base, path and logStart
// are guarded by Spool.mu.
type segment struct {
	base     uint64
	path     string
	logStart int64 // position of the file's offset 0 in the spool's logical byte space

	size    int64  // bytes appended, including those still in memory
	durable int64  // bytes written and fsynced; readers stop here
	sealed  bool   // no more appends: a newer segment exists
	lastSeq uint64 // last Seq appended to it, 0 if none
	firstTs int64  // append time of its first record, if lastSeq != 0
	lastTs  int64  // append time of its last record, if lastSeq != 0
	deleted bool   // removed from Spool.segs (a replay reader may still hold it)
}

// chunk is a piece of the in-memory append buffer, destined for seg at off.
// A record never straddles two chunks.
type chunk struct {
	seg    *segment
	off    int64
	buf    []byte
	create bool // first chunk of a new segment file
}

// bodyFile is a body file and the position of the record that refers to
// it; guarded by Spool.mu.
type bodyFile struct {
	ref      bodyRef
	path     string
	end      int64 // logical position just after its record: deleted once every sink is there
	reserved int64 // AppendFrom's reservation, released when the record is appended
	ts       int64 // append time of its record
}

// sinkState is the spool's view of one sink, guarded by Spool.mu.
type sinkState struct {
	name   string
	cursor uint64 // last Seq committed
	pos    int64  // logical position just after the committed record
	oldest int64  // time of the first record after pos; meaningful only if pos < headPos
	reader *Reader
}

// Spool is an append-only, crash-safe, multi-cursor local buffer. All
// methods are safe for concurrent use.
type Spool struct {
	opts Options
	lock *os.File

	mu         sync.Mutex
	closed     bool
	segs       []*segment // oldest first; the last one takes appends
	nextSeq    uint64
	headPos    int64 // logical end of appended data
	durableSeq uint64
	pending    []*chunk // appended, not yet handed to a flush
	flushing   []*chunk // being written and fsynced
	buffered   int64    // bytes in pending and flushing
	free       [][]byte
	dirty      bool // pending non-empty and the flusher kicked
	sinks      []*sinkState
	byName     map[string]*sinkState
	notify     chan struct{} // closed and replaced when durable data grows
	leading    bool          // a Durable appender is flushing for the group
	flushed    *sync.Cond    // on mu: a leader's flush ended
	dropped    uint64
	fsyncs     uint64
	writeErrs  uint64
	corrupt    int64
	lastErr    error
	bodies     []*bodyFile // body files not yet delivered to every sink, in record order
	bodyBytes  int64       // their sizes
	bodyRes    int64       // MaxBytes space reserved by AppendFrom calls under way
	nextBody   uint64      // id of the next body file

	// Retention (retain.go). kept are the body files of records delivered
	// to every sink, kept for replay (Retain > 0), in record order.
	kept      []*bodyFile
	keptBytes int64
	// Records before floorPos (logical) lost their body file; replay
	// readers treat them as gone. gone/goneTs: some record was deleted, and
	// the newest append time among those deleted.
	floorPos  int64
	gone      bool
	goneTs    int64
	oldestPos int64 // cache of Oldest: position it was read for (-1: none)
	oldestTs  int64
	replays   map[*Reader]struct{} // open replay readers, closed by Close
	rstop     chan struct{}        // stops retainLoop
	rdone     chan struct{}

	flushMu sync.Mutex // one flush at a time; the holder owns wfiles
	wfiles  map[*segment]*os.File
	wclosed bool

	kick chan struct{}
	stop chan struct{}
	done chan struct{}
}

// Open opens or creates the spool in opts.Dir, recovering from any crash:
// see the package comment for what recovery does.
func Open(opts Options) (*Spool, error) {
	if opts.Dir == "" {
		return nil, errors.New("spool: Options.Dir is empty")
	}
	if opts.MaxBytes == 0 {
		opts.MaxBytes = DefaultMaxBytes
	}
	if opts.SegmentBytes == 0 {
		opts.SegmentBytes = DefaultSegmentBytes
	}
	if opts.SyncEvery == 0 {
		opts.SyncEvery = DefaultSyncEvery
	}
	if opts.MaxBuffered == 0 {
		opts.MaxBuffered = min(DefaultMaxBuffered, opts.MaxBytes)
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	if opts.Retain > 0 && opts.RetainBytes == 0 {
		opts.RetainBytes = DefaultRetainBytes
	}
	switch {
	case opts.MaxBytes < 0, opts.MaxBuffered < 0, opts.SyncEvery < 0:
		return nil, fmt.Errorf("spool %s: negative MaxBytes, MaxBuffered or SyncEvery", opts.Dir)
	case opts.Retain < 0, opts.RetainBytes < 0:
		return nil, fmt.Errorf("spool %s: negative Retain or RetainBytes", opts.Dir)
	case opts.SegmentBytes < segHeaderLen+recHeaderLen:
		return nil, fmt.Errorf("spool %s: SegmentBytes %d too small", opts.Dir, opts.SegmentBytes)
	case opts.Durability != GroupCommit && opts.Durability != Durable:
		return nil, fmt.Errorf("spool %s: unknown durability %d", opts.Dir, opts.Durability)
	}
	s := &Spool{
		opts:   opts,
		byName: make(map[string]*sinkState),
		notify: make(chan struct{}),
		wfiles: make(map[*segment]*os.File),
		kick:   make(chan struct{}, 1),

		replays:   make(map[*Reader]struct{}),
		oldestPos: -1,
	}
	s.flushed = sync.NewCond(&s.mu)
	for _, name := range opts.Sinks {
		if !sinkNameRE.MatchString(name) {
			return nil, fmt.Errorf("spool %s: invalid sink name %q (letters, digits, '_', '.', '-')", opts.Dir, name)
		}
		if s.byName[name] != nil {
			return nil, fmt.Errorf("spool %s: duplicate sink %q", opts.Dir, name)
		}
		sk := &sinkState{name: name}
		s.sinks = append(s.sinks, sk)
		s.byName[name] = sk
	}
	if err := os.MkdirAll(opts.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("spool %s: %w", opts.Dir, err)
	}
	lock, err := os.OpenFile(filepath.Join(opts.Dir, "LOCK"), os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("spool %s: %w", opts.Dir, err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("spool %s: directory in use by another spool: %w", opts.Dir, err)
	}
	s.lock = lock
	if err := s.recover(); err != nil {
		for _, sk := range s.sinks {
			if sk.reader != nil && sk.reader.cur != nil {
				sk.reader.cur.close()
			}
		}
		lock.Close()
		return nil, fmt.Errorf("spool %s: %w", opts.Dir, err)
	}
	if opts.Durability == GroupCommit {
		s.stop = make(chan struct{})
		s.done = make(chan struct{})
		go s.flushLoop()
	}
	if opts.Retain > 0 {
		s.rstop = make(chan struct{})
		s.rdone = make(chan struct{})
		go s.retainLoop()
	}
	return s, nil
}

func segPath(dir string, base uint64) string {
	return filepath.Join(dir, fmt.Sprintf("%020d.seg", base))
}

func bodyPath(dir string, id uint64) string {
	return filepath.Join(dir, fmt.Sprintf("%020d.body", id))
}

func cursorPath(dir, sink string) string {
	return filepath.Join(dir, sink+".cursor")
}

// recover rebuilds the in-memory state from the directory.
func (s *Spool) recover() error {
	dir := s.opts.Dir
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var bases []uint64
	haveCursor := make(map[string]bool)
	bodyFiles := make(map[uint64]bool)
	for _, e := range entries {
		name := e.Name()
		switch {
		case strings.HasSuffix(name, ".tmp"):
			if err := os.Remove(filepath.Join(dir, name)); err != nil {
				return err
			}
		case strings.HasSuffix(name, ".seg"):
			if b, err := strconv.ParseUint(strings.TrimSuffix(name, ".seg"), 10, 64); err == nil && b > 0 {
				bases = append(bases, b)
			}
		case strings.HasSuffix(name, ".body"):
			if id, err := strconv.ParseUint(strings.TrimSuffix(name, ".body"), 10, 64); err == nil && id > 0 {
				bodyFiles[id] = true
			}
		case strings.HasSuffix(name, ".cursor"):
			sink := strings.TrimSuffix(name, ".cursor")
			if s.byName[sink] == nil {
				// A sink no longer configured must not pin segments.
				if err := os.Remove(filepath.Join(dir, name)); err != nil {
					return err
				}
				continue
			}
			haveCursor[sink] = true
		}
	}
	sort.Slice(bases, func(i, j int) bool { return bases[i] < bases[j] })

	// Cursors of known sinks; minKnown is the lowest, which pins segments.
	type scanSink struct {
		sk    *sinkState
		found bool
		seg   *segment
		off   int64
	}
	var known []*scanSink
	minKnown := uint64(math.MaxUint64)
	for _, sk := range s.sinks {
		r := &Reader{s: s, sink: sk, name: "sink " + sk.name}
		sk.reader = r
		if !haveCursor[sk.name] {
			continue
		}
		c, seq, ok, err := openCursor(cursorPath(dir, sk.name))
		if err != nil {
			return err
		}
		r.cur = c
		if !ok {
			s.logErr(fmt.Errorf("cursor of sink %s unreadable; replaying every record on disk", sk.name))
			seq = 0
		}
		sk.cursor = seq
		known = append(known, &scanSink{sk: sk})
		minKnown = min(minKnown, seq)
	}

	var logical int64
	var maxBody uint64 // highest body id on disk or referenced: ids are never reused
	for i, base := range bases {
		path := segPath(dir, base)
		last := i == len(bases)-1
		if s.opts.Retain == 0 && !last && bases[i+1]-1 <= minKnown {
			// Every record in it is delivered to every sink. (Kept for
			// replay, it is scanned for its record times and body files,
			// and collect decides.)
			if err := os.Remove(path); err != nil {
				return err
			}
			continue
		}
		seg := &segment{base: base, path: path, logStart: logical}
		first := true
		visit := func(h recHeader, off int64, data []byte) {
			if first {
				seg.firstTs, first = h.ts, false
			}
			seg.lastTs = h.ts
			if h.body {
				ref, _ := decodeBodyRef(data) // verified by scanSegment
				maxBody = max(maxBody, ref.id)
				b := &bodyFile{ref: ref, path: bodyPath(dir, ref.id),
					end: seg.logStart + off + recHeaderLen + bodyRefLen, ts: h.ts}
				switch {
				case h.seq > minKnown: // a sink has yet to read it
					s.bodies = append(s.bodies, b)
				case s.opts.Retain > 0: // delivered, kept for replay
					s.kept = append(s.kept, b)
				default: // delivered: recoverBodies deletes it
					s.goneLocked(b.end, b.ts)
				}
			}
			for _, k := range known {
				if !k.found && h.seq > k.sk.cursor {
					k.found, k.seg, k.off = true, seg, off
					k.sk.oldest = h.ts
				}
			}
		}
		keep, err := s.scanSegment(seg, last, visit)
		if err != nil {
			return err
		}
		if !keep {
			continue
		}
		if n := len(s.segs); n > 0 && s.segs[n-1].lastSeq >= base {
			return fmt.Errorf("segment %s overlaps Seqs of %s", path, s.segs[n-1].path)
		}
		s.segs = append(s.segs, seg)
		logical += seg.size
	}

	if err := s.recoverBodies(bodyFiles, maxBody); err != nil {
		return err
	}

	// The next Seq is above everything any sink may have seen.
	next := uint64(1)
	var last *segment
	if n := len(s.segs); n > 0 {
		last = s.segs[n-1]
		next = max(next, last.base)
		if last.lastSeq > 0 {
			next = max(next, last.lastSeq+1)
		}
	}
	for _, k := range known {
		next = max(next, k.sk.cursor+1)
	}
	if last != nil && last.lastSeq == 0 && last.base != next {
		if err := os.Remove(last.path); err != nil {
			return err
		}
		s.segs = s.segs[:len(s.segs)-1]
		logical -= last.size
		last = nil
	}
	if last == nil || (last.lastSeq != 0 && last.lastSeq+1 != next) {
		if last != nil {
			last.sealed = true
		}
		seg, err := createSegment(dir, next, logical)
		if err != nil {
			return err
		}
		s.segs = append(s.segs, seg)
		last = seg
	}
	last.sealed = false
	s.nextSeq = next
	s.durableSeq = next - 1
	s.headPos = last.logStart + last.size

	for _, k := range known {
		r := k.sk.reader
		if k.found {
			r.cSeg, r.cOff = k.seg, k.off
		} else {
			r.cSeg, r.cOff = last, last.size
		}
		k.sk.pos = r.cSeg.logStart + r.cOff
	}
	for _, sk := range s.sinks {
		r := sk.reader
		if r.cur == nil {
			// New sink: starts at the head, it does not replay the backlog.
			c, err := createCursor(dir, cursorPath(dir, sk.name), next-1)
			if err != nil {
				return err
			}
			r.cur = c
			sk.cursor = next - 1
			r.cSeg, r.cOff = last, last.size
			sk.pos = s.headPos
		}
		r.committed = sk.cursor
		r.lastSeq = sk.cursor
		r.seg, r.off = r.cSeg, r.cOff
	}
	s.initGoneLocked()
	s.collect()
	return nil
}

// recoverBodies deletes the body files no sink needs: those of records every
// sink has passed, and those whose record never became durable (an
// AppendFrom cut short by a crash). A body file a kept record refers to but
// that is missing or of the wrong size cannot come from a crash (it is
// fsynced before its record is written); it is logged, and Reader.Next
// reports the record as ErrCorrupt.
func (s *Spool) recoverBodies(onDisk map[uint64]bool, maxBody uint64) error {
	need := make(map[uint64]bool, len(s.bodies)+len(s.kept))
	kept := s.kept[:0]
	for _, b := range s.kept {
		// Missing: deleted by a run without Retain, or cut by RetainBytes
		// before a crash. The record is gone for replay.
		if fi, err := os.Stat(b.path); err != nil || fi.Size() != b.ref.size {
			s.goneLocked(b.end, b.ts)
			continue
		}
		need[b.ref.id] = true
		s.keptBytes += b.ref.size
		kept = append(kept, b)
	}
	s.kept = kept
	for _, b := range s.bodies {
		need[b.ref.id] = true
		s.bodyBytes += b.ref.size
		fi, err := os.Stat(b.path)
		switch {
		case err != nil:
			s.logErr(fmt.Errorf("body file of a pending record: %w", err))
		case fi.Size() != b.ref.size:
			s.logErr(fmt.Errorf("body file %s has %d bytes, its record says %d", b.path, fi.Size(), b.ref.size))
		}
	}
	for id := range onDisk {
		maxBody = max(maxBody, id)
		if !need[id] {
			if err := os.Remove(bodyPath(s.opts.Dir, id)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
	}
	s.nextBody = maxBody + 1
	return nil
}

// createSegment creates an empty segment file durably.
func createSegment(dir string, base uint64, logStart int64) (*segment, error) {
	path := segPath(dir, base)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return nil, err
	}
	_, err = f.WriteAt(encodeSegHeader(base), 0)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = syncDir(dir)
	}
	if err != nil {
		return nil, err
	}
	return &segment{base: base, path: path, logStart: logStart, size: segHeaderLen, durable: segHeaderLen}, nil
}

// scanSegment verifies seg's file record by record, truncates it at the first
// invalid byte and fsyncs what remains (data surviving a kill -9 may still be
// only in the page cache). keep is false if the segment held nothing usable
// and was removed.
func (s *Spool) scanSegment(seg *segment, last bool, visit func(recHeader, int64, []byte)) (keep bool, err error) {
	f, err := os.OpenFile(seg.path, os.O_RDWR, 0)
	if err != nil {
		return false, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return false, err
	}
	size := fi.Size()
	hdr := make([]byte, segHeaderLen)
	if _, err := f.ReadAt(hdr, 0); err != nil && !errors.Is(err, io.EOF) {
		return false, err
	}
	if size < segHeaderLen || checkSegHeader(hdr, seg.base) != nil {
		s.corrupt += size
		if !last {
			return false, os.Remove(seg.path)
		}
		// The newest segment may have been created just before a crash.
		if err := f.Truncate(0); err != nil {
			return false, err
		}
		if _, err := f.WriteAt(encodeSegHeader(seg.base), 0); err != nil {
			return false, err
		}
		if err := f.Sync(); err != nil {
			return false, err
		}
		seg.size, seg.durable = segHeaderLen, segHeaderLen
		return true, nil
	}

	br := bufio.NewReaderSize(io.NewSectionReader(f, segHeaderLen, size-segHeaderLen), 1<<20)
	off := int64(segHeaderLen)
	expect := seg.base
	var hb [recHeaderLen]byte
	var data []byte
	for {
		if _, err := io.ReadFull(br, hb[:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				break
			}
			return false, err
		}
		h, err := parseHeader(hb[:])
		if err != nil || h.seq != expect {
			break
		}
		if cap(data) < int(h.length) {
			data = make([]byte, h.length)
		}
		data = data[:h.length]
		if _, err := io.ReadFull(br, data); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				break
			}
			return false, err
		}
		if checkRecord(h, hb[:], data) != nil {
			break
		}
		visit(h, off, data)
		off += recHeaderLen + int64(h.length)
		expect++
	}
	if off < size {
		s.corrupt += size - off
		if err := f.Truncate(off); err != nil {
			return false, err
		}
	}
	if err := f.Sync(); err != nil {
		return false, err
	}
	seg.size, seg.durable = off, off
	seg.sealed = !last
	if expect > seg.base {
		seg.lastSeq = expect - 1
	} else if !last {
		return false, os.Remove(seg.path)
	}
	return true, nil
}

// Append adds rec to the spool. In GroupCommit mode it returns without
// waiting for the disk; in Durable mode after the record is fsynced (an error
// then means the record may or may not be stored). When MaxBytes (or
// MaxBuffered) would be exceeded the record is not written, Stats.Dropped
// is incremented and the error is ErrFull; Append never blocks on space.
// A record over 16 MiB is refused with ErrTooLarge: use AppendFrom.
func (s *Spool) Append(rec []byte) error {
	if len(rec) > maxRecordLen {
		s.mu.Lock()
		s.dropped++
		s.mu.Unlock()
		return fmt.Errorf("spool %s: %w: %d bytes, limit %d (AppendFrom takes any size)", s.opts.Dir, ErrTooLarge, len(rec), maxRecordLen)
	}
	s.mu.Lock()
	seq, err := s.appendLocked(rec, 0, nil)
	s.mu.Unlock()
	if err != nil {
		return err
	}
	if s.opts.Durability == Durable {
		return s.waitDurable(seq)
	}
	return nil
}

// AppendFrom adds a record of exactly size bytes read from r, of any size.
// A record of up to 256 KiB is read into memory and appended as by Append.
// A larger one is streamed through a fixed buffer into its own body file,
// which is fsynced (and the directory with it) before a small record
// referring to it is appended: the record becomes visible to readers, and
// takes its Seq, only once its whole content is on disk, and small Appends
// from other goroutines go on while the body is copied. In Durable mode
// AppendFrom returns once that record is fsynced too.
//
// The record's bytes count against MaxBytes from the start: one larger than
// MaxBytes fails with ErrTooLarge before r is read, one that does not fit
// now with ErrFull (a body file record before r is read too). A read error or fewer than size bytes from r fails
// without leaving any record (the partial body file is removed); bytes of r
// beyond size are not read.
func (s *Spool) AppendFrom(r io.Reader, size int64) error {
	dir := s.opts.Dir
	if size < 0 {
		return fmt.Errorf("spool %s: AppendFrom: negative size %d", dir, size)
	}
	if size+recHeaderLen > s.opts.MaxBytes {
		s.mu.Lock()
		s.dropped++
		s.mu.Unlock()
		return fmt.Errorf("spool %s: %w: %d bytes, MaxBytes %d", dir, ErrTooLarge, size, s.opts.MaxBytes)
	}
	if size <= inlineMax {
		buf := make([]byte, size)
		if n, err := io.ReadFull(r, buf); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF // as for a body: the record is short
			}
			return fmt.Errorf("spool %s: read record: %d of %d bytes: %w", dir, n, size, err)
		}
		return s.Append(buf)
	}
	// The body, its record and a segment header should the record start a
	// new segment: everything the record can add to the backlog.
	reserve := size + recHeaderLen + bodyRefLen + segHeaderLen
	s.mu.Lock()
	switch {
	case s.closed:
		s.mu.Unlock()
		return fmt.Errorf("spool %s: %w", dir, ErrClosed)
	case reserve > s.opts.MaxBytes:
		s.dropped++
		s.mu.Unlock()
		return fmt.Errorf("spool %s: %w: %d bytes, MaxBytes %d", dir, ErrTooLarge, size, s.opts.MaxBytes)
	case s.pendingBytesLocked()+reserve > s.opts.MaxBytes:
		s.dropped++
		s.mu.Unlock()
		return fmt.Errorf("spool %s: %w", dir, ErrFull)
	}
	b := &bodyFile{ref: bodyRef{id: s.nextBody, size: size}, path: bodyPath(dir, s.nextBody), reserved: reserve}
	s.nextBody++
	s.bodyRes += reserve
	s.mu.Unlock()

	crc, syncs, err := writeBody(dir, b.path, r, size)
	b.ref.crc = crc
	s.mu.Lock()
	s.fsyncs += syncs
	var seq uint64
	if err == nil {
		seq, err = s.appendLocked(b.ref.encode(), recFlagBody, b)
	}
	if err != nil {
		s.bodyRes -= reserve
	}
	s.mu.Unlock()
	if err != nil {
		// Nothing refers to the file; a crash before this leaves it to Open.
		os.Remove(b.path)
		return err
	}
	if s.opts.Durability == Durable {
		return s.waitDurable(seq)
	}
	return nil
}

var bodyBufs = sync.Pool{New: func() any { b := make([]byte, bodyBufLen); return &b }}

// writeBody copies exactly size bytes of r into a new file at path, fsyncs
// it and the directory, and returns the CRC-32C of the bytes.
func writeBody(dir, path string, r io.Reader, size int64) (crc uint32, syncs uint64, err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return 0, 0, fmt.Errorf("spool %s: create body file: %w", dir, err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("spool %s: close %s: %w", dir, path, cerr)
		}
	}()
	bp := bodyBufs.Get().(*[]byte)
	defer bodyBufs.Put(bp)
	buf := *bp
	for n := int64(0); n < size; {
		k := int(min(int64(len(buf)), size-n))
		got, err := io.ReadFull(r, buf[:k])
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return 0, syncs, fmt.Errorf("spool %s: read record: %d of %d bytes: %w", dir, n+int64(got), size, err)
		}
		crc = crc32.Update(crc, castagnoli, buf[:k])
		if _, err := f.Write(buf[:k]); err != nil {
			return 0, syncs, fmt.Errorf("spool %s: write %s: %w", dir, path, err)
		}
		n += int64(k)
	}
	syncs++
	if err := f.Sync(); err != nil {
		return 0, syncs, fmt.Errorf("spool %s: fsync %s: %w", dir, path, err)
	}
	// The directory entry must be durable before the record that names it.
	syncs++
	if err := syncDir(dir); err != nil {
		return 0, syncs, err
	}
	return crc, syncs, nil
}

// appendLocked adds one record to the in-memory buffer and returns its Seq.
// A body record (body != nil) was counted against MaxBytes when AppendFrom
// reserved its space, so it is not checked again: it always fits.
func (s *Spool) appendLocked(rec []byte, flags uint32, body *bodyFile) (uint64, error) {
	if s.closed {
		return 0, fmt.Errorf("spool %s: %w", s.opts.Dir, ErrClosed)
	}
	n := int64(recHeaderLen + len(rec))
	seg := s.segs[len(s.segs)-1]
	rotate := seg.lastSeq != 0 && seg.size+n > s.opts.SegmentBytes
	need := n
	if rotate {
		need += segHeaderLen
	}
	if body == nil && (s.pendingBytesLocked()+need > s.opts.MaxBytes || s.buffered+need > s.opts.MaxBuffered) {
		s.dropped++
		return 0, fmt.Errorf("spool %s: %w", s.opts.Dir, ErrFull)
	}
	oldHead := s.headPos
	if rotate {
		seg.sealed = true
		ns := &segment{base: s.nextSeq, path: segPath(s.opts.Dir, s.nextSeq), logStart: seg.logStart + seg.size, size: segHeaderLen}
		s.segs = append(s.segs, ns)
		c := s.newChunkLocked(ns, 0, segHeaderLen)
		c.create = true
		c.buf = append(c.buf, encodeSegHeader(ns.base)...)
		s.buffered += segHeaderLen
		s.headPos += segHeaderLen
		seg = ns
	}
	var c *chunk
	if k := len(s.pending); k > 0 {
		c = s.pending[k-1]
	}
	if c == nil || c.seg != seg || int64(cap(c.buf)-len(c.buf)) < n {
		c = s.newChunkLocked(seg, seg.size, n)
	}
	seq := s.nextSeq
	s.nextSeq++
	ts := s.opts.Clock().UnixNano()
	c.buf = appendRecordFlags(c.buf, seq, ts, flags, rec)
	seg.size += n
	if seg.lastSeq == 0 {
		seg.firstTs = ts
	}
	seg.lastSeq = seq
	seg.lastTs = ts
	s.headPos += n
	s.buffered += n
	if body != nil {
		body.end = s.headPos
		body.ts = ts
		s.bodies = append(s.bodies, body)
		s.bodyBytes += body.ref.size
		s.bodyRes -= body.reserved
	}
	for _, sk := range s.sinks {
		if sk.pos >= oldHead { // the sink was caught up: this is its oldest unsent record
			sk.oldest = ts
		}
	}
	if !s.dirty {
		s.dirty = true
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
	return seq, nil
}

func (s *Spool) newChunkLocked(seg *segment, off, need int64) *chunk {
	var buf []byte
	if need <= chunkSize && len(s.free) > 0 {
		buf = s.free[len(s.free)-1]
		s.free = s.free[:len(s.free)-1]
	} else {
		buf = make([]byte, 0, max(need, chunkSize))
	}
	c := &chunk{seg: seg, off: off, buf: buf}
	s.pending = append(s.pending, c)
	return c
}

// pendingBytesLocked is the bytes not yet delivered to every sink.
func (s *Spool) pendingBytesLocked() int64 {
	if len(s.sinks) == 0 {
		return 0
	}
	return s.headPos - s.minPosLocked() + s.bodyBytes + s.bodyRes
}

func (s *Spool) minPosLocked() int64 {
	m := s.headPos
	for _, sk := range s.sinks {
		m = min(m, sk.pos)
	}
	return m
}

// Sync writes and fsyncs everything appended so far.
func (s *Spool) Sync() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fmt.Errorf("spool %s: %w", s.opts.Dir, ErrClosed)
	}
	target := s.nextSeq - 1
	s.mu.Unlock()
	return s.waitDurable(target)
}

// waitDurable returns once seq is fsynced. Group commit: if no flush is
// under way the caller becomes the leader and flushes everything buffered
// (its record and everyone else's); otherwise it waits for the running flush
// to finish, returns if that covered its record, or else leads the next one.
// Waiters do not queue on flushMu, so they learn of their durability as soon
// as the flush that covered them ends and can append again while the next
// leader's fsync collects records.
func (s *Spool) waitDurable(seq uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.durableSeq < seq {
		if s.leading {
			s.flushed.Wait()
			continue
		}
		s.leading = true
		s.mu.Unlock()
		// Writers just released by the previous flush are about to
		// append: let them, so that they share this fsync.
		runtime.Gosched()
		s.flushMu.Lock()
		err := s.flushLocked()
		s.flushMu.Unlock()
		s.mu.Lock()
		s.leading = false
		s.flushed.Broadcast()
		if err != nil && s.durableSeq < seq {
			return fmt.Errorf("spool %s: %w", s.opts.Dir, err)
		}
	}
	return nil
}

// flushLocked writes and fsyncs all pending chunks. The caller holds
// flushMu. On failure the chunks go back to the front of pending, so the
// next flush rewrites them from memory: after a failed fsync the page cache
// cannot be trusted to still hold them.
func (s *Spool) flushLocked() error {
	if s.wclosed {
		return ErrClosed
	}
	s.mu.Lock()
	batch := s.pending
	s.pending = nil
	s.dirty = false
	if len(batch) == 0 {
		s.mu.Unlock()
		return nil
	}
	s.flushing = batch
	lastSeq := s.nextSeq - 1
	s.mu.Unlock()

	syncs, err := s.writeBatch(batch)

	s.mu.Lock()
	s.flushing = nil
	s.fsyncs += syncs
	if err != nil {
		s.pending = append(batch, s.pending...)
		s.writeErrs++
		s.lastErr = err
		s.mu.Unlock()
		return err
	}
	for _, c := range batch {
		if end := c.off + int64(len(c.buf)); end > c.seg.durable {
			c.seg.durable = end
		}
		s.buffered -= int64(len(c.buf))
		if cap(c.buf) == chunkSize && len(s.free) < maxFree {
			s.free = append(s.free, c.buf[:0])
		}
	}
	s.durableSeq = lastSeq
	close(s.notify)
	s.notify = make(chan struct{})
	s.mu.Unlock()
	s.collect()
	return nil
}

// writeBatch writes chunks to their files and fsyncs every file touched.
func (s *Spool) writeBatch(batch []*chunk) (syncs uint64, err error) {
	var touched []*segment
	created := false
	for _, c := range batch {
		f, ok := s.wfiles[c.seg]
		if !ok {
			flag := os.O_RDWR
			if c.create {
				flag |= os.O_CREATE | os.O_TRUNC
				created = true
			}
			f, err = os.OpenFile(c.seg.path, flag, 0o640)
			if err != nil {
				return syncs, err
			}
			s.wfiles[c.seg] = f
		}
		if len(touched) == 0 || touched[len(touched)-1] != c.seg {
			touched = append(touched, c.seg)
		}
		if _, err := f.WriteAt(c.buf, c.off); err != nil {
			return syncs, fmt.Errorf("write %s: %w", c.seg.path, err)
		}
	}
	for _, seg := range touched {
		syncs++
		if err := s.wfiles[seg].Sync(); err != nil {
			return syncs, fmt.Errorf("fsync %s: %w", seg.path, err)
		}
	}
	if created {
		syncs++
		if err := syncDir(s.opts.Dir); err != nil {
			return syncs, err
		}
	}
	// A sealed segment's remaining writes, if any, reopen it on demand.
	s.mu.Lock()
	var done []*os.File
	for seg, f := range s.wfiles {
		if seg.sealed {
			done = append(done, f)
			delete(s.wfiles, seg)
		}
	}
	s.mu.Unlock()
	for _, f := range done {
		f.Close()
	}
	return syncs, nil
}

// flushLoop is the GroupCommit flusher: after a kick it waits until
// SyncEvery has passed since its last flush, then flushes everything.
func (s *Spool) flushLoop() {
	defer close(s.done)
	var last time.Time
	for {
		select {
		case <-s.stop:
			return
		case <-s.kick:
		}
		if wait := s.opts.SyncEvery - time.Since(last); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-s.stop:
				t.Stop()
				return
			case <-t.C:
			}
		}
		s.flushMu.Lock()
		err := s.flushLocked()
		s.flushMu.Unlock()
		last = time.Now()
		if err != nil {
			s.logErr(fmt.Errorf("flush failed, will retry: %w", err))
			s.mu.Lock()
			s.dirty = true
			s.mu.Unlock()
			select {
			case s.kick <- struct{}{}:
			default:
			}
		}
	}
}

// collect deletes sealed segments whose records are delivered to every sink,
// and the body files of such records; with Options.Retain it keeps them
// as long as retention says (expireLocked).
func (s *Spool) collect() {
	s.mu.Lock()
	minPos := s.minPosLocked()
	k := 0
	for k < len(s.bodies) && s.bodies[k].end <= minPos {
		k++
	}
	var doomedBodies []*bodyFile
	if k > 0 {
		delivered := append([]*bodyFile(nil), s.bodies[:k]...)
		s.bodies = append(s.bodies[:0], s.bodies[k:]...)
		for _, b := range delivered {
			s.bodyBytes -= b.ref.size
			if s.opts.Retain > 0 {
				s.kept = append(s.kept, b)
				s.keptBytes += b.ref.size
			} else {
				s.goneLocked(b.end, b.ts)
			}
		}
		if s.opts.Retain == 0 {
			doomedBodies = delivered
		}
	}
	var doomed []*segment
	if s.opts.Retain > 0 {
		var expired []*bodyFile
		doomed, expired = s.expireLocked(minPos)
		doomedBodies = append(doomedBodies, expired...)
	}
	for s.opts.Retain == 0 && len(s.segs) > 1 {
		seg := s.segs[0]
		if !s.deliveredLocked(seg, minPos) {
			break
		}
		s.dropSegLocked(seg)
		doomed = append(doomed, seg)
	}
	s.mu.Unlock()
	for _, b := range doomedBodies {
		// A failed delete leaves a file that the next Open removes.
		if err := os.Remove(b.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.logErr(err)
		}
	}
	for _, seg := range doomed {
		// A failed delete leaves a file that the next Open removes.
		if err := os.Remove(seg.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.logErr(err)
		}
	}
}

func (s *Spool) logErr(err error) {
	s.mu.Lock()
	s.lastErr = err
	s.mu.Unlock()
	if s.opts.Logger != nil {
		s.opts.Logger.Error().Err(err).Str("spool", s.opts.Dir).Msg("spool")
	}
}

// Close writes and fsyncs everything appended, closes the files and wakes
// blocked readers; later calls get ErrClosed. Close is idempotent.
func (s *Spool) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	replays := make([]*Reader, 0, len(s.replays))
	for r := range s.replays {
		replays = append(replays, r)
	}
	s.mu.Unlock()
	if s.stop != nil {
		close(s.stop)
		<-s.done
	}
	if s.rstop != nil {
		close(s.rstop)
		<-s.rdone
	}
	for _, r := range replays {
		r.mu.Lock()
		r.closeFile()
		r.mu.Unlock()
	}
	s.flushMu.Lock()
	err := s.flushLocked()
	for seg, f := range s.wfiles {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		delete(s.wfiles, seg)
	}
	s.wclosed = true
	s.flushMu.Unlock()

	s.mu.Lock()
	close(s.notify) // left closed: any later wait returns at once
	s.mu.Unlock()
	for _, sk := range s.sinks {
		r := sk.reader
		r.mu.Lock()
		r.closeFile()
		if cerr := r.cur.close(); err == nil {
			err = cerr
		}
		r.mu.Unlock()
	}
	if cerr := s.lock.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("spool %s: close: %w", s.opts.Dir, err)
	}
	return nil
}

// Reader returns the reader of a sink named in Options.Sinks. There is one
// Reader per sink; calling Reader again returns the same one.
func (s *Spool) Reader(sink string) (*Reader, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, fmt.Errorf("spool %s: %w", s.opts.Dir, ErrClosed)
	}
	sk := s.byName[sink]
	if sk == nil {
		return nil, fmt.Errorf("spool %s: unknown sink %q", s.opts.Dir, sink)
	}
	return sk.reader, nil
}

// Stats is a snapshot of the spool. Records and Bytes count what is not yet
// delivered to every sink (Records counts Seqs, so a gap left by a corrupt
// segment is included).
type Stats struct {
	Records, Bytes int64
	OldestUnsent   time.Time // zero if nothing is pending
	PerSink        map[string]SinkStats
	Dropped        uint64 // Appends refused (ErrFull, ErrTooLarge)
	BodyFiles      int    // body files of records not yet delivered to every sink
	BodyBytes      int64  // their bytes (included in Bytes)

	// Retention (Options.Retain): delivered segments still on disk, and
	// their bytes with those of the kept body files of delivered records
	// (not included in Bytes; bounded by RetainBytes).
	RetainedSegments int
	RetainedBytes    int64
	Oldest           time.Time // see Spool.Oldest; zero if no record is on disk

	LastSeq      uint64 // last Seq appended
	DurableSeq   uint64 // last Seq fsynced (visible to readers)
	Segments     int
	Fsyncs       uint64 // fsync calls on segment files and the directory
	WriteErrors  uint64 // failed flushes (retried)
	CorruptBytes int64  // torn or corrupt bytes truncated by Open
	LastError    error  // most recent background error, if any
}

// SinkStats is one sink's part of Stats.
type SinkStats struct {
	Pending      int64
	OldestUnsent time.Time
	CommittedSeq uint64
}

// Stats returns counters and backlog; it only reads memory, except that
// Oldest may read one record header.
func (s *Spool) Stats() Stats {
	oldest := s.Oldest()
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Stats{
		Oldest:       oldest,
		Bytes:        s.pendingBytesLocked(),
		PerSink:      make(map[string]SinkStats, len(s.sinks)),
		Dropped:      s.dropped,
		BodyFiles:    len(s.bodies),
		BodyBytes:    s.bodyBytes,
		LastSeq:      s.nextSeq - 1,
		DurableSeq:   s.durableSeq,
		Segments:     len(s.segs),
		Fsyncs:       s.fsyncs,
		WriteErrors:  s.writeErrs,
		CorruptBytes: s.corrupt,
		LastError:    s.lastErr,
	}
	st.RetainedSegments, st.RetainedBytes = s.retainedLocked(s.minPosLocked())
	for _, sk := range s.sinks {
		var ss SinkStats
		ss.CommittedSeq = sk.cursor
		if sk.pos < s.headPos {
			ss.Pending = int64(s.nextSeq - 1 - sk.cursor)
			ss.OldestUnsent = time.Unix(0, sk.oldest)
			if st.OldestUnsent.IsZero() || ss.OldestUnsent.Before(st.OldestUnsent) {
				st.OldestUnsent = ss.OldestUnsent
			}
		}
		st.Records = max(st.Records, ss.Pending)
		st.PerSink[sk.name] = ss
	}
	return st
}

// segAfterLocked returns the first segment newer than seg, or nil.
func (s *Spool) segAfterLocked(seg *segment) *segment {
	i := sort.Search(len(s.segs), func(i int) bool { return s.segs[i].base > seg.base })
	if i == len(s.segs) {
		return nil
	}
	return s.segs[i]
}

// normalizeLocked moves a position at the end of a sealed segment to the
// first record of the next one.
func (s *Spool) normalizeLocked(seg *segment, off int64) (*segment, int64) {
	for seg.sealed && off >= seg.size {
		nx := s.segAfterLocked(seg)
		if nx == nil {
			break
		}
		seg, off = nx, segHeaderLen
	}
	return seg, off
}

// pendingTsLocked returns the time of the not yet durable record at seg/off
// from the in-memory buffer.
func (s *Spool) pendingTsLocked(seg *segment, off int64) (int64, bool) {
	for _, list := range [][]*chunk{s.flushing, s.pending} {
		for _, c := range list {
			if c.seg == seg && off >= c.off && off+recHeaderLen <= c.off+int64(len(c.buf)) {
				h, err := parseHeader(c.buf[off-c.off:])
				return h.ts, err == nil
			}
		}
	}
	return 0, false
}
