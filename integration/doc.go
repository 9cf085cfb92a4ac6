// Package integration holds the tests that run the real geomilter binary as
// separate processes against real sinks and a real redis-server: signals, crash
// recovery, dark sinks. `make integration` builds bin/geomilter and points
// GEOMILTER_BIN at it; without it the tests build their own copy.
package integration
