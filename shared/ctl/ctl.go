// Package ctl implements `geomilter ctl`, the ops tool: rules apply, list,
// delete and export against the site-partitioned Redis (writing to this
// site's primary only, diffing against the view merged over all sites), and
// status (Redis instances, replica links, and each local milter process's
// rules snapshot and trail backlog, read from its /metrics).
//
// ctl runs off the mail path, so its Redis calls get budgets of seconds, not
// the milters' 25ms. docs/operations.md describes every command.
package ctl

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/shared/config"
	"github.com/geomilter/geomilter/shared/service"
	"github.com/geomilter/geomilter/shared/state"
	"github.com/geomilter/geomilter/shared/yamlconf"
)

// Exit codes.
const (
	ExitOK       = 0 // done; nothing wrong
	ExitProblems = 1 // invalid input, an unreachable instance, a refused change
	ExitUsage    = 2 // bad command line
)

// DefaultConfig is the config file used without --config.
const DefaultConfig = "/etc/geomilter/geomilter.yaml"

// DefaultTimeout is the budget of one Redis call or metrics scrape.
const DefaultTimeout = 2 * time.Second

// command is one ctl command: its line in the usage text and the head of its --help.
type command struct {
	name, args, desc string
}

// commands are ctl's commands, in the order the usage text lists them.
var commands = []command{
	{"rules apply", "-f|--file FILE [--dry-run] [--prune]", "validate FILE, show and write the changes (this site's primary)"},
	{"rules list", "", "rules and tenants in force (merged over all sites)"},
	{"rules delete", "ID... [--dry-run]", "delete rules or tenants (tenant:ID) at every site"},
	{"rules export", "", "print the merged rules as a rules file"},
	{"status", "", "Redis instances, replica links, local milter processes: up, down (since …), degraded (…)"},
	{"archive status", "[--json]", "the archive journal: per target backlog, oldest record, last error, dead letters"},
	{"archive replay", "--target NAME --since TIME", "send the journal records since TIME (RFC 3339 or 2h) to a target again"},
	{"trail", "[FILTERS] [--since 2h] [--json]", "each milter's decisions at every site, in time order; FILTERS: --message-id --queue-id --sender --rcpt --client"},
	{"dkim keygen", "--domain D --selector S [--algorithm rsa|ed25519] [--bits N] [--out FILE|--dir DIR] [--force]", "write a DKIM signing key (0600), print its DNS record and signing: entry"},
}

// usage is the text of `geomilter ctl --help`.
var usage = func() string {
	var b strings.Builder
	b.WriteString("usage: geomilter ctl [--config FILE] [--timeout 2s] <command>     geomilter ctl <command> --help: its flags\n\ncommands:\n")
	for _, c := range commands {
		fmt.Fprintf(&b, "  %-43s %s\n", strings.TrimSpace(c.name+" "+c.args), c.desc)
	}
	b.WriteString("\nflags (before or after the command):\n")
	fmt.Fprintf(&b, "  %-43s %s\n", "--config FILE", "host config (default "+DefaultConfig+")")
	fmt.Fprintf(&b, "  %-43s %s\n", "--timeout DURATION", "budget of one Redis call or metrics scrape (default "+DefaultTimeout.String()+")")
	b.WriteString("\nexit codes: 0 ok, 1 problems or unreachable, 2 usage\n")
	return b.String()
}()

// commandHelp is the text of `geomilter ctl NAME --help`: the command's line and
// each of its flags on one line, from its flag set (so it cannot drift).
func commandHelp(name string, fs *flag.FlagSet) string {
	var b strings.Builder
	for _, c := range commands {
		if c.name == name {
			fmt.Fprintf(&b, "usage: geomilter ctl %s\n\n%s\n", strings.TrimSpace(c.name+" "+c.args), c.desc)
		}
	}
	b.WriteString("\nflags:\n")
	fs.VisitAll(func(f *flag.Flag) {
		arg, text := flag.UnquoteUsage(f)
		dash := "--"
		if len(f.Name) == 1 {
			dash = "-"
		}
		if def := f.DefValue; def != "" && def != "false" && def != "0" {
			text += " (default " + def + ")"
		}
		fmt.Fprintf(&b, "  %-22s %s\n", strings.TrimSpace(dash+f.Name+" "+strings.ToUpper(arg)), text)
	})
	return b.String()
}

// parseFailed answers a flag parse error: --help prints the command's help
// (exit 0); anything else (the flag package has printed what) points to it.
func (t *tool) parseFailed(name string, fs *flag.FlagSet, err error) int {
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(t.out, commandHelp(name, fs))
		return ExitOK
	}
	fmt.Fprintf(t.errw, "geomilter ctl %s --help lists its flags\n", name)
	return ExitUsage
}

// tool is one invocation's environment.
type tool struct {
	cfgPath string
	timeout time.Duration
	cfg     *config.Config
	out     io.Writer
	errw    io.Writer
	http    *http.Client
	now     func() time.Time
}

// Run runs `geomilter ctl ARGS…` and returns the exit code.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	t := &tool{out: stdout, errw: stderr, now: time.Now}
	fs := t.flagSet("ctl")
	// Global flags stop at the command; the command parses the rest (and
	// accepts --config and --timeout there too).
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usage)
			return ExitOK
		}
		fmt.Fprint(stderr, "\n"+usage)
		return ExitUsage
	}
	rest := fs.Args()
	if len(rest) == 0 {
		fmt.Fprint(stderr, usage)
		return ExitUsage
	}
	switch rest[0] {
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return ExitOK
	case "rules":
		if len(rest) < 2 {
			fmt.Fprint(stderr, usage)
			return ExitUsage
		}
		switch rest[1] {
		case "help", "-h", "-help", "--help":
			fmt.Fprint(stdout, usage)
			return ExitOK
		case "apply":
			return t.rulesApply(ctx, rest[2:])
		case "list":
			return t.rulesList(ctx, rest[2:])
		case "delete":
			return t.rulesDelete(ctx, rest[2:])
		case "export":
			return t.rulesExport(ctx, rest[2:])
		}
		fmt.Fprintf(stderr, "geomilter ctl: unknown command \"rules %s\"\n\n%s", rest[1], usage)
		return ExitUsage
	case "status":
		return t.status(ctx, rest[1:])
	case "archive":
		return t.archive(ctx, rest[1:])
	case "trail":
		return t.trail(ctx, rest[1:])
	case "dkim":
		if len(rest) >= 2 && rest[1] == "keygen" {
			return t.dkimKeygen(rest[2:])
		}
		if len(rest) >= 2 && (rest[1] == "help" || rest[1] == "-h" || rest[1] == "-help" || rest[1] == "--help") {
			fmt.Fprint(stdout, usage)
			return ExitOK
		}
		fmt.Fprint(stderr, usage)
		return ExitUsage
	}
	fmt.Fprintf(stderr, "geomilter ctl: unknown command %q\n\n%s", rest[0], usage)
	return ExitUsage
}

// flagSet returns a flag set with the global flags, so --config and
// --timeout may also follow the command.
func (t *tool) flagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(t.errw)
	fs.Usage = func() {} // parseFailed answers: help to stdout, errors with a pointer to it
	if t.cfgPath == "" {
		t.cfgPath = DefaultConfig
		t.timeout = DefaultTimeout
	}
	fs.StringVar(&t.cfgPath, "config", t.cfgPath, "the host config `FILE`")
	fs.DurationVar(&t.timeout, "timeout", t.timeout, "budget of one Redis call or metrics scrape")
	return fs
}

// parseArgs parses flags anywhere among the arguments (the flag package stops
// at the first non-flag) and returns the positional ones.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// loadConfig loads --config, printing its problems.
func (t *tool) loadConfig() bool {
	cfg, err := config.Load(t.cfgPath)
	if err != nil {
		var ps yamlconf.Problems
		if errors.As(err, &ps) {
			for _, p := range ps {
				fmt.Fprintln(t.errw, p.Error())
			}
		} else {
			fmt.Fprintf(t.errw, "geomilter ctl: %v\n", err)
		}
		return false
	}
	if t.timeout <= 0 {
		t.timeout = DefaultTimeout
	}
	t.cfg = cfg
	t.http = &http.Client{Timeout: t.timeout}
	return true
}

// openStore opens this site's state with ctl's budgets: seconds, not the
// mail path's milliseconds, and one failure before the breaker opens is
// fine (ctl makes a handful of calls and exits).
func (t *tool) openStore() (*state.Store, error) {
	o := service.StateOptions(t.cfg, zerolog.Nop())
	o.Timeout = t.timeout
	o.BulkTimeout = max(t.timeout, state.DefaultBulkTimeout)
	o.DialTimeout = t.timeout
	st, err := state.Open(o)
	if err != nil {
		return nil, fmt.Errorf("redis: %w", err)
	}
	return st, nil
}

func (t *tool) warnf(format string, args ...any) {
	fmt.Fprintf(t.errw, "warning: "+format+"\n", args...)
}

func (t *tool) errorf(format string, args ...any) {
	fmt.Fprintf(t.errw, "geomilter ctl: "+format+"\n", args...)
}

// missingPeers warns about sites that did not answer a load and returns
// whether the own primary answered.
func (t *tool) checkSources(srcs map[string]state.SiteStatus, site string) bool {
	var missing []string
	for name, st := range srcs {
		if !st.Available && name != site {
			missing = append(missing, name+" ("+st.Err+")")
		}
		for _, f := range st.Invalid {
			t.warnf("site %s: rules field %q is undecodable and ignored", name, f)
		}
	}
	if len(missing) > 0 {
		t.warnf("the local copies of these sites did not answer; their rules are not in this view: %s",
			strings.Join(missing, "; "))
	}
	if own, ok := srcs[site]; !ok || !own.Available {
		t.errorf("this site's primary (%s) did not answer: %s", site, srcs[site].Err)
		return false
	}
	return true
}
