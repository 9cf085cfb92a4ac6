package spool

import (
	"os"
	"time"
)

// Retention keeps records delivered to every sink on disk for a while so
// that a ReplayReader can send a window of them again (the archive milter's
// `ctl archive replay`). A delivered segment is kept while its newest
// record is younger than Options.Retain and the retained bytes (delivered
// segments and the body files of delivered records) are within
// Options.RetainBytes; the oldest go first. Body files of delivered records
// are kept with their segment and deleted with it; over RetainBytes, when no
// delivered segment is left to delete, the oldest of them go on their own.
// Retained bytes are not counted against MaxBytes: replay must never make
// the mail path tempfail.
//
// What is deleted is remembered as a floor for replay readers: goneTs, the
// newest append time of a deleted record, and floorPos, the logical
// position below which records lost their body file.

// retainLoop runs collect now and then, so that retained segments age out
// while nothing is appended or committed. Tests call collect directly after
// moving their Clock.
func (s *Spool) retainLoop() {
	defer close(s.rdone)
	t := time.NewTicker(min(max(s.opts.Retain/16, time.Second), time.Minute))
	defer t.Stop()
	for {
		select {
		case <-s.rstop:
			return
		case <-t.C:
			s.collect()
		}
	}
}

// deliveredLocked reports whether every record of seg is on disk and
// delivered to every sink, and seg takes no more appends.
func (s *Spool) deliveredLocked(seg *segment, minPos int64) bool {
	return seg.sealed && seg.durable >= seg.size && seg.logStart+seg.size <= minPos
}

// dropSegLocked removes the oldest segment from the spool's list and
// records it as gone; the caller deletes the file.
func (s *Spool) dropSegLocked(seg *segment) {
	seg.deleted = true
	s.segs = s.segs[1:]
	if seg.lastSeq != 0 {
		s.goneLocked(seg.logStart+seg.size, seg.lastTs)
	}
}

// goneLocked records that the records before the logical position end, the
// newest of them appended at ts, can no longer be replayed.
func (s *Spool) goneLocked(end, ts int64) {
	if !s.gone || ts > s.goneTs {
		s.goneTs = ts
	}
	s.gone = true
	s.floorPos = max(s.floorPos, end)
}

// initGoneLocked, at Open, notes records an earlier run deleted: those
// below the first segment on disk. Their times are not known; they were
// appended before the first record kept (the Clock is assumed not to go
// back).
func (s *Spool) initGoneLocked() {
	if len(s.segs) == 0 || s.segs[0].base <= 1 {
		return
	}
	first := s.segs[0]
	ts := s.opts.Clock().UnixNano() // nothing left: anything may be gone
	if first.lastSeq != 0 {
		ts = first.firstTs - 1
	}
	s.goneLocked(0, ts)
}

// retainedLocked returns the delivered segments still on disk and the
// bytes retained: theirs and those of the kept body files.
func (s *Spool) retainedLocked(minPos int64) (segs int, bytes int64) {
	bytes = s.keptBytes
	for _, seg := range s.segs[:max(len(s.segs)-1, 0)] {
		if !s.deliveredLocked(seg, minPos) {
			break
		}
		segs++
		bytes += seg.size
	}
	return segs, bytes
}

// expireLocked takes out of the spool, oldest first, the delivered segments
// and kept body files that retention no longer keeps (see the top of this
// file); the caller deletes their files. It walks the retained segments,
// about RetainBytes/SegmentBytes of them.
func (s *Spool) expireLocked(minPos int64) (segs []*segment, bodies []*bodyFile) {
	cutoff := s.opts.Clock().Add(-s.opts.Retain).UnixNano()
	_, retained := s.retainedLocked(minPos)
	dropBody := func() {
		b := s.kept[0]
		s.kept = s.kept[1:]
		s.keptBytes -= b.ref.size
		retained -= b.ref.size
		bodies = append(bodies, b)
	}
	for len(s.segs) > 1 {
		seg := s.segs[0]
		if !s.deliveredLocked(seg, minPos) || (seg.lastTs > cutoff && retained <= s.opts.RetainBytes) {
			break
		}
		s.dropSegLocked(seg)
		segs = append(segs, seg)
		retained -= seg.size
		end := seg.logStart + seg.size
		for len(s.kept) > 0 && s.kept[0].end <= end {
			dropBody()
		}
	}
	// Still over: what is left lies in the segment the sinks are reading
	// or the one taking appends, whose body files may be large. The oldest
	// go; their records stay in the segment but are gone for replay.
	for retained > s.opts.RetainBytes && len(s.kept) > 0 {
		b := s.kept[0]
		dropBody()
		s.goneLocked(b.end, b.ts)
	}
	return segs, bodies
}

// Oldest returns the append time of the oldest record a ReplayReader can
// still return (its segment, and body file if any, on disk), or the zero
// time if there is none. Records appended before it are gone. It may read
// one record header from disk.
func (s *Spool) Oldest() time.Time {
	for range 4 { // a retry follows a segment deleted while its header was read
		s.mu.Lock()
		seg, off := s.firstReplayableLocked()
		if seg == nil {
			s.mu.Unlock()
			return time.Time{}
		}
		pos := seg.logStart + off
		switch {
		case off == segHeaderLen:
			s.mu.Unlock()
			return time.Unix(0, seg.firstTs)
		case pos == s.oldestPos:
			ts := s.oldestTs
			s.mu.Unlock()
			return time.Unix(0, ts)
		case off >= seg.durable:
			ts, ok := s.pendingTsLocked(seg, off)
			if !ok {
				ts = seg.firstTs
			}
			s.mu.Unlock()
			return time.Unix(0, ts)
		}
		path := seg.path
		s.mu.Unlock()
		ts, ok := readTs(path, off)
		if !ok {
			continue
		}
		s.mu.Lock()
		s.oldestPos, s.oldestTs = pos, ts
		s.mu.Unlock()
		return time.Unix(0, ts)
	}
	// Unreadable: the first segment's first record is a lower bound.
	s.mu.Lock()
	defer s.mu.Unlock()
	if seg, _ := s.firstReplayableLocked(); seg != nil {
		return time.Unix(0, seg.firstTs)
	}
	return time.Time{}
}

// firstReplayableLocked returns where the oldest replayable record is: in
// the oldest segment with records that ends above floorPos, at floorPos or
// its first record. seg is nil if there is no such record.
func (s *Spool) firstReplayableLocked() (seg *segment, off int64) {
	for _, sg := range s.segs {
		if sg.lastSeq == 0 || sg.logStart+sg.size <= s.floorPos {
			continue
		}
		return sg, max(segHeaderLen, s.floorPos-sg.logStart)
	}
	return nil, 0
}

// readTs reads the append time of the record at off in the segment file.
func readTs(path string, off int64) (int64, bool) {
	f, err := os.Open(path)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	var b [recHeaderLen]byte
	if _, err := f.ReadAt(b[:], off); err != nil {
		return 0, false
	}
	h, err := parseHeader(b[:])
	if err != nil {
		return 0, false
	}
	return h.ts, true
}
