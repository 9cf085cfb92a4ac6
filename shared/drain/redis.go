package drain

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/redis/go-redis/v9"

	"github.com/geomilter/geomilter/shared/spool"
)

// RedisSink appends each record to a Redis stream with XADD, one pipelined
// round trip per batch. Entry fields: "id" (the event id) and "event" (the raw
// JSON). Consumers deduplicate by id: a batch that timed out may have been
// applied and is sent again.
type RedisSink struct {
	name   string
	c      redis.UniversalClient
	stream string
	maxLen int64
	// inflight holds a token while a pipeline is running. Send waits for the
	// previous pipeline to finish (or its own ctx), so a client that does not
	// honour context deadlines still costs at most one stuck pipeline.
	inflight chan struct{}
}

// NewRedisSink returns a sink writing to stream (e.g. "gm:{SITE}:trail"),
// trimmed approximately to maxLen entries (MAXLEN ~; 0 = never trimmed).
// Send returns at its ctx deadline even if c has ContextTimeoutEnabled off.
func NewRedisSink(name string, c redis.UniversalClient, stream string, maxLen int64) *RedisSink {
	return &RedisSink{name: name, c: c, stream: stream, maxLen: maxLen, inflight: make(chan struct{}, 1)}
}

// Name implements Sink.
func (s *RedisSink) Name() string { return s.name }

// Close implements Sink; the client belongs to the caller and stays open.
func (s *RedisSink) Close() error { return nil }

// Send implements Sink.
func (s *RedisSink) Send(ctx context.Context, batch []spool.Record) error {
	select {
	case s.inflight <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("redis sink %s: previous send still stuck: %w", s.name, ctx.Err())
	}
	pipe := s.c.Pipeline()
	for _, r := range batch {
		pipe.XAdd(ctx, &redis.XAddArgs{
			Stream: s.stream,
			MaxLen: s.maxLen,
			Approx: s.maxLen > 0,
			ID:     "*",
			Values: []any{"id", EventID(r), "event", r.Data},
		})
	}
	done := make(chan error, 1)
	go func() {
		_, err := pipe.Exec(ctx)
		<-s.inflight
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("redis sink %s: XADD %s (%d records): %w", s.name, s.stream, len(batch), err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("redis sink %s: XADD %s (%d records): %w", s.name, s.stream, len(batch), ctx.Err())
	}
}

var eventIDKey = []byte(`"event_id"`)

// EventID returns the record's top-level "event_id" string, or "seq-<Seq>" if
// there is none. It scans for the key instead of decoding the record: trail
// events put event_id near the front, so this reads a few dozen bytes. A
// match inside a string value is impossible because quotes there are
// escaped; a nested object's event_id can only win if it comes before the
// top-level one, which trail events never do.
func EventID(r spool.Record) string {
	data := r.Data
	for off := 0; ; {
		i := bytes.Index(data[off:], eventIDKey)
		if i < 0 {
			break
		}
		i += off
		off = i + len(eventIDKey)
		if i > 0 && data[i-1] == '\\' {
			continue
		}
		rest := skipSpace(data[off:])
		if len(rest) == 0 || rest[0] != ':' {
			continue
		}
		rest = skipSpace(rest[1:])
		if len(rest) == 0 || rest[0] != '"' {
			break
		}
		end := bytes.IndexByte(rest[1:], '"')
		if end < 0 {
			break
		}
		val := rest[1 : 1+end]
		if bytes.IndexByte(val, '\\') < 0 {
			if len(val) == 0 {
				break
			}
			return string(val)
		}
		// Escapes: let the JSON decoder find the end of the string.
		var s string
		if err := json.NewDecoder(bytes.NewReader(rest)).Decode(&s); err == nil && s != "" {
			return s
		}
		break
	}
	return "seq-" + strconv.FormatUint(r.Seq, 10)
}

func skipSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t' || b[0] == '\n' || b[0] == '\r') {
		b = b[1:]
	}
	return b
}
