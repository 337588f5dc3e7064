package route

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"
)

func pfx(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ss))
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func TestNormalize(t *testing.T) {
	tests := []struct {
		name    string
		in      Desired
		want    normalized
		wantErr string
	}{
		{
			name: "dedup sort mask and drop on-link routes",
			in: Desired{
				Addrs:  pfx("fd7a::1/64", "100.64.0.1/16", "100.64.0.1/16"),
				Routes: pfx("10.1.0.7/24", "10.1.0.0/24", "100.64.0.0/16", "fd7a::/64", "100.64.0.0/10"),
			},
			want: normalized{
				addrs:  pfx("100.64.0.1/16", "fd7a::1/64"),
				routes: pfx("10.1.0.0/24", "100.64.0.0/10"),
			},
		},
		{name: "empty", in: Desired{}, want: normalized{}},
		{name: "zero route", in: Desired{Routes: []netip.Prefix{{}}}, wantErr: `route "invalid Prefix": not a valid prefix`},
		{name: "mapped route", in: Desired{Routes: pfx("::ffff:10.0.0.0/104")}, wantErr: "IPv4-mapped"},
		{name: "multicast address", in: Desired{Addrs: pfx("224.0.0.1/4")}, wantErr: `address "224.0.0.1/4": not a unicast address`},
		{name: "loopback address", in: Desired{Addrs: pfx("127.0.0.2/8")}, wantErr: "not a unicast address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := normalize("op", tt.in)
			if tt.wantErr != "" {
				require.ErrorIs(t, err, ErrInvalid)
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestMakePlan(t *testing.T) {
	lan := Connected{Prefix: netip.MustParsePrefix("172.24.0.0/16"), Interface: "docker0"}
	lanNarrow := Connected{Prefix: netip.MustParsePrefix("172.24.1.0/24"), Interface: "br1"}
	tests := []struct {
		name string
		want normalized
		cur  current
		exp  plan
	}{
		{
			name: "from scratch",
			want: normalized{addrs: pfx("100.64.0.1/16"), routes: pfx("10.1.0.0/24", "fd7b::/48")},
			exp: plan{
				addAddrs: pfx("100.64.0.1/16"), addRoutes: pfx("10.1.0.0/24", "fd7b::/48"),
				routes: pfx("10.1.0.0/24", "fd7b::/48"),
			},
		},
		{
			name: "only the difference",
			want: normalized{addrs: pfx("100.64.0.1/16"), routes: pfx("10.2.0.0/24", "10.3.0.0/24")},
			cur: current{
				present: pfx("100.64.0.1/16", "fd7a::1/64"), ours: pfx("100.64.0.1/16", "fd7a::1/64"),
				routes: pfx("10.1.0.0/24", "10.2.0.0/24"),
			},
			exp: plan{
				delAddrs: pfx("fd7a::1/64"), addRoutes: pfx("10.3.0.0/24"), delRoutes: pfx("10.1.0.0/24"),
				routes: pfx("10.2.0.0/24", "10.3.0.0/24"),
			},
		},
		{
			name: "foreign address is neither added nor removed",
			want: normalized{addrs: pfx("192.0.2.1/24")},
			cur:  current{present: pfx("192.0.2.1/24", "198.51.100.1/24")},
			exp:  plan{},
		},
		{
			name: "our address removed by someone else is not removed again",
			want: normalized{},
			cur:  current{ours: pfx("100.64.0.1/16")},
			exp:  plan{},
		},
		{
			name: "overlap skipped and an installed overlapping route removed",
			want: normalized{routes: pfx("10.1.0.0/24", "172.24.0.0/25", "172.24.1.128/25", "172.0.0.0/8")},
			cur:  current{routes: pfx("172.24.0.0/25"), connected: []Connected{lan, lanNarrow}},
			exp: plan{
				addRoutes: pfx("10.1.0.0/24"), delRoutes: pfx("172.24.0.0/25"), routes: pfx("10.1.0.0/24"),
				skipped: []Skip{
					{Prefix: netip.MustParsePrefix("172.24.0.0/25"), Reason: "overlaps 172.24.0.0/16 directly connected on docker0"},
					{Prefix: netip.MustParsePrefix("172.24.1.128/25"), Reason: "overlaps 172.24.1.0/24 directly connected on br1"},
					{Prefix: netip.MustParsePrefix("172.0.0.0/8"), Reason: "overlaps 172.24.1.0/24 directly connected on br1"},
				},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.exp, makePlan(tt.want, tt.cur))
		})
	}
}

func TestLongestMatch(t *testing.T) {
	ps := pfx("100.64.0.1/16", "10.0.0.0/8", "10.1.0.0/16", "fd7a::1/64")
	tests := []struct {
		addr string
		want string // "" = no match
	}{
		{"10.1.2.3", "10.1.0.0/16"},
		{"10.2.0.1", "10.0.0.0/8"},
		{"::ffff:10.1.0.1", "10.1.0.0/16"},
		{"100.64.9.9", "100.64.0.0/16"},
		{"fd7a::99", "fd7a::/64"},
		{"fd7b::1", ""},
		{"192.168.0.1", ""},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			got, ok := longestMatch(ps, netip.MustParseAddr(tt.addr))
			if tt.want == "" {
				require.False(t, ok, got)
				return
			}
			require.True(t, ok)
			require.Equal(t, netip.MustParsePrefix(tt.want), got)
		})
	}
}

func TestFirewallConfigNormalize(t *testing.T) {
	tests := []struct {
		name    string
		in      FirewallConfig
		want    FirewallConfig
		wantErr string
	}{
		{
			name: "defaults and masking",
			in:   FirewallConfig{Interface: "wg0", ChildPrefixes: pfx("172.24.0.9/24", "fd00:1::/64", "172.24.0.0/24")},
			want: FirewallConfig{Interface: "wg0", ChildPrefixes: pfx("172.24.0.0/24", "fd00:1::/64"), TableName: "wiremesh-wg0"},
		},
		{name: "no interface", in: FirewallConfig{}, wantErr: `interface name ""`},
		{name: "long interface", in: FirewallConfig{Interface: "a-very-long-name0"}, wantErr: `"a-very-long-name0"`},
		{name: "bad table", in: FirewallConfig{Interface: "wg0", TableName: "x y"}, wantErr: `table name "x y"`},
		{name: "bad prefix", in: FirewallConfig{Interface: "wg0", ChildPrefixes: []netip.Prefix{{}}}, wantErr: "child prefix"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.in.normalize("op")
			if tt.wantErr != "" {
				require.ErrorIs(t, err, ErrInvalid)
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}
