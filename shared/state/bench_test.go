package state_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/shared/redistest"
	"github.com/geomilter/geomilter/shared/state"
)

// perSiteDocs builds n rules at each site, every id present at every site
// with a different HLC, so each merge step compares.
func perSiteDocs(sites []string, n int) map[string]map[string]state.RuleDoc {
	out := make(map[string]map[string]state.RuleDoc, len(sites))
	body := json.RawMessage(`{"milter":"access","scope":"global","match":{"client_ip":["203.0.113.0/24"]},"action":"reject"}`)
	for si, s := range sites {
		m := make(map[string]state.RuleDoc, n)
		for i := 0; i < n; i++ {
			id := fmt.Sprintf("rule-%06d", i)
			h := state.HLC{Wall: 4_102_444_800_000 + int64((i*7+si*13)%1000), Logical: uint32(si), Site: s}
			m[id] = state.RuleDoc{ID: id, Doc: body, HLC: h.String(), Deleted: i%50 == si, Site: s}
		}
		out[s] = m
	}
	return out
}

// BenchmarkMergeRules100k merges 3 sites × 100,000 versions of the same ids.
func BenchmarkMergeRules100k(b *testing.B) {
	in := perSiteDocs([]string{"ams", "dal", "lax"}, 100_000)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		m := state.MergeRules(in)
		if len(m) != 100_000 {
			b.Fatalf("%d merged", len(m))
		}
	}
}

// BenchmarkLoadRules100k reads and merges 100,000 rules from one real
// primary (when it changed, HGETALL + JSON decode dominate; scale by the
// number of sites that changed).
func BenchmarkLoadRules100k(b *testing.B) {
	srv := redistest.Start(b)
	st, err := state.Open(state.Options{Site: "a", Local: state.InstanceConfig{Addr: srv.Addr},
		BulkTimeout: 30 * time.Second, Logger: zerolog.Nop()})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	docs := make([]state.RuleDoc, 0, 100_000)
	for id, d := range perSiteDocs([]string{"a"}, 100_000)["a"] {
		docs = append(docs, state.RuleDoc{ID: id, Doc: d.Doc})
	}
	for i := 0; i < len(docs); i += 10_000 {
		if _, err := st.PutRules(ctx, docs[i:i+10_000]); err != nil {
			b.Fatal(err)
		}
	}
	load := func(b *testing.B) {
		m, _, err := st.LoadRules(ctx)
		if err != nil || len(m) < 100_000 {
			b.Fatalf("%d rules, %v", len(m), err)
		}
	}
	// A site changed since the last load: the whole hash is read and decoded.
	b.Run("changed", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			if _, err := st.PutRules(ctx, []state.RuleDoc{{ID: fmt.Sprintf("bump-%d", i), Doc: json.RawMessage(`{}`)}}); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			load(b)
		}
	})
	// Nothing changed: version check, decoded cache, merge.
	b.Run("unchanged", func(b *testing.B) {
		load(b)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			load(b)
		}
	})
}

// BenchmarkIncr measures one rate-limit increment against real local
// redis-servers: the own primary alone, and with two peer replicas read in
// parallel (plain servers here; reads cost the same); and four subjects
// counted with one IncrMany against four Incr calls.
func BenchmarkIncr(b *testing.B) {
	for _, peers := range []int{0, 2} {
		srvs := make([]*redistest.Server, 1+peers)
		for i := range srvs {
			srvs[i] = redistest.Start(b)
		}
		o := state.Options{Site: "a", Local: state.InstanceConfig{Addr: srvs[0].Addr},
			Peers: map[string]state.InstanceConfig{}, Timeout: time.Second, Logger: zerolog.Nop()}
		for i := 1; i < len(srvs); i++ {
			o.Peers[fmt.Sprintf("p%d", i)] = state.InstanceConfig{Addr: srvs[i].Addr}
		}
		st, err := state.Open(o)
		if err != nil {
			b.Fatal(err)
		}
		ctx := context.Background()
		b.Run(fmt.Sprintf("sites=%d", 1+peers), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if _, err := st.Incr(ctx, "sender:x@example.org", time.Minute); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("sites=%d/parallel", 1+peers), func(b *testing.B) {
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := st.Incr(ctx, "sender:x@example.org", time.Minute); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
		// Four subjects (the rate rules one stage of a message may meet): one
		// round trip per instance, as for one.
		reqs := []state.IncrReq{{Subject: "ip:192.0.2.1", Window: time.Minute}, {Subject: "sender:x@example.org", Window: time.Hour},
			{Subject: "tenant:acme", Window: time.Hour}, {Subject: "login:x", Window: time.Minute}}
		b.Run(fmt.Sprintf("sites=%d/IncrMany4", 1+peers), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if _, err := st.IncrMany(ctx, reqs); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("sites=%d/4xIncr", 1+peers), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				for _, r := range reqs {
					if _, err := st.Incr(ctx, r.Subject, r.Window); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
		st.Close()
	}
}
