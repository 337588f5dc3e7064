package ipam

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestRegistryAddConflicts(t *testing.T) {
	r := NewRegistry()
	r.Reserve(DefaultIPv4PoolPrefix, TunnelPoolOwner)
	r.Reserve(ULAPool("default"), TunnelPoolOwner)
	require.NoError(t, r.Add(mustPrefix("10.0.0.0/16"), "node1"))
	require.NoError(t, r.Add(mustPrefix("172.24.0.0/24"), "node2"))
	require.NoError(t, r.Add(mustPrefix("fd00:1::/64"), "node2"))

	tests := []struct {
		name         string
		in           string
		wantExisting string
		wantOwner    string
	}{
		{name: "equal", in: "10.0.0.0/16", wantExisting: "10.0.0.0/16", wantOwner: "node1"},
		{name: "inside", in: "10.0.1.0/24", wantExisting: "10.0.0.0/16", wantOwner: "node1"},
		{name: "inside host", in: "10.0.255.255/32", wantExisting: "10.0.0.0/16", wantOwner: "node1"},
		{name: "containing", in: "10.0.0.0/8", wantExisting: "10.0.0.0/16", wantOwner: "node1"},
		{name: "containing several", in: "0.0.0.0/0", wantExisting: "10.0.0.0/16", wantOwner: "node1"},
		{name: "containing from below", in: "172.0.0.0/8", wantExisting: "172.24.0.0/24", wantOwner: "node2"},
		{name: "tunnel pool inside", in: "100.64.3.0/24", wantExisting: "100.64.0.0/16", wantOwner: TunnelPoolOwner},
		{name: "tunnel pool containing", in: "100.64.0.0/10", wantExisting: "100.64.0.0/16", wantOwner: TunnelPoolOwner},
		{name: "v6 pool", in: ULAPool("default").String(), wantExisting: ULAPool("default").String(), wantOwner: TunnelPoolOwner},
		{name: "v6 containing", in: "fd00::/8", wantExisting: "fd00:1::/64", wantOwner: "node2"},
		{name: "v6 inside", in: "fd00:1::80/121", wantExisting: "fd00:1::/64", wantOwner: "node2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustPrefix(tt.in)
			e, ok := r.Conflict(p)
			require.True(t, ok)
			require.Equal(t, Entry{Prefix: mustPrefix(tt.wantExisting), Owner: tt.wantOwner}, e)

			err := r.Add(p, "intruder")
			require.ErrorIs(t, err, ErrPrefixConflict)
			var ce *ConflictError
			require.True(t, errors.As(err, &ce))
			require.Equal(t, p, ce.Prefix)
			require.Equal(t, mustPrefix(tt.wantExisting), ce.Existing)
			require.Equal(t, tt.wantOwner, ce.Owner)
			require.Equal(t, "prefix "+tt.in+" overlaps "+tt.wantExisting+" held by "+tt.wantOwner, err.Error())
		})
	}
	require.Equal(t, 5, r.Len(), "failed adds change nothing")

	// No conflict: neighbours and the other family.
	for _, s := range []string{"10.1.0.0/16", "172.24.1.0/24", "100.65.0.0/16", "fd00:2::/64", "::ffff:10.0.0.0/104", "11.0.0.0/8"} {
		_, ok := r.Conflict(mustPrefix(s))
		require.False(t, ok, s)
	}
	_, ok := r.Conflict(netip.Prefix{})
	require.False(t, ok)
}

func TestRegistryAddIdempotent(t *testing.T) {
	r := NewRegistry()
	p := mustPrefix("172.28.0.0/24")
	require.NoError(t, r.Add(p, "node2"))
	require.NoError(t, r.Add(p, "node2"))
	require.Equal(t, 1, r.Len())
	err := r.Add(p, "node3")
	require.ErrorIs(t, err, ErrPrefixConflict)
	require.EqualError(t, err, "prefix 172.28.0.0/24 overlaps 172.28.0.0/24 held by node2")

	require.ErrorIs(t, r.Add(netip.Prefix{}, "x"), ErrInvalidPrefix)
	err = r.Add(netip.PrefixFrom(mustAddr("172.29.0.9"), 24), "x")
	require.ErrorIs(t, err, ErrInvalidPrefix)
	require.Contains(t, err.Error(), "did you mean 172.29.0.0/24?")
	require.Equal(t, 1, r.Len())
}

func TestRegistryFamiliesNeverConflict(t *testing.T) {
	r := NewRegistry()
	require.NoError(t, r.Add(mustPrefix("0.0.0.0/0"), "exit4"))
	require.NoError(t, r.Add(mustPrefix("::/0"), "exit6"))
	e, ok := r.Conflict(mustPrefix("10.0.0.0/8"))
	require.True(t, ok)
	require.Equal(t, "exit4", e.Owner)
	e, ok = r.Conflict(mustPrefix("2001:db8::/32"))
	require.True(t, ok)
	require.Equal(t, "exit6", e.Owner)

	r2 := NewRegistry()
	require.NoError(t, r2.Add(mustPrefix("10.0.0.0/8"), "a"))
	require.NoError(t, r2.Add(mustPrefix("::ffff:10.0.0.0/104"), "b"))
	require.NoError(t, r2.Add(mustPrefix("::/96"), "c"))
	require.Equal(t, 3, r2.Len())
}

func TestRegistryLookup(t *testing.T) {
	r := NewRegistry()
	r.Reserve(mustPrefix("100.64.0.0/16"), TunnelPoolOwner)
	r.Reserve(mustPrefix("100.64.0.0/16"), "renamed pool") // replaces the owner
	r.Reserve(netip.Prefix{}, "ignored")
	require.NoError(t, r.Add(mustPrefix("10.1.0.0/16"), "node1"))
	require.NoError(t, r.Add(mustPrefix("fd00:1::/64"), "node6"))
	require.NoError(t, r.Add(mustPrefix("10.2.3.4/32"), "host"))
	// Reserve does not check overlaps; Add does, afterwards.
	r.Reserve(mustPrefix("10.0.0.0/8"), "overlapping reserve")
	require.ErrorIs(t, r.Add(mustPrefix("10.3.0.0/16"), "node3"), ErrPrefixConflict)

	tests := []struct {
		in   string
		want string // "owner prefix" or ""
	}{
		{"10.1.2.3", "node1 10.1.0.0/16"},
		{"10.2.3.4", "host 10.2.3.4/32"},
		{"10.2.3.5", "overlapping reserve 10.0.0.0/8"},
		{"100.64.9.9", "renamed pool 100.64.0.0/16"},
		{"fd00:1::5", "node6 fd00:1::/64"},
		{"fd00:1::5%eth0", "node6 fd00:1::/64"},
		{"fd00:2::5", ""},
		{"::ffff:10.1.2.3", ""},
		{"192.168.0.1", ""},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			e, ok := r.Lookup(mustAddr(tt.in))
			if tt.want == "" {
				require.False(t, ok)
				return
			}
			require.True(t, ok)
			require.Equal(t, tt.want, e.Owner+" "+e.Prefix.String())
		})
	}
	_, ok := r.Lookup(netip.Addr{})
	require.False(t, ok)
	owner, ok := r.Get(mustPrefix("100.64.0.0/16"))
	require.True(t, ok)
	require.Equal(t, "renamed pool", owner)
}

func TestRegistryRemoveAndAll(t *testing.T) {
	r := NewRegistry()
	for _, s := range []string{"fd00:1::/64", "172.28.0.0/24", "10.0.0.0/16", "172.24.0.0/24", "10.1.0.0/24", "10.1.0.128/25"} {
		if err := r.Add(mustPrefix(s), "n-"+s); err != nil {
			require.ErrorIs(t, err, ErrPrefixConflict, s) // 10.1.0.128/25 is inside 10.1.0.0/24
		}
	}
	var got []string
	for _, e := range r.All() {
		got = append(got, e.Prefix.String())
	}
	require.Equal(t, []string{"10.0.0.0/16", "10.1.0.0/24", "172.24.0.0/24", "172.28.0.0/24", "fd00:1::/64"}, got)

	require.True(t, r.Remove(mustPrefix("10.1.0.0/24")))
	require.False(t, r.Remove(mustPrefix("10.1.0.0/24")))
	require.False(t, r.Remove(mustPrefix("10.0.0.0/8")), "remove is exact")
	require.Equal(t, 4, r.Len())
	_, ok := r.Lookup(mustAddr("10.1.0.200"))
	require.False(t, ok)
	require.NoError(t, r.Add(mustPrefix("10.1.0.128/25"), "node9"))
	_, ok = r.Conflict(mustPrefix("10.1.0.0/25"))
	require.False(t, ok)
	e, ok := r.Conflict(mustPrefix("10.1.0.0/24"))
	require.True(t, ok)
	require.Equal(t, "node9", e.Owner)
	require.Len(t, r.All(), 5)
}

func TestLastAddr(t *testing.T) {
	tests := []struct{ in, want string }{
		{"10.0.0.0/8", "10.255.255.255"},
		{"0.0.0.0/0", "255.255.255.255"},
		{"10.9.9.9/32", "10.9.9.9"},
		{"::/0", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"},
		{"fd00::/64", "fd00::ffff:ffff:ffff:ffff"},
		{"fd00::/48", "fd00:0:0:ffff:ffff:ffff:ffff:ffff"},
		{"fd00::/120", "fd00::ff"},
		{"fd00::1/128", "fd00::1"},
	}
	for _, tt := range tests {
		require.Equal(t, mustAddr(tt.want), lastAddr(mustPrefix(tt.in)), tt.in)
	}
}
