#!/bin/sh
# geomilter prerm (deb: "remove", "upgrade", ...) and %preun (rpm: 0 erase, 1 upgrade).
# On removal, stop every running instance of geomilter@.service; on upgrade
# they keep running (restart them to pick up the new binary).
set -e
case "$1" in
remove | 0)
	if [ -d /run/systemd/system ]; then
		systemctl stop 'geomilter@*.service' || true
	fi
	;;
esac
exit 0
