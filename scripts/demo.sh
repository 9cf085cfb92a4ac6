#!/usr/bin/env bash
# make demo: a live two-site demo on one machine.
# Part one, all on loopback: sites dal and lax, each a Redis primary, a local replica
#   of the other site's primary, and a geomilter access process whose trail drains to
#   its own primary. Load runs at both sites; then dal's Redis goes dark (SIGSTOP:
#   unresponsive, not refusing) — both sites keep deciding at full speed, dal's trail
#   buffers locally; dal comes back and every event arrives and replicates to lax.
# Part two (root): real Postfix at two sites in network namespaces, the outage drill
#   with short phases (scripts/drill.sh; the full drill is `make drill`).
# The console gets a short summary; every detail goes to a log file whose path is
# printed. Exit status non-zero when any part fails to run (with the failing step and
# the tool's own error) or loses an event. Cleans up everything it started.
#
# Settings (environment):
#   GEOMILTER_DEMO_DRILL=0       skip part two
#   GEOMILTER_DEMO_LOOPBACK=0    skip part one
#   GEOMILTER_DEMO_STRICT=1      a missed speed target (throughput, p99) in part two's
#                                short phases fails the demo too (default: reported)
#   GEOMILTER_DEMO_BREAK=postfix break part two's Postfix on purpose (a postconf that
#                                fails): the demo must exit non-zero (tested)
#   GEOMILTER_BIN                the binary (default bin/geomilter, built if missing)
#   GEOMILTER_SKIP_DEPS=1        do not run scripts/install-deps.sh first
set -eEuo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
[ "${GEOMILTER_SKIP_DEPS:-}" = 1 ] || scripts/install-deps.sh
if [ -z "${GEOMILTER_BIN:-}" ]; then
	[ -x bin/geomilter ] || make build
	GEOMILTER_BIN=$PWD/bin/geomilter
fi
BIN=$GEOMILTER_BIN
work=$(mktemp -d /tmp/geomilter-demo.XXXXXX)
log=$(mktemp /tmp/geomilter-demo-log.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT INT TERM
# Any failing step stops the demo with its line and command; details are in the log.
trap 'echo "demo: FAILED at scripts/demo.sh:$LINENO: $BASH_COMMAND (details: $log)" >&2' ERR
echo "demo: details in $log"
fail() { echo "demo: FAILED: $*" >&2; echo "demo: details in $log" >&2; exit 1; }

# A free loopback port: random, not listening now (ss from iproute2).
freeport() {
	local p
	while :; do
		p=$((20000 + RANDOM % 30000))
		ss -Htan "sport = :$p" 2>/dev/null | grep -q . || { echo "$p"; return; }
	done
}
redis_start() { # name port [replicaof-port]
	local dir=$work/redis-$1; mkdir -p "$dir"
	{
		echo "port $2"; echo "bind 127.0.0.1"; echo "dir $dir"; echo "save \"\""; echo "appendonly no"
		echo "logfile $dir/redis.log"; echo "repl-diskless-sync-delay 0"
		[ -n "${3:-}" ] && { echo "replicaof 127.0.0.1 $3"; echo "replica-read-only yes"; echo "replica-serve-stale-data yes"; }
	} > "$dir/redis.conf"
	redis-server "$dir/redis.conf" & pids+=($!)
	for _ in $(seq 100); do redis-cli -p "$2" ping >/dev/null 2>&1 && return; sleep 0.05; done
	cat "$dir/redis.log" >> "$log" 2>/dev/null || true
	fail "redis $1 did not start on port $2: $(tail -n 3 "$dir/redis.log" 2>/dev/null)"
}
rcli() { redis-cli -p "$1" "${@:2}"; }
row() { printf '%-34s %-60s\n' "$1" "$2"; }

loopback() {
declare -A RP RR MP
RP[dal]=$(freeport); RP[lax]=$(freeport); RR[dal]=$(freeport); RR[lax]=$(freeport)
MP[dal]=$(freeport); MP[lax]=$(freeport)
redis_start dal-primary "${RP[dal]}"
redis_start lax-primary "${RP[lax]}"
redis_start lax-replica-of-dal "${RR[lax]}" "${RP[dal]}"   # at lax: a copy of dal's data
redis_start dal-replica-of-lax "${RR[dal]}" "${RP[lax]}"   # at dal: a copy of lax's data

for s in dal lax; do
	peer=$([ $s = dal ] && echo lax || echo dal)
	mkdir -p "$work/$s"
	printf 'tenants: []\nrules: []\n' > "$work/$s/rules.yaml"   # standalone fallback only; rules come from Redis
	cat > "$work/$s/geomilter.yaml" <<YAML
site: $s
host: mta1
redis:
  local: {addr: "127.0.0.1:${RP[$s]}"}
  peers:
    $peer: {addr: "127.0.0.1:${RR[$s]}"}
rules_file: $work/$s/rules.yaml
state_dir: $work/$s/state
spool_dir: $work/$s/spool
log: {level: warn}
trail:
  sync_every: 100ms
  backoff: {min: 100ms, max: 1s}
  sinks:
    - {name: site, type: redis, maxlen: 1000000}
    - {name: local, type: file, path: $work/$s/trail.ndjson}
metrics: {listen: "127.0.0.1:${MP[$s]}"}
milters:
  access: {listen: "unix:$work/$s/access.sock"}
YAML
	out=$("$BIN" check-config --config "$work/$s/geomilter.yaml" 2>&1) || fail "check-config at $s: $out"
	"$BIN" access --config "$work/$s/geomilter.yaml" 2> "$work/$s/geomilter.log" & pids+=($!)
done
for s in dal lax; do
	for _ in $(seq 100); do [ -S "$work/$s/access.sock" ] && break; sleep 0.05; done
	[ -S "$work/$s/access.sock" ] || fail "geomilter access at $s did not start: $(tail -n 5 "$work/$s/geomilter.log")"
done

# The shared rules: one tenant owning load.example (the load tool's recipients),
# applied once at lax; every site's milter picks them up from Redis.
cat > "$work/rules.yaml" <<'YAML'
tenants:
  - id: demo
    domains: [load.example]
rules:
  - id: block-bad-net
    milter: access
    scope: global
    match: {client_ip: [203.0.113.0/24]}
    action: reject
    reply: "550 5.7.1 Access denied by policy"
YAML
ctl_apply() { # file
	local out
	out=$("$BIN" ctl --config "$work/lax/geomilter.yaml" rules apply -f "$1" 2>&1) || fail "ctl rules apply at lax: $out"
	echo "$out" >> "$log"
	row "  rules applied at lax" "$(echo "$out" | tail -n 1)"
}

load() { # site transactions -> prints the bench line; a failed run stops the demo
	local out
	out=$("$BIN" bench milter --socket "unix:$work/$1/access.sock" -n "$2" -c 8 -size 2048 -rcpts 2 2>&1) ||
		fail "bench milter at $1: $out"
	echo "load $1 $2: $out" >> "$log"
	echo "$out" | tail -n 1
}
xlen() { rcli "$1" xlen "gm:{$2}:trail" 2>/dev/null || echo "?"; }
# distinct event ids in a site's stream: delivery is at-least-once (a batch cut
# off by the outage may be written twice); readers deduplicate on event_id.
distinct() { rcli "$1" --raw xrange "gm:{$2}:trail" - + 2>/dev/null | awk 'prev=="id"{print} {prev=$0}' | sort -u | wc -l; }
backlog() { curl -s "http://127.0.0.1:${MP[$1]}/metrics" 2>/dev/null | awk '$1 ~ /^geomilter_spool_sink_pending_records.*sink="site"/ {print $2}' | head -1; }

echo
echo "part one: two sites on loopback ($work)"
echo "---------------------------------------------------------------------------------------------"
ctl_apply "$work/rules.yaml"
sleep 1
row "phase 1: both sites healthy" ""
for s in dal lax; do v=$(load $s 3000); row "  $s load" "$v"; done
sleep 1
row "  trail events in dal's stream" "at dal primary: $(xlen "${RP[dal]}" dal), replicated to lax: $(xlen "${RR[lax]}" dal)"

echo
row "phase 2: dal's Redis goes dark" "(SIGSTOP: connections hang, nothing answers)"
kill -STOP "${pids[0]}"
for s in dal lax; do v=$(load $s 3000); row "  $s load" "$v"; done
sleep 1
row "  dal trail backlog (local spool)" "$(backlog dal) events waiting, mail not delayed"
row "  lax's copy of dal's data" "still served: $(xlen "${RR[lax]}" dal) events (stale, by design)"
# A rule applied at lax while dal's primary is dark still reaches dal's milter:
# dal reads lax's rules from its local replica of lax, which keeps replicating.
cat > "$work/rules2.yaml" <<'YAML'
tenants:
  - id: demo
    domains: [load.example]
rules:
  - id: block-bad-net
    milter: access
    scope: global
    match: {client_ip: [203.0.113.0/24]}
    action: reject
    reply: "550 5.7.1 Access denied by policy"
  - id: block-sender7
    milter: access
    scope: global
    match: {sender: [sender7@load.example]}
    action: reject
    reply: "550 5.7.1 Sender blocked"
YAML
ctl_apply "$work/rules2.yaml"
sleep 1
v=$(load dal 100); row "  dal load after the rule change" "$v"

echo
row "phase 3: dal returns" ""
kill -CONT "${pids[0]}"
for _ in $(seq 200); do [ "$(backlog dal)" = 0 ] && break; sleep 0.1; done
sleep 1
row "  dal trail backlog" "$(backlog dal) events"
row "  distinct events in dal's stream" "at dal primary: $(distinct "${RP[dal]}" dal), replicated to lax: $(distinct "${RR[lax]}" dal) (expect 6100; entries $(xlen "${RP[dal]}" dal))"
row "  distinct events in lax's stream" "at lax primary: $(distinct "${RP[lax]}" lax), replicated to dal: $(distinct "${RR[dal]}" lax) (expect 6000; entries $(xlen "${RP[lax]}" lax))"
echo "---------------------------------------------------------------------------------------------"
ok=1
for v in "$(distinct "${RP[dal]}" dal)" "$(distinct "${RR[lax]}" dal)"; do [ "$v" = 6100 ] || ok=0; done
for v in "$(distinct "${RP[lax]}" lax)" "$(distinct "${RR[dal]}" lax)"; do [ "$v" = 6000 ] || ok=0; done
[ $ok = 1 ] || fail "part one: trail event counts differ from what was sent (an event was lost or not replicated)"
echo "part one: OK — no event lost, both sites converged, a rule applied at lax during dal's outage was in force at dal"
}

# Part two, with real Postfix: the outage drill in two network namespaces, with
# short phases (the full drill is `make drill`). Needs root.
postfix_drill() {
	echo
	echo "part two: real Postfix at two sites (network namespaces), dal goes dark (packets dropped)"
	local path=$PATH
	if [ "${GEOMILTER_DEMO_BREAK:-}" = postfix ]; then
		# Broken on purpose: a postconf that fails the way a missing config does.
		mkdir -p "$work/broken-bin"
		printf '#!/bin/sh\necho "postconf: fatal: open /nonexistent/main.cf: No such file or directory (broken on purpose: GEOMILTER_DEMO_BREAK=postfix)" >&2\nexit 1\n' > "$work/broken-bin/postconf"
		chmod +x "$work/broken-bin/postconf"
		path=$work/broken-bin:$PATH
	fi
	local rc=0
	PATH=$path GEOMILTER_SKIP_DEPS=1 GEOMILTER_BIN="$BIN" GEOMILTER_DRILL_PHASE=${GEOMILTER_DRILL_PHASE:-20s} GEOMILTER_DRILL_WARMUP=${GEOMILTER_DRILL_WARMUP:-5s} \
		scripts/drill.sh >> "$log" 2>&1 || rc=$?
	# The drill's table and checks (a dozen lines); the per-test chatter stays in the log.
	sed -n '/^phase /,/^drill: /p' "$log" | sed 's/^/  /'
	if [ $rc = 0 ]; then
		echo "demo drill: OK"
		return
	fi
	local misses others
	misses=$(grep -cE '^  FAIL  (throughput during|milter p99 during)' "$log" || true)
	others=$(grep -cE '^  FAIL  ' "$log" || true)
	if grep -q '^drill: FAIL' "$log" && [ "$misses" -gt 0 ] && [ "$misses" = "$others" ] && [ "${GEOMILTER_DEMO_STRICT:-}" != 1 ]; then
		echo "demo drill: ran; a speed target was missed with these short phases (see 'noise floor' above; GEOMILTER_DEMO_STRICT=1 fails on this); 'sudo make drill' runs the full phases"
		return
	fi
	# Failed to run, or lost / refused mail: say what, with the test's own error lines.
	echo "demo: FAILED: part two (Postfix drill), exit $rc:" >&2
	# A test's error line and its continuation lines (the failing tool's own output).
	awk '/^ +[^ ]+_test\.go:[0-9]+: / {print; n=6; next} n > 0 && /^        / {print; n--; next} {n=0}
		/^(panic|# )|^drill: FAIL|^  FAIL  / {print}' "$log" | head -n 20 | sed 's/^/  /' >&2
	fail "part two did not pass"
}

[ "${GEOMILTER_DEMO_LOOPBACK:-1}" = 1 ] && loopback
if [ "${GEOMILTER_DEMO_DRILL:-1}" = 1 ]; then
	if [ "$(id -u)" = 0 ]; then
		postfix_drill
	else
		echo "(part two, the Postfix outage drill, needs root: sudo make demo)"
	fi
fi
echo "demo: OK (details: $log)"
