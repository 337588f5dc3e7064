package main

import (
	"net/netip"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/internal/netlab"
)

func TestHostAddr(t *testing.T) {
	tests := []struct {
		prefix string
		host   int
		want   string // "" = none
	}{
		{"172.24.0.0/24", 10, "172.24.0.10"},
		{"172.24.0.0/24", 254, "172.24.0.254"},
		{"172.24.0.0/24", 255, ""}, // broadcast
		{"172.24.0.0/24", 0, ""},
		{"10.0.0.0/8", 300, "10.0.1.44"},
		{"10.0.0.8/30", 2, "10.0.0.10"},
		{"10.0.0.8/30", 3, ""},
		{"10.0.0.8/32", 1, ""},
		{"fd00::/64", 10, ""},
	}
	for _, tt := range tests {
		got, ok := hostAddr(netip.MustParsePrefix(tt.prefix), tt.host)
		if tt.want == "" {
			require.False(t, ok, "%s host %d: got %s", tt.prefix, tt.host, got)
			continue
		}
		require.True(t, ok, "%s host %d", tt.prefix, tt.host)
		require.Equal(t, netip.MustParseAddr(tt.want), got)
	}
}

// TestLoopbackScenario runs the README's scenario in network namespaces:
// the service, two routers and a spoke behind NAT, each running this
// program.
func TestLoopbackScenario(t *testing.T) {
	netlab.RequireRoot(t)
	netlab.RequireTUN(t)
	wiremesh := netlab.BuildBinary(t, "github.com/wiremesh/wiremesh/cmd/wiremesh")
	loopback := netlab.BuildBinary(t, "github.com/wiremesh/wiremesh/examples/loopback")
	pfx := netip.MustParsePrefix
	l := netlab.New(t)
	wan := l.Switch("wan")
	svc := l.Host("service")
	l.Connect(svc, wan, pfx("192.0.2.1/24"))
	node1, node2, nat, spoke := l.Host("node1"), l.Host("node2"), l.Host("nat"), l.Host("spoke")
	l.Connect(node1, wan, pfx("192.0.2.11/24"))
	l.Connect(node2, wan, pfx("192.0.2.12/24"))
	l.Connect(nat, wan, pfx("192.0.2.9/24"))
	l.Wire(spoke, pfx("10.99.0.2/24"), nat, pfx("10.99.0.1/24"))
	spoke.DefaultRoute(netip.MustParseAddr("10.99.0.1"))
	nat.Masquerade("wan")

	s := svc.Start(t, wiremesh, "serve", "--insecure-http", "--listen=192.0.2.1:8443", "--stun-listen=off", "--data-dir", t.TempDir())
	m := regexp.MustCompile(`--token (\S+) (\S+)`).FindStringSubmatch(s.WaitFor(t, "wiremesh join --token", 40*time.Second))
	require.NotNil(t, m)
	token, url := m[1], m[2]

	common := []string{"-token", token, "-insecure-http"}
	r1 := node1.Start(t, loopback, append(common, "-hostname", "node1", "-child-prefix", "172.24.0.0/24", url)...)
	r2 := node2.Start(t, loopback, append(common, "-hostname", "node2", "-child-prefix", "172.28.0.0/24", url)...)
	sp := spoke.Start(t, loopback, append(common, "-hostname", "spoke", "-rounds", "2", url)...)

	select {
	case <-sp.Done():
	case <-time.After(90 * time.Second):
		t.Fatalf("the spoke did not finish; output:\n%s", sp.Output())
	}
	require.NoError(t, sp.Stop(), sp.Output())
	t.Logf("spoke output:\n%s", sp.Output())
	require.Contains(t, sp.Output(), "reply from 172.24.0.10 (172.24.0.0/24 on node1)")
	require.Contains(t, sp.Output(), "reply from 172.28.0.10 (172.28.0.0/24 on node2)")
	require.Contains(t, sp.Output(), "all 2 loopback addresses answered")
	r1.WaitFor(t, "reply from 172.28.0.10 (172.28.0.0/24 on node2)", 30*time.Second)
	r2.WaitFor(t, "reply from 172.24.0.10 (172.24.0.0/24 on node1)", 30*time.Second)

	for _, r := range []struct {
		p    *netlab.Proc
		h    *netlab.Host
		addr string
	}{{r1, node1, "172.24.0.10"}, {r2, node2, "172.28.0.10"}} {
		require.NoError(t, r.p.Stop(), r.p.Output())
		require.NotContains(t, r.h.MustRun(t, "ip", "addr", "show", "lo"), r.addr, "removed from lo")
		require.NotContains(t, r.h.Links(), "wg0")
	}
}
