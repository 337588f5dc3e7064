package route

import (
	"context"
	"net"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestMemory(t *testing.T) {
	ctx := context.Background()
	m := NewMemory(Connected{Prefix: netip.MustParsePrefix("172.24.0.0/24"), Interface: "child"})

	res, err := m.Apply(ctx, Desired{
		Addrs:  pfx("100.64.0.1/16", "fd7a::1/64"),
		Routes: pfx("10.1.0.0/24", "172.24.0.0/25", "100.64.0.0/16"),
	})
	require.NoError(t, err)
	require.Equal(t, []Skip{{Prefix: netip.MustParsePrefix("172.24.0.0/25"), Reason: "overlaps 172.24.0.0/24 directly connected on child"}}, res.Skipped)
	require.Equal(t, pfx("10.1.0.0/24"), m.Routes())
	require.Equal(t, pfx("100.64.0.1/16", "fd7a::1/64"), m.Addrs())

	lookups := []struct {
		addr string
		want string
	}{
		{"10.1.0.9", "10.1.0.0/24"},
		{"100.64.7.7", "100.64.0.0/16"},
		{"fd7a::5", "fd7a::/64"},
		{"172.24.0.2", ""},
		{"8.8.8.8", ""},
	}
	for _, l := range lookups {
		got, ok := m.Lookup(netip.MustParseAddr(l.addr))
		if l.want == "" {
			require.False(t, ok, l.addr)
			continue
		}
		require.True(t, ok, l.addr)
		require.Equal(t, netip.MustParsePrefix(l.want), got, l.addr)
	}

	// Invalid input changes nothing.
	_, err = m.Apply(ctx, Desired{Routes: []netip.Prefix{{}}})
	require.ErrorIs(t, err, ErrInvalid)
	require.Equal(t, pfx("10.1.0.0/24"), m.Routes())

	// A replacement removes what is no longer wanted.
	res, err = m.Apply(ctx, Desired{Addrs: pfx("100.64.0.1/16"), Routes: pfx("10.2.0.0/24")})
	require.NoError(t, err)
	require.Empty(t, res.Skipped)
	require.Equal(t, pfx("10.2.0.0/24"), m.Routes())
	_, ok := m.Lookup(netip.MustParseAddr("10.1.0.9"))
	require.False(t, ok)
	_, ok = m.Lookup(netip.MustParseAddr("fd7a::5"))
	require.False(t, ok)

	require.NoError(t, m.Close())
	require.ErrorIs(t, m.Close(), net.ErrClosed)
	_, err = m.Apply(ctx, Desired{})
	require.ErrorIs(t, err, net.ErrClosed)
	_, ok = m.Lookup(netip.MustParseAddr("10.2.0.1"))
	require.False(t, ok)
}

func TestMemoryCanceled(t *testing.T) {
	m := NewMemory()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := m.Apply(ctx, Desired{Routes: pfx("10.1.0.0/24")})
	require.ErrorIs(t, err, context.Canceled)
	require.Empty(t, m.Routes())
}
