#!/usr/bin/env bash
# Runs every Fuzz target in the module for a short time each (default 10s).
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${1:-10s}
status=0
# Go 1.26's fuzzing coordinator can fail a duration-bounded run with a bare
# "context deadline exceeded" as -fuzztime expires, with no failing input
# (go.dev/issue/75804, a race in internal/fuzz, fixed in Go 1.27). The fuzz
# runs use a Go 1.27 toolchain from the module proxy for that reason only;
# the build and every other test stay on the machine's Go. If it cannot be
# had, the machine's Go is used (and the race may show).
fuzz_toolchain=${FUZZ_GOTOOLCHAIN:-go1.27.3}
if [ "$fuzz_toolchain" != local ] && GOTOOLCHAIN=$fuzz_toolchain go version >/dev/null 2>&1; then
	export GOTOOLCHAIN=$fuzz_toolchain
	echo "fuzz-short: fuzzing with $fuzz_toolchain (go.dev/issue/75804)"
else
	echo "fuzz-short: toolchain $fuzz_toolchain not available; fuzzing with $(go version | cut -d' ' -f3) (go.dev/issue/75804 may show)" >&2
fi
while IFS= read -r line; do
	file=${line%%:*}
	name=$(sed -E 's/^.*func (Fuzz[A-Za-z0-9_]+).*/\1/' <<<"$line")
	pkg=./$(dirname "$file")
	echo "== fuzz $pkg $name ($fuzztime)"
	if ! go test -run '^$' -fuzz "^${name}\$" -fuzztime "$fuzztime" "$pkg"; then
		status=1
	fi
done < <(grep -rHE '^func Fuzz[A-Za-z0-9_]+\(f \*testing\.F\)' --include='*_test.go' milters shared | sort)
exit $status
