#!/bin/sh
# geomilter postrm (deb: "remove", "purge", ...) and %postun (rpm: 0 erase, 1 upgrade).
# remove keeps the rules snapshot, the spool (trail buffer, archive journal),
# the trail log and the user; purge (deb only: rpm has no purge) removes them.
set -e
case "$1" in
purge)
	rm -rf /var/lib/geomilter /var/spool/geomilter /var/log/geomilter /var/spool/postfix/geomilter /run/geomilter
	rm -f /etc/systemd/system/multi-user.target.wants/geomilter@*.service
	if getent passwd geomilter >/dev/null; then
		if command -v deluser >/dev/null 2>&1; then
			deluser --quiet --system geomilter >/dev/null || true
		else
			userdel geomilter || true
		fi
	fi
	if getent group geomilter >/dev/null; then
		if command -v delgroup >/dev/null 2>&1; then
			delgroup --quiet --system geomilter >/dev/null || true
		else
			groupdel geomilter || true
		fi
	fi
	;;
esac
case "$1" in
remove | purge | 0)
	if [ -d /run/systemd/system ]; then
		systemctl daemon-reload || true
	fi
	;;
esac
exit 0
