#!/usr/bin/env bash
# Installs, from Debian's packages, everything geomilter's tests, demo and drill use:
# redis-server + redis-tools (real Redis for the state layer and trail sink tests, the
# demo's redis-cli), postfix (real MTA: postfix, postconf, sendmail, smtp-source,
# smtp-sink), swaks with TLS (libnet-ssleay-perl, libio-socket-ssl-perl: the STARTTLS
# tests), iproute2 + iptables (network namespaces, dark-site drills), curl (metrics and
# /healthz scrapes), procps, rspamd + spamd and spamassassin (the real scanners the
# tests of milters/policy/scanner ask). Idempotent; needs root only when something is missing.
# Never starts the distribution's own services, and never writes /etc/postfix/main.cf
# (Postfix is preseeded "No configuration": the tests run their own instances).
#   --bench  also the peers scripts/bench-compare.sh measures against (opendkim,
#            opendmarc; rspamd is installed for the tests), dnsmasq-base (their DNS,
#            on loopback) and strace;
#            not needed by the tests or CI.
# Exit status non-zero, with apt's own error text, when anything cannot be installed.
set -euo pipefail
pkgs=(redis-server redis-tools postfix swaks libnet-ssleay-perl libio-socket-ssl-perl python3-dkim
	openssl gnupg iproute2 iptables ca-certificates procps curl rspamd spamd spamassassin
	chromium) # chromium: headless, renders /status in integration/postfix/statuspage_test.go
[ "${1:-}" = --bench ] && pkgs+=(opendkim opendkim-tools opendmarc dnsmasq-base strace)
missingPkgs() {
	local p
	for p in "${pkgs[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
	done
}
mapfile -t missing < <(missingPkgs)
if ((${#missing[@]})); then
	if [ "$(id -u)" != 0 ]; then
		echo "install-deps: missing Debian packages: ${missing[*]}" >&2
		if [ $# -eq 0 ]; then
			echo "install-deps: install them as root first: sudo make deps   (or: sudo scripts/install-deps.sh)" >&2
		else
			echo "install-deps: install them as root first: sudo scripts/install-deps.sh $*" >&2
		fi
		exit 1
	fi
	echo "install-deps: installing ${missing[*]}"
	echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
	echo "postfix postfix/mailname string geomilter.test" | debconf-set-selections
	export DEBIAN_FRONTEND=noninteractive
	log=$(mktemp /tmp/geomilter-install-deps.XXXXXX)
	# policy-rc.d 101 keeps the packages' own services from starting: tests start their own.
	# Leave an existing policy-rc.d alone; remove only the one we put there.
	cleanup() { rm -f "$log"; }
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
		cleanup() { rm -f "$log" /usr/sbin/policy-rc.d; }
	fi
	trap cleanup EXIT
	run() { # quiet on success; on failure the command, its exit status and apt's own output
		local rc=0
		"$@" >"$log" 2>&1 || rc=$?
		if [ "$rc" != 0 ]; then
			echo "install-deps: failed (exit $rc): $*" >&2
			tail -n 30 "$log" >&2
			exit 1
		fi
	}
	run apt-get update
	run apt-get install -y --no-install-recommends "${missing[@]}"
	mapfile -t still < <(missingPkgs)
	if ((${#still[@]})); then
		echo "install-deps: still not installed after apt-get install: ${still[*]}" >&2
		exit 1
	fi
fi
for c in redis-server redis-cli postconf swaks ip iptables curl; do
	command -v "$c" >/dev/null || { echo "install-deps: $c missing after install" >&2; exit 1; }
done
perl -MNet::SSLeay -MIO::Socket::SSL -e1 2>/dev/null || { echo "install-deps: swaks has no TLS (perl Net::SSLeay / IO::Socket::SSL missing)" >&2; exit 1; }
echo "install-deps: ok"
