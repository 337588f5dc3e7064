//go:build linux

package route

import (
	"errors"
	"net/netip"
	"os"
	"testing"

	"github.com/stretchr/testify/require"
)

// A (mesh side) --r0-- R --r1-- B (child prefix 172.24.0.0/24): per-interface
// forwarding on r0 and r1 carries traffic both ways with the global switch
// off, and restore turns it off again, unless forwarding was turned on
// everywhere meanwhile.
func TestInterfaceForwarding(t *testing.T) {
	a, r, b := newTestNS(t), newTestNS(t), newTestNS(t)
	r.veth(t, "r0", "a0", a)
	r.veth(t, "r1", "b0", b)
	r.addr(t, "r0", "100.64.0.1/24")
	r.addr(t, "r1", "172.24.0.1/24")
	a.addr(t, "a0", "100.64.0.2/24")
	b.addr(t, "b0", "172.24.0.2/24")
	a.route(t, "a0", "172.24.0.0/24", netip.MustParseAddr("100.64.0.1"))
	b.route(t, "b0", "0.0.0.0/0", netip.MustParseAddr("172.24.0.1"))
	atB := b.listen(t, "172.24.0.2:8080")
	require.NoError(t, r.run(func() error {
		return errors.Join(writeSysctl(sysctlIPv4Forward, "0"), writeSysctl(sysctlIPv6Forward, "0"))
	}))
	ctx := WithNetNS(r.ns)

	ifs, err := PrefixInterfaces(pfx("172.24.0.0/24"), "r0", ctx)
	require.NoError(t, err)
	require.Equal(t, []string{"r1"}, ifs)
	ifs, err = PrefixInterfaces(pfx("172.24.0.0/24", "100.64.0.0/24"), "r0", ctx)
	require.NoError(t, err)
	require.Equal(t, []string{"r1"}, ifs, "the excluded interface is left out")
	ifs, err = PrefixInterfaces(pfx("172.24.0.128/25"), "r0", ctx)
	require.NoError(t, err)
	require.Equal(t, []string{"r1"}, ifs, "inside a connected network")
	r.route(t, "r0", "0.0.0.0/0", netip.MustParseAddr("100.64.0.2"))
	ifs, err = PrefixInterfaces(pfx("10.9.0.0/24"), "", ctx)
	require.NoError(t, err)
	require.Empty(t, ifs, "never the uplink of a default route")

	paths, err := ForwardingSysctls([]string{"r0", "r1"}, true, true, ctx)
	require.NoError(t, err)
	v6 := "/proc/sys/net/ipv6/conf/r0/force_forwarding"
	if r.run(func() error { _, err := os.Stat(v6); return err }) != nil {
		v6 = sysctlIPv6Forward // a kernel without force_forwarding
	}
	require.Contains(t, paths, "/proc/sys/net/ipv4/conf/r0/forwarding")
	require.Contains(t, paths, "/proc/sys/net/ipv4/conf/r1/forwarding")
	require.Contains(t, paths, v6)
	_, err = ForwardingSysctls([]string{"../x"}, true, false, ctx)
	require.ErrorIs(t, err, ErrInvalid)
	_, err = EnableInterfaceForwarding([]string{"/proc/sys/net/ipv4/tcp_syncookies"}, ctx)
	require.ErrorIs(t, err, ErrInvalid)

	_, err = a.dial(t, "172.24.0.2:8080", atB)
	require.Error(t, err, "no forwarding yet")
	v4paths, err := ForwardingSysctls([]string{"r0", "r1"}, true, false, ctx)
	require.NoError(t, err)
	restore, err := EnableInterfaceForwarding(v4paths, ctx)
	require.NoError(t, err)
	_, err = a.dial(t, "172.24.0.2:8080", atB)
	require.NoError(t, err, "forwarded with per-interface flags only")
	require.Equal(t, "0", r.sysctl(t, sysctlIPv4Forward), "the global switch is untouched")
	require.NoError(t, restore())
	require.NoError(t, restore())
	require.Equal(t, "0", r.sysctl(t, "/proc/sys/net/ipv4/conf/r1/forwarding"))
	_, err = a.dial(t, "172.24.0.2:8080", atB)
	require.Error(t, err, "restored")

	// Someone turns forwarding on everywhere while we run: restore leaves it.
	restore, err = EnableInterfaceForwarding(v4paths, ctx)
	require.NoError(t, err)
	require.NoError(t, r.run(func() error { return writeSysctl(sysctlIPv4Forward, "1") }))
	require.NoError(t, restore())
	require.Equal(t, "1", r.sysctl(t, "/proc/sys/net/ipv4/conf/r1/forwarding"))
	require.Equal(t, "1", r.sysctl(t, sysctlIPv4Forward))
	_, err = a.dial(t, "172.24.0.2:8080", atB)
	require.NoError(t, err)
}

// A sysctl that cannot be read fails the call and undoes what it wrote
// before.
func TestInterfaceForwardingFailureChangesNothing(t *testing.T) {
	r := newTestNS(t)
	lo := "/proc/sys/net/ipv4/conf/lo/forwarding"
	require.NoError(t, r.run(func() error {
		return errors.Join(writeSysctl(sysctlIPv4Forward, "0"), writeSysctl(lo, "0"))
	}))
	restore, err := EnableInterfaceForwarding([]string{lo, "/proc/sys/net/ipv4/conf/nosuch0/forwarding"}, WithNetNS(r.ns))
	require.ErrorIs(t, err, os.ErrNotExist)
	require.Nil(t, restore)
	require.Equal(t, "0", r.sysctl(t, lo), "the first write is undone")
}
