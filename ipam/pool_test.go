package ipam

import (
	"math"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"
)

var (
	mustAddr   = netip.MustParseAddr
	mustPrefix = netip.MustParsePrefix
)

func newPool(t testing.TB, s string) *Pool {
	t.Helper()
	p, err := NewPool(mustPrefix(s))
	require.NoError(t, err)
	return p
}

func TestNewPool(t *testing.T) {
	tests := []struct {
		in      string
		cap     uint64
		wantErr string
	}{
		{in: "100.64.0.0/16", cap: 65534},
		{in: "10.0.0.0/30", cap: 2},
		{in: "10.0.0.0/8", cap: 1<<24 - 2},
		{in: "0.0.0.0/0", cap: 1<<32 - 2},
		{in: "fd00::/64", cap: math.MaxUint64},
		{in: "fd00::/120", cap: 255},
		{in: "fd00::/127", cap: 1},
		{in: "10.0.0.0/31", wantErr: "at least a /30"},
		{in: "10.0.0.0/32", wantErr: "at least a /30"},
		{in: "fd00::/48", wantErr: "/64 to /127"},
		{in: "fd00::/128", wantErr: "/64 to /127"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			p, err := NewPool(mustPrefix(tt.in))
			if tt.wantErr != "" {
				require.ErrorIs(t, err, ErrInvalidPrefix)
				require.Contains(t, err.Error(), tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.cap, p.Capacity())
			require.Equal(t, mustPrefix(tt.in), p.Prefix())
		})
	}
	_, err := NewPool(netip.PrefixFrom(mustAddr("10.0.0.1"), 24))
	require.ErrorIs(t, err, ErrInvalidPrefix)
	_, err = NewPool(netip.Prefix{})
	require.ErrorIs(t, err, ErrInvalidPrefix)
}

func TestPoolIndexPairing(t *testing.T) {
	v4 := newPool(t, "100.64.0.0/16")
	v6 := newPool(t, ULAPool("default").String())
	for i := uint64(1); i <= 300; i++ {
		a4, ok := v4.Addr(i)
		require.True(t, ok)
		a6, ok := v6.Addr(i)
		require.True(t, ok)
		i4, ok := v4.Index(a4)
		require.True(t, ok)
		i6, ok := v6.Index(a6)
		require.True(t, ok)
		require.Equal(t, i, i4)
		require.Equal(t, i, i6)
	}
	i, ok := v4.Index(mustAddr("100.64.1.44"))
	require.True(t, ok)
	require.Equal(t, uint64(256+44), i)
	a6, ok := v6.Addr(i)
	require.True(t, ok)
	b := a6.As16()
	require.Equal(t, []byte{0, 0, 0, 0, 0, 0, 1, 44}, b[8:])
	require.True(t, v6.Prefix().Contains(a6))

	// Not host addresses: network, IPv4 broadcast, outside, other family.
	for _, a := range []string{"100.64.0.0", "100.64.255.255", "100.65.0.1", "fd00::1"} {
		_, ok := v4.Index(mustAddr(a))
		require.False(t, ok, a)
	}

	// Bounds.
	_, ok = v4.Addr(0)
	require.False(t, ok)
	_, ok = v4.Addr(65535)
	require.False(t, ok)
	last, ok := v4.Addr(65534)
	require.True(t, ok)
	require.Equal(t, mustAddr("100.64.255.254"), last)
	last6, ok := v6.Addr(math.MaxUint64)
	require.True(t, ok)
	i, ok = v6.Index(last6)
	require.True(t, ok)
	require.Equal(t, uint64(math.MaxUint64), i)
	_, ok = v6.Index(v6.Prefix().Addr())
	require.False(t, ok)
}

func TestULAPool(t *testing.T) {
	d := ULAPool("default")
	require.Equal(t, 64, d.Bits())
	require.Equal(t, byte(0xfd), d.Addr().As16()[0])
	require.Equal(t, d, ULAPool("default"))
	require.NotEqual(t, d, ULAPool("lab"))
	require.Equal(t, d, d.Masked())
	require.NoError(t, ValidatePool(d))
	// Stable across releases: SHA-256("wiremesh zone default")[:5].
	require.Equal(t, "fd3d:4bb0:38b7::/64", d.String())
}

func TestValidatePool(t *testing.T) {
	tests := []struct {
		in      string
		wantErr string
	}{
		{in: DefaultIPv4Pool},
		{in: "10.0.0.0/8"},
		{in: "10.0.0.0/30"},
		{in: "fd00::/64"},
		{in: "fd00::/120"},
		{in: "10.0.0.0/7", wantErr: "pool length /7 out of range (IPv4 pools are /8 to /30)"},
		{in: "10.0.0.0/31", wantErr: "out of range"},
		{in: "fd00::/48", wantErr: "IPv6 pools are /64 to /120"},
		{in: "fd00::/121", wantErr: "out of range"},
		{in: "127.0.0.0/16", wantErr: "loopback"},
		{in: "224.0.0.0/8", wantErr: "multicast"},
		{in: "169.254.0.0/16", wantErr: "link-local"},
		{in: "fe80::/64", wantErr: "link-local"},
		{in: "ff00::/64", wantErr: "multicast"},
		{in: "::ffff:0:0/112", wantErr: "IPv4-mapped"},
		{in: "0.0.0.0/0", wantErr: "default route"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			err := ValidatePool(mustPrefix(tt.in))
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrInvalidPrefix)
			require.Contains(t, err.Error(), tt.wantErr)
		})
	}
	require.ErrorIs(t, ValidatePool(netip.PrefixFrom(mustAddr("10.0.0.1"), 16)), ErrInvalidPrefix)
	require.ErrorIs(t, ValidatePool(netip.Prefix{}), ErrInvalidPrefix)
}
