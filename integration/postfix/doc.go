// Package postfix tests geomilter against real Postfix 3.x at two sites, dal
// and lax, each a network namespace on this machine joined by a veth pair
// (dal 10.77.0.1/24, lax 10.77.0.2/24). Each site runs its own Postfix instance
// (with postfix/main.cf.snippet and master.cf.snippet), its own Redis primary,
// a replica of the other site's primary across the veth, the four geomilter
// milters and smtp-sink as the final destination; mail is injected with
// smtp-source, swaks and sendmail inside the namespaces.
//
// The tests need root, iproute2, iptables, Postfix, swaks and redis-server; they
// skip otherwise, and fail instead when GEOMILTER_REQUIRE_POSTFIX=1 (CI).
// GEOMILTER_BIN names the geomilter binary (make integration sets it); without
// it the package builds its own copy. TestDrill (the outage drill behind
// `make drill`) runs only with GEOMILTER_DRILL=1.
//
// GEOMILTER_TEST_SUITE=1 runs the same tests with the milters hosted as a
// suite: one `geomilter suite` process per site whose members are the
// milters the site would have started, in Postfix's chain order, behind one
// smtpd_milters entry; in-process milters are served as one-member suites
// (milterrt.NewSuite). `make integration` runs the package both ways
// (suitemode_test.go says what "the archive milter" means in suite mode).
//
// Nothing the tests start outlives them: every process is a child with a
// parent-death signal, the namespaces (and with them the veth and the iptables
// rules inside) are deleted, and the temp dirs removed, on success, failure,
// SIGINT/SIGTERM and shortly before the test binary's own timeout. Namespaces
// left by a test binary that was SIGKILLed are swept by the next run.
package postfix
