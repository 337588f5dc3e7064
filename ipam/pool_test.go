package ipam

import (
	"errors"
	"math"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var (
	mustAddr   = netip.MustParseAddr
	mustPrefix = netip.MustParsePrefix
	none       = netip.Addr{}
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
			require.Zero(t, p.Used())
		})
	}
	_, err := NewPool(netip.PrefixFrom(mustAddr("10.0.0.1"), 24))
	require.ErrorIs(t, err, ErrInvalidPrefix)
	_, err = NewPool(netip.Prefix{})
	require.ErrorIs(t, err, ErrInvalidPrefix)
}

func TestPoolAllocate(t *testing.T) {
	p := newPool(t, "100.64.0.0/16")

	// Lowest free first; the network address is skipped.
	for _, want := range []string{"100.64.0.1", "100.64.0.2", "100.64.0.3"} {
		a, err := p.Allocate(none)
		require.NoError(t, err)
		require.Equal(t, mustAddr(want), a)
	}

	// A requested address is honoured, and lowest-free skips over it.
	a, err := p.Allocate(mustAddr("100.64.0.4"))
	require.NoError(t, err)
	require.Equal(t, mustAddr("100.64.0.4"), a)
	a, err = p.Allocate(mustAddr("100.64.200.7"))
	require.NoError(t, err)
	require.Equal(t, mustAddr("100.64.200.7"), a)
	a, err = p.Allocate(none)
	require.NoError(t, err)
	require.Equal(t, mustAddr("100.64.0.5"), a)
	require.Equal(t, 6, p.Used())

	// In use.
	_, err = p.Allocate(mustAddr("100.64.0.2"))
	require.ErrorIs(t, err, ErrAddrInUse)
	require.Contains(t, err.Error(), "100.64.0.2")
	require.Contains(t, err.Error(), "100.64.0.0/16")
	require.Equal(t, 6, p.Used())

	// Outside: other prefix, other family, network, broadcast, zoned.
	for _, s := range []string{"100.65.0.1", "10.0.0.1", "fd00::1", "::ffff:100.64.0.9", "100.64.0.0", "100.64.255.255"} {
		_, err = p.Allocate(mustAddr(s))
		require.ErrorIs(t, err, ErrAddrOutside, s)
		require.Contains(t, err.Error(), s)
		require.ErrorIs(t, p.Mark(mustAddr(s)), ErrAddrOutside, s)
	}
	require.Equal(t, 6, p.Used())

	// Release and reuse of the lowest.
	require.True(t, p.Release(mustAddr("100.64.0.2")))
	require.False(t, p.Release(mustAddr("100.64.0.2")))
	require.True(t, p.Release(mustAddr("100.64.0.1")))
	require.False(t, p.Release(mustAddr("100.64.9.9")))
	require.False(t, p.Release(mustAddr("10.0.0.1")))
	require.False(t, p.InUse(mustAddr("100.64.0.1")))
	a, err = p.Allocate(none)
	require.NoError(t, err)
	require.Equal(t, mustAddr("100.64.0.1"), a)
	a, err = p.Allocate(none)
	require.NoError(t, err)
	require.Equal(t, mustAddr("100.64.0.2"), a)
	a, err = p.Allocate(none)
	require.NoError(t, err)
	require.Equal(t, mustAddr("100.64.0.6"), a)

	// A released address taken by request is not handed out twice.
	require.True(t, p.Release(mustAddr("100.64.0.3")))
	_, err = p.Allocate(mustAddr("100.64.0.3"))
	require.NoError(t, err)
	a, err = p.Allocate(none)
	require.NoError(t, err)
	require.Equal(t, mustAddr("100.64.0.7"), a)

	require.True(t, p.InUse(mustAddr("100.64.200.7")))
	require.False(t, p.InUse(mustAddr("100.64.200.8")))
	require.False(t, p.InUse(mustAddr("fd00::1")))
}

func TestPoolMark(t *testing.T) {
	p := newPool(t, "10.0.0.0/29") // hosts .1 to .6
	require.NoError(t, p.Mark(mustAddr("10.0.0.1")))
	require.NoError(t, p.Mark(mustAddr("10.0.0.3")))
	require.ErrorIs(t, p.Mark(mustAddr("10.0.0.3")), ErrAddrInUse)
	got := allocateAll(t, p)
	require.Equal(t, []string{"10.0.0.2", "10.0.0.4", "10.0.0.5", "10.0.0.6"}, got)
}

func allocateAll(t *testing.T, p *Pool) []string {
	t.Helper()
	var got []string
	for {
		a, err := p.Allocate(none)
		if err != nil {
			require.ErrorIs(t, err, ErrPoolExhausted)
			return got
		}
		got = append(got, a.String())
	}
}

func TestPoolExhaustionTiny(t *testing.T) {
	p := newPool(t, "192.168.7.0/30")
	require.Equal(t, []string{"192.168.7.1", "192.168.7.2"}, allocateAll(t, p))
	_, err := p.Allocate(none)
	require.ErrorIs(t, err, ErrPoolExhausted)
	require.Contains(t, err.Error(), "192.168.7.0/30")
	require.Contains(t, err.Error(), "2 of 2 in use")
	_, err = p.Allocate(mustAddr("192.168.7.3")) // broadcast
	require.ErrorIs(t, err, ErrAddrOutside)

	require.True(t, p.Release(mustAddr("192.168.7.2")))
	a, err := p.Allocate(none)
	require.NoError(t, err)
	require.Equal(t, mustAddr("192.168.7.2"), a)
}

func TestPoolExhaustionFull16(t *testing.T) {
	p := newPool(t, DefaultIPv4Pool)
	for i := range 65533 {
		a, err := p.Allocate(none)
		require.NoError(t, err)
		want, _ := p.Addr(uint64(i + 1))
		require.Equal(t, want, a)
	}
	// The last address, then exhaustion, both fast.
	start := time.Now()
	a, err := p.Allocate(none)
	require.NoError(t, err)
	require.Equal(t, mustAddr("100.64.255.254"), a)
	exhausted := 0
	for range 1000 {
		if _, err = p.Allocate(none); errors.Is(err, ErrPoolExhausted) {
			exhausted++
		}
	}
	require.Less(t, time.Since(start), time.Second)
	require.Equal(t, 1000, exhausted)
	// No rescans: the frontier sits at the end and nothing is queued.
	require.Equal(t, p.last, p.scanned)
	require.Empty(t, p.free)
	require.Equal(t, 65534, p.Used())

	// Loading a full /16 out of order with Mark, then exhaustion.
	q := newPool(t, DefaultIPv4Pool)
	for i := uint64(65534); i >= 1; i-- {
		a, _ := q.Addr(i)
		require.NoError(t, q.Mark(a))
	}
	_, err = q.Allocate(none)
	require.ErrorIs(t, err, ErrPoolExhausted)
	require.True(t, q.Release(mustAddr("100.64.128.0")))
	a, err = q.Allocate(none)
	require.NoError(t, err)
	require.Equal(t, mustAddr("100.64.128.0"), a)
}

func TestPoolIndexPairing(t *testing.T) {
	v4 := newPool(t, "100.64.0.0/16")
	v6 := newPool(t, ULAPool("default").String())
	for range 300 {
		a4, err := v4.Allocate(none)
		require.NoError(t, err)
		a6, err := v6.Allocate(none)
		require.NoError(t, err)
		i4, ok := v4.Index(a4)
		require.True(t, ok)
		i6, ok := v6.Index(a6)
		require.True(t, ok)
		require.Equal(t, i4, i6)
	}
	i, ok := v4.Index(mustAddr("100.64.1.44"))
	require.True(t, ok)
	require.Equal(t, uint64(256+44), i)
	a6, ok := v6.Addr(i)
	require.True(t, ok)
	b := a6.As16()
	require.Equal(t, []byte{0, 0, 0, 0, 0, 0, 1, 44}, b[8:])
	require.True(t, v6.Prefix().Contains(a6))

	// A requested IPv4 address gives the matching IPv6 one.
	a4, err := v4.Allocate(mustAddr("100.64.3.3"))
	require.NoError(t, err)
	i4, _ := v4.Index(a4)
	a6, _ = v6.Addr(i4)
	got, err := v6.Allocate(a6)
	require.NoError(t, err)
	require.Equal(t, a6, got)

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

func TestPoolV6SmallExhaustion(t *testing.T) {
	p := newPool(t, "fd00::/126") // ::1, ::2, ::3 (no broadcast in IPv6)
	require.Equal(t, []string{"fd00::1", "fd00::2", "fd00::3"}, allocateAll(t, p))
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
