package target

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/milters/archive/journal"
	"github.com/geomilter/geomilter/shared/spool"
)

// DeadLetters keeps the records a target refused for good, one folder per
// target: <dir>/<target>/<ID>.eml (the original message) and <ID>.json (the
// journal header plus a "dead_letter" object saying why, where and when). A
// record that does not decode is kept raw as seq-<seq>.rec with
// seq-<seq>.json. Files are written atomically, by the same code as the dir
// target. Safe for concurrent use by the targets of one process.
type DeadLetters struct {
	dir   string
	fw    fileWriter
	log   zerolog.Logger
	count *prometheus.CounterVec
	now   func() time.Time

	mu     sync.Mutex
	status map[string]DeadStatus
}

// DeadStatus is what `ctl archive status` shows of a target's dead letters.
type DeadStatus struct {
	Count     int64     `json:"count"`                // dead letters written since the process started
	LastID    string    `json:"last_id,omitempty"`    // journal id, or seq-<n> for a raw record
	LastError string    `json:"last_error,omitempty"` // why the last one was refused
	LastTime  time.Time `json:"last_time,omitzero"`
}

// DeadInfo is the "dead_letter" object of a dead letter's .json.
type DeadInfo struct {
	Error  string    `json:"error"`
	Target string    `json:"target"`
	Time   time.Time `json:"time"`
	// Raw records (not decodable) only:
	Seq       uint64 `json:"seq,omitempty"`
	Size      int64  `json:"size,omitempty"`       // the record's size in the spool
	ReadError string `json:"read_error,omitempty"` // why the .rec holds less than Size bytes
}

// deadJSON is a dead letter's .json: the journal header as the dir target
// writes it, so the same tools read both, plus why it is here.
type deadJSON struct {
	*journal.Header
	DeadLetter DeadInfo `json:"dead_letter"`
}

// NewDeadLetters returns the dead-letter store under dir and registers its
// counter, geomilter_archive_dead_letters_total{target}, on reg (nil: not
// exported).
func NewDeadLetters(dir string, log zerolog.Logger, reg prometheus.Registerer) (*DeadLetters, error) {
	if dir == "" {
		return nil, errors.New("archive dead letters: no directory")
	}
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "geomilter_archive_dead_letters_total",
		Help: "Journal records a target refused for good (or that no longer decode), moved to the dead-letter folder.",
	}, []string{"target"})
	if reg != nil {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return nil, fmt.Errorf("archive dead letters: register metric: %w", err)
			}
			c = are.ExistingCollector.(*prometheus.CounterVec)
		}
	}
	return &DeadLetters{dir: dir, log: log, count: c, now: time.Now, status: map[string]DeadStatus{}}, nil
}

// Dir returns the folder of target's dead letters.
func (d *DeadLetters) Dir(target string) string { return filepath.Join(d.dir, target) }

// Status returns target's dead-letter count and last error.
func (d *DeadLetters) Status(target string) DeadStatus {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.status[target]
}

// Put moves rec to target's dead letters because of cause. It reads the
// record again (it is not yet committed); one that does not decode is kept
// raw. A nil return means the record is safe on disk and the target may
// count it as delivered; an error (disk full, …) is temporary.
func (d *DeadLetters) Put(target string, rec spool.Record, cause error) error {
	if !safeName(target) {
		return fmt.Errorf("archive dead letters: bad target name %q", target)
	}
	dir := d.Dir(target)
	now := d.now().UTC()
	h, msg, rc, err := openRecord(rec)
	if err != nil {
		if !corrupt(err) {
			return fmt.Errorf("archive dead letters %s: %w", target, err)
		}
		return d.putRaw(target, rec, cause, now)
	}
	src := &srcReader{r: msg}
	err = d.fw.write(dir, h.ID+".eml", func(w io.Writer) error {
		_, err := io.Copy(w, src)
		return err
	})
	rc.Close()
	if err != nil {
		if src.err != nil && corrupt(src.err) {
			return d.putRaw(target, rec, fmt.Errorf("%v; reading it again: %w", cause, src.err), now)
		}
		return fmt.Errorf("archive dead letters %s: record %s: %w", target, h.ID, err)
	}
	info := DeadInfo{Error: cause.Error(), Target: target, Time: now}
	if err := d.writeJSON(dir, h.ID+".json", deadJSON{Header: h, DeadLetter: info}); err != nil {
		return fmt.Errorf("archive dead letters %s: record %s: %w", target, h.ID, err)
	}
	d.counted(target, h.ID, rec.Seq, cause, filepath.Join(dir, h.ID+".eml"), now)
	return nil
}

// putRaw keeps the bytes of a record that does not decode, as many as can
// be read.
func (d *DeadLetters) putRaw(target string, rec spool.Record, cause error, now time.Time) error {
	dir := d.Dir(target)
	base := "seq-" + strconv.FormatUint(rec.Seq, 10)
	info := DeadInfo{Error: cause.Error(), Target: target, Time: now, Seq: rec.Seq, Size: rec.Size}
	rc, err := rec.Open()
	if err != nil {
		info.ReadError = err.Error()
	} else {
		src := &srcReader{r: rc}
		err = d.fw.write(dir, base+".rec", func(w io.Writer) error {
			_, err := io.Copy(w, src)
			if src.err != nil {
				// Keep what could be read; the .json says the rest is lost.
				info.ReadError = src.err.Error()
				return nil
			}
			return err
		})
		rc.Close()
		if err != nil {
			return fmt.Errorf("archive dead letters %s: record %d: %w", target, rec.Seq, err)
		}
	}
	if err := d.writeJSON(dir, base+".json", deadJSON{DeadLetter: info}); err != nil {
		return fmt.Errorf("archive dead letters %s: record %d: %w", target, rec.Seq, err)
	}
	d.counted(target, base, rec.Seq, cause, filepath.Join(dir, base+".rec"), now)
	return nil
}

func (d *DeadLetters) writeJSON(dir, name string, v any) error {
	return d.fw.write(dir, name, func(w io.Writer) error {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	})
}

func (d *DeadLetters) counted(target, id string, seq uint64, cause error, file string, now time.Time) {
	d.count.WithLabelValues(target).Inc()
	d.mu.Lock()
	st := d.status[target]
	st.Count++
	st.LastID, st.LastError, st.LastTime = id, cause.Error(), now
	d.status[target] = st
	d.mu.Unlock()
	d.log.Error().Str("target", target).Str("journal_id", id).Uint64("seq", seq).Err(cause).
		Str("file", file).Msg("archive: record refused for good; moved to the dead letters")
}
