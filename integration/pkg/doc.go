// Package pkg checks the .deb on this machine: it builds the package with
// scripts/package.sh (what `make package` runs), installs it with dpkg, starts
// the access milter the way geomilter@.service does (systemd when it runs,
// otherwise the unit's own ExecStart line as its User), gets an answer to a
// milter transaction over the packaged socket, upgrades to a rebuilt package
// with an admin's edit to the config in place (unchanged packaged config:
// kept silently; changed: kept, the new one as .dpkg-dist), removes and purges.
//
// It needs root and dpkg-deb; without them it skips, unless
// GEOMILTER_REQUIRE_PACKAGE=1 (CI), which makes a skip a failure. It purges
// the package at the end, also on failure, and refuses to run where geomilter
// is already installed.
package pkg
