// Package deploytest checks the monitoring files under deploy/ against the
// code: the Grafana dashboard (deploy/grafana/geomilter.json) and the
// Prometheus alert rules and scrape config (deploy/prometheus/) may only use
// metric names the milters export, so a renamed metric breaks a test rather
// than a dashboard panel or an alert that silently never fires.
//
// It holds tests only; see docs/monitoring.md.
package deploytest
