package ctl

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/geomilter/geomilter/shared/config"
	"github.com/geomilter/geomilter/shared/service"
	"github.com/geomilter/geomilter/shared/state"
	"github.com/geomilter/geomilter/shared/trail"
)

// Bounds of `ctl trail`.
const (
	// DefaultTrailSince is how far back a search looks without --since.
	DefaultTrailSince = 24 * time.Hour
	// DefaultTrailLimit is how many decisions a search prints without --limit.
	DefaultTrailLimit = 1000
	// trailPage is the XRANGE COUNT of one call: a page of ~1 KB events is
	// about a megabyte, one round trip well inside --timeout.
	trailPage = 1000
	// trailScanCap bounds the entries read from one instance, so a search
	// over a wide window ends; the operator is told to narrow it.
	trailScanCap = 2_000_000
	// Stream ids are the XADD time on the Redis host, not the event's time:
	// an event is added after it happened (the drain ships the spool in the
	// background, later while a sink was dark), and the two hosts' clocks
	// differ a little. The id range read is the window widened by these.
	trailSkew       = 5 * time.Minute
	trailDrainDelay = time.Hour
)

// trailFilter selects trail events; empty fields match everything.
type trailFilter struct {
	messageID string // without angle brackets
	queueID   string
	sender    string // without angle brackets; nullSender for "<>"
	rcpt      string
	client    *net.IPNet // a single address is a /32 or /128
	since     time.Time
	until     time.Time // zero: up to now
}

// nullSender in trailFilter.sender asks for the null sender.
const nullSender = "<>"

// match reports whether ev passes every filter but the message id, which
// the access milter never records (it negotiates the headers away) and is
// matched in two passes (see scanInstance).
func (f *trailFilter) match(ev *trail.Event) bool {
	if ev.Time.Before(f.since) || (!f.until.IsZero() && ev.Time.After(f.until)) {
		return false
	}
	if f.queueID != "" && ev.QueueID != f.queueID {
		return false
	}
	if f.sender != "" {
		if f.sender == nullSender {
			if ev.Sender != "" || ev.NoSender {
				return false
			}
		} else if !strings.EqualFold(ev.Sender, f.sender) {
			return false
		}
	}
	if f.rcpt != "" && !slices.ContainsFunc(ev.Rcpts, func(r trail.Rcpt) bool { return strings.EqualFold(r.Addr, f.rcpt) }) {
		return false
	}
	if f.client != nil {
		ip := net.ParseIP(ev.ClientIP)
		if ip == nil || !f.client.Contains(ip) {
			return false
		}
	}
	return true
}

// trimMessageID drops the angle brackets and spaces around a Message-ID, so
// `--message-id abc@x` and `--message-id '<abc@x>'` find the same mail.
func trimMessageID(s string) string {
	return strings.TrimSpace(strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(s), "<"), ">"))
}

// trailHit is one matching event.
type trailHit struct {
	ev  trail.Event
	raw string // as stored, for --json
}

// trailSource is one instance and the stream of one site it holds.
type trailSource struct {
	site, role string
	ic         config.InstanceConfig
}

func (s trailSource) String() string {
	addr := s.ic.Addr
	if s.ic.Sentinel != nil {
		addr = "sentinel:" + s.ic.Sentinel.MasterName
	}
	return s.site + " " + s.role + " " + addr
}

// trailResult is what one instance answered.
type trailResult struct {
	src       trailSource
	hits      []trailHit
	scanned   int
	err       error // nil: answered fully
	partial   bool  // answered, then failed: hits are what came before
	truncated bool  // stopped at the limit or the scan cap
	capped    bool  // stopped at the scan cap
}

func (t *tool) trail(ctx context.Context, args []string) int {
	fs := t.flagSet("trail")
	var f trailFilter
	msgID := fs.String("message-id", "", "the Message-ID `ID` (with or without <>); shows every milter's decision on that message, access's too (joined by host and queue id)")
	fs.StringVar(&f.queueID, "queue-id", "", "Postfix queue `ID`")
	sender := fs.String("sender", "", "envelope sender `ADDR` (<> for the null sender)")
	fs.StringVar(&f.rcpt, "rcpt", "", "envelope recipient `ADDR` (any of the transaction's)")
	client := fs.String("client", "", "SMTP client `IP` or network (203.0.113.0/24)")
	since := fs.String("since", "", "start of the window, `TIME`: RFC 3339 or a duration back from now (default "+DefaultTrailSince.String()+")")
	until := fs.String("until", "", "end of the window, `TIME`: RFC 3339 or a duration back from now (default now)")
	limit := fs.Int("limit", DefaultTrailLimit, "print at most `N` decisions, the first in time order")
	asJSON := fs.Bool("json", false, "print each event as stored, one per line")
	rest, err := parseArgs(fs, args)
	if err != nil {
		return t.parseFailed("trail", fs, err)
	}
	if len(rest) > 0 {
		fmt.Fprintln(t.errw, "usage: geomilter ctl trail [--message-id ID] [--queue-id QID] [--sender ADDR] [--rcpt ADDR] [--client IP] [--since TIME|2h] [--until TIME] [--limit N] [--json] (no positional arguments)")
		return ExitUsage
	}
	now := t.now()
	f.messageID = trimMessageID(*msgID)
	f.sender = strings.TrimSpace(*sender)
	if f.sender != nullSender {
		f.sender = strings.TrimSuffix(strings.TrimPrefix(f.sender, "<"), ">")
	}
	if *client != "" {
		if f.client, err = parseClient(*client); err != nil {
			fmt.Fprintf(t.errw, "geomilter ctl: --client: %v\n", err)
			return ExitUsage
		}
	}
	f.since = now.Add(-DefaultTrailSince)
	if *since != "" {
		if f.since, err = parseSince(*since, now); err != nil {
			fmt.Fprintf(t.errw, "geomilter ctl: --since: %v\n", err)
			return ExitUsage
		}
	}
	if *until != "" {
		if f.until, err = parseSince(*until, now); err != nil {
			fmt.Fprintf(t.errw, "geomilter ctl: --until: %v\n", err)
			return ExitUsage
		}
		if f.until.Before(f.since) {
			fmt.Fprintf(t.errw, "geomilter ctl: --until %s is before --since %s\n", f.until.UTC().Format(time.RFC3339), f.since.UTC().Format(time.RFC3339))
			return ExitUsage
		}
	}
	if *limit <= 0 {
		fmt.Fprintf(t.errw, "geomilter ctl: --limit must be at least 1, got %d\n", *limit)
		return ExitUsage
	}
	if !t.loadConfig() {
		return ExitProblems
	}
	if t.cfg.Standalone() {
		t.errorf("%s has no redis section: the trail is searchable only in its redis sink; in standalone mode read the file or http sinks", t.cfgPath)
		return ExitProblems
	}

	srcs := []trailSource{{site: t.cfg.Site, role: state.RolePrimary, ic: t.cfg.Redis.Local}}
	for _, name := range slices.Sorted(maps.Keys(t.cfg.Redis.Peers)) {
		srcs = append(srcs, trailSource{site: name, role: state.RolePeerReplica, ic: t.cfg.Redis.Peers[name]})
	}
	results := make([]trailResult, len(srcs))
	var wg sync.WaitGroup
	for i, src := range srcs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = t.searchInstance(ctx, src, &f, *limit)
		}()
	}
	wg.Wait()

	answered := 0
	var hits []trailHit
	truncated := false
	for _, r := range results {
		switch {
		case r.err != nil && !r.partial:
			t.errorf("%s did not answer: %v; the trail of site %s is not in this view", r.src, r.err, r.src.site)
			continue
		case r.err != nil:
			t.warnf("%s failed after %d entries: %v; the trail of site %s is shown only up to there", r.src, r.scanned, r.err, r.src.site)
		case r.capped:
			t.warnf("%s: stopped after reading %d entries; narrow --since/--until", r.src, r.scanned)
		}
		answered++
		truncated = truncated || r.truncated
		hits = append(hits, r.hits...)
	}
	hits = mergeHits(hits)
	if len(hits) > *limit {
		hits, truncated = hits[:*limit], true
	}
	if truncated {
		t.warnf("more decisions match than --limit %d; these are the first in time order: narrow the search or raise --limit", *limit)
	}
	for _, h := range hits {
		if *asJSON {
			fmt.Fprintln(t.out, h.raw)
		} else {
			fmt.Fprintln(t.out, trailLine(&h.ev))
		}
	}
	if answered == 0 {
		return ExitProblems
	}
	return ExitOK
}

// parseClient takes an address or a network in CIDR notation.
func parseClient(s string) (*net.IPNet, error) {
	if strings.Contains(s, "/") {
		_, n, err := net.ParseCIDR(s)
		if err != nil {
			return nil, fmt.Errorf("want an IP address or network, got %q", s)
		}
		return n, nil
	}
	ip := net.ParseIP(s)
	if ip == nil {
		return nil, fmt.Errorf("want an IP address or network, got %q", s)
	}
	bits := 128
	if ip4 := ip.To4(); ip4 != nil {
		ip, bits = ip4, 32
	}
	return &net.IPNet{IP: ip, Mask: net.CIDRMask(bits, bits)}, nil
}

// mergeHits orders the hits of all sites by event time (then site, then
// event id, so the output is stable) and drops redelivered copies: the drain
// delivers at least once (docs/trail-events.md).
func mergeHits(hits []trailHit) []trailHit {
	slices.SortFunc(hits, func(a, b trailHit) int {
		return cmp.Or(a.ev.Time.Compare(b.ev.Time), cmp.Compare(a.ev.Site, b.ev.Site), cmp.Compare(a.ev.EventID, b.ev.EventID))
	})
	return slices.CompactFunc(hits, func(a, b trailHit) bool { return a.ev.EventID == b.ev.EventID })
}

// searchInstance reads src's stream of its site within the window. With a
// Message-ID it reads twice: the first pass finds the events carrying the
// Message-ID and notes their (host, queue id); the second collects every
// event of those transactions, the access milter's too, which has no
// Message-ID. The other filters apply in both passes.
func (t *tool) searchInstance(ctx context.Context, src trailSource, f *trailFilter, limit int) trailResult {
	res := trailResult{src: src}
	c, err := state.NewBackgroundClient(service.StateInstance(src.ic), t.timeout)
	if err != nil {
		res.err = err
		return res
	}
	defer c.Close()
	start, end := streamRange(f)
	stream := service.TrailStream(src.site)

	var keys map[string]bool // host + " " + queue id of the messages with the Message-ID
	if f.messageID != "" {
		keys = map[string]bool{}
		n, err := scanStream(ctx, c, stream, start, end, t.timeout, func(raw string, ev *trail.Event) bool {
			if trimMessageID(ev.MessageID) != f.messageID || !f.match(ev) {
				return true
			}
			if ev.QueueID == "" {
				// No queue id to join on: shown as it is.
				res.hits = append(res.hits, trailHit{*ev, raw})
			} else {
				keys[ev.Host+" "+ev.QueueID] = true
			}
			if len(keys)+len(res.hits) > limit {
				res.truncated = true
				return false
			}
			return true
		})
		res.scanned += n
		if n >= trailScanCap {
			res.capped, res.truncated = true, true
		}
		if err != nil {
			res.err, res.partial = err, n > 0
			return res
		}
		if len(keys) == 0 {
			return res
		}
	}
	n, err := scanStream(ctx, c, stream, start, end, t.timeout, func(raw string, ev *trail.Event) bool {
		if keys != nil && !keys[ev.Host+" "+ev.QueueID] {
			return true
		}
		if !f.match(ev) {
			return true
		}
		res.hits = append(res.hits, trailHit{*ev, raw})
		if len(res.hits) > limit {
			res.truncated = true
			return false
		}
		return true
	})
	res.scanned += n
	if n >= trailScanCap {
		res.capped, res.truncated = true, true
	}
	if err != nil {
		res.err, res.partial = err, res.scanned > 0
	}
	return res
}

// streamRange is the XRANGE id range for the filter's window (stream ids
// are milliseconds of the XADD time): from a little before --since (clock
// skew) to well after --until (drain delay), or to the end.
func streamRange(f *trailFilter) (start, end string) {
	start = strconv.FormatInt(max(f.since.Add(-trailSkew).UnixMilli(), 0), 10)
	end = "+"
	if !f.until.IsZero() {
		end = strconv.FormatInt(f.until.Add(trailDrainDelay).UnixMilli(), 10)
	}
	return start, end
}

// scanStream reads stream[start, end] in pages of trailPage entries, each
// page one call bounded by timeout, and hands every decodable event to
// visit until it returns false, the range ends or trailScanCap entries are
// read. It returns the entries read. Entries that are not trail events are
// skipped: the stream is written only by the redis sink, so one would be a
// foreign write, not a reason to hide the rest.
func scanStream(ctx context.Context, c *redis.Client, stream, start, end string, timeout time.Duration,
	visit func(raw string, ev *trail.Event) bool) (int, error) {
	n := 0
	for n < trailScanCap {
		pctx, cancel := context.WithTimeout(ctx, timeout)
		msgs, err := c.XRangeN(pctx, stream, start, end, trailPage).Result()
		cancel()
		if err != nil {
			return n, fmt.Errorf("XRANGE %s: %w", stream, err)
		}
		for _, m := range msgs {
			n++
			raw, _ := m.Values["event"].(string)
			var ev trail.Event
			if raw == "" || json.Unmarshal([]byte(raw), &ev) != nil {
				continue
			}
			if !visit(raw, &ev) {
				return n, nil
			}
		}
		if len(msgs) < trailPage {
			return n, nil
		}
		start = "(" + msgs[len(msgs)-1].ID
	}
	return n, nil
}

// trailLine is one decision for people: time, site, milter, queue id,
// action, sender → recipients (with their own verdict where it differs),
// and the rules and reasons.
func trailLine(ev *trail.Event) string {
	var b strings.Builder
	qid := cmp.Or(ev.QueueID, "-")
	fmt.Fprintf(&b, "%s %-6s %-7s %-14s %-10s ", ev.Time.UTC().Format("2006-01-02T15:04:05.000Z"), ev.Site, ev.Milter, qid, ev.Action)
	switch {
	case ev.NoSender:
		b.WriteString("(no MAIL FROM)")
	case ev.Sender == "":
		b.WriteString("<>")
	default:
		b.WriteString(ev.Sender)
	}
	if len(ev.Rcpts) > 0 {
		b.WriteString(" →")
		for i, r := range ev.Rcpts {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(" " + r.Addr)
			if r.Action != "" && r.Action != "accept" {
				b.WriteString(" (" + r.Action + ")")
			}
		}
	}
	if ev.ClientIP != "" {
		b.WriteString(" client " + ev.ClientIP)
	}
	if ev.Reply != "" {
		b.WriteString(" reply \"" + ev.Reply + "\"")
	}
	if len(ev.RuleIDs) > 0 {
		b.WriteString(" rules " + strings.Join(ev.RuleIDs, ","))
	}
	if len(ev.Reasons) > 0 {
		b.WriteString(" — " + strings.Join(ev.Reasons, "; "))
	}
	if len(ev.Degraded) > 0 {
		b.WriteString(" [degraded: " + strings.Join(ev.Degraded, ",") + "]")
	}
	return b.String()
}
