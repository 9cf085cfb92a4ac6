package archive_test

import (
	"context"
	"net"
	"os/exec"
	"testing"
	"time"

	"github.com/geomilter/geomilter/shared/milterload"
)

// BenchmarkArchiveSMTP: transactions over the milter protocol, 8 at a
// time, each journaled (durable) and delivered as a journal report to a
// real smtp-sink, as in production; msgs/s is what the milter sustains
// with its background delivery running on the same CPUs.
func BenchmarkArchiveSMTP(b *testing.B) {
	bin, err := exec.LookPath("smtp-sink")
	if err != nil {
		bin = "/usr/sbin/smtp-sink"
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	sink := exec.Command(bin, "-c", "-u", "nobody", addr, "256")
	if err := sink.Start(); err != nil {
		b.Skipf("smtp-sink: %v", err)
	}
	b.Cleanup(func() { sink.Process.Kill(); sink.Wait() })
	for i := 0; ; i++ {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if i > 100 {
			b.Fatal("smtp-sink not answering")
		}
		time.Sleep(20 * time.Millisecond)
	}
	h := newHarnessMem(b, "rules: []\n", "{retain: 0s, targets: [{name: vault, type: smtp, hosts: [\""+addr+"\"], to: journal@archive.example}]}", 0)
	b.ResetTimer()
	res, err := milterload.Run(context.Background(), milterload.Options{
		Network: h.srv.Network, Address: h.srv.Addr, Transactions: b.N, Concurrency: 8, MessageBytes: 2048, Timeout: 5 * time.Minute,
	})
	if err != nil || res.Errors > 0 {
		b.Fatalf("%v %s", err, res)
	}
	b.ReportMetric(res.PerSecond, "msgs/s")
}
