//go:build linux

package route

import (
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func nftConnT(t *testing.T, n *testNS) *nftables.Conn {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(int(n.ns)))
	require.NoError(t, err)
	return c
}

func nftTableExists(t *testing.T, n *testNS, name string) bool {
	t.Helper()
	ok, err := tableExists(nftConnT(t, n), name)
	require.NoError(t, err)
	return ok
}

// nftChains returns chain name → rule comments for table inet name.
func nftChains(t *testing.T, n *testNS, name string) map[string][]string {
	t.Helper()
	c := nftConnT(t, n)
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	require.NoError(t, err)
	out := map[string][]string{}
	for _, ch := range chains {
		if ch.Table.Name != name {
			continue
		}
		rules, err := c.GetRules(ch.Table, ch)
		require.NoError(t, err)
		out[ch.Name] = []string{}
		for _, r := range rules {
			comment, _ := userdata.GetString(r.UserData, userdata.TypeComment)
			out[ch.Name] = append(out[ch.Name], comment)
		}
	}
	return out
}

func forwardComments(prefixes ...string) []string {
	out := []string{"wiremesh: replies from the mesh", "wiremesh: replies into the mesh"}
	for _, p := range prefixes {
		out = append(out, "wiremesh: mesh to child prefix "+p, "wiremesh: child prefix "+p+" to mesh")
	}
	return append(out, "wiremesh: nothing else from the mesh", "wiremesh: nothing else into the mesh")
}

func TestFirewallRules(t *testing.T) {
	n := newTestNS(t)

	// A leftover table of the same name, with a chain we never make.
	c := nftConnT(t, n)
	old := c.AddTable(&nftables.Table{Name: "wmtest", Family: nftables.TableFamilyINet})
	c.AddChain(&nftables.Chain{Name: "junk", Table: old})
	require.NoError(t, c.Flush())

	fw, err := NewFirewall(FirewallConfig{Interface: "wm0", TableName: "wmtest", ChildPrefixes: pfx("172.24.0.0/24", "fd00:24::/64")}, WithNetNS(n.ns))
	require.NoError(t, err)
	t.Cleanup(func() { fw.Close() })
	require.Equal(t, map[string][]string{forwardChain: forwardComments("172.24.0.0/24", "fd00:24::/64")}, nftChains(t, n, "wmtest"))

	// The chain hooks where we want it, and a prefix rule reads back as built.
	ch, err := c.ListChain(&nftables.Table{Name: "wmtest", Family: nftables.TableFamilyINet}, forwardChain)
	require.NoError(t, err)
	require.Equal(t, *nftables.ChainHookForward, *ch.Hooknum)
	require.Equal(t, nftables.ChainPolicyAccept, *ch.Policy)
	rules, err := c.GetRules(ch.Table, ch)
	require.NoError(t, err)
	want := slices.Concat(ifname(unix.NFT_META_IIFNAME, unix.NFT_CMP_EQ, "wm0"), addrMatch(netip.MustParsePrefix("fd00:24::/64"), false))
	require.Equal(t, want, rules[4].Exprs[:len(want)])
	require.Equal(t, &expr.Verdict{Kind: expr.VerdictAccept}, rules[4].Exprs[len(rules[4].Exprs)-1])

	// Update replaces the set; invalid input changes nothing.
	require.NoError(t, fw.Update(pfx("10.50.0.9/16")))
	require.Equal(t, pfx("10.50.0.0/16"), fw.Prefixes())
	require.Equal(t, map[string][]string{forwardChain: forwardComments("10.50.0.0/16")}, nftChains(t, n, "wmtest"))
	require.ErrorIs(t, fw.Update([]netip.Prefix{{}}), ErrInvalid)
	require.Equal(t, map[string][]string{forwardChain: forwardComments("10.50.0.0/16")}, nftChains(t, n, "wmtest"))
	require.NoError(t, fw.Update(nil))
	require.Equal(t, map[string][]string{forwardChain: forwardComments()}, nftChains(t, n, "wmtest"))

	require.NoError(t, fw.Close())
	require.False(t, nftTableExists(t, n, "wmtest"))
	require.ErrorIs(t, fw.Close(), net.ErrClosed)
	require.ErrorIs(t, fw.Update(nil), net.ErrClosed)
}

func TestFirewallMasquerade(t *testing.T) {
	n := newTestNS(t)
	fw, err := NewFirewall(FirewallConfig{Interface: "wm0", Masquerade: true, ChildPrefixes: pfx("172.24.0.0/24")}, WithNetNS(n.ns))
	require.NoError(t, err)
	t.Cleanup(func() { fw.Close() })
	require.Equal(t, map[string][]string{
		forwardChain: forwardComments("172.24.0.0/24"),
		natChain:     {"wiremesh: masquerade mesh to child prefix 172.24.0.0/24"},
	}, nftChains(t, n, "wiremesh-wm0"))
	require.NoError(t, fw.Update(pfx("172.24.0.0/24", "192.168.50.0/24")))
	require.Equal(t, []string{
		"wiremesh: masquerade mesh to child prefix 172.24.0.0/24",
		"wiremesh: masquerade mesh to child prefix 192.168.50.0/24",
	}, nftChains(t, n, "wiremesh-wm0")[natChain])

	// Two firewalls for two interfaces live side by side.
	fw2, err := NewFirewall(FirewallConfig{Interface: "wm1"}, WithNetNS(n.ns))
	require.NoError(t, err)
	require.True(t, nftTableExists(t, n, "wiremesh-wm1"))
	require.NoError(t, fw2.Close())
	require.True(t, nftTableExists(t, n, "wiremesh-wm0"))
}
