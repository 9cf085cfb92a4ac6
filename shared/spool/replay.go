package spool

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// ErrReplayGone reports that records a replay needs were deleted: appended
// before the retention window (Options.Retain, RetainBytes), or deleted
// while a replay reader was behind.
var ErrReplayGone = errors.New("spool records to replay are gone")

// ReplayReader returns a reader of the records on disk appended at or after
// since (retained ones, already delivered to every sink, and pending ones),
// then of everything appended later, in Seq order. It is for sending a
// window again (`ctl archive replay`): it has no cursor file, its Commit
// only moves its position in memory, and it pins nothing, so retention and
// collection go on deleting under it. Records appended before since are
// stepped over (when the Clock went back, later ones are not).
//
// If a record appended at or after since has already been deleted, it
// fails with ErrReplayGone (the message names the time up to which records
// are gone); Oldest tells where a replay can start. If records it has not
// read yet are deleted under it, Next fails with ErrReplayGone rather than
// leave a hole. Close releases it.
func (s *Spool) ReplayReader(since time.Time) (*Reader, error) {
	oldest := s.Oldest() // for the error message only
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, fmt.Errorf("spool %s: %w", s.opts.Dir, ErrClosed)
	}
	sinceNs := int64(math.MinInt64)
	if !since.IsZero() {
		sinceNs = since.UnixNano()
	}
	if s.gone && sinceNs <= s.goneTs {
		left := "none"
		if !oldest.IsZero() {
			left = oldest.UTC().Format(time.RFC3339Nano)
		}
		return nil, fmt.Errorf("spool %s: replay since %s: %w: records appended up to %s were deleted; oldest left %s",
			s.opts.Dir, since.UTC().Format(time.RFC3339Nano), ErrReplayGone,
			time.Unix(0, s.goneTs).UTC().Format(time.RFC3339Nano), left)
	}
	// Start in the first segment whose newest record is in the window; read
	// steps over the older records in front.
	last := s.segs[len(s.segs)-1]
	seg, off := last, last.size // nothing in the window yet: the head
	if first, foff := s.firstReplayableLocked(); first != nil {
		for _, sg := range s.segs {
			if sg.base < first.base || sg.lastSeq == 0 || sg.lastTs < sinceNs {
				continue
			}
			seg, off = sg, segHeaderLen
			if sg == first {
				off = foff
			}
			break
		}
	}
	r := &Reader{s: s, name: "replay", replay: true, since: sinceNs, done: make(chan struct{}),
		seg: seg, off: off, cSeg: seg, cOff: off}
	s.replays[r] = struct{}{}
	return r, nil
}

// Close releases a replay reader: its open file, and its place in the
// spool. Next and Commit then fail with ErrClosed, and a Next blocked
// waiting returns. A sink's reader is closed by Spool.Close instead.
func (r *Reader) Close() error {
	if !r.replay {
		return fmt.Errorf("spool %s: %s: only a replay reader is closed on its own; Spool.Close closes sink readers", r.s.opts.Dir, r.name)
	}
	r.mu.Lock()
	if !r.closed {
		r.closed = true
		close(r.done)
		r.closeFile()
		r.inflight = nil
	}
	r.mu.Unlock()
	r.s.mu.Lock()
	delete(r.s.replays, r)
	r.s.mu.Unlock()
	return nil
}

// goneLocked checks, for a replay reader, that the records it has yet to
// read are still there, and moves it to the next segment if it is at the
// end of one. The caller holds r.mu and s.mu.
func (r *Reader) goneLocked() error {
	s := r.s
	if r.seg.deleted {
		// Deletion goes oldest first: past the end of a deleted segment,
		// the next one must be the oldest left.
		if r.off < r.seg.size || len(s.segs) == 0 || s.segs[0].logStart != r.seg.logStart+r.seg.size {
			return r.goneErr("segment " + r.seg.path + " deleted")
		}
	}
	r.seg, r.off = s.normalizeLocked(r.seg, r.off)
	if r.seg.logStart+r.off < s.floorPos {
		return r.goneErr("body files of records ahead deleted")
	}
	return nil
}

// belowFloor reports whether the reader stands on a record whose body file
// retention deleted.
func (r *Reader) belowFloor() bool {
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	return r.seg.logStart+r.off < r.s.floorPos
}

func (r *Reader) goneErr(what string) error {
	return fmt.Errorf("spool %s: replay after Seq %d: %w: %s (retention; Oldest tells where a replay can start)",
		r.s.opts.Dir, r.lastSeq, ErrReplayGone, what)
}
