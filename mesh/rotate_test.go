package mesh

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/mesh/internal/magicsock"
)

// TestSetPrivateKeyKeepsDirectPath: once the device has a new key, its
// bind signs path probes with it, so a peer that learns the new key finds
// the direct path again; and the drift repair keeps the new key.
func TestSetPrivateKeyKeepsDirectPath(t *testing.T) {
	d, p := newTestDev(t, 1), newTestDev(t, 2)
	require.NoError(t, d.applyPeers(peersOf(p.peer(false, true))))
	require.NoError(t, p.applyPeers(peersOf(d.peer(false, true))))
	waitDirect := func(from *testDev, to api.Key, what string) {
		t.Helper()
		require.Eventually(t, func() bool {
			return from.ms.PeerPath(to).Path == magicsock.PathDirect
		}, 20*time.Second, 10*time.Millisecond, "no direct path: %s", what)
	}
	waitDirect(p, d.pub, "before the rotation")

	next, err := newPrivateKey()
	require.NoError(t, err)
	require.NoError(t, d.setPrivateKey(next))
	d.priv, d.pub = next, api.PublicKey(next)
	require.NoError(t, p.applyPeers(peersOf(d.peer(false, true)))) // p learns the new key
	waitDirect(p, d.pub, "the peer probing the rotated key")
	waitDirect(d, p.pub, "the rotated side")
	roundTrip(t, p, echoTCP(t, d))

	fixed, err := d.repairDrift()
	require.NoError(t, err)
	require.False(t, fixed, "the new key is what the mesh configured")
}
