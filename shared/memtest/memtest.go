// Package memtest helps tests check that streaming code keeps memory bounded
// whatever the input's size: Repeat makes an input of any length that costs
// the test nothing, and Sampler records the heap's peak while it is read.
package memtest

import (
	"io"
	"runtime"
)

// Repeat reads pattern over and over, n bytes in all, without holding more
// than the pattern.
func Repeat(pattern string, n int64) io.Reader { return &repeat{pattern: pattern, n: n} }

type repeat struct {
	pattern string
	off     int
	n       int64
}

func (r *repeat) Read(p []byte) (int, error) {
	if r.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.n {
		p = p[:r.n]
	}
	n := 0
	for n < len(p) {
		c := copy(p[n:], r.pattern[r.off:])
		n += c
		r.off = (r.off + c) % len(r.pattern)
	}
	r.n -= int64(n)
	return n, nil
}

// Sampler reads through R and samples the heap every MiB that passes.
type Sampler struct {
	R    io.Reader
	N    int64  // bytes read so far
	Peak uint64 // highest HeapAlloc seen
	ms   runtime.MemStats
}

// Start collects garbage and returns the heap in use now, the base to
// measure growth from.
func Start() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

func (s *Sampler) Read(p []byte) (int, error) {
	n, err := s.R.Read(p)
	if s.N/(1<<20) != (s.N+int64(n))/(1<<20) {
		s.sample()
	}
	s.N += int64(n)
	return n, err
}

func (s *Sampler) sample() {
	runtime.ReadMemStats(&s.ms)
	s.Peak = max(s.Peak, s.ms.HeapAlloc)
}

// Growth samples once more and returns how far the peak rose above base.
func (s *Sampler) Growth(base uint64) int64 {
	s.sample()
	return int64(s.Peak) - int64(base)
}
