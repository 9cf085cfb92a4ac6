#!/usr/bin/env bash
# make drill: the outage drill with real Postfix in network namespaces (by hand,
# not CI; needs root). Sites dal and lax (and ord with SITES=3), each a network
# namespace with its own Postfix, Redis primary, a replica of every other site's
# primary, the four geomilter milters doing real work, and what they talk to:
# DNS (SPF, DKIM keys, DMARC of the test senders), journal targets, delivery and
# encryption-gateway sinks. At dal, the site that goes dark, also a DNS server
# (the DNSBL zone), an HTTP trail sink and the second journal target. First a
# saturating run measures the loaded site's capacity; then a Go SMTP client
# paces DKIM-signed, greylisted, content-matching and subject-tagged mail at a
# fraction of it through phases control-a, control-b (A/A: the noise floor),
# before, during (dal dark: every packet on its link dropped) and after; a table
# per phase and the pass/fail checks are printed. Exit status non-zero on a miss.
#
# Settings (environment; make passes SITES and KILL on):
#   GEOMILTER_BIN                      the binary                  (default bin/geomilter, built if missing)
#   GEOMILTER_DRILL_SITES   (SITES=)   2, or 3: dal dark, lax and ord both loaded (default 2)
#   GEOMILTER_DRILL_KILL    (KILL=)    1: SIGKILL each milter process at the loaded site once
#                                      during the outage, restarted at once (default off)
#   GEOMILTER_DRILL_PHASE              length of each phase        (default 50s; 5 phases)
#   GEOMILTER_DRILL_WARMUP             paced load before the first phase (default 15s)
#   GEOMILTER_DRILL_PACE               fraction of the measured capacity to pace at (default 0.6)
#   GEOMILTER_DRILL_RATE               a fixed rate in messages/s instead (overrides the pace)
#   GEOMILTER_DRILL_CAPACITY_TIME      length of the capacity run after a 5 s ramp (default 20s)
#   GEOMILTER_DRILL_CAPACITY_SESSIONS  concurrent SMTP sessions of the capacity run (default 32)
#   GEOMILTER_DRILL_SIZE               message body bytes          (default 2000)
#   GEOMILTER_DRILL_DNSBL_TTL          TTL of the DNSBL answers of dal's DNS server (default 10s:
#                                      they expire during the outage, when the server is dark)
#   GEOMILTER_TEST_SUITE               1: the milters hosted as one `geomilter suite` per site
#   GEOMILTER_DRILL_EVENTS             a file to write every loaded site's trail event to, a line
#                                      each (time, site, milter, stage, action, latency, busy)
# With the defaults the whole drill takes about 7 minutes. docs/drill.md explains
# the table. Everything it starts (processes, namespaces, veth, bridge, iptables
# rules, temp dirs) is removed at the end, on failure and on Ctrl-C.
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
# make passes SITES= and KILL= through even when empty.
[ -n "${GEOMILTER_DRILL_SITES:-}" ] || unset GEOMILTER_DRILL_SITES
[ -n "${GEOMILTER_DRILL_KILL:-}" ] || unset GEOMILTER_DRILL_KILL
export GEOMILTER_DRILL=1 GEOMILTER_REQUIRE_POSTFIX=1 GEOMILTER_BIN
# -timeout: generous; the harness tears the sites down 30 s before it fires.
exec go test -count=1 -timeout 40m -run '^TestDrill$' -v ./integration/postfix/
