package state

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// storedRule is the JSON value of one field of gm:{SITE}:rules.
type storedRule struct {
	ID      string          `json:"id"`
	Doc     json.RawMessage `json:"doc,omitempty"`
	HLC     string          `json:"hlc"`
	Deleted bool            `json:"deleted"`
}

// SiteStatus says what one site contributed to a rule load.
type SiteStatus struct {
	Available bool   // its instance answered; false: the site contributed nothing
	Err       string // why not
	Version   int64  // gm:{SITE}:rules:version at the time of the read
	Entries   int    // hash fields read, tombstones included
	// Invalid lists fields whose value could not be decoded; they were
	// skipped (somebody wrote the key by hand?).
	Invalid []string
}

// siteRules is what one instance returned.
type siteRules struct {
	status SiteStatus
	docs   map[string]RuleDoc
	raw    map[string]string // field -> stored value, for compare-and-delete
}

// readRules reads every site's rules, all instances in parallel. A site
// whose version and entry count are those of the last full read is served
// from the decoded cache after one small pipelined call; otherwise the hash
// is read in a MULTI together with its version (so the cache can never pair
// a version with older data) and decoded again. Decoding dominates the cost
// of a load (≈0.5s per 100,000 rules), and usually one site changed.
func (s *Store) readRules(ctx context.Context) []siteRules {
	out := make([]siteRules, len(s.all))
	s.fanOut(func(i int, in *instance) {
		out[i] = s.readSiteRules(ctx, in)
	})
	return out
}

func (s *Store) readSiteRules(ctx context.Context, in *instance) siteRules {
	var ver *redis.StringCmd
	var hlen *redis.IntCmd
	err := in.call(ctx, in.bulk, s.opts.BulkTimeout, func(ctx context.Context, c *redis.Client) error {
		_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
			ver = p.Get(ctx, rulesVersionKey(in.site))
			hlen = p.HLen(ctx, rulesKey(in.site))
			return nil
		})
		return err
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return siteRules{status: SiteStatus{Err: err.Error()}}
	}
	if cached, ok := s.rulesCache.get(in.site, ver.Val(), hlen.Val()); ok {
		return cached
	}
	var all *redis.MapStringStringCmd
	err = in.call(ctx, in.bulk, s.opts.BulkTimeout, func(ctx context.Context, c *redis.Client) error {
		_, err := c.TxPipelined(ctx, func(p redis.Pipeliner) error {
			all = p.HGetAll(ctx, rulesKey(in.site))
			ver = p.Get(ctx, rulesVersionKey(in.site))
			hlen = p.HLen(ctx, rulesKey(in.site))
			return nil
		})
		return err
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return siteRules{status: SiteStatus{Err: err.Error()}}
	}
	sr := decodeSiteRules(in.site, all.Val(), ver.Val())
	s.rulesCache.put(in.site, ver.Val(), hlen.Val(), sr)
	return sr
}

// rulesCache holds the last decoded rules of each site, keyed by the site's
// version and entry count (the count guards against a version number
// reused after a primary lost its data).
type rulesCache struct {
	mu sync.Mutex
	m  map[string]cachedRules
}

type cachedRules struct {
	version string
	entries int64
	rules   siteRules
}

func (c *rulesCache) get(site, version string, entries int64) (siteRules, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[site]
	if !ok || e.version != version || e.entries != entries {
		return siteRules{}, false
	}
	return e.rules, true
}

func (c *rulesCache) put(site, version string, entries int64, sr siteRules) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[string]cachedRules)
	}
	c.m[site] = cachedRules{version: version, entries: entries, rules: sr}
}

func decodeSiteRules(site string, fields map[string]string, version string) siteRules {
	sr := siteRules{docs: make(map[string]RuleDoc, len(fields)), raw: fields}
	sr.status.Available = true
	sr.status.Entries = len(fields)
	if version != "" {
		sr.status.Version, _ = strconv.ParseInt(version, 10, 64)
	}
	for id, v := range fields {
		var r storedRule
		if err := json.Unmarshal([]byte(v), &r); err != nil || !validHLC(r.HLC) {
			sr.status.Invalid = append(sr.status.Invalid, id)
			continue
		}
		sr.docs[id] = RuleDoc{ID: id, Doc: r.Doc, HLC: r.HLC, Deleted: r.Deleted, Site: site}
	}
	sort.Strings(sr.status.Invalid)
	return sr
}

func validHLC(s string) bool {
	_, err := ParseHLC(s)
	return err == nil
}

// LoadRules reads every site's rules (own primary and each local peer
// replica, in parallel) and merges them last writer wins, tombstones
// dropped. sources reports per site what it contributed. A site whose
// instance did not answer contributes nothing: merged then lacks that
// site's rules and its deletions, so err (wrapping ErrUnavailable and naming
// the sites) is returned along with the partial merge, and a caller that
// serves rules should keep its previous snapshot.
func (s *Store) LoadRules(ctx context.Context) (merged map[string]RuleDoc, sources map[string]SiteStatus, err error) {
	reads := s.readRules(ctx)
	all, sources, missing := s.mergeReads(reads)
	merged = LiveRules(all)
	if len(missing) > 0 {
		return merged, sources, fmt.Errorf("state: load rules: sites %s did not answer: %w",
			strings.Join(missing, ","), ErrUnavailable)
	}
	return merged, sources, nil
}

func (s *Store) mergeReads(reads []siteRules) (merged map[string]RuleDoc, sources map[string]SiteStatus, missing []string) {
	perSite := make(map[string]map[string]RuleDoc, len(reads))
	sources = make(map[string]SiteStatus, len(reads))
	for i, r := range reads {
		site := s.all[i].site
		sources[site] = r.status
		if !r.status.Available {
			missing = append(missing, site)
			continue
		}
		perSite[site] = r.docs
	}
	return MergeRules(perSite), sources, missing
}

// PutRules stores docs as this site's versions, stamped with one new HLC.
// Docs equal by value to the live merged version are skipped (whitespace,
// object key order and string escapes do not matter, see sameJSON), so
// applying the same file twice changes nothing; changed lists the ids
// written, sorted. Peers that do not answer are left out of the comparison
// (their newer versions, if any, still win later by HLC); the own primary
// must answer.
func (s *Store) PutRules(ctx context.Context, docs []RuleDoc) (changed []string, err error) {
	compacted := make([][]byte, len(docs))
	seen := make(map[string]bool, len(docs))
	for i, d := range docs {
		if d.ID == "" {
			return nil, fmt.Errorf("state: put rules: doc %d: empty id", i)
		}
		if seen[d.ID] {
			return nil, fmt.Errorf("state: put rules: duplicate id %q", d.ID)
		}
		seen[d.ID] = true
		var buf bytes.Buffer
		if err := json.Compact(&buf, d.Doc); err != nil {
			return nil, fmt.Errorf("state: put rules: %s: doc is not JSON: %w", d.ID, err)
		}
		compacted[i] = buf.Bytes()
	}
	merged, err := s.catchUp(ctx, "put rules")
	if err != nil {
		return nil, err
	}
	type write struct {
		id  string
		doc []byte
	}
	var writes []write
	for i, d := range docs {
		if cur, ok := merged[d.ID]; ok && !cur.Deleted && sameJSON(cur.Doc, compacted[i]) {
			continue
		}
		writes = append(writes, write{d.ID, compacted[i]})
	}
	if len(writes) == 0 {
		return nil, nil
	}
	h := s.hlc.Now().String()
	fields := make(map[string]any, len(writes))
	for _, w := range writes {
		v, err := marshalStored(storedRule{ID: w.id, Doc: w.doc, HLC: h})
		if err != nil {
			return nil, fmt.Errorf("state: put rules: %s: %w", w.id, err)
		}
		fields[w.id] = v
		changed = append(changed, w.id)
	}
	if err := s.writeRules(ctx, fields, h); err != nil {
		return nil, fmt.Errorf("state: put rules: %w", err)
	}
	sort.Strings(changed)
	return changed, nil
}

// marshalStored encodes a stored record without HTML escaping, so a doc is
// stored as compacted by PutRules (json.Marshal would turn <, > and & into
// \u003c, \u003e, \u0026).
func marshalStored(r storedRule) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(r); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// sameJSON reports whether two JSON documents hold the same value: equal
// bytes, or equal canonical forms (canonicalJSON). Versions stored before
// records were written without HTML escaping compare equal to the same doc
// written today. A doc that is not valid JSON equals nothing but itself.
func sameJSON(a, b []byte) bool {
	if bytes.Equal(a, b) {
		return true
	}
	ca, err := canonicalJSON(a)
	if err != nil {
		return false
	}
	cb, err := canonicalJSON(b)
	return err == nil && bytes.Equal(ca, cb)
}

// canonicalJSON re-encodes one JSON value: object keys sorted, no
// insignificant whitespace, strings with the encoder's escapes and no HTML
// escaping, numbers as written (so 1 and 1.0 differ: a rewrite, never a
// lost change).
func canonicalJSON(b []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("data after the JSON value")
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// DeleteRules writes tombstones for the ids that are live in the merged
// view; others are skipped (idempotent). deleted lists the ids tombstoned.
func (s *Store) DeleteRules(ctx context.Context, ids []string) (deleted []string, err error) {
	merged, err := s.catchUp(ctx, "delete rules")
	if err != nil {
		return nil, err
	}
	h := s.hlc.Now().String()
	fields := make(map[string]any)
	for _, id := range ids {
		cur, ok := merged[id]
		if !ok || cur.Deleted || fields[id] != nil {
			continue
		}
		v, err := marshalStored(storedRule{ID: id, HLC: h, Deleted: true})
		if err != nil {
			return nil, fmt.Errorf("state: delete rules: %s: %w", id, err)
		}
		fields[id] = v
		deleted = append(deleted, id)
	}
	if len(fields) == 0 {
		return nil, nil
	}
	if err := s.writeRules(ctx, fields, h); err != nil {
		return nil, fmt.Errorf("state: delete rules: %w", err)
	}
	sort.Strings(deleted)
	return deleted, nil
}

// catchUp loads the merged view (tombstones included) and advances the HLC
// past every version in it, so the next write wins over all it has seen.
func (s *Store) catchUp(ctx context.Context, op string) (map[string]RuleDoc, error) {
	reads := s.readRules(ctx)
	if !reads[0].status.Available {
		return nil, fmt.Errorf("state: %s: own primary: %s: %w", op, reads[0].status.Err, ErrUnavailable)
	}
	merged, _, _ := s.mergeReads(reads)
	var newest string
	for _, d := range merged {
		if d.HLC > newest {
			newest = d.HLC
		}
	}
	if h, err := ParseHLC(newest); err == nil {
		s.hlc.Update(h)
	}
	return merged, nil
}

// writeRules writes fields to the own rules hash, bumps the version and
// announces the change, atomically (MULTI), so a reader never sees the new
// version number without the data.
func (s *Store) writeRules(ctx context.Context, fields map[string]any, hlc string) error {
	return s.own.call(ctx, s.own.bulk, s.opts.BulkTimeout, func(ctx context.Context, c *redis.Client) error {
		_, err := c.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.HSet(ctx, rulesKey(s.site), fields)
			p.Incr(ctx, rulesVersionKey(s.site))
			p.Publish(ctx, rulesChannel(s.site), hlc)
			return nil
		})
		return err
	})
}

// Versions returns gm:{SITE}:rules:version of every site that answered
// within the call budget (0 for a site that never wrote rules); sites that
// did not answer are absent. It is the cheap poll behind Subscribe.
func (s *Store) Versions(ctx context.Context) map[string]int64 {
	vals := make([]int64, len(s.all))
	oks := make([]bool, len(s.all))
	s.fanOut(func(i int, in *instance) {
		err := in.call(ctx, in.fast, s.opts.Timeout, func(ctx context.Context, c *redis.Client) error {
			v, err := c.Get(ctx, rulesVersionKey(in.site)).Int64()
			vals[i] = v
			return err
		})
		oks[i] = err == nil || errors.Is(err, redis.Nil)
	})
	out := make(map[string]int64, len(s.all))
	for i, in := range s.all {
		if oks[i] {
			out[in.site] = vals[i]
		}
	}
	return out
}

// Subscribe calls fn(site) whenever a site announces a rules change, and
// also each time a subscription is (re)established, since announcements
// sent while disconnected are lost. It listens on the own primary and on
// every peer replica (PUBLISH propagates to replicas) until ctx ends or the
// Store closes, reconnecting by itself; it returns at once. fn is called
// from one goroutine per instance, so it must be safe for concurrent use,
// and should return quickly (hand the work to a refresher). Notifications
// are hints: keep polling Versions too.
func (s *Store) Subscribe(ctx context.Context, fn func(site string)) {
	for _, in := range s.all {
		s.bgWG.Add(1)
		go func(in *instance) {
			defer s.bgWG.Done()
			s.subscribeLoop(ctx, in, fn)
		}(in)
	}
}

// subscribeIdle is how long a subscription may stay silent before it is
// pinged; a ping left unanswered for another interval forces a reconnect.
const subscribeIdle = 5 * time.Second

func (s *Store) subscribeLoop(ctx context.Context, in *instance, fn func(site string)) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// A blocked ReceiveTimeout does not notice a cancelled context (only
	// deadlines reach the socket), so closing the subscription is what ends
	// it promptly at Close.
	var mu sync.Mutex
	var current *redis.PubSub
	go func() {
		select {
		case <-s.bgCtx.Done():
			cancel()
		case <-ctx.Done():
		}
		mu.Lock()
		if current != nil {
			_ = current.Close()
		}
		mu.Unlock()
	}()
	log := s.opts.Logger.With().Str("site", in.site).Str("role", in.role).Str("addr", in.addr).Logger()
	channel := rulesChannel(in.site)
	backoff := 100 * time.Millisecond
	failing := false
	for {
		mu.Lock()
		if ctx.Err() != nil {
			mu.Unlock()
			return
		}
		ps := in.bulk.Subscribe(ctx, channel)
		current = ps
		mu.Unlock()
		pinged := false
		for ctx.Err() == nil {
			msg, err := ps.ReceiveTimeout(ctx, subscribeIdle)
			if err != nil {
				if ctx.Err() != nil {
					break
				}
				var ne interface{ Timeout() bool }
				if errors.As(err, &ne) && ne.Timeout() && !pinged {
					// Idle: ask for a PONG; another silent interval means a hung server.
					pinged = ps.Ping(ctx) == nil
					if pinged {
						continue
					}
				}
				if !failing {
					log.Warn().Err(err).Msg("rules subscription lost; reconnecting")
					failing = true
				}
				break
			}
			pinged = false
			backoff = 100 * time.Millisecond
			switch m := msg.(type) {
			case *redis.Subscription:
				if m.Kind == "subscribe" {
					if failing {
						log.Info().Msg("rules subscription restored")
						failing = false
					}
					fn(in.site)
				}
			case *redis.Message:
				fn(in.site)
			}
		}
		mu.Lock()
		_ = ps.Close()
		current = nil
		mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, s.opts.BreakerOpenFor)
	}
}

// gcScript deletes hash fields whose value is still the one that was judged
// deletable (a concurrent write is never lost) and bumps the version.
var gcScript = redis.NewScript(`
local removed = {}
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i+1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    removed[#removed + 1] = ARGV[i]
  end
end
if #removed > 0 then redis.call('INCR', KEYS[2]) end
return removed
`)

// GCTombstones removes from the own rules hash
//   - versions superseded by a newer version held by another site (live or
//     tombstone): they can never win again; and
//   - own tombstones older than olderThan, but only when every peer answered
//     and none still holds a version of that rule — otherwise dropping the
//     tombstone would resurrect the older version held there.
//
// Every site running GC in turn therefore lets a rule deleted anywhere
// disappear everywhere. The merged live view does not change. removed lists
// the ids dropped from the own hash, sorted.
func (s *Store) GCTombstones(ctx context.Context, olderThan time.Duration) (removed []string, err error) {
	reads := s.readRules(ctx)
	if !reads[0].status.Available {
		return nil, fmt.Errorf("state: gc tombstones: own primary: %s: %w", reads[0].status.Err, ErrUnavailable)
	}
	merged, _, missing := s.mergeReads(reads)
	cutoff := s.now().Add(-olderThan).UnixMilli()
	heldByPeer := func(id string) bool {
		for _, r := range reads[1:] {
			if _, ok := r.docs[id]; ok {
				return true
			}
		}
		return false
	}
	var args []any
	for id, d := range reads[0].docs {
		w := merged[id]
		drop := w.Site != s.site || w.HLC != d.HLC
		if !drop && d.Deleted && len(missing) == 0 && !heldByPeer(id) {
			if h, err := ParseHLC(d.HLC); err == nil && h.Wall < cutoff {
				drop = true
			}
		}
		if drop {
			args = append(args, id, reads[0].raw[id])
		}
	}
	if len(args) == 0 {
		return nil, nil
	}
	err = s.own.call(ctx, s.own.bulk, s.opts.BulkTimeout, func(ctx context.Context, c *redis.Client) error {
		var err error
		removed, err = gcScript.Run(ctx, c, []string{rulesKey(s.site), rulesVersionKey(s.site)}, args...).StringSlice()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("state: gc tombstones: %w", err)
	}
	sort.Strings(removed)
	return removed, nil
}
