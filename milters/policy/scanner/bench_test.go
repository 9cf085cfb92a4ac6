package scanner

import (
	"context"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkRealRspamd: one plain message through Debian's rspamd, the
// cost a scanner adds to a message when it answers.
func BenchmarkRealRspamd(b *testing.B) {
	d := needRspamdB(b)
	c, err := newClient(Config{Type: TypeRspamd, Address: "http://" + d.addr, Budget: 20 * time.Second}, "rspamd", testLoggerB(b), prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	for b.Loop() {
		if r := c.Scan(context.Background(), hamMsg); r.Err != nil {
			b.Fatal(r.Err)
		}
	}
}

// BenchmarkRealSpamd: the same through spamd (one child).
func BenchmarkRealSpamd(b *testing.B) {
	d := needSpamdB(b)
	c, err := newClient(Config{Type: TypeSpamd, Address: d.addr, Budget: 20 * time.Second}, "spamd", testLoggerB(b), prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	for b.Loop() {
		if r := c.Scan(context.Background(), hamMsg); r.Err != nil {
			b.Fatal(r.Err)
		}
	}
}

// BenchmarkRealRspamdStopped: rspamd SIGSTOPped, budget 200ms, breaker
// after 3 failures: reports the p99 and the maximum a message waited
// (the "p99 stays within its budget, later messages do not wait").
func BenchmarkRealRspamdStopped(b *testing.B) {
	d := needRspamdB(b)
	const budget = 200 * time.Millisecond
	c, err := newClient(Config{Type: TypeRspamd, Address: "http://" + d.addr, Budget: budget,
		Breaker: BreakerConfig{Failures: 3, OpenFor: time.Hour}}, "rspamd", testLoggerB(b), prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if err := d.signal(syscall.SIGSTOP); err != nil {
		b.Fatal(err)
	}
	defer d.signal(syscall.SIGCONT)
	var waits []time.Duration
	for b.Loop() {
		start := time.Now()
		c.Scan(context.Background(), hamMsg)
		waits = append(waits, time.Since(start))
	}
	slices.Sort(waits)
	p99 := waits[len(waits)*99/100]
	b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(waits[len(waits)-1].Microseconds())/1000, "max-ms")
}

func needRspamdB(b *testing.B) *daemon {
	if rspamdProc == nil {
		missing(b, "rspamd", rspamdWhy)
	}
	return rspamdProc
}

func needSpamdB(b *testing.B) *daemon {
	if spamdProc == nil {
		missing(b, "spamd", spamdWhy)
	}
	return spamdProc
}
