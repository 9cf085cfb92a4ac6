// Command geomilter is the geomilter program: one subcommand per milter, each run
// as its own process (own socket, own systemd unit), plus the ops subcommands.
//
//	geomilter access|policy|archive|encrypt --config FILE   run one milter in the foreground
//	geomilter check-config --config FILE                     validate a config file
//	geomilter ctl [--config FILE] rules|status …            ops: rules apply/list/delete/export, status
//	geomilter bench milter [flags]                           load a milter socket over the milter protocol
//	geomilter version
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
	"github.com/geomilter/geomilter/shared/service"
)

var factories = map[string]service.Factory{
	access.Name:  access.New,
	policy.Name:  policy.New,
	archive.Name: archive.New,
	encrypt.Name: encrypt.New,
}

const usage = `usage: geomilter <command> [flags]

milters (each runs in the foreground; SIGTERM stops gracefully, SIGHUP reloads):
  access   --config FILE    who may send and relay, rate limits
  policy   --config FILE    SPF, DKIM, DMARC, DNSBL, greylisting, content, scoring
  archive  --config FILE    journal every accepted message
  encrypt  --config FILE    route messages to the encryption path

ops:
  check-config --config FILE   validate a config file (exit 0 ok, 1 problems)
  ctl [--config FILE] …        rules apply -f FILE [--dry-run] [--prune] | rules list | rules delete ID… |
                               rules export | status   (geomilter ctl help)
  bench milter [flags]         drive a milter socket with test transactions
  version                      print the version
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, rest := args[0], args[1:]
	if f, ok := factories[cmd]; ok {
		return runMilter(cmd, f, rest, stderr)
	}
	switch cmd {
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
