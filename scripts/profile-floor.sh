#!/usr/bin/env bash
# scripts/profile-floor.sh — where a milter's floor cost goes: the same no-op
# served by go-milter v0.5.0's server and by geomilter's runtime, under the
# same load over a unix socket, with a CPU profile (go tool pprof) and the
# system calls (strace -c -f) of each. Figures per transaction; the method is
# in BENCHMARKS.md (issue 6).
#
#   scripts/profile-floor.sh            # ~1 minute; needs strace (apt-get install strace)
#   N=20000 C=8 scripts/profile-floor.sh
#
# Only unix sockets in a temporary directory are used; everything started is
# stopped on exit.
set -uo pipefail
cd "$(dirname "$0")/.."
N=${N:-10000}
C=${C:-8}
work=$(mktemp -d /tmp/gm-profile.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
	wait 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT INT TERM
command -v strace >/dev/null || { echo "profile-floor: strace is not installed" >&2; exit 2; }
go build -o "$work/geomilter" ./milters || exit 2
BIN=$work/geomilter
printf 'From: <a@load.example>\nTo: <b@load.example>\nSubject: profile\nMessage-ID: <1@load.example>\nDate: Fri, 27 Nov 2026 10:00:00 +0000\n\n%s\n' \
	"$(head -c 2048 /dev/zero | tr '\0' 'x' | fold -w 70)" > "$work/m.eml"

# floor LABEL IMPL GOMAXPROCS: profile and strace one floor ("" = Go's default).
floor() {
	local label=$1 impl=$2 procs=$3 sock=$work/$1.sock prof=$work/$1.prof pid spid
	if [ -n "$procs" ]; then
		GOMAXPROCS=$procs "$BIN" bench noop --impl "$impl" --listen "unix:$sock" --stages all --cpuprofile "$prof" 2> "$work/$label.log" &
	else
		env -u GOMAXPROCS "$BIN" bench noop --impl "$impl" --listen "unix:$sock" --stages all --cpuprofile "$prof" 2> "$work/$label.log" &
	fi
	pid=$!
	pids+=($pid)
	for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
	"$BIN" bench milter --socket "unix:$sock" -n 500 -c "$C" --message "$work/m.eml" > /dev/null # warm-up
	echo "== $label: $N transactions, $C concurrent"
	"$BIN" bench milter --socket "unix:$sock" -n "$N" -c "$C" --message "$work/m.eml"
	strace -c -f -o "$work/$label.strace" -p $pid 2>/dev/null &
	spid=$!
	sleep 1
	"$BIN" bench milter --socket "unix:$sock" -n 2000 -c "$C" --message "$work/m.eml" > /dev/null
	kill -INT $spid; wait $spid 2>/dev/null
	kill -TERM $pid; wait $pid 2>/dev/null
	echo "system calls per transaction (strace, 2000 transactions):"
	awk '$1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" {print $4, $NF}' "$work/$label.strace" | sort -rn |
		awk '{t += $1; if (k < 6) {s = s sprintf("%s%s %.1f", (k ? ", " : ""), $2, $1 / 2000); k++}} END {printf "  %.1f total: %s\n", t / 2000, s}'
	echo "CPU profile (top functions by cumulative time, whole run incl. warm-up):"
	go tool pprof -top -cum "$BIN" "$prof" 2>/dev/null | sed -n '1,6p;/^ *flat/,+22p' | sed 's/^/  /'
}
floor go-milter-server go-milter ""
floor geomilter-runtime runtime 1 # the milters' default: max_procs 1
floor geomilter-runtime-all-cpus runtime ""
