package miltertest

import (
	"io"
	"runtime"
	"sync/atomic"
	"time"
)

// HeapWatch samples the Go heap in use while a test pushes a large message
// through a milter, so the test can bound what the message cost in memory
// (the promise: memory stays flat whatever the message size).
type HeapWatch struct {
	base    uint64
	peak    atomic.Uint64
	stop    chan struct{}
	sampled chan struct{}
}

// WatchHeap collects garbage, records the heap in use as the base, and
// samples it every 10 ms until Stop.
func WatchHeap() *HeapWatch {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	w := &HeapWatch{base: ms.HeapInuse, stop: make(chan struct{}), sampled: make(chan struct{})}
	go func() {
		defer close(w.sampled)
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > w.peak.Load() {
				w.peak.Store(ms.HeapInuse)
			}
			select {
			case <-w.stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	return w
}

// Base is the heap in use when the watch started, in bytes.
func (w *HeapWatch) Base() uint64 { return w.base }

// Stop ends the sampling and returns the peak heap in use above the base,
// in bytes.
func (w *HeapWatch) Stop() int64 {
	close(w.stop)
	<-w.sampled
	return int64(w.peak.Load()) - int64(w.base)
}

// RepeatedLines returns a body of line repeated until at least size bytes,
// produced as it is read (a 50 MB body costs no memory in the test itself),
// for the memory tests of the content milters.
func RepeatedLines(line string, size int) io.Reader {
	pr, pw := io.Pipe()
	go func() {
		b := []byte(line)
		var err error
		for n := 0; n < size && err == nil; n += len(b) {
			_, err = pw.Write(b)
		}
		pw.CloseWithError(err)
	}()
	return pr
}
