//go:build linux

package route

import (
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// listen starts a TCP listener at addr inside n; the returned channel gets
// the remote address of every accepted connection.
func (n *testNS) listen(t *testing.T, addr string) <-chan netip.Addr {
	t.Helper()
	var ln net.Listener
	require.NoError(t, n.run(func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	}))
	t.Cleanup(func() { ln.Close() })
	seen := make(chan netip.Addr, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			seen <- c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
			c.Close()
		}
	}()
	return seen
}

// dial connects from inside n to addr and returns the source address the
// server saw, or the dial error. Dropped traffic shows as a timeout.
func (n *testNS) dial(t *testing.T, addr string, seen <-chan netip.Addr) (netip.Addr, error) {
	t.Helper()
	err := n.run(func() error {
		c, err := net.DialTimeout("tcp", addr, 700*time.Millisecond)
		if err != nil {
			return err
		}
		return c.Close()
	})
	if err != nil {
		return netip.Addr{}, err
	}
	select {
	case a := <-seen:
		return a, nil
	case <-time.After(5 * time.Second):
		return netip.Addr{}, errors.New("connected but the server saw nothing")
	}
}

func (n *testNS) sysctl(t *testing.T, path string) string {
	t.Helper()
	var v string
	require.NoError(t, n.run(func() (err error) {
		v, err = readSysctl(path)
		return err
	}))
	return v
}

// TestForwardingTraffic runs real traffic through a router namespace R:
//
//	A (mesh peer, 100.64.0.2) --r0-- R --r1-- B (child prefix 172.24.0.0/24)
//	                                   --r2-- C (other LAN 192.168.50.0/24)
//
// r0 plays the mesh interface. B and C route back through R by default.
func TestForwardingTraffic(t *testing.T) {
	a, r, b, c := newTestNS(t), newTestNS(t), newTestNS(t), newTestNS(t)
	r.veth(t, "r0", "a0", a)
	r.veth(t, "r1", "b0", b)
	r.veth(t, "r2", "c0", c)
	r.addr(t, "r0", "100.64.0.1/24")
	r.addr(t, "r1", "172.24.0.1/24")
	r.addr(t, "r2", "192.168.50.1/24")
	a.addr(t, "a0", "100.64.0.2/24")
	b.addr(t, "b0", "172.24.0.2/24")
	c.addr(t, "c0", "192.168.50.2/24")
	a.route(t, "a0", "172.24.0.0/24", netip.MustParseAddr("100.64.0.1"))
	a.route(t, "a0", "192.168.50.0/24", netip.MustParseAddr("100.64.0.1"))
	b.route(t, "b0", "0.0.0.0/0", netip.MustParseAddr("172.24.0.1"))
	c.route(t, "c0", "0.0.0.0/0", netip.MustParseAddr("192.168.50.1"))
	atB := b.listen(t, "172.24.0.2:8080")
	atC := c.listen(t, "192.168.50.2:8080")
	atA := a.listen(t, "100.64.0.2:8080")

	hostV4 := readSysctlT(t, sysctlIPv4Forward)
	// A new namespace may inherit the host's values: start from off.
	require.NoError(t, r.run(func() error {
		return errors.Join(writeSysctl(sysctlIPv4Forward, "0"), writeSysctl(sysctlIPv6Forward, "0"))
	}))
	restore, err := EnableForwarding(true, true, WithNetNS(r.ns))
	require.NoError(t, err)
	t.Cleanup(func() { restore() })
	require.Equal(t, "1", r.sysctl(t, sysctlIPv4Forward))
	require.Equal(t, "1", r.sysctl(t, sysctlIPv6Forward))
	require.Equal(t, hostV4, readSysctlT(t, sysctlIPv4Forward), "the host's namespace is untouched")

	mustReach := func(from *testNS, addr string, seen <-chan netip.Addr, wantSrc string) {
		t.Helper()
		src, err := from.dial(t, addr, seen)
		require.NoError(t, err, "dial %s", addr)
		require.Equal(t, netip.MustParseAddr(wantSrc), src, "source seen by %s", addr)
	}
	mustNotReach := func(from *testNS, addr string, seen <-chan netip.Addr) {
		t.Helper()
		_, err := from.dial(t, addr, seen)
		require.Error(t, err, "dial %s must fail", addr)
	}

	// Plain forwarding reaches everything.
	mustReach(a, "172.24.0.2:8080", atB, "100.64.0.2")
	mustReach(a, "192.168.50.2:8080", atC, "100.64.0.2")
	mustReach(c, "100.64.0.2:8080", atA, "192.168.50.2")

	// The firewall confines the mesh to the child prefix, and masquerades.
	fw, err := NewFirewall(FirewallConfig{Interface: "r0", ChildPrefixes: pfx("172.24.0.0/24"), Masquerade: true}, WithNetNS(r.ns))
	require.NoError(t, err)
	t.Cleanup(func() { fw.Close() })
	mustReach(a, "172.24.0.2:8080", atB, "172.24.0.1")
	mustReach(b, "100.64.0.2:8080", atA, "172.24.0.2")
	mustNotReach(a, "192.168.50.2:8080", atC)
	mustNotReach(c, "100.64.0.2:8080", atA)

	// Update opens the second prefix.
	require.NoError(t, fw.Update(pfx("172.24.0.0/24", "192.168.50.0/24")))
	mustReach(a, "192.168.50.2:8080", atC, "192.168.50.1")
	mustReach(c, "100.64.0.2:8080", atA, "192.168.50.2")

	// Without masquerade, sources pass unchanged.
	require.NoError(t, fw.Close())
	fw, err = NewFirewall(FirewallConfig{Interface: "r0", ChildPrefixes: pfx("172.24.0.0/24")}, WithNetNS(r.ns))
	require.NoError(t, err)
	mustReach(a, "172.24.0.2:8080", atB, "100.64.0.2")
	mustNotReach(a, "192.168.50.2:8080", atC)
	require.NoError(t, fw.Close())
	mustReach(a, "192.168.50.2:8080", atC, "100.64.0.2")

	// Restoring forwarding stops it.
	require.NoError(t, restore())
	require.NoError(t, restore(), "restore is idempotent")
	require.Equal(t, "0", r.sysctl(t, sysctlIPv4Forward))
	require.Equal(t, "0", r.sysctl(t, sysctlIPv6Forward))
	mustNotReach(a, "172.24.0.2:8080", atB)
}

func TestEnableForwardingAlreadyOn(t *testing.T) {
	r := newTestNS(t)
	require.NoError(t, r.run(func() error { return writeSysctl(sysctlIPv4Forward, "1") }))
	require.NoError(t, r.run(func() error { return writeSysctl(sysctlIPv6Forward, "0") }))
	restore, err := EnableForwarding(true, false, WithNetNS(r.ns))
	require.NoError(t, err)
	require.Equal(t, "0", r.sysctl(t, sysctlIPv6Forward), "v6 not asked for")
	require.NoError(t, restore())
	require.Equal(t, "1", r.sysctl(t, sysctlIPv4Forward), "a value we did not change stays")
}

func readSysctlT(t *testing.T, path string) string {
	t.Helper()
	v, err := readSysctl(path)
	require.NoError(t, err)
	return v
}
