//go:build linux

package route

import (
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// needRoot skips privileged tests for unprivileged runs.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, links, routes and nftables tables")
	}
}

// testNS is a network namespace made for one test: anonymous (no bind mount
// under /run/netns), so it vanishes with its last handle, taking its links,
// routes and nftables tables with it, even if the test binary dies.
type testNS struct {
	ns netns.NsHandle
	h  *netlink.Handle
}

func newTestNS(t *testing.T) *testNS {
	t.Helper()
	needRoot(t)
	var ns netns.NsHandle
	err := onThread(func() error {
		orig, err := netns.Get()
		if err != nil {
			return err
		}
		defer orig.Close()
		ns, err = netns.New() // also switches this thread into it
		if err != nil {
			return err
		}
		return netns.Set(orig)
	})
	require.NoError(t, err)
	h, err := netlink.NewHandleAt(ns)
	require.NoError(t, err)
	t.Cleanup(func() {
		h.Close()
		ns.Close()
	})
	lo, err := h.LinkByName("lo")
	require.NoError(t, err)
	require.NoError(t, h.LinkSetUp(lo))
	return &testNS{ns: ns, h: h}
}

// onThread runs f on a locked OS thread that is discarded afterwards, so a
// namespace switch inside f can never leak to other goroutines.
func onThread(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		errc <- f()
	}()
	return <-errc
}

// run runs f with its thread inside the namespace (sockets made by f live there).
func (n *testNS) run(f func() error) error {
	return onThread(func() error {
		if err := netns.Set(n.ns); err != nil {
			return err
		}
		return f()
	})
}

// veth creates a veth pair name/peer, both up; peer is moved to other (nil: stays).
func (n *testNS) veth(t *testing.T, name, peer string, other *testNS) {
	t.Helper()
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: peer}
	if other != nil {
		v.PeerNamespace = netlink.NsFd(other.ns)
	}
	require.NoError(t, n.h.LinkAdd(v))
	n.up(t, name)
	if other != nil {
		other.up(t, peer)
	} else {
		n.up(t, peer)
	}
}

// bridge creates a port-less bridge (no carrier), up.
func (n *testNS) bridge(t *testing.T, name string) {
	t.Helper()
	require.NoError(t, n.h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}))
	n.up(t, name)
}

func (n *testNS) up(t *testing.T, name string) {
	t.Helper()
	l, err := n.h.LinkByName(name)
	require.NoError(t, err)
	require.NoError(t, n.h.LinkSetUp(l))
}

func (n *testNS) link(t *testing.T, name string) netlink.Link {
	t.Helper()
	l, err := n.h.LinkByName(name)
	require.NoError(t, err)
	return l
}

// addr adds address a (with prefix length) to link name, without DAD.
func (n *testNS) addr(t *testing.T, name, a string) {
	t.Helper()
	p := netip.MustParsePrefix(a)
	require.NoError(t, n.h.AddrAdd(n.link(t, name), &netlink.Addr{IPNet: ipNet(p), Flags: 0x02 /* IFA_F_NODAD */}))
}

// addrs lists the addresses on link name, without link-local ones.
func (n *testNS) addrs(t *testing.T, name string) []netip.Prefix {
	t.Helper()
	as, err := n.h.AddrList(n.link(t, name), netlink.FAMILY_ALL)
	require.NoError(t, err)
	var out []netip.Prefix
	for _, a := range as {
		p, ok := fromIPNet(a.IPNet, false)
		require.True(t, ok)
		if !p.Addr().IsLinkLocalUnicast() {
			out = append(out, p)
		}
	}
	return sortedUnique(out)
}

// routes lists the main-table destinations through link name with protocol proto.
func (n *testNS) routes(t *testing.T, name string, proto int) []netip.Prefix {
	t.Helper()
	rs, err := n.h.RouteListFiltered(netlink.FAMILY_ALL,
		&netlink.Route{LinkIndex: n.link(t, name).Attrs().Index, Protocol: netlink.RouteProtocol(proto)},
		netlink.RT_FILTER_OIF|netlink.RT_FILTER_PROTOCOL)
	require.NoError(t, err)
	var out []netip.Prefix
	for _, r := range rs {
		p, ok := fromIPNet(r.Dst, true)
		require.True(t, ok)
		out = append(out, p)
	}
	return sortedUnique(out)
}

// route adds a foreign route (protocol static) to dst through link name, via gw if valid.
func (n *testNS) route(t *testing.T, name, dst string, gw netip.Addr) {
	t.Helper()
	r := &netlink.Route{LinkIndex: n.link(t, name).Attrs().Index, Dst: ipNet(netip.MustParsePrefix(dst)), Protocol: 4 /* static */}
	if gw.IsValid() {
		r.Gw = net.IP(gw.AsSlice())
	} else {
		r.Scope = netlink.SCOPE_LINK
	}
	require.NoError(t, n.h.RouteAdd(r))
}
