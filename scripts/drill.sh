#!/usr/bin/env bash
# make drill: the two-site outage drill with real Postfix in network namespaces
# (by hand, not CI; needs root). Sites dal and lax, each a network namespace with
# its own Postfix, Redis primary + replica of the other site, the four geomilter
# milters and smtp-sink, joined by a veth pair. Paced smtp-source load runs into
# lax through phases control-a, control-b (A/A: the noise floor), before, during
# (dal dark: every packet on the link dropped) and after; a table per phase and
# the pass/fail checks are printed. Exit status non-zero on a miss.
#
# Settings (environment):
#   GEOMILTER_BIN           the binary                    (default bin/geomilter, built if missing)
#   GEOMILTER_DRILL_PHASE   length of each phase          (default 50s; 5 phases)
#   GEOMILTER_DRILL_WARMUP  load before the first phase   (default 15s)
#   GEOMILTER_DRILL_RATE    smtp-source senders, each one message then a 1 s pause
#                           (~ messages per second)        (default 20)
#   GEOMILTER_DRILL_SIZE    message body bytes            (default 2000)
# With the defaults the whole drill takes about 5.5 minutes. docs/drill.md explains
# the table. Everything it starts (processes, namespaces, veth, iptables rules,
# temp dirs) is removed at the end, on failure and on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
	echo "drill: needs root (network namespaces, Postfix instances): sudo make drill" >&2
	exit 2
fi
export PATH="$PATH:/usr/local/go/bin" # sudo's secure_path drops it
[ "${GEOMILTER_SKIP_DEPS:-}" = 1 ] || scripts/install-deps.sh
if [ -z "${GEOMILTER_BIN:-}" ]; then
	[ -x bin/geomilter ] || make build
	GEOMILTER_BIN=$PWD/bin/geomilter
fi
export GEOMILTER_DRILL=1 GEOMILTER_REQUIRE_POSTFIX=1 GEOMILTER_BIN
# -timeout: generous; the harness tears the sites down 30 s before it fires.
exec go test -count=1 -timeout 40m -run '^TestDrill$' -v ./integration/postfix/
