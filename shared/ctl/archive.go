package ctl

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"
)

// ArchiveStatus is what the archive milter serves at /archive/status on
// its metrics listener and `geomilter ctl archive status` prints.
type ArchiveStatus struct {
	Journal ArchiveJournal        `json:"journal"`
	Targets []ArchiveTargetStatus `json:"targets"`
	Replays []ArchiveReplay       `json:"replays,omitempty"`
}

// ArchiveJournal is the journal spool as a whole.
type ArchiveJournal struct {
	Dir      string `json:"dir"`
	Records  int64  `json:"records"`   // not yet delivered to every target
	Bytes    int64  `json:"bytes"`     // their bytes (bounded by MaxBytes)
	MaxBytes int64  `json:"max_bytes"` // journal.max_bytes: at the bound, new mail is deferred
	// RetainedBytes are delivered records kept for replay (journal.retain);
	// OldestReplayable is the oldest record `ctl archive replay` can send.
	RetainedBytes    int64     `json:"retained_bytes"`
	OldestReplayable time.Time `json:"oldest_replayable,omitzero"`
	Fsyncs           uint64    `json:"fsyncs"`
	DeadLetterDir    string    `json:"dead_letter_dir"`
}

// ArchiveTargetStatus is one target.
type ArchiveTargetStatus struct {
	Name           string    `json:"name"`
	Type           string    `json:"type"`
	BacklogRecords int64     `json:"backlog_records"`
	OldestUnsent   time.Time `json:"oldest_unsent,omitzero"` // zero: nothing waits
	LastSuccess    time.Time `json:"last_success,omitzero"`
	LastError      string    `json:"last_error,omitempty"`
	LastErrorAt    time.Time `json:"last_error_at,omitzero"`
	Failing        bool      `json:"failing"` // the last send failed; records wait on disk
	DeadLetters    int64     `json:"dead_letters"`
}

// ArchiveReplay is one replay started by `ctl archive replay`.
type ArchiveReplay struct {
	ID      string    `json:"id"`
	Target  string    `json:"target"`
	Since   time.Time `json:"since"`
	Until   uint64    `json:"until_seq"` // the last record it sends (the head when it started)
	Started time.Time `json:"started"`
	Sent    int64     `json:"sent"` // records acknowledged by the target (including ones not meant for it, skipped)
	Done    bool      `json:"done"`
	Error   string    `json:"error,omitempty"`
}

func (t *tool) archive(ctx context.Context, args []string) int {
	if len(args) == 0 {
		fmt.Fprint(t.errw, usage)
		return ExitUsage
	}
	switch args[0] {
	case "status":
		return t.archiveStatus(ctx, args[1:])
	case "replay":
		return t.archiveReplay(ctx, args[1:])
	case "help", "-h", "-help", "--help":
		fmt.Fprint(t.out, usage)
		return ExitOK
	}
	fmt.Fprintf(t.errw, "geomilter ctl: unknown command \"archive %s\"\n\n%s", args[0], usage)
	return ExitUsage
}

// archiveURL is the archive milter's metrics listener (its process's: the
// suite's when archive is a member), from the config.
func (t *tool) archiveURL(path string) (string, bool) {
	if _, ok := t.cfg.Milter("archive"); !ok {
		fmt.Fprintf(t.errw, "geomilter ctl: %s has no milters.archive section\n", t.cfgPath)
		return "", false
	}
	addr, err := t.cfg.MetricsListen(t.cfg.ProcessOf("archive")) // the suite's, when archive is a member
	if err != nil {
		fmt.Fprintf(t.errw, "geomilter ctl: %v\n", err)
		return "", false
	}
	return "http://" + addr + path, true
}

func (t *tool) archiveStatus(ctx context.Context, args []string) int {
	fs := t.flagSet("archive status")
	asJSON := fs.Bool("json", false, "print the status as JSON")
	rest, err := parseArgs(fs, args)
	if err != nil {
		return t.parseFailed("archive status", fs, err)
	}
	if len(rest) > 0 {
		fmt.Fprintln(t.errw, "usage: geomilter ctl archive status [--json]")
		return ExitUsage
	}
	if !t.loadConfig() {
		return ExitProblems
	}
	u, ok := t.archiveURL("/archive/status")
	if !ok {
		return ExitProblems
	}
	var st ArchiveStatus
	body, err := t.archiveCall(ctx, http.MethodGet, u)
	if err == nil {
		err = json.Unmarshal(body, &st)
	}
	if err != nil {
		fmt.Fprintf(t.errw, "geomilter ctl: archive milter at %s: %v\n", u, err)
		return ExitProblems
	}
	if *asJSON {
		t.out.Write(body)
		return ExitOK
	}
	now := t.now()
	j := st.Journal
	fmt.Fprintf(t.out, "journal %s: %d records, %s waiting (bound %s); %s retained for replay", j.Dir, j.Records, bytesWord(j.Bytes), bytesWord(j.MaxBytes), bytesWord(j.RetainedBytes))
	if !j.OldestReplayable.IsZero() {
		fmt.Fprintf(t.out, ", replayable since %s", j.OldestReplayable.UTC().Format(time.RFC3339))
	}
	fmt.Fprintf(t.out, "\ndead letters: %s\n\n", j.DeadLetterDir)
	tw := tabwriter.NewWriter(t.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TARGET\tTYPE\tSTATE\tBACKLOG\tOLDEST\tDEAD LETTERS\tLAST ERROR")
	problems := 0
	for _, tg := range st.Targets {
		state, oldest := "up", "-"
		if tg.Failing {
			state = "failing"
			problems++
		}
		if !tg.OldestUnsent.IsZero() {
			oldest = now.Sub(tg.OldestUnsent).Round(time.Second).String()
		}
		last := "-"
		if tg.LastError != "" {
			last = tg.LastErrorAt.UTC().Format(time.RFC3339) + " " + firstLine(tg.LastError)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%d\t%s\n", tg.Name, tg.Type, state, tg.BacklogRecords, oldest, tg.DeadLetters, last)
	}
	tw.Flush()
	for _, r := range st.Replays {
		word := "running"
		if r.Done {
			word = "done"
		}
		if r.Error != "" {
			word = "failed: " + r.Error
		}
		fmt.Fprintf(t.out, "replay %s to %s since %s: %d records sent, %s\n", r.ID, r.Target, r.Since.UTC().Format(time.RFC3339), r.Sent, word)
	}
	if j.MaxBytes > 0 && j.Bytes >= j.MaxBytes*95/100 {
		fmt.Fprintf(t.out, "\nproblem: the journal is nearly full; new mail is deferred at the bound\n")
		problems++
	}
	if problems > 0 {
		return ExitProblems
	}
	return ExitOK
}

func (t *tool) archiveReplay(ctx context.Context, args []string) int {
	fs := t.flagSet("archive replay")
	target := fs.String("target", "", "the target `NAME` to send the records to again")
	since := fs.String("since", "", "first record's journal time: RFC 3339 (2026-12-07T05:00:00Z) or a duration back from now (2h)")
	rest, err := parseArgs(fs, args)
	if err != nil {
		return t.parseFailed("archive replay", fs, err)
	}
	if len(rest) > 0 || *target == "" || *since == "" {
		fmt.Fprintln(t.errw, "usage: geomilter ctl archive replay --target NAME --since TIME")
		return ExitUsage
	}
	from, err := parseSince(*since, t.now())
	if err != nil {
		fmt.Fprintf(t.errw, "geomilter ctl: --since: %v\n", err)
		return ExitUsage
	}
	if !t.loadConfig() {
		return ExitProblems
	}
	u, ok := t.archiveURL("/archive/replay")
	if !ok {
		return ExitProblems
	}
	q := url.Values{"target": {*target}, "since": {from.UTC().Format(time.RFC3339Nano)}}
	body, err := t.archiveCall(ctx, http.MethodPost, u+"?"+q.Encode())
	if err != nil {
		fmt.Fprintf(t.errw, "geomilter ctl: archive replay: %v\n", err)
		return ExitProblems
	}
	var r ArchiveReplay
	if err := json.Unmarshal(body, &r); err != nil {
		fmt.Fprintf(t.errw, "geomilter ctl: archive replay: bad answer: %v\n", err)
		return ExitProblems
	}
	fmt.Fprintf(t.out, "replay %s started: records since %s to target %s (up to record %d); follow it with `geomilter ctl archive status`\n",
		r.ID, r.Since.UTC().Format(time.RFC3339), r.Target, r.Until)
	return ExitOK
}

// parseSince takes RFC 3339 or a duration back from now.
func parseSince(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("duration %q is negative", s)
		}
		return now.Add(-d), nil
	}
	tm, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("want RFC 3339 (2026-12-07T05:00:00Z) or a duration (2h), got %q", s)
	}
	return tm, nil
}

// archiveCall makes one request to the archive milter and returns the body
// of a 2xx answer; any other answer is an error with its text.
func (t *tool) archiveCall(ctx context.Context, method, u string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, t.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := t.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		return nil, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return body, nil
}

func bytesWord(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
