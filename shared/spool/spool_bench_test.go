package spool

import (
	"bytes"
	"context"
	"io"
	"sort"
	"sync"
	"testing"
	"time"
)

// p99 returns the 99th percentile of d in microseconds.
func p99(d []time.Duration) float64 {
	if len(d) == 0 {
		return 0
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return float64(d[len(d)*99/100].Nanoseconds()) / 1e3
}

var benchRecord = bytes.Repeat([]byte("e"), 200)

func BenchmarkAppendGroupCommit(b *testing.B) {
	s, err := Open(Options{Dir: b.TempDir(), Sinks: []string{"a"}, Durability: GroupCommit})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	lat := make([]time.Duration, b.N)
	b.SetBytes(int64(len(benchRecord)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if err := s.Append(benchRecord); err != nil {
			b.Fatal(err)
		}
		lat[i] = time.Since(t0)
	}
	b.StopTimer()
	b.ReportMetric(p99(lat), "p99-µs")
}

func BenchmarkAppendDurable8Writers(b *testing.B) {
	s, err := Open(Options{Dir: b.TempDir(), Sinks: []string{"a"}, Durability: Durable})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	const writers = 8
	lat := make([][]time.Duration, writers)
	fs0 := s.Stats().Fsyncs
	b.SetBytes(int64(len(benchRecord)))
	b.ResetTimer()
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		n := b.N / writers
		if w < b.N%writers {
			n++
		}
		lat[w] = make([]time.Duration, 0, n)
		wg.Add(1)
		go func(w, n int) {
			defer wg.Done()
			for i := 0; i < n; i++ {
				t0 := time.Now()
				if err := s.Append(benchRecord); err != nil {
					b.Error(err)
					return
				}
				lat[w] = append(lat[w], time.Since(t0))
			}
		}(w, n)
	}
	wg.Wait()
	b.StopTimer()
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	b.ReportMetric(float64(s.Stats().Fsyncs-fs0)/float64(b.N), "fsyncs/record")
	b.ReportMetric(p99(all), "p99-µs")
}

func BenchmarkReadCommit(b *testing.B) {
	s, err := Open(Options{Dir: b.TempDir(), Sinks: []string{"a"}, Durability: GroupCommit, SegmentBytes: 4 << 20})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	for i := 0; i < b.N; i++ {
		if err := s.Append(benchRecord); err != nil {
			b.Fatal(err)
		}
	}
	if err := s.Sync(); err != nil {
		b.Fatal(err)
	}
	r, err := s.Reader("a")
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.SetBytes(int64(len(benchRecord)))
	b.ResetTimer()
	start := time.Now()
	for got := 0; got < b.N; {
		recs, err := r.Next(ctx, 512)
		if err != nil {
			b.Fatal(err)
		}
		if err := r.Commit(recs[len(recs)-1].Seq); err != nil {
			b.Fatal(err)
		}
		got += len(recs)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "records/s")
}

// BenchmarkAppendFromDurable10MB streams one 10 MB record per iteration into
// a Durable spool: body file written and fsynced, directory fsynced, the
// record referring to it fsynced. With no sink the body file is deleted at
// once, so the disk does not fill whatever b.N is.
func BenchmarkAppendFromDurable10MB(b *testing.B) {
	const size = 10 << 20
	s, err := Open(Options{Dir: b.TempDir(), Durability: Durable})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	// The source is in memory so that only the spool is measured.
	data := make([]byte, size)
	if _, err := io.ReadFull(newBodyGen(1, size), data); err != nil {
		b.Fatal(err)
	}
	fs0 := s.Stats().Fsyncs
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := s.AppendFrom(bytes.NewReader(data), size); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(s.Stats().Fsyncs-fs0)/float64(b.N), "fsyncs/record")
}

// BenchmarkReadBody10MB reads a 10 MB body record back through Record.Open,
// checking its CRC-32C, as an archive drainer would.
func BenchmarkReadBody10MB(b *testing.B) {
	const size = 10 << 20
	s, err := Open(Options{Dir: b.TempDir(), Sinks: []string{"a"}, Durability: Durable})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	if err := s.AppendFrom(newBodyGen(1, size), size); err != nil {
		b.Fatal(err)
	}
	r, err := s.Reader("a")
	if err != nil {
		b.Fatal(err)
	}
	recs, err := r.Next(context.Background(), 1)
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rc, err := recs[0].Open()
		if err != nil {
			b.Fatal(err)
		}
		if n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{rc}, buf); err != nil || n != size {
			b.Fatalf("read %d bytes: %v", n, err)
		}
		rc.Close()
	}
}
