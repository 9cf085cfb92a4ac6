//go:build unix

package rules

import (
	"syscall"
	"time"
)

// cpuTime is the process's user+system CPU time. Benchmarks report CPU
// time per operation next to wall time because the build machines are
// shared: wall time there mostly measures the neighbours.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
