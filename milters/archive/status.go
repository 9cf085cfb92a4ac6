package archive

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/geomilter/geomilter/milters/archive/target"
	"github.com/geomilter/geomilter/shared/ctl"
	"github.com/geomilter/geomilter/shared/drain"
	"github.com/geomilter/geomilter/shared/spool"
)

// status is the journal and every target, from memory.
func (p *pipeline) status() ctl.ArchiveStatus {
	st := p.spool.Stats()
	out := ctl.ArchiveStatus{Journal: ctl.ArchiveJournal{
		Dir: p.journal.JournalDir(p.cfg), Records: st.Records, Bytes: st.Bytes, MaxBytes: int64(p.journal.MaxBytes),
		RetainedBytes: st.RetainedBytes, OldestReplayable: p.spool.Oldest(), Fsyncs: st.Fsyncs,
		DeadLetterDir: p.journal.DeadDir(p.cfg),
	}}
	for _, t := range p.targets {
		ps := st.PerSink[t.cfg.Name]
		errAt, err, ok := t.sink.lastError()
		ts := ctl.ArchiveTargetStatus{
			Name: t.cfg.Name, Type: t.cfg.Type, BacklogRecords: ps.Pending, OldestUnsent: ps.OldestUnsent,
			LastSuccess: ok, Failing: t.sink.failing(), DeadLetters: p.dead.Status(t.cfg.Name).Count,
		}
		if err != nil {
			ts.LastError, ts.LastErrorAt = err.Error(), errAt
		}
		out.Targets = append(out.Targets, ts)
	}
	p.mu.Lock()
	for _, r := range p.replays {
		out.Replays = append(out.Replays, r.snapshot())
	}
	p.mu.Unlock()
	return out
}

func (p *pipeline) statusHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			http.Error(w, "GET only", http.StatusMethodNotAllowed)
			return
		}
		writeJSON(w, http.StatusOK, p.status())
	})
}

// replayHandler starts a replay: POST /archive/replay?target=T&since=TIME.
// It answers only loopback clients: the metrics listener may be open to a
// Prometheus server, but resending journal records is an operator's act
// on this host (`geomilter ctl archive replay`).
func (p *pipeline) replayHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, "POST only", http.StatusMethodNotAllowed)
			return
		}
		if !loopback(r.RemoteAddr) {
			http.Error(w, "replay is accepted from this host only (geomilter ctl archive replay)", http.StatusForbidden)
			return
		}
		since, err := time.Parse(time.RFC3339Nano, r.URL.Query().Get("since"))
		if err != nil {
			http.Error(w, "since: want an RFC 3339 time", http.StatusBadRequest)
			return
		}
		rp, err := p.startReplay(r.URL.Query().Get("target"), since)
		switch {
		case errors.Is(err, errNoTarget):
			http.Error(w, err.Error(), http.StatusNotFound)
		case errors.Is(err, spool.ErrReplayGone):
			http.Error(w, err.Error(), http.StatusGone)
		case err != nil:
			http.Error(w, err.Error(), http.StatusInternalServerError)
		default:
			writeJSON(w, http.StatusAccepted, rp.snapshot())
		}
	})
}

func loopback(remote string) bool {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

var errNoTarget = errors.New("no such archive target")

// replay sends the records since a time to one target again, through a
// new instance of the target and a reader of its own: the target's cursor
// and its normal delivery go on unchanged. It ends at the head as it was
// when it started. The journal id in each record lets the archive tell a
// resent record from a new one.
type replay struct {
	id      string
	target  string
	since   time.Time
	until   uint64
	started time.Time
	sent    atomic.Int64
	cancel  context.CancelFunc

	mu   sync.Mutex
	done bool
	err  error
}

func (r *replay) snapshot() ctl.ArchiveReplay {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := ctl.ArchiveReplay{ID: r.id, Target: r.target, Since: r.since, Until: r.until, Started: r.started,
		Sent: r.sent.Load(), Done: r.done}
	if r.err != nil {
		out.Error = r.err.Error()
	}
	return out
}

func (r *replay) finish(err error) {
	r.mu.Lock()
	r.done, r.err = true, err
	r.mu.Unlock()
}

// maxReplays bounds the replays kept for status (finished ones first go).
const maxReplays = 16

func (p *pipeline) startReplay(name string, since time.Time) (*replay, error) {
	var tc *target.Config
	for _, t := range p.targets {
		if t.cfg.Name == name {
			tc = &t.cfg
		}
	}
	if tc == nil {
		return nil, fmt.Errorf("%w: %q (configured: %v)", errNoTarget, name, p.targetNames())
	}
	until := p.spool.Stats().DurableSeq
	rd, err := p.spool.ReplayReader(since)
	if err != nil {
		return nil, err
	}
	sink, err := target.New(*tc, p.dead, p.log.With().Str("replay", name).Logger())
	if err != nil {
		rd.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	rp := &replay{id: strconv.FormatInt(time.Now().UnixNano(), 36), target: name, since: since, until: until,
		started: time.Now(), cancel: cancel}
	src := &boundedSource{Reader: rd, until: until, done: cancel, sent: &rp.sent}
	o := p.drainOptions(nil)
	o.Metrics = drain.NewMetrics(nil, "") // a replay is counted in its status, not in the target's metrics
	d := drain.New(src, sink, o)
	p.mu.Lock()
	p.replays = append(p.replays, rp)
	if len(p.replays) > maxReplays {
		for i, old := range p.replays {
			if old.snapshot().Done {
				p.replays = append(p.replays[:i], p.replays[i+1:]...)
				break
			}
		}
	}
	p.mu.Unlock()
	p.log.Info().Str("target", name).Time("since", since).Uint64("until_seq", until).Str("replay", rp.id).Msg("archive replay started")
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer cancel()
		var err error
		if until > 0 {
			err = d.Run(ctx)
		}
		if err == nil && !src.finished() {
			err = src.failure()
			if err == nil {
				err = errors.New("stopped before the end (the process is stopping)")
			}
		}
		_ = sink.Close()
		_ = rd.Close()
		rp.finish(err)
		ev := p.log.Info()
		if err != nil {
			ev = p.log.Warn().Err(err)
		}
		ev.Str("target", name).Str("replay", rp.id).Int64("sent", rp.sent.Load()).Msg("archive replay ended")
	}()
	return rp, nil
}

// boundedSource is a replay reader that ends at until: records after it
// are left to the target's normal delivery, and committing until ends the
// replay.
type boundedSource struct {
	*spool.Reader
	until uint64
	done  context.CancelFunc
	sent  *atomic.Int64

	mu     sync.Mutex
	end    bool
	handed []uint64 // Seqs given out by Next and not yet committed
	err    error
}

func (b *boundedSource) Next(ctx context.Context, max int) ([]spool.Record, error) {
	recs, err := b.Reader.Next(ctx, max)
	if err != nil {
		if errors.Is(err, spool.ErrReplayGone) {
			// Records of the window were deleted under the replay:
			// stop and say so rather than leave a silent hole.
			b.mu.Lock()
			b.err = err
			b.mu.Unlock()
			b.done()
		}
		return nil, err
	}
	for i, r := range recs {
		if r.Seq > b.until {
			recs = recs[:i]
			break
		}
	}
	b.mu.Lock()
	b.handed = b.handed[:0]
	for _, r := range recs {
		b.handed = append(b.handed, r.Seq)
	}
	b.mu.Unlock()
	if len(recs) == 0 { // only records after the window: the replay is complete
		b.mu.Lock()
		b.end = true
		b.mu.Unlock()
		b.done()
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return recs, nil
}

func (b *boundedSource) Commit(seq uint64) error {
	if err := b.Reader.Commit(seq); err != nil {
		return err
	}
	b.mu.Lock()
	n := 0
	for n < len(b.handed) && b.handed[n] <= seq {
		n++
	}
	b.sent.Add(int64(n))
	b.handed = b.handed[n:]
	end := seq >= b.until
	if end {
		b.end = true
	}
	b.mu.Unlock()
	if end {
		b.done()
	}
	return nil
}

func (b *boundedSource) finished() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.end
}

func (b *boundedSource) failure() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}
