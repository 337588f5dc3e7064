package mesh

import (
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
)

// Unprivileged kernel-mode tests of internals; the privileged end-to-end
// test is in kernel_test.go.

func TestDesiredRoutes(t *testing.T) {
	pfx := netip.MustParsePrefix
	addrs := []netip.Prefix{pfx("100.64.0.1/16"), pfx("fd00:1::1/64")}
	peer := func(ips ...string) wgPeer {
		var w wgPeer
		for _, s := range ips {
			w.AllowedIPs = append(w.AllowedIPs, pfx(s))
		}
		return w
	}
	tests := []struct {
		name  string
		peers map[api.Key]wgPeer
		want  []netip.Prefix
	}{
		{"no peers", nil, nil},
		{"tunnel addresses are on-link", map[api.Key]wgPeer{{1}: peer("100.64.0.2/32", "fd00:1::2/128")}, nil},
		{"child prefixes", map[api.Key]wgPeer{
			{1}: peer("100.64.0.2/32", "172.24.0.0/24"),
			{2}: peer("100.64.0.3/32", "172.28.0.0/24", "fd99::/64"),
		}, []netip.Prefix{pfx("172.24.0.0/24"), pfx("172.28.0.0/24"), pfx("fd99::/64")}},
		{"outside the pool is routed", map[api.Key]wgPeer{{1}: peer("100.65.0.2/32")}, []netip.Prefix{pfx("100.65.0.2/32")}},
		{"duplicates once", map[api.Key]wgPeer{{1}: peer("10.0.0.0/8"), {2}: peer("10.0.0.0/8")}, []netip.Prefix{pfx("10.0.0.0/8")}},
		{"wider than the pool is routed", map[api.Key]wgPeer{{1}: peer("100.0.0.0/8")}, []netip.Prefix{pfx("100.0.0.0/8")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.want, desiredRoutes(addrs, tt.peers))
		})
	}
}

func TestWithInterfaceName(t *testing.T) {
	for _, name := range []string{"", "0123456789abcdef", "a/b", "a b", "wg:0", "."} {
		_, err := newConfig([]Option{WithInterfaceName(name)})
		require.ErrorContains(t, err, "WithInterfaceName", "name %q", name)
	}
	c, err := newConfig([]Option{WithInterfaceName("wm-test0")})
	require.NoError(t, err)
	require.Equal(t, "wm-test0", c.ifname)
	c, err = newConfig(nil)
	require.NoError(t, err)
	require.Equal(t, DefaultInterfaceName, c.ifname)
}

func TestKernelModeUnavailable(t *testing.T) {
	c, err := newConfig([]Option{WithMode(Kernel)})
	require.NoError(t, err)
	err = kernelPreflight(c)
	switch {
	case runtime.GOOS != "linux":
		require.ErrorIs(t, err, ErrKernelModeUnsupported)
	case err == nil:
		t.Skip("kernel mode is available here (CAP_NET_ADMIN): TestKernelMode covers it")
	default:
		require.ErrorContains(t, err, "needs root (CAP_NET_ADMIN)")
	}
}

func TestListenAllOneAddress(t *testing.T) {
	l, err := listenAll([]netip.Addr{netip.MustParseAddr("127.0.0.1")}, 0)
	require.NoError(t, err)
	defer l.Close()
	_, isMulti := l.(*multiListener)
	require.False(t, isMulti, "one address: a plain listener")
}

func TestMultiListener(t *testing.T) {
	if _, err := net.Listen("tcp6", "[::1]:0"); err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	l, err := listenAll([]netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")}, 0)
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	for _, host := range []string{"127.0.0.1", "::1"} {
		c, err := net.Dial("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		require.NoError(t, err)
		s, err := l.Accept()
		require.NoError(t, err)
		require.Equal(t, c.LocalAddr().String(), s.RemoteAddr().String())
		c.Close()
		s.Close()
	}
	require.NoError(t, l.Close())
	_, err = l.Accept()
	require.ErrorIs(t, err, net.ErrClosed)
	require.ErrorIs(t, l.Close(), net.ErrClosed)
}
