package policy

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
)

// The zone of the compile tests: two routers with a Docker network each, a
// laptop joined with a token tagged "dev", a database host, and a free slot.
var testMembers = []Member{
	{ID: "n1", Hostname: "node1", IPv4: mustAddr("100.64.0.1"), IPv6: mustAddr("fd00::1"), Prefixes: []netip.Prefix{mustPrefix("172.24.0.0/24")}},
	{ID: "n2", Hostname: "node2", IPv4: mustAddr("100.64.0.2"), Prefixes: []netip.Prefix{mustPrefix("172.28.0.0/24")}},
	{ID: "lt", Hostname: "Laptop", IPv4: mustAddr("100.64.0.3"), Tags: []string{"dev"}},
	{}, // an unused slot
	{ID: "db", Hostname: "db", IPv4: mustAddr("100.64.0.5")},
}

func mustAddr(s string) netip.Addr     { return netip.MustParseAddr(s) }
func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// fr is a filter rule in short form: "rule proto src>dst ports".
func fr(s string) api.FilterRule {
	f := strings.Fields(s)
	r := api.FilterRule{Proto: f[1]}
	r.Rule = int(f[0][0] - '0')
	src, dst, _ := strings.Cut(f[2], ">")
	for _, p := range strings.Split(src, ",") {
		r.Src = append(r.Src, mustPrefix(p))
	}
	for _, p := range strings.Split(dst, ",") {
		r.Dst = append(r.Dst, mustPrefix(p))
	}
	if len(f) > 3 {
		for _, p := range strings.Split(f[3], ",") {
			pr, err := api.ParsePortRange(p)
			if err != nil {
				panic(err)
			}
			r.Ports = append(r.Ports, pr)
		}
	}
	return r
}

func TestCompile(t *testing.T) {
	tests := []struct {
		name   string
		policy string
		// peers and filters by member id (members left out: none / no rules)
		peers   map[string][]string
		filters map[string][]string
	}{
		{
			name:    "empty policy denies everything",
			policy:  `{}`,
			peers:   map[string][]string{},
			filters: map[string][]string{},
		},
		{
			name:   "a spoke reaches one child prefix on port 80 only",
			policy: `{"rules": [{"from": ["laptop"], "to": ["172.24.0.0/24:80"], "proto": "tcp"}]}`,
			peers:  map[string][]string{"n1": {"lt"}, "lt": {"n1"}},
			filters: map[string][]string{
				"n1": {"1 tcp 100.64.0.3/32>172.24.0.0/24 80"},
			},
		},
		{
			name:   "a tag means tunnel addresses, from token tags and hostnames",
			policy: `{"tags": {"dev": [], "routers": ["node1", "NODE2"]}, "rules": [{"from": ["tag:dev"], "to": ["tag:routers:22"], "proto": "tcp"}]}`,
			peers:  map[string][]string{"n1": {"lt"}, "n2": {"lt"}, "lt": {"n1", "n2"}},
			filters: map[string][]string{
				"n1": {"1 tcp 100.64.0.3/32>100.64.0.1/32,fd00::1/128 22"},
				"n2": {"1 tcp 100.64.0.3/32>100.64.0.2/32 22"},
			},
		},
		{
			name:   "any with ports is tcp and udp; * is every source",
			policy: `{"rules": [{"from": ["*"], "to": ["db:53"]}]}`,
			peers:  map[string][]string{"db": {"n1", "n2", "lt"}, "n1": {"db"}, "n2": {"db"}, "lt": {"db"}},
			filters: map[string][]string{
				"db": {"1 tcp 0.0.0.0/0,::/0>100.64.0.5/32 53", "1 udp 0.0.0.0/0,::/0>100.64.0.5/32 53"},
			},
		},
		{
			name:   "part of a child prefix, and a source inside another member's prefix",
			policy: `{"rules": [{"from": ["172.28.0.0/16"], "to": ["172.24.0.128/25:*", "100.64.0.0/10:443"]}]}`,
			peers:  map[string][]string{"n1": {"n2"}, "n2": {"n1", "lt", "db"}, "lt": {"n2"}, "db": {"n2"}},
			filters: map[string][]string{
				"n1": {"1 any 172.28.0.0/16>172.24.0.128/25", "1 tcp 172.28.0.0/16>100.64.0.1/32 443", "1 udp 172.28.0.0/16>100.64.0.1/32 443"},
				"n2": {"1 tcp 172.28.0.0/16>100.64.0.2/32 443", "1 udp 172.28.0.0/16>100.64.0.2/32 443"},
				"lt": {"1 tcp 172.28.0.0/16>100.64.0.3/32 443", "1 udp 172.28.0.0/16>100.64.0.3/32 443"},
				"db": {"1 tcp 172.28.0.0/16>100.64.0.5/32 443", "1 udp 172.28.0.0/16>100.64.0.5/32 443"},
			},
		},
		{
			name:   "sources are aggregated; several rules keep their order",
			policy: `{"tags": {"r": ["node2", "laptop"]}, "rules": [{"from": ["tag:r"], "to": ["db:*"], "proto": "icmp"}, {"from": ["node1"], "to": ["db:5432"], "proto": "tcp"}]}`,
			peers:  map[string][]string{"db": {"n1", "n2", "lt"}, "n1": {"db"}, "n2": {"db"}, "lt": {"db"}},
			filters: map[string][]string{
				"db": {"1 icmp 100.64.0.2/31>100.64.0.5/32", "2 tcp 100.64.0.1/32,fd00::1/128>100.64.0.5/32 5432"},
			},
		},
		{
			name:    "a tag without members gives nothing",
			policy:  `{"tags": {"nobody": []}, "rules": [{"from": ["tag:nobody"], "to": ["*:*"]}]}`,
			peers:   map[string][]string{},
			filters: map[string][]string{},
		},
		{
			name:   "a member reaching only itself sees no peers",
			policy: `{"rules": [{"from": ["db"], "to": ["db:*"]}]}`,
			peers:  map[string][]string{},
			filters: map[string][]string{
				"db": {"1 any 100.64.0.5/32>100.64.0.5/32"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse([]byte(tt.policy))
			require.NoError(t, err)
			c := Compile(p, testMembers, nil)
			require.Equal(t, len(testMembers), c.Len())
			for i, m := range testMembers {
				if m.ID == "" {
					require.Empty(t, c.Filter(i).Rules)
					continue
				}
				var peers []string
				for j := range c.Peers(i).All() {
					peers = append(peers, testMembers[j].ID)
				}
				require.ElementsMatch(t, tt.peers[m.ID], peers, "peers of %s", m.ID)
				want := []api.FilterRule{}
				for _, s := range tt.filters[m.ID] {
					want = append(want, fr(s))
				}
				require.Equal(t, want, c.Filter(i).Rules, "filter of %s", m.ID)
			}
		})
	}
}

func TestCompileSharesUnchangedSources(t *testing.T) {
	p, err := Parse([]byte(`{"tags": {"dev": []}, "rules": [{"from": ["tag:dev"], "to": ["*:*"]}, {"from": ["node1"], "to": ["*:*"]}]}`))
	require.NoError(t, err)
	c1 := Compile(p, testMembers, nil)
	ms := slices.Clone(testMembers)
	ms[3] = Member{ID: "new", Hostname: "new", IPv4: mustAddr("100.64.0.4"), Tags: []string{"dev"}}
	c2 := Compile(p, ms, c1)
	f1, f2 := c1.Filter(4), c2.Filter(4)
	require.False(t, FiltersEqual(f1, f2), "rule 1 gained a source")
	require.Equal(t, []netip.Prefix{mustPrefix("100.64.0.3/32"), mustPrefix("100.64.0.4/32")}, f2.Rules[0].Src)
	require.Same(t, &f1.Rules[1].Src[0], &f2.Rules[1].Src[0], "rule 2's sources did not change: shared")
	require.True(t, FiltersEqual(c2.Filter(0), Compile(p, ms, nil).Filter(0)))
}

func TestAggregate(t *testing.T) {
	ps := func(s string) []netip.Prefix {
		var out []netip.Prefix
		for _, f := range strings.Fields(s) {
			out = append(out, mustPrefix(f))
		}
		return out
	}
	tests := []struct{ in, want string }{
		{"", ""},
		{"10.0.0.1/32 10.0.0.0/32", "10.0.0.0/31"},
		{"10.0.0.0/32 10.0.0.1/32 10.0.0.2/32 10.0.0.3/32 10.0.0.4/32", "10.0.0.0/30 10.0.0.4/32"},
		{"10.0.0.1/32 10.0.0.2/32", "10.0.0.1/32 10.0.0.2/32"},
		{"10.0.0.0/8 10.1.0.0/16 ::/0 fd00::/64", "10.0.0.0/8 ::/0"},
		{"0.0.0.0/1 128.0.0.0/1", "0.0.0.0/0"},
		{"10.0.0.5/24", "10.0.0.0/24"},
	}
	for _, tt := range tests {
		require.Equal(t, ps(tt.want), Aggregate(ps(tt.in)), "Aggregate(%s)", tt.in)
	}
}

func TestCheck(t *testing.T) {
	p, err := Parse([]byte("{\"rules\": [\n{\"from\": [\"laptop\"], \"to\": [\"172.24.0.0/24:80\"], \"proto\": \"tcp\"}]}"))
	require.NoError(t, err)
	c := Compile(p, testMembers, nil)

	res := c.Check(mustAddr("100.64.0.3"), mustAddr("172.24.0.2"), ProtoTCP, 80)
	require.True(t, res.Allowed, res.Reason)
	require.Equal(t, 1, res.Rule)
	require.Equal(t, 2, res.Line)

	res = c.Check(mustAddr("100.64.0.3"), mustAddr("172.24.0.2"), ProtoTCP, 81)
	require.False(t, res.Allowed)
	require.Contains(t, res.Reason, "rule 1 (line 2) allows only tcp port 80")
	b, err := res.Missing.MarshalJSON()
	require.NoError(t, err)
	require.JSONEq(t, `{"from": ["laptop"], "to": ["172.24.0.2:81"], "proto": "tcp"}`, string(b))

	res = c.Check(mustAddr("100.64.0.3"), mustAddr("100.64.0.1"), ProtoICMP, 0)
	require.False(t, res.Allowed, "the router's own address is not allowed")
	b, _ = res.Missing.MarshalJSON()
	require.JSONEq(t, `{"from": ["laptop"], "to": ["node1:*"], "proto": "icmp"}`, string(b))

	res = c.Check(mustAddr("100.64.0.3"), mustAddr("192.0.2.1"), ProtoTCP, 80)
	require.False(t, res.Allowed)
	require.Contains(t, res.Reason, "no member holds 192.0.2.1")
	require.Nil(t, res.Missing)
}
