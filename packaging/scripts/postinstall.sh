#!/bin/sh
# geomilter postinst (deb: "configure [old-version]") and %post (rpm: 1 install, 2 upgrade).
# Creates the system user and the folders the unit's ReadWritePaths name.
# Idempotent; never touches a file an admin owns (folders only, and only their
# owner/mode when we create them or when dpkg-statoverride does not say otherwise).
set -e

case "$1" in
configure | 1 | 2) ;;
*) exit 0 ;;
esac

if ! getent group geomilter >/dev/null; then
	if command -v addgroup >/dev/null 2>&1 && addgroup --help 2>&1 | grep -q -- --system; then
		addgroup --system --quiet geomilter
	else
		groupadd -r geomilter
	fi
fi
if ! getent passwd geomilter >/dev/null; then
	if command -v adduser >/dev/null 2>&1 && adduser --help 2>&1 | grep -q -- --system; then
		adduser --system --quiet --ingroup geomilter --home /var/lib/geomilter \
			--no-create-home --shell /usr/sbin/nologin --gecos "geomilter milters" geomilter
	else
		useradd -r -g geomilter -d /var/lib/geomilter -M -s /sbin/nologin -c "geomilter milters" geomilter
	fi
fi
# The milters read what Postfix shares with its group (the unit also sets
# SupplementaryGroups=postfix); their sockets get group postfix from the
# setgid socket folder below.
if getent group postfix >/dev/null; then
	if command -v adduser >/dev/null 2>&1 && adduser --help 2>&1 | grep -q -- --system; then
		adduser --quiet geomilter postfix
	else
		usermod -a -G postfix geomilter
	fi
fi

# mkdir_owned PATH OWNER:GROUP MODE: create PATH if missing and set its owner and
# mode, unless the admin registered an override with dpkg-statoverride.
mkdir_owned() {
	[ -d "$1" ] || mkdir -p "$1"
	if command -v dpkg-statoverride >/dev/null 2>&1 && dpkg-statoverride --list "$1" >/dev/null 2>&1; then
		return 0
	fi
	chown "$2" "$1"
	chmod "$3" "$1"
}
mkdir_owned /var/lib/geomilter geomilter:geomilter 0750
mkdir_owned /var/spool/geomilter geomilter:geomilter 0750
mkdir_owned /var/log/geomilter geomilter:geomilter 0750
# Inside Postfix's chroot (Debian: smtpd and cleanup run chrooted in
# /var/spool/postfix). setgid: sockets created here get group postfix, and
# with their mode 0660 Postfix can connect while others cannot.
if [ -d /var/spool/postfix ] && getent group postfix >/dev/null; then
	mkdir_owned /var/spool/postfix/geomilter geomilter:postfix 2750
fi

# The config may hold a Redis password: on first install only, make it
# readable by the milters' group and not by everyone (an admin's later
# choice of owner and mode is kept on upgrade).
if [ "$1" = 1 ] || { [ "$1" = configure ] && [ -z "$2" ]; }; then
	for f in /etc/geomilter/geomilter.yaml /etc/geomilter/rules.yaml; do
		[ -f "$f" ] || continue
		chgrp geomilter "$f" && chmod 0640 "$f"
	done
fi

if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
fi
exit 0
