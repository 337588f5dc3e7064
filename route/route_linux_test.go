//go:build linux

package route

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// routeEvents records the route changes with RouteProtocol in n, as
// "+prefix"/"-prefix", up to a marker route change made by sync.
type routeEvents struct {
	n  *testNS
	ch chan netlink.RouteUpdate
}

func watchRoutes(t *testing.T, n *testNS) *routeEvents {
	ch := make(chan netlink.RouteUpdate, 256)
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	require.NoError(t, netlink.RouteSubscribeWithOptions(ch, done, netlink.RouteSubscribeOptions{Namespace: &n.ns}))
	return &routeEvents{n: n, ch: ch}
}

// sync adds and removes a marker route on link, then returns the events of
// our protocol seen before the marker (netlink delivers in order).
func (e *routeEvents) sync(t *testing.T, link string) []string {
	t.Helper()
	marker := &netlink.Route{LinkIndex: e.n.link(t, link).Attrs().Index, Dst: ipNet(netip.MustParsePrefix("198.18.99.0/24")), Scope: netlink.SCOPE_LINK, Protocol: 4}
	require.NoError(t, e.n.h.RouteAdd(marker))
	require.NoError(t, e.n.h.RouteDel(marker))
	var got []string
	deadline := time.After(5 * time.Second)
	for {
		select {
		case u := <-e.ch:
			p, _ := fromIPNet(u.Dst, true)
			if p == netip.MustParsePrefix("198.18.99.0/24") {
				if u.Type == unix.RTM_DELROUTE {
					return got
				}
				continue
			}
			if u.Protocol != RouteProtocol {
				continue
			}
			sign := "+"
			if u.Type == unix.RTM_DELROUTE {
				sign = "-"
			}
			got = append(got, sign+p.String())
		case <-deadline:
			t.Fatalf("no marker route event; got %v", got)
		}
	}
}

func TestLinuxApply(t *testing.T) {
	ctx := context.Background()
	n := newTestNS(t)
	n.veth(t, "wm0", "wm0p", nil)
	n.bridge(t, "br-lan")
	n.addr(t, "br-lan", "172.24.0.1/24")
	n.addr(t, "lo", "10.99.0.1/24")
	require.NoError(t, n.h.LinkSetDown(n.link(t, "wm0")))
	n.addr(t, "wm0", "192.0.2.1/24") // someone else's address
	events := watchRoutes(t, n)

	tab, err := NewLinux("wm0", WithNetNS(n.ns))
	require.NoError(t, err)
	t.Cleanup(func() { tab.Close() })

	// First Apply: addresses, routes, skips; brings the link up.
	res, err := tab.Apply(ctx, Desired{
		Addrs:  pfx("100.64.0.1/16", "fd7a::1/64", "192.0.2.1/24"),
		Routes: pfx("10.1.0.0/24", "10.2.0.0/24", "fd7b::/48", "172.24.0.0/25", "10.99.0.128/25", "100.64.0.0/16"),
	})
	require.NoError(t, err)
	require.Equal(t, []Skip{
		{Prefix: netip.MustParsePrefix("10.99.0.128/25"), Reason: "overlaps 10.99.0.0/24 directly connected on lo"},
		{Prefix: netip.MustParsePrefix("172.24.0.0/25"), Reason: "overlaps 172.24.0.0/24 directly connected on br-lan"},
	}, res.Skipped)
	require.NotZero(t, n.link(t, "wm0").Attrs().Flags&net.FlagUp)
	require.Equal(t, pfx("100.64.0.1/16", "192.0.2.1/24", "fd7a::1/64"), n.addrs(t, "wm0"))
	require.Equal(t, pfx("10.1.0.0/24", "10.2.0.0/24", "fd7b::/48"), n.routes(t, "wm0", RouteProtocol))
	require.ElementsMatch(t, []string{"+10.1.0.0/24", "+10.2.0.0/24", "+fd7b::/48"}, events.sync(t, "wm0"))
	n.route(t, "wm0", "10.9.0.0/24", netip.Addr{}) // someone else's route (needs the link up)
	for addr, want := range map[string]string{"10.1.0.9": "10.1.0.0/24", "100.64.3.3": "100.64.0.0/16", "fd7b:0:0:1::1": "fd7b::/48", "172.24.0.5": ""} {
		got, ok := tab.Lookup(netip.MustParseAddr(addr))
		require.Equal(t, want != "", ok, addr)
		if ok {
			require.Equal(t, want, got.String(), addr)
		}
	}

	// Second Apply: only the difference changes.
	res, err = tab.Apply(ctx, Desired{Addrs: pfx("100.64.0.1/16"), Routes: pfx("10.2.0.0/24", "10.3.0.0/24")})
	require.NoError(t, err)
	require.Empty(t, res.Skipped)
	require.ElementsMatch(t, []string{"-10.1.0.0/24", "-fd7b::/48", "+10.3.0.0/24"}, events.sync(t, "wm0"))
	require.Equal(t, pfx("10.2.0.0/24", "10.3.0.0/24"), n.routes(t, "wm0", RouteProtocol))
	require.Equal(t, pfx("100.64.0.1/16", "192.0.2.1/24"), n.addrs(t, "wm0"), "foreign address stays, ours goes")

	// The same state again changes nothing.
	_, err = tab.Apply(ctx, Desired{Addrs: pfx("100.64.0.1/16"), Routes: pfx("10.2.0.0/24", "10.3.0.0/24")})
	require.NoError(t, err)
	require.Empty(t, events.sync(t, "wm0"))

	// A network connected later takes precedence: our route goes, with a reason.
	n.addr(t, "br-lan", "10.3.0.1/16")
	res, err = tab.Apply(ctx, Desired{Addrs: pfx("100.64.0.1/16"), Routes: pfx("10.2.0.0/24", "10.3.0.0/24")})
	require.NoError(t, err)
	require.Equal(t, []Skip{{Prefix: netip.MustParsePrefix("10.3.0.0/24"), Reason: "overlaps 10.3.0.0/16 directly connected on br-lan"}}, res.Skipped)
	require.Equal(t, pfx("10.2.0.0/24"), n.routes(t, "wm0", RouteProtocol))

	// Invalid input changes nothing.
	_, err = tab.Apply(ctx, Desired{Routes: []netip.Prefix{{}}})
	require.ErrorIs(t, err, ErrInvalid)
	require.Equal(t, pfx("10.2.0.0/24"), n.routes(t, "wm0", RouteProtocol))

	// Close removes ours only.
	require.NoError(t, tab.Close())
	require.Empty(t, n.routes(t, "wm0", RouteProtocol))
	require.Equal(t, pfx("10.9.0.0/24"), n.routes(t, "wm0", 4))
	require.Equal(t, pfx("192.0.2.1/24"), n.addrs(t, "wm0"))
	require.ErrorIs(t, tab.Close(), net.ErrClosed)
	_, err = tab.Apply(ctx, Desired{})
	require.ErrorIs(t, err, net.ErrClosed)
}

func TestLinuxConflictingForeignRoute(t *testing.T) {
	n := newTestNS(t)
	n.veth(t, "wm0", "wm0p", nil)
	n.veth(t, "lan0", "lan0p", nil)
	n.addr(t, "lan0", "192.168.7.1/24")
	n.route(t, "lan0", "10.7.0.0/24", netip.MustParseAddr("192.168.7.254"))

	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	tab, err := NewLinux("wm0", WithNetNS(n.ns), WithLogger(log))
	require.NoError(t, err)
	t.Cleanup(func() { tab.Close() })
	for range 2 {
		res, err := tab.Apply(context.Background(), Desired{Routes: pfx("10.7.0.0/24", "10.8.0.0/24")})
		require.NoError(t, err)
		require.Equal(t, []Skip{{Prefix: netip.MustParsePrefix("10.7.0.0/24"), Reason: "conflicts with an existing route not added by wiremesh"}}, res.Skipped)
	}
	require.Equal(t, pfx("10.8.0.0/24"), n.routes(t, "wm0", RouteProtocol))
	_, ok := tab.Lookup(netip.MustParseAddr("10.7.0.1"))
	require.False(t, ok)
	require.Equal(t, 1, strings.Count(logs.String(), "level=WARN"), "one warning for a repeated skip: %s", logs.String())
	require.Contains(t, logs.String(), `msg="route not installed" interface=wm0 prefix=10.7.0.0/24 reason="conflicts with an existing route not added by wiremesh"`)
}

func TestNewLinuxErrors(t *testing.T) {
	_, err := NewLinux("bad/name")
	require.ErrorIs(t, err, ErrInvalid)
	require.ErrorContains(t, err, `"bad/name"`)

	n := newTestNS(t)
	_, err = NewLinux("nosuch0", WithNetNS(n.ns))
	require.ErrorContains(t, err, `interface "nosuch0"`)
}

func TestLinuxInterfaceGone(t *testing.T) {
	n := newTestNS(t)
	n.veth(t, "wm0", "wm0p", nil)
	tab, err := NewLinux("wm0", WithNetNS(n.ns))
	require.NoError(t, err)
	_, err = tab.Apply(context.Background(), Desired{Addrs: pfx("100.64.0.1/16"), Routes: pfx("10.1.0.0/24")})
	require.NoError(t, err)
	require.NoError(t, n.h.LinkDel(n.link(t, "wm0")))
	_, err = tab.Apply(context.Background(), Desired{})
	require.ErrorContains(t, err, `interface "wm0"`)
	require.NoError(t, tab.Close(), "routes and addresses went with the interface")
}

func TestCleanupLeftovers(t *testing.T) {
	n := newTestNS(t)
	n.veth(t, "wm0", "wm0p", nil)
	n.veth(t, "wm1", "wm1p", nil)
	n.route(t, "wm0", "10.9.0.0/24", netip.Addr{})

	// A "crashed" run: routes and a firewall table that nobody closes.
	crashed, err := NewLinux("wm0", WithNetNS(n.ns))
	require.NoError(t, err)
	_, err = crashed.Apply(context.Background(), Desired{Addrs: pfx("100.64.0.1/16"), Routes: pfx("10.1.0.0/24", "fd7b::/48")})
	require.NoError(t, err)
	fw, err := NewFirewall(FirewallConfig{Interface: "wm0", ChildPrefixes: pfx("172.24.0.0/24")}, WithNetNS(n.ns))
	require.NoError(t, err)
	// Another agent's routes on another interface must survive.
	other, err := NewLinux("wm1", WithNetNS(n.ns))
	require.NoError(t, err)
	t.Cleanup(func() { other.Close() })
	_, err = other.Apply(context.Background(), Desired{Routes: pfx("10.5.0.0/24")})
	require.NoError(t, err)

	require.NoError(t, CleanupLeftovers("wm0", "", WithNetNS(n.ns)))
	require.Empty(t, n.routes(t, "wm0", RouteProtocol))
	require.Equal(t, pfx("10.9.0.0/24"), n.routes(t, "wm0", 4))
	require.Equal(t, pfx("10.5.0.0/24"), n.routes(t, "wm1", RouteProtocol))
	require.False(t, nftTableExists(t, n, "wiremesh-wm0"))

	// Nothing left: cleanup again, and on a missing interface, succeed.
	require.NoError(t, CleanupLeftovers("wm0", "", WithNetNS(n.ns)))
	require.NoError(t, CleanupLeftovers("gone0", "", WithNetNS(n.ns)))
	require.ErrorIs(t, CleanupLeftovers("", ""), ErrInvalid)

	// The crashed objects close cleanly over the emptied state.
	require.NoError(t, fw.Close())
	require.NoError(t, crashed.Close())
}

func ExampleNewLinux() {
	tab, err := NewLinux("wg0")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer tab.Close()
	res, err := tab.Apply(context.Background(), Desired{
		Addrs:  []netip.Prefix{netip.MustParsePrefix("100.64.0.1/16")},
		Routes: []netip.Prefix{netip.MustParsePrefix("172.28.0.0/24")},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, s := range res.Skipped {
		fmt.Println("not routed:", s)
	}
}
