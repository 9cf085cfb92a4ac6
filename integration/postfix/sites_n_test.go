package postfix

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// N sites: twoSitesWith generalised (the three-site drill, issue 19). Each
// site is a namespace as with two sites; the links are a bridge in a hub
// namespace of its own, with each site's veth end (gmlink, as with two
// sites) plugged into it, all in 10.77.0.0/24 — so cutting one site's
// gmlink (site.cutLink) makes that site dark to every other at once. Every
// site runs its own Redis primary and a local replica of every peer's
// primary, and its milters read all of them.

// nSitesWith builds the named sites (10.77.0.1, .2, … in order) with
// everything, as twoSitesWith does for two: the first site is the peer of
// every other (its replica is site.replica), the tenant is applied at the
// second.
func nSitesWith(t testing.TB, names []string, o siteOpts) []*site {
	if len(names) < 2 || len(names) > 9 {
		t.Fatalf("nSitesWith: %d sites, want 2 to 9", len(names))
	}
	h := newHarness(t)
	o.withRedis, o.withMilters = true, true
	sites := make([]*site, len(names))
	for i, n := range names {
		sites[i] = h.newSite(n, fmt.Sprintf("10.77.0.%d", i+1))
	}
	for _, s := range sites {
		for _, p := range sites {
			if p != s {
				s.peers = append(s.peers, p)
			}
		}
		s.peer = s.peers[0]
	}
	h.linkHub(sites)
	for _, s := range sites {
		s.startRedisPrimary()
	}
	for _, s := range sites {
		s.startRedisReplicas()
	}
	for _, s := range sites {
		if o.beforeMilters != nil {
			o.beforeMilters(s)
		}
		s.startMilters(o)
		s.startSinks()
		s.startPostfix(o)
	}
	for _, s := range sites {
		for _, p := range s.peers {
			s, p := s, p
			waitFor(t, 30*time.Second, s.name+"'s replica of "+p.name+" in sync", func() bool { return s.replicaOfUp(p) })
		}
	}
	sites[1].applyRules(testRules)
	for _, s := range sites {
		s.waitRules("1 tenants")
	}
	return sites
}

// linkHub plugs every site's gmlink into one bridge in a hub namespace.
func (h *harness) linkHub(sites []*site) {
	hub := h.netns("hub")
	h.mustRun("ip", "-n", hub, "link", "add", "gmbr", "type", "bridge")
	h.mustRun("ip", "-n", hub, "link", "set", "gmbr", "up")
	for _, s := range sites {
		port := "p-" + s.name
		h.mustRun("ip", "link", "add", linkName, "netns", s.ns, "type", "veth", "peer", "name", port, "netns", hub)
		h.mustRun("ip", "-n", hub, "link", "set", port, "master", "gmbr")
		h.mustRun("ip", "-n", hub, "link", "set", port, "up")
		h.mustRun("ip", "-n", s.ns, "addr", "add", s.addr+"/24", "dev", linkName)
		h.mustRun("ip", "-n", s.ns, "link", "set", linkName, "up")
	}
}

// replicaOfUp reports whether s's replica of p is connected and in sync.
func (s *site) replicaOfUp(p *site) bool {
	c := s.replicas[p.name]
	if c == nil {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	info, err := c.Info(ctx, "replication").Result()
	return err == nil && strings.Contains(info, "master_link_status:up") && !strings.Contains(info, "master_sync_in_progress:1")
}
