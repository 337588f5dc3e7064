package mesh

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
)

// resolveNode is a node with a hand-made self and peer list: "self" is the
// node, "db" is held by two peers (one joined under a taken name), "web"
// by one peer without IPv6, "solo" by the node and a peer.
func resolveNode() *Node {
	a := netip.MustParseAddr
	return &Node{
		self: selfInfo{hostname: "self", ipv4: a("100.64.0.1"), ipv6: a("fd00::1")},
		peers: map[api.Key]api.Peer{
			{9}: {Hostname: "db", IPv4: a("100.64.0.9"), IPv6: a("fd00::9")},
			{1}: {Hostname: "DB", IPv4: a("100.64.0.3"), IPv6: a("fd00::3")},
			{5}: {Hostname: "web", IPv4: a("100.64.0.5")},
			{6}: {Hostname: "Self", IPv4: a("100.64.0.6")},
		},
	}
}

func TestResolve(t *testing.T) {
	a := netip.MustParseAddr
	tests := []struct {
		name      string
		host      string
		fam       int
		want      []netip.Addr
		ambiguous []netip.Addr // want an *AmbiguousNameError with these
		notFound  bool
	}{
		{name: "IP literal", host: "100.64.0.77", want: []netip.Addr{a("100.64.0.77")}},
		{name: "unique name", host: "web", want: []netip.Addr{a("100.64.0.5")}},
		{name: "case and trailing dot", host: "WEB.", want: []netip.Addr{a("100.64.0.5")}},
		{name: "two peers", host: "db", ambiguous: []netip.Addr{a("100.64.0.3"), a("100.64.0.9")}},
		{name: "two peers, one family", host: "db", fam: 6, ambiguous: []netip.Addr{a("100.64.0.3"), a("100.64.0.9")}},
		{name: "the node and a peer", host: "self", ambiguous: []netip.Addr{a("100.64.0.1"), a("100.64.0.6")}},
		{name: "unknown", host: "nosuch", notFound: true},
		{name: "no address of the family", host: "web", fam: 6, notFound: true},
	}
	n := resolveNode()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := n.resolve(tt.host, tt.fam)
			switch {
			case tt.ambiguous != nil:
				require.ErrorIs(t, err, ErrAmbiguousName)
				var ae *AmbiguousNameError
				require.ErrorAs(t, err, &ae)
				require.Equal(t, tt.host, ae.Name)
				require.Equal(t, tt.ambiguous, ae.Addrs)
				for _, addr := range tt.ambiguous {
					require.ErrorContains(t, err, addr.String())
				}
			case tt.notFound:
				var de *net.DNSError
				require.ErrorAs(t, err, &de)
				require.True(t, de.IsNotFound)
			default:
				require.NoError(t, err)
				require.Equal(t, tt.want, got)
			}
		})
	}
}

// Dial refuses a name two members hold instead of reaching whichever
// sorts first.
func TestDialAmbiguousName(t *testing.T) {
	_, err := resolveNode().Dial(context.Background(), "tcp", "db:5432")
	require.ErrorIs(t, err, ErrAmbiguousName)
	var oe *net.OpError
	require.True(t, errors.As(err, &oe), "a *net.OpError like every Dial error")
	require.ErrorContains(t, err, `hostname "db" is ambiguous: 2 members of the zone hold it ([100.64.0.3 100.64.0.9])`)
}
