#!/usr/bin/env bash
# Installs, from Debian's packages, everything geomilter's tests, demo and drill use:
# redis-server (real Redis for the state layer and trail sink tests), postfix + swaks
# (real MTA integration), iproute2 + iptables (network namespaces, dark-site drills).
# Idempotent; needs root. Never starts the distribution's own services for us.
#   --bench  also the peers scripts/bench-compare.sh measures against (opendkim,
#            opendmarc, rspamd), dnsmasq-base (their DNS, on loopback) and strace;
#            not needed by the tests or CI.
set -euo pipefail
pkgs=(redis-server redis-tools postfix swaks iproute2 iptables ca-certificates procps curl)
[ "${1:-}" = --bench ] && pkgs+=(opendkim opendkim-tools opendmarc rspamd dnsmasq-base strace)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	if [ "$(id -u)" != 0 ]; then
		echo "install-deps: need root to install: ${missing[*]}" >&2
		exit 1
	fi
	echo "install-deps: installing ${missing[*]}"
	echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
	echo "postfix postfix/mailname string geomilter.test" | debconf-set-selections
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# policy-rc.d 101 keeps the packages' own services from starting: tests start their own.
	# Leave an existing policy-rc.d alone; remove only the one we put there.
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
		trap 'rm -f /usr/sbin/policy-rc.d' EXIT
	fi
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v redis-server >/dev/null || { echo "install-deps: redis-server missing after install" >&2; exit 1; }
echo "install-deps: ok"
