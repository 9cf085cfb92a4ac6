#!/usr/bin/env bash
# make drill: the two-site outage drill with real Postfix in network namespaces.
# Not built yet (issue 5); `make demo` shows the trail and state behaviour on loopback.
echo "drill: not implemented yet — see issue 5 (Postfix in network namespaces)" >&2
exit 2
