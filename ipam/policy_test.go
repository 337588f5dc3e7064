package ipam

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func pfxs(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ss))
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func TestCheckPrefixes(t *testing.T) {
	pools := pfxs("100.64.0.0/16", "fd3d:4bb0:38b7::/64")
	zone := Policy{Pools: pools}
	exit := Policy{Pools: pools, AllowDefaultRoute: true}
	many := make([]string, 0, DefaultMaxPrefixes)
	for i := range DefaultMaxPrefixes {
		many = append(many, netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 24, byte(i), 0}), 24).String())
	}
	tests := []struct {
		name      string
		pol       Policy
		held, add []string
		want      []string // the new set, when accepted
		wantErr   error    // sentinel, when refused
		wantMsg   string
	}{
		{name: "first", pol: zone, add: []string{"172.24.0.0/24"}, want: []string{"172.24.0.0/24"}},
		{name: "sorted and deduplicated", pol: zone, add: []string{"fd00:1::/64", "172.24.0.0/24", "172.24.0.0/24"},
			want: []string{"172.24.0.0/24", "fd00:1::/64"}},
		{name: "held again", pol: zone, held: []string{"172.24.0.0/24"}, add: []string{"172.24.0.0/24"}, want: []string{"172.24.0.0/24"}},
		{name: "nothing", pol: zone, held: []string{"172.24.0.0/24"}, want: []string{"172.24.0.0/24"}},
		{name: "invalid", pol: zone, add: []string{"127.0.0.0/8"}, wantErr: ErrInvalidPrefix, wantMsg: "loopback"},
		{name: "too wide", pol: zone, add: []string{"1.0.0.0/8"}, wantErr: ErrPrefixTooWide},
		{name: "too wide v6", pol: zone, add: []string{"2000::/3"}, wantErr: ErrPrefixTooWide},
		{name: "zone allows wide", pol: Policy{Pools: pools, MinBits4: 8}, add: []string{"10.0.0.0/8"}, want: []string{"10.0.0.0/8"}},
		{name: "default route", pol: zone, add: []string{"0.0.0.0/0"}, wantErr: ErrInvalidPrefix, wantMsg: "default route"},
		{name: "exit", pol: exit, add: []string{"0.0.0.0/0", "::/0"}, want: []string{"0.0.0.0/0", "::/0"}},
		{name: "pool inside", pol: zone, add: []string{"100.64.1.0/24"}, wantErr: ErrPrefixConflict, wantMsg: "held by tunnel pool"},
		{name: "pool containing", pol: Policy{Pools: pools, MinBits4: 8}, add: []string{"100.0.0.0/8"}, wantErr: ErrPrefixConflict, wantMsg: "100.64.0.0/16"},
		{name: "v6 pool", pol: zone, add: []string{"fd3d:4bb0:38b7::/64"}, wantErr: ErrPrefixConflict},
		// Issue 10: the same pair is refused whether it comes at once or in
		// two steps.
		{name: "own overlap at once", pol: zone, add: []string{"10.77.0.0/16", "10.77.1.0/24"},
			wantErr: ErrPrefixConflict, wantMsg: "prefix 10.77.1.0/24 overlaps 10.77.0.0/16 held by this device"},
		{name: "own overlap later", pol: zone, held: []string{"10.77.0.0/16"}, add: []string{"10.77.1.0/24"},
			wantErr: ErrPrefixConflict, wantMsg: "prefix 10.77.1.0/24 overlaps 10.77.0.0/16 held by this device"},
		{name: "own overlap containing held", pol: zone, held: []string{"10.77.1.0/24"}, add: []string{"10.77.0.0/16"},
			wantErr: ErrPrefixConflict, wantMsg: "held by this device"},
		{name: "legacy own overlap tolerated", pol: zone, held: []string{"10.77.0.0/16", "10.77.1.0/24"}, add: []string{"172.24.0.0/24"},
			want: []string{"10.77.0.0/16", "10.77.1.0/24", "172.24.0.0/24"}},
		{name: "exit node with its own network", pol: exit, held: []string{"0.0.0.0/0"}, add: []string{"172.24.0.0/24"},
			want: []string{"0.0.0.0/0", "172.24.0.0/24"}},
		{name: "at the limit", pol: zone, add: many, want: many},
		{name: "over the limit", pol: zone, held: many, add: []string{"172.28.0.0/24"}, wantErr: ErrTooManyPrefixes, wantMsg: "the zone allows 64"},
		{name: "over a zone limit", pol: Policy{MaxPrefixes: 1}, add: []string{"172.24.0.0/24", "172.28.0.0/24"}, wantErr: ErrTooManyPrefixes},
		{name: "over the limit adding nothing", pol: Policy{MaxPrefixes: 1}, held: []string{"172.24.0.0/24", "172.28.0.0/24"},
			add: []string{"172.28.0.0/24"}, want: []string{"172.24.0.0/24", "172.28.0.0/24"}},
		{name: "first error in address order", pol: zone, add: []string{"127.0.0.0/8", "10.0.0.0/9"}, wantErr: ErrPrefixTooWide},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := CheckPrefixes(tt.pol, pfxs(tt.held...), pfxs(tt.add...))
			if tt.wantErr != nil {
				require.ErrorIs(t, err, tt.wantErr)
				require.Contains(t, err.Error(), tt.wantMsg)
				require.Nil(t, got)
				return
			}
			require.NoError(t, err)
			require.Equal(t, pfxs(tt.want...), got)
		})
	}
}

func TestCheckPrefixesDoesNotModifyInput(t *testing.T) {
	held := pfxs("172.28.0.0/24", "172.24.0.0/24")
	add := pfxs("fd00::/64", "10.1.0.0/16")
	_, err := CheckPrefixes(Policy{}, held, add)
	require.NoError(t, err)
	require.Equal(t, pfxs("172.28.0.0/24", "172.24.0.0/24"), held)
	require.Equal(t, pfxs("fd00::/64", "10.1.0.0/16"), add)
}

func TestPolicyValidate(t *testing.T) {
	for _, tt := range []struct {
		pol     Policy
		wantErr string
	}{
		{pol: Policy{}},
		{pol: Policy{MinBits4: 1, MinBits6: 128, MaxPrefixes: MaxMaxPrefixes}},
		{pol: Policy{MinBits4: 33}, wantErr: "IPv4"},
		{pol: Policy{MinBits4: -1}, wantErr: "IPv4"},
		{pol: Policy{MinBits6: 129}, wantErr: "IPv6"},
		{pol: Policy{MaxPrefixes: MaxMaxPrefixes + 1}, wantErr: "per device"},
		{pol: Policy{MaxPrefixes: -1}, wantErr: "per device"},
	} {
		err := tt.pol.Validate()
		if tt.wantErr == "" {
			require.NoError(t, err)
			continue
		}
		require.ErrorContains(t, err, tt.wantErr)
	}
	e := Policy{}.Effective()
	require.Equal(t, Policy{MinBits4: DefaultMinBits4, MinBits6: DefaultMinBits6, MaxPrefixes: DefaultMaxPrefixes}, e)
	require.False(t, errors.Is(Policy{MinBits4: 40}.Validate(), ErrInvalidPrefix))
	require.True(t, strings.HasPrefix(Policy{MinBits4: 40}.Validate().Error(), "ipam: "))
}
