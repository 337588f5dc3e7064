package mesh

import (
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/mesh/internal/magicsock"
)

// newTrimDev is newTestDev with peers trimmed after idle.
func newTrimDev(t *testing.T, i int, idle time.Duration) *testDev {
	t.Helper()
	priv, err := newPrivateKey()
	require.NoError(t, err)
	v4 := netip.AddrFrom4([4]byte{100, 64, 0, byte(i)})
	v6 := netip.MustParseAddr("fd00::" + string(rune('0'+i)))
	d, tnet, err := newNetstackDevice(priv, []netip.Addr{v4, v6}, 0, DefaultMTU, idle, slog.New(slog.DiscardHandler), magicsock.Config{PrivateKey: priv})
	require.NoError(t, err)
	t.Cleanup(d.close)
	return &testDev{wgDevice: d, tnet: tnet, priv: priv, pub: api.PublicKey(priv), v4: v4, v6: v6}
}

func (d *testDev) asleep(k api.Key) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.trim.asleep[k]
}

// TestTrimKeepsLearntEndpoint: b has no endpoint for a (a advertises
// none) and learns it from a's packets. Once both trimmed each other, a
// packet from b to a must still find a: b's device gets the endpoint it
// had learnt back when it wakes a (without it wireguard-go has nowhere to
// send the initiation, and a, asleep and quiet, never sends one).
func TestTrimKeepsLearntEndpoint(t *testing.T) {
	restore := SetTrimSessionAge(0)
	defer restore()
	a, b := newTrimDev(t, 1, time.Second), newTrimDev(t, 2, time.Second)
	require.NoError(t, a.applyPeers(peersOf(b.peer(false, true))))
	require.NoError(t, b.applyPeers(peersOf(a.peer(false, false))))
	roundTrip(t, a, echoTCP(t, b))
	require.Eventually(t, func() bool {
		st, err := b.stats()
		return err == nil && st.peers[a.pub].endpoint.IsValid()
	}, 10*time.Second, 10*time.Millisecond, "b learnt a's endpoint")
	require.Eventually(t, func() bool { return a.asleep(b.pub) && b.asleep(a.pub) },
		20*time.Second, 50*time.Millisecond, "both trimmed")
	roundTrip(t, b, echoTCP(t, a))
}

// TestTrimTwoPhases: the bind marks an idle peer asleep a tick before the
// device forgets it, so that an initiation already inside wireguard-go
// finds the peer configured (the next tick trims it only if its last
// handshake did not change and nothing woke it). The state between the
// two is seen, and the peer is trimmed after it.
func TestTrimTwoPhases(t *testing.T) {
	restore := SetTrimSessionAge(0)
	defer restore()
	a, b := newTrimDev(t, 1, time.Second), newTrimDev(t, 2, time.Second)
	require.NoError(t, a.applyPeers(peersOf(b.peer(false, true))))
	require.NoError(t, b.applyPeers(peersOf(a.peer(false, true))))
	roundTrip(t, a, echoTCP(t, b))
	between := func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		_, configured := a.applied[b.pub]
		return configured && a.ms.Asleep(b.pub) && !a.trim.asleep[b.pub]
	}
	require.Eventually(t, between, 20*time.Second, 5*time.Millisecond, "asleep in the bind, still in the device")
	require.Eventually(t, func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		_, configured := a.applied[b.pub]
		return !configured && a.ms.Asleep(b.pub) && a.trim.asleep[b.pub]
	}, 20*time.Second, 10*time.Millisecond, "trimmed")
	roundTrip(t, a, echoTCP(t, b))
}
