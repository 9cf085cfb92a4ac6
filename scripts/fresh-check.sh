#!/usr/bin/env bash
# fresh-check: proves the README's two commands work on a fresh Debian 12 machine.
#
# Builds (once, then cached as a tarball) a minimal Debian 12 root file system with
# debootstrap: minbase + gcc, libc6-dev, git, make, sudo, ca-certificates — what the
# README assumes besides Go. Per run: a new copy of it in a temp dir, the Go toolchain
# copied in (/usr/local/go, as the README assumes; not on PATH), the repository cloned
# inside (HEAD of the repo this script is in; --worktree adds the uncommitted changes
# and untracked files), then, as root in a chroot with its own mount and PID namespaces
# (/proc, /sys, /dev mounted, a private /run and /dev/shm, so `ip netns` works), the
# README's commands exactly as written, each on its own:
#     sudo make test      then      sudo make demo      (--demo-first: the reverse)
# Go modules: the host's module cache (cache/download) is bind-mounted read-only and
# used as the first GOPROXY (file://), falling back to the host's GOPROXY; the chroot
# downloads into its own, empty module cache and builds with an empty build cache.
# GOPROXY, GOFLAGS, GOSUMDB, GONOSUMDB, GOPRIVATE come from the host's `go env`.
#
# Cleans up on exit (also on failure and Ctrl-C): the namespaces end with their last
# process (the PID namespace's init is killed if this script dies), so do every mount
# and network namespace made inside; leftover processes rooted in the copy are killed;
# the copy is deleted. Logs stay in /var/log/geomilter-fresh/<time>/ (with the
# demo's detail log, whose path inside the copy the demo prints).
#
# Usage: sudo scripts/fresh-check.sh [--demo-first | --targets "T…"] [--worktree | --patch FILE] [--keep] [-v]
#   --demo-first  run `sudo make demo` before `sudo make test`
#   --targets "T…" run `sudo make T` for each of these make targets instead (e.g. "deps integration")
#   --worktree    include uncommitted changes (git diff HEAD) and untracked files
#   --patch FILE  apply FILE (git apply) on HEAD instead: one change, without others' work in progress
#   --keep        keep the root file system copy (path printed) for inspection
#   -v            stream each command's output (default: to its log; the tail on failure)
# Environment: GEOMILTER_FRESH_CACHE (default /var/cache/geomilter-fresh; delete the
# tarball there to rebuild it), GEOMILTER_FRESH_MIRROR (default http://deb.debian.org/debian),
# GEOMILTER_FRESH_GOROOT (default /usr/local/go).
# Exit status: 0 when both commands pass; 1 when either fails (named on the last line);
# 2 when the check itself cannot be set up.
# Timings (2 shared cores): debootstrap ~10 min (first run only); make test 15-25 min; make demo ~5 min.
# The whole script is one function, read completely before it runs: editing this
# file during a run cannot change the run.
main() {
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${GEOMILTER_FRESH_CACHE:-/var/cache/geomilter-fresh}
mirror=${GEOMILTER_FRESH_MIRROR:-http://deb.debian.org/debian}
goroot=${GEOMILTER_FRESH_GOROOT:-/usr/local/go}
suite=bookworm
tarball=$cache/debian-12-$suite-minbase.tar.gz
order=(test demo)
worktree=0 keep=0 verbose=0 patch=""
while (($#)); do
	a=$1; shift
	case $a in
	--demo-first) order=(demo test) ;;
	--targets) read -r -a order <<<"${1:?--targets needs make targets}"; shift ;;
	--worktree) worktree=1 ;;
	--patch) patch=$(realpath "${1:?--patch needs a file}"); shift ;;
	--keep) keep=1 ;;
	-v) verbose=1 ;;
	-h | --help) sed -n '2,/^# The whole script/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "fresh-check: unknown argument $a (see --help)" >&2; exit 2 ;;
	esac
done
[ -z "$patch" ] || [ -s "$patch" ] || { echo "fresh-check: --patch $patch: empty or missing" >&2; exit 2; }
say() { echo "fresh-check: $*"; }
die() { echo "fresh-check: $*" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot, namespaces): sudo scripts/fresh-check.sh"
[ -x "$goroot/bin/go" ] || die "no Go toolchain at $goroot (set GEOMILTER_FRESH_GOROOT)"
for c in unshare chroot git tar; do command -v $c >/dev/null || die "$c missing"; done
hostgo() { "$goroot/bin/go" env "$1" 2>/dev/null || true; }

logdir=/var/log/geomilter-fresh/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$logdir" "$cache"
t0=$(date +%s)
since() { echo "$(($(date +%s) - $1))s"; }

# 1. The cached root file system.
if [ ! -s "$tarball" ]; then
	if ! command -v debootstrap >/dev/null; then
		say "installing debootstrap"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >"$logdir/apt-debootstrap.log" 2>&1 ||
			{ tail -n 20 "$logdir/apt-debootstrap.log" >&2; die "apt-get install debootstrap failed (log: $logdir/apt-debootstrap.log)"; }
	fi
	say "debootstrap $suite from $mirror (once; cached in $tarball)"
	bs=$(mktemp -d "$cache/bootstrap.XXXXXX")
	if ! debootstrap --variant=minbase --include=gcc,libc6-dev,git,make,sudo,ca-certificates \
		"$suite" "$bs/root" "$mirror" >"$logdir/debootstrap.log" 2>&1; then
		tail -n 20 "$logdir/debootstrap.log" >&2
		rm -rf --one-file-system "$bs"
		die "debootstrap failed (log: $logdir/debootstrap.log)"
	fi
	tar -C "$bs/root" -czf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
	rm -rf --one-file-system "$bs"
	say "root file system cached ($(du -h "$tarball" | cut -f1), $(since "$t0"))"
fi

# 2. A new copy for this run.
work=$(mktemp -d /var/tmp/geomilter-fresh.XXXXXX)
root=$work/root
nspid=""
cleanup() {
	local rc=$?
	set +e
	trap '' INT TERM # a second Ctrl-C must not cut the cleanup short
	[ "$rc" = 130 ] && echo "fresh-check: interrupted; cleaning up" >&2
	if [ -n "$nspid" ] && kill -0 "$nspid" 2>/dev/null; then
		# unshare ignores SIGTERM while it waits; SIGKILL it and --kill-child
		# kills its PID namespace's init, and with it every process inside.
		kill -KILL "$nspid" 2>/dev/null
		wait "$nspid" 2>/dev/null
	fi
	# Anything still rooted in the copy (there should be nothing: the PID namespace is gone).
	for p in /proc/[0-9]*; do
		[ "$(readlink "$p/root" 2>/dev/null)" = "$root" ] && kill -KILL "${p#/proc/}" 2>/dev/null
	done
	if findmnt -rn -o TARGET | grep -q "^$work"; then
		echo "fresh-check: mounts left under $work; not deleting it:" >&2
		findmnt -rn -o TARGET | grep "^$work" >&2
	elif [ "$keep" = 1 ]; then
		say "kept the root file system: $root"
	else
		rm -rf --one-file-system "$work"
	fi
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
say "copy in $root; logs in $logdir"
mkdir -p "$root"
tar -C "$root" -xzf "$tarball"
cp -a "$goroot" "$root/usr/local/go"
cp /etc/resolv.conf "$root/etc/resolv.conf"
printf '127.0.0.1 localhost\n127.0.1.1 %s\n::1 localhost ip6-localhost ip6-loopback\n' "$(hostname)" >"$root/etc/hosts"
cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb http://deb.debian.org/debian-security $suite-security main
EOF
git clone -q "$repo" "$root/root/geomilter"
if [ "$worktree" = 1 ]; then
	git -C "$repo" diff HEAD --binary >"$work/worktree.diff"
	[ -s "$work/worktree.diff" ] && git -C "$root/root/geomilter" apply --whitespace=nowarn "$work/worktree.diff"
	(cd "$repo" && git ls-files -z --others --exclude-standard | tar --null -T - -cf -) | tar -C "$root/root/geomilter" -xf -
	say "with the working tree's changes ($(git -C "$root/root/geomilter" status --porcelain | wc -l) files differ from HEAD $(git -C "$repo" rev-parse --short HEAD))"
elif [ -n "$patch" ]; then
	git -C "$root/root/geomilter" apply --recount --whitespace=nowarn "$patch" || die "--patch $patch does not apply to HEAD"
	say "HEAD $(git -C "$repo" rev-parse --short HEAD) with $patch ($(git -C "$root/root/geomilter" status --porcelain | wc -l) files differ)"
else
	say "HEAD $(git -C "$repo" rev-parse --short HEAD) (uncommitted changes are not included; --worktree includes them)"
fi
modcache=$(hostgo GOMODCACHE)
proxy=$(hostgo GOPROXY)
mkdir -p "$root/mnt/host-gomodcache" "$root/root/.config/go"
{
	if [ -d "$modcache/cache/download" ]; then
		echo "GOPROXY=file:///mnt/host-gomodcache,${proxy:-https://proxy.golang.org,direct}"
	else
		echo "GOPROXY=${proxy:-https://proxy.golang.org,direct}"
	fi
	for v in GOFLAGS GOSUMDB GONOSUMDB GOPRIVATE; do
		val=$(hostgo $v)
		[ -n "$val" ] && echo "$v=$val"
	done
} >"$root/root/.config/go/env" # read by the chroot's go as root (sudo keeps HOME=/root)

# The commands, as written in the README, run by root in the chroot. PATH as on a
# fresh machine: no Go on it.
cat >"$root/fresh-run.sh" <<'EOF'
#!/bin/bash
export HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
cd /root/geomilter
rc=0
for step in "$@"; do
	start=$(date +%s)
	echo "== sudo make $step" >"/fresh-$step.log"
	if [ "$FRESH_VERBOSE" = 1 ]; then
		sudo make "$step" 2>&1 | tee -a "/fresh-$step.log"
		r=${PIPESTATUS[0]}
	else
		sudo make "$step" >>"/fresh-$step.log" 2>&1
		r=$?
	fi
	echo "$step $r $(($(date +%s) - start))" >>/fresh-results
	[ "$r" = 0 ] || rc=1
done
exit $rc
EOF
chmod +x "$root/fresh-run.sh"

# 3. Run, in new mount and PID namespaces (the host's network: apt and the Go proxy).
say "running, in this order: $(printf 'sudo make %s; ' "${order[@]}")"
FRESH_VERBOSE=$verbose unshare --mount --propagation private --pid --fork --kill-child -- \
	bash -euc '
	root=$1 modcache=$2; shift 2
	# The root must be a mount point: `ip netns exec` and `ip -n` remount / as a slave.
	mount --bind "$root" "$root"
	mount --rbind /dev "$root/dev"; mount --make-rslave "$root/dev"
	mount -t tmpfs -o mode=1777 tmpfs "$root/dev/shm"
	mount -t proc proc "$root/proc"
	mount -t sysfs sysfs "$root/sys"
	mount -t tmpfs -o mode=755 tmpfs "$root/run"
	if [ -d "$modcache/cache/download" ]; then
		mount --bind "$modcache/cache/download" "$root/mnt/host-gomodcache"
		mount -o remount,bind,ro "$root/mnt/host-gomodcache"
	fi
	exec chroot "$root" /fresh-run.sh "$@"' fresh "$root" "$modcache" "${order[@]}" &
nspid=$!
runrc=0
wait "$nspid" || runrc=$?
nspid=""

# 4. Report.
failed=()
cp "$root"/tmp/geomilter-demo-log.* "$logdir/" 2>/dev/null || true # the demo's own detail logs
for step in "${order[@]}"; do
	cp "$root/fresh-$step.log" "$logdir/$step.log" 2>/dev/null || true
	line=$(grep "^$step " "$root/fresh-results" 2>/dev/null || true)
	if [ -z "$line" ]; then
		say "sudo make $step: did not run (log: $logdir/$step.log)"
		failed+=("$step (did not run)")
		continue
	fi
	read -r _ r secs <<<"$line"
	if [ "$r" = 0 ]; then
		say "sudo make $step: passed in ${secs}s (log: $logdir/$step.log)"
	else
		say "sudo make $step: FAILED (exit $r) after ${secs}s; the end of $logdir/$step.log:"
		[ "$verbose" = 1 ] || tail -n 40 "$logdir/$step.log" | sed 's/^/    /'
		failed+=("$step")
	fi
done
if ((${#failed[@]})) || [ "$runrc" != 0 ]; then
	say "FAILED: ${failed[*]:-the chroot run (exit $runrc)} (total $(since "$t0"))"
	exit 1
fi
say "OK: $(printf 'sudo make %s; ' "${order[@]}")all pass in a fresh Debian 12 (total $(since "$t0"))"
}
main "$@"
