#!/usr/bin/env bash
# Runs every Fuzz target in the module for a short time each (default 10s).
#
# Go 1.26's fuzzing coordinator can fail a time-bounded run with a bare
# "context deadline exceeded" as -fuzztime expires, with no failing input
# (go.dev/issue/75804, a race in internal/fuzz, fixed in Go 1.27; seen here
# in CI and in scripts/fresh-check.sh). A real failure always writes its input
# under testdata/fuzz/TARGET/. So a run that fails with exactly that message
# and wrote no input is run again, bounded by count instead of time (-fuzztime
# Nx has no deadline to race), for as many executions as the timed run reached;
# that run's verdict stands. Any other failure fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${1:-10s}
status=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# fuzz PKG NAME: one target; returns non-zero on a failure.
fuzz() {
	local pkg=$1 name=$2 corpus before after n
	corpus=$pkg/testdata/fuzz/$name
	before=$(ls "$corpus" 2>/dev/null || true)
	if go test -run '^$' -fuzz "^${name}\$" -fuzztime "$fuzztime" "$pkg" 2>&1 | tee "$log"; [ "${PIPESTATUS[0]}" = 0 ]; then
		return 0
	fi
	after=$(ls "$corpus" 2>/dev/null || true)
	if [ "$before" != "$after" ] || ! grep -qx '    context deadline exceeded' "$log"; then
		return 1
	fi
	n=$(grep -oE 'execs: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
	[ -n "$n" ] && [ "$n" -gt 0 ] || n=10000
	echo "fuzz-short: $name: 'context deadline exceeded' with no failing input (go.dev/issue/75804); the same $n executions again, bounded by count"
	go test -run '^$' -fuzz "^${name}\$" -fuzztime "${n}x" "$pkg"
}

while IFS= read -r line; do
	file=${line%%:*}
	name=$(sed -E 's/^.*func (Fuzz[A-Za-z0-9_]+).*/\1/' <<<"$line")
	pkg=./$(dirname "$file")
	echo "== fuzz $pkg $name ($fuzztime)"
	if ! fuzz "$pkg" "$name"; then
		status=1
	fi
done < <(grep -rHE '^func Fuzz[A-Za-z0-9_]+\(f \*testing\.F\)' --include='*_test.go' milters shared | sort)
exit $status
