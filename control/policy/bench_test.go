package policy

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/wiremesh/wiremesh/control/api"
)

// BenchZone returns a zone of n members and a policy of rules rules (a
// multiple of 5), shaped like a shared mesh: 20 token tags of n/20 members,
// every tenth member a router with a /24, and rules between tags, from
// tags to routers' networks, from hostnames, from CIDRs and for ICMP.
func benchZone(n, rules int) ([]Member, *Policy) {
	const tags = 20
	ms := make([]Member, n)
	for i := range ms {
		ms[i] = Member{
			ID:       fmt.Sprintf("dev_%04d", i),
			Hostname: fmt.Sprintf("host%04d", i),
			Tags:     []string{fmt.Sprintf("t%02d", i%tags)},
			IPv4:     netip.AddrFrom4([4]byte{100, 64, byte((i + 1) >> 8), byte(i + 1)}),
			IPv6:     netip.AddrFrom16([16]byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, byte((i + 1) >> 8), byte(i + 1)}),
		}
		if i%10 == 0 {
			ms[i].Prefixes = []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)}
		}
	}
	var b strings.Builder
	b.WriteString(`{"tags": {`)
	for t := range tags {
		if t > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, `"t%02d": []`, t)
	}
	b.WriteString("},\n\"rules\": [\n")
	for r := range rules {
		if r > 0 {
			b.WriteString(",\n")
		}
		from, to := r%tags, (r*7+3)%tags
		switch r % 5 {
		case 0, 1:
			fmt.Fprintf(&b, `{"from": ["tag:t%02d"], "to": ["tag:t%02d:%d"], "proto": "tcp"}`, from, to, 1000+r)
		case 2:
			fmt.Fprintf(&b, `{"from": ["tag:t%02d"], "to": ["10.%d.0.0/16:8000-8099"]}`, from, r%4)
		case 3:
			fmt.Fprintf(&b, `{"from": ["host%04d", "192.168.%d.0/24"], "to": ["tag:t%02d:*"]}`, (r*37)%n, r, to)
		case 4:
			fmt.Fprintf(&b, `{"from": ["tag:t%02d"], "to": ["tag:t%02d:*"], "proto": "icmp"}`, from, to)
		}
	}
	b.WriteString("\n]}")
	p, err := Parse([]byte(b.String()))
	if err != nil {
		panic(err)
	}
	return ms, p
}

// BenchmarkCompile1000x100 compiles a policy of 100 rules for a zone of
// 1,000 members and builds every member's view (peers and filter), and
// reports the watch-message sizes: a member's filter and its policy
// snapshot, against the baseline of the same zone's snapshot without a
// policy (every member gets every peer).
func BenchmarkCompile1000x100(b *testing.B) {
	ms, p := benchZone(1000, 100)
	peer := func(m Member) api.Peer {
		return api.Peer{ID: m.ID, Hostname: m.Hostname, IPv4: m.IPv4, IPv6: m.IPv6, ChildPrefixes: m.Prefixes,
			Endpoints: []netip.AddrPort{netip.AddrPortFrom(m.IPv4, 51820)}}
	}
	all := make([]api.Peer, len(ms))
	for i, m := range ms {
		all[i] = peer(m)
	}
	open, _ := json.Marshal(api.WatchEvent{Type: api.EventSnapshot, Peers: all})

	var filterBytes, snapBytes, maxFilter, peers int
	for b.Loop() {
		c := Compile(p, ms, nil)
		filterBytes, snapBytes, maxFilter, peers = 0, 0, 0, 0
		for i := range ms {
			f := c.Filter(i)
			var visible []api.Peer
			for j := range c.Peers(i).All() {
				visible = append(visible, all[j])
			}
			peers += len(visible)
			fb, _ := json.Marshal(api.WatchEvent{Type: api.EventFilter, Filter: f})
			sb, _ := json.Marshal(api.WatchEvent{Type: api.EventSnapshot, Peers: visible, Filter: f})
			filterBytes += len(fb)
			snapBytes += len(sb)
			maxFilter = max(maxFilter, len(fb))
		}
	}
	n := float64(len(ms))
	b.ReportMetric(float64(filterBytes)/n, "filter-B/member")
	b.ReportMetric(float64(maxFilter), "max-filter-B")
	b.ReportMetric(float64(snapBytes)/n, "snapshot-B/member")
	b.ReportMetric(float64(len(open)), "open-snapshot-B")
	b.ReportMetric(float64(snapBytes)/n/float64(len(open)), "snapshot/open")
	b.ReportMetric(float64(peers)/n, "peers/member")
}

// BenchmarkCompileOnly1000x100 is the compilation alone (what a change of
// membership costs the service before it compares views).
func BenchmarkCompileOnly1000x100(b *testing.B) {
	ms, p := benchZone(1000, 100)
	var c *Compiled
	for b.Loop() {
		c = Compile(p, ms, c)
	}
}
