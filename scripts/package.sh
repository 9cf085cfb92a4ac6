#!/bin/sh
# Builds dist/geomilter_<version>_amd64.deb and dist/geomilter-<version>.x86_64.rpm
# (make package). The version comes from git describe, made Debian-valid:
#   tag v1.2.0, 5 commits after  -> 1.2.0+git5.abc1234
#   no tag                       -> 0.0~git<commits>.<hash>   (sorts before any 0.0 release)
#   uncommitted changes          -> ... plus .dirty
# VERSION=... overrides it; OUT=... the output folder (dist); FORMATS=deb the packagers;
# ETC=... a folder with other packaged config files (tests: a changed conffile).
# integration/pkg calls this script, so the test builds what `make package` builds.
set -eu
cd "$(dirname "$0")/.."
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
export PATH="$PATH:$(dirname "$GO")"

debian_version() {
	desc=$(git describe --tags --long --match 'v[0-9]*' --dirty 2>/dev/null) || desc=
	if [ -n "$desc" ]; then
		# v1.2.0-5-gabc1234[-dirty]
		dirty=
		case "$desc" in *-dirty) dirty=.dirty desc=${desc%-dirty} ;; esac
		hash=${desc##*-g}
		rest=${desc%-g*}
		n=${rest##*-}
		tag=${rest%-*}
		tag=${tag#v}
		tag=$(printf '%s' "$tag" | tr -- '-_' '~~')
		if [ "$n" = 0 ]; then
			echo "$tag${dirty:++dirty}"
		else
			echo "$tag+git$n.$hash$dirty"
		fi
		return
	fi
	n=$(git rev-list --count HEAD 2>/dev/null || echo 0)
	hash=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
	dirty=
	git diff --quiet HEAD 2>/dev/null || dirty=.dirty
	echo "0.0~git$n.$hash$dirty"
}

VERSION=${VERSION:-$(debian_version)}
OUT=${OUT:-dist}
FORMATS=${FORMATS:-deb,rpm}
BIN=${BIN:-bin/package/geomilter}

mkdir -p "$(dirname "$BIN")" "$OUT"
echo "package.sh: version $VERSION" >&2
CGO_ENABLED=0 GOOS=linux GOARCH=amd64 "$GO" build -trimpath \
	-ldflags "-s -w -X github.com/geomilter/geomilter/shared/buildinfo.Version=$VERSION" \
	-o "$BIN" ./milters
case "$OUT" in /*) out=$OUT ;; *) out=$PWD/$OUT ;; esac
case "$BIN" in /*) bin=$BIN ;; *) bin=$PWD/$BIN ;; esac
etc=${ETC:-}
case "$etc" in "" | /*) ;; *) etc=$PWD/$etc ;; esac
cd packaging
"$GO" run . --root .. --bin "$bin" --version "$VERSION" --out "$out" --formats "$FORMATS" ${etc:+--etc "$etc"}
