// Command geomilter is the geomilter program: one subcommand per milter, each run
// as its own process (own socket, own systemd unit), plus the ops subcommands.
//
//	geomilter access|policy|archive|encrypt --config FILE   run one milter in the foreground
//	geomilter suite --config FILE                            run milters.suite's members behind one socket
//	geomilter check-config --config FILE                     validate a config file
//	geomilter ctl [--config FILE] rules|status|trail|…      ops: rules apply/list/delete/export, status, trail
//	geomilter bench milter [flags]                           load a milter socket over the milter protocol
//	geomilter version
//
// `geomilter --help` lists the commands; `geomilter <command> --help` its flags.
package main

import (
	"fmt"
	"io"
	"os"

	"github.com/geomilter/geomilter/milters/access"
	"github.com/geomilter/geomilter/milters/archive"
	"github.com/geomilter/geomilter/milters/encrypt"
	"github.com/geomilter/geomilter/milters/policy"
	"github.com/geomilter/geomilter/shared/buildinfo"
	"github.com/geomilter/geomilter/shared/config"
	"github.com/geomilter/geomilter/shared/service"
)

var factories = map[string]service.Factory{
	access.Name:  access.New,
	policy.Name:  policy.New,
	archive.Name: archive.New,
	encrypt.Name: encrypt.New,
}

const usage = `usage: geomilter <command> [flags]        geomilter <command> --help: its flags

milters (each runs in the foreground; SIGTERM stops gracefully, SIGHUP reloads the config):
  access        who may send and relay, rate limits across sites
  policy        SPF, DKIM, DMARC, one Authentication-Results, DKIM signing, DNSBL/URIBL, greylisting, content rules, scoring, rspamd/spamd
  archive       journal every accepted message with its envelope, durably, to archives that may be dark
  encrypt       encryption triggers: route to the encryption gateway, require TLS, encrypt inline, or reject
  suite         several of the milters in one process behind one socket (milters.suite: listen, members)

ops:
  check-config  validate a host config: every problem with file:line: key (exit 0 ok, 1 problems)
  ctl           rules across sites and status: rules apply|list|delete|export, status, trail, archive status|replay, dkim keygen (geomilter ctl --help)
  bench milter  drive a milter socket with test transactions and print throughput and latency
  version       print the version
  help          this text
`

// subHelp is the --help text of each command but ctl (shared/ctl has its own).
// Each flag on one line; TestHelp checks every command answers --help and that
// bench milter accepts each flag listed here.
var subHelp = map[string]string{
	"access":  milterHelp("access", "who may send and relay, rate limits across sites"),
	"policy":  milterHelp("policy", "SPF, DKIM verification, DMARC with one Authentication-Results header, DKIM signing of outbound mail; DNSBL, DNSWL and URIBL lists, greylisting shared by the sites, content rules, rspamd or spamd as scanners, a score per tenant (tag, quarantine, reject)"),
	"archive": milterHelp("archive", "journal every accepted message with its full envelope to a durable local journal before Postfix accepts it (temporary failure when it cannot), and deliver the journal to its targets (SMTP journal reports, a directory, HTTP), each at its own pace"),
	"encrypt": milterHelp("encrypt", "encryption triggers (subject tags, rules, card/IBAN/pattern detectors): route to the encryption gateway, TLS-only transport, inline S/MIME or PGP/MIME, or reject"),
	"suite": "usage: geomilter suite [--config FILE]\n\nruns the milters listed in milters.suite.members in one process, behind one milter\n" +
		"socket (milters.suite.listen), in chain order: Postfix opens one connection per SMTP\n" +
		"session instead of one per milter. Each member keeps its own milters.<name> section,\n" +
		"trail spool, rules and metrics labels (docs/configuration.md, docs/postfix.md).\n" +
		"SIGTERM: graceful stop; SIGHUP: reload the config (an invalid one is logged and the running one kept).\n\n" +
		"flags:\n  --config FILE   the host config (default /etc/geomilter/geomilter.yaml)\n",
	"check-config": "usage: geomilter check-config [--config FILE]\n\nvalidates a host config the way a milter's start-up does and prints every problem\nwith file:line: key; exit 0 ok, 1 problems, 2 bad command line.\n\nflags:\n  --config FILE   the host config (default /etc/geomilter/geomilter.yaml)\n",
	"bench": `usage: geomilter bench milter --socket unix:/path|inet:host:port [flags]

drives a running milter over the milter protocol with generated (or given)
transactions, as Postfix would, and prints throughput and latency.

flags:
  --socket ADDR          milter socket in Postfix notation: unix:/path or inet:host:port (required)
  -n N                   transactions (default 5000)
  -c N                   concurrent milter sessions (default 8)
  --size BYTES           message body bytes (default 2048)
  --rcpts N              recipients per message (default 1)
  --txn-per-session N    transactions per milter connection (default 1)
  --timeout DURATION     bound on the whole run (default 5m)
  --warmup N             transactions run first and left out of the figures (default 0)
  --message FILE         send this message (headers, empty line, body) in every transaction; --size is then unused
  --json                 print the result as one JSON object
  --v2                   offer only milter protocol 2 (no "no reply" flags)
`,
	"version": "usage: geomilter version\n\nprints the version.\n",
}

func milterHelp(name, what string) string {
	return "usage: geomilter " + name + " [--config FILE]\n\nruns the " + name + " milter in the foreground: " + what + ".\n" +
		"Its settings are milters." + name + " in the config (docs/configuration.md).\n" +
		"SIGTERM: graceful stop; SIGHUP: reload the config (an invalid one is logged and the running one kept).\n\n" +
		"flags:\n  --config FILE   the host config (default /etc/geomilter/geomilter.yaml)\n"
}

// wantsHelp reports whether args ask for help (-h, -help, --help anywhere).
func wantsHelp(args []string) bool {
	for _, a := range args {
		switch a {
		case "-h", "-help", "--help":
			return true
		}
	}
	return false
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, rest := args[0], args[1:]
	if h, ok := subHelp[cmd]; ok && wantsHelp(rest) {
		fmt.Fprint(stdout, h)
		return 0
	}
	if f, ok := factories[cmd]; ok {
		return runMilter(cmd, rest, stderr, func(cfgPath string) error { return service.Run(cmd, cfgPath, f, stderr) })
	}
	switch cmd {
	case config.SuiteName:
		return runMilter(cmd, rest, stderr, func(cfgPath string) error { return service.RunSuite(cfgPath, factories, stderr) })
	case "check-config":
		return checkConfig(rest, stdout, stderr)
	case "ctl":
		return ctlCommand(rest, stdout, stderr)
	case "bench":
		return bench(rest, stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, "geomilter", buildinfo.Version)
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "geomilter: unknown command %q\n\n%s", cmd, usage)
	return 2
}
