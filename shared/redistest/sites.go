package redistest

import (
	"context"
	"strings"
	"testing"
	"time"
)

// Replication settings of the multi-site topology (deploy/redis has the
// production reasoning): links that notice a dead peer within seconds, a
// small backlog, and replicas that keep serving their last copy while the
// link is down, which is what a site reads of a dark peer.
var (
	SitePrimaryConfig = []string{"repl-ping-replica-period 1", "repl-timeout 3", "repl-backlog-size 1mb"}
	SiteReplicaConfig = []string{"repl-timeout 3", "replica-serve-stale-data yes", "repl-diskless-load swapdb"}
)

// Site is one site's Redis in the geomilter topology: its own primary, and a
// local replica of every other site's primary.
type Site struct {
	Name     string
	Primary  *Server
	Replicas map[string]*Server // peer site name -> this site's replica of that peer's primary
}

// Sites starts, for each name, a primary and a replica of every other site's
// primary (n² redis-servers), and returns once every replication link is up.
func Sites(t testing.TB, names ...string) map[string]*Site {
	t.Helper()
	sites := make(map[string]*Site, len(names))
	for _, n := range names {
		sites[n] = &Site{Name: n, Replicas: map[string]*Server{}, Primary: Start(t, WithConfig(SitePrimaryConfig...))}
	}
	for _, n := range names {
		for _, p := range names {
			if p != n {
				sites[n].Replicas[p] = Start(t, WithReplicaOf(sites[p].Primary.Addr), WithConfig(SiteReplicaConfig...))
			}
		}
	}
	for _, s := range sites {
		for p, r := range s.Replicas {
			r.WaitLinkUp(t, s.Name+"'s replica of "+p)
		}
	}
	return sites
}

// linkTimeout bounds WaitLinkUp: a replica on the loopback syncs in well
// under a second.
const linkTimeout = 20 * time.Second

// WaitLinkUp waits until this replica's link to its primary is up (the
// initial sync done); what names it in the failure.
func (s *Server) WaitLinkUp(t testing.TB, what string) {
	t.Helper()
	c := s.Client()
	deadline := time.Now().Add(linkTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		info, err := c.Info(ctx, "replication").Result()
		cancel()
		if err == nil && strings.Contains(info, "master_link_status:up") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: replication link not up after %v (last: %v)", what, linkTimeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
