package service

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/shared/config"
	"github.com/geomilter/geomilter/shared/drain"
	"github.com/geomilter/geomilter/shared/spool"
	"github.com/geomilter/geomilter/shared/state"
	"github.com/geomilter/geomilter/shared/trail"
)

// trailPipe is a process's trail: the emitter appends to the local spool; one
// drainer per sink ships it in the background, each at its own pace.
type trailPipe struct {
	dir      string
	sp       *spool.Spool
	emitter  *trail.Emitter
	drainers []*drain.Drainer
	sinks    []drain.Sink
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

func openTrail(cfg *config.Config, milter string, log zerolog.Logger, reg *prometheus.Registry) (*trailPipe, error) {
	tc := cfg.Trail
	names := make([]string, 0, len(tc.Sinks))
	for _, s := range tc.Sinks {
		names = append(names, s.Name)
	}
	t := &trailPipe{dir: SpoolDir(cfg, milter)}
	sp, err := spool.Open(spool.Options{
		Dir:          t.dir,
		Sinks:        names,
		MaxBytes:     int64(tc.MaxBytes),
		SegmentBytes: int64(tc.SegmentBytes),
		Durability:   spool.GroupCommit,
		SyncEvery:    tc.SyncEvery,
	})
	if err != nil {
		return nil, fmt.Errorf("trail spool: %w", err)
	}
	t.sp = sp
	reg.MustRegister(newSpoolCollector(sp, milter))
	t.emitter = trail.NewEmitter(sp, cfg.Site, cfg.Host, milter, log, reg)

	dm := drain.NewMetrics(reg, milter)
	ctx, cancel := context.WithCancel(context.Background())
	t.cancel = cancel
	for _, sc := range tc.Sinks {
		name := sc.Name
		sink, err := newSink(cfg, sc)
		if err != nil {
			t.close(0)
			return nil, fmt.Errorf("trail.sinks %s: %w", sc.Name, err)
		}
		r, err := sp.Reader(sc.Name)
		if err != nil {
			_ = sink.Close()
			t.close(0)
			return nil, fmt.Errorf("trail.sinks %s: %w", sc.Name, err)
		}
		d := drain.New(r, sink, drain.Options{
			BatchSize:   tc.Batch,
			MinBackoff:  tc.Backoff.Min,
			MaxBackoff:  tc.Backoff.Max,
			SendTimeout: sc.Timeout,
			Logger:      log.With().Str("sink", sc.Name).Logger(),
			Metrics:     dm,
			Pending:     func() int64 { return sp.Stats().PerSink[name].Pending },
		})
		t.sinks = append(t.sinks, sink)
		t.drainers = append(t.drainers, d)
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			_ = d.Run(ctx)
		}()
	}
	return t, nil
}

// newSink builds one trail sink from its config entry.
func newSink(cfg *config.Config, sc config.SinkConfig) (drain.Sink, error) {
	switch sc.Type {
	case "redis":
		if cfg.Redis == nil {
			return nil, errors.New("redis sink needs the redis section")
		}
		c, err := backgroundRedis(cfg.Redis.Local)
		if err != nil {
			return nil, err
		}
		return drain.NewRedisSink(sc.Name, c, TrailStream(cfg.Site), sc.MaxLen), nil
	case "http":
		return drain.NewHTTPSink(sc.Name, sc.URL, sc.Headers, &http.Client{Transport: &http.Transport{
			MaxIdleConnsPerHost: 4, IdleConnTimeout: 90 * time.Second,
		}}), nil
	case "file":
		return drain.NewFileSink(sc.Name, sc.Path, int64(sc.MaxBytes), sc.Keep), nil
	}
	return nil, fmt.Errorf("unknown sink type %q", sc.Type)
}

// TrailStream is the Redis stream of a site's trail events; it lives on the
// site's own primary and reaches the other sites through their replicas.
func TrailStream(site string) string { return "gm:{" + site + "}:trail" }

// backgroundRedis is a client for the drainer, off the mail path: it may wait
// seconds (bounded per send by the sink timeout), unlike the state layer's
// mail-path clients. Connection settings (AUTH, TLS, Sentinel) are the state
// layer's, so both reach the primary the same way.
func backgroundRedis(ic config.InstanceConfig) (redis.UniversalClient, error) {
	return state.NewBackgroundClient(StateInstance(ic), 5*time.Second)
}

func (t *trailPipe) healthy() error {
	if t.sp == nil {
		return errors.New("spool not open")
	}
	return nil
}

// detail reports a backlog without failing health: a dark sink is a degraded
// state the operator must see, not a reason to pull the MTA out of service.
func (t *trailPipe) detail() string {
	st := t.sp.Stats()
	if st.Records == 0 {
		return ""
	}
	age := time.Duration(0)
	if !st.OldestUnsent.IsZero() {
		age = time.Since(st.OldestUnsent).Round(time.Second)
	}
	return fmt.Sprintf("backlog %d events, oldest %s", st.Records, age)
}

// close syncs the spool, gives the drainers up to flush to deliver, then stops
// them. Undelivered events stay on disk for the next start.
func (t *trailPipe) close(flush time.Duration) error {
	var errs []error
	if t.sp != nil {
		errs = append(errs, t.sp.Sync())
	}
	if flush > 0 && len(t.drainers) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), flush)
		var fw sync.WaitGroup
		for _, d := range t.drainers {
			fw.Add(1)
			go func() { defer fw.Done(); _ = d.Flush(ctx) }()
		}
		fw.Wait()
		cancel()
	}
	if t.cancel != nil {
		t.cancel()
	}
	t.wg.Wait()
	for _, s := range t.sinks {
		errs = append(errs, s.Close())
	}
	if t.sp != nil {
		errs = append(errs, t.sp.Close())
	}
	return errors.Join(errs...)
}
