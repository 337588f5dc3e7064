package magicsock

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
)

// TestDirectPath: two members that can reach each other talk directly,
// on the address probing found.
func TestDirectPath(t *testing.T) {
	a, b := newNode(t, 1, Config{}), newNode(t, 2, Config{})
	a.addPeer(t, b, b.local())
	b.addPeer(t, a, a.local())
	ping(t, a, b)
	ping(t, b, a)
	got := waitPath(t, a, b, PathDirect)
	require.Equal(t, b.local()[0].Addr, got.Endpoint)
	waitPath(t, b, a, PathDirect)
}

// TestRelayThenDirect: with no address of the peer that works, packets go
// through the service's relay; once a working candidate appears, the pair
// moves to it.
func TestRelayThenDirect(t *testing.T) {
	s := startService(t)
	ka, kb := newKey(), newKey()
	ta, tb := s.register(t, ka, "a"), s.register(t, kb, "b")
	a := newNode(t, 1, Config{PrivateKey: ka, DialRelay: s.dialer(ta)})
	b := newNode(t, 2, Config{PrivateKey: kb, DialRelay: s.dialer(tb)})
	dead := []api.Candidate{{Addr: netip.MustParseAddrPort("127.0.0.1:9"), Type: api.CandidateReflexive}}
	a.addPeer(t, b, dead)
	b.addPeer(t, a, dead)
	ping(t, a, b)
	ping(t, b, a)
	require.Equal(t, PathRelay, a.conn.PeerPath(b.pub).Path)
	require.Equal(t, PathRelay, b.conn.PeerPath(a.pub).Path)
	require.True(t, a.conn.Self().Relay)

	// The block lifts: b learns a working address of a.
	b.setPeer(a, append(dead, a.local()...))
	waitPath(t, b, a, PathDirect)
	waitPath(t, a, b, PathDirect) // a learned b's address from b's pings
	ping(t, a, b)
	ping(t, b, a)
}
