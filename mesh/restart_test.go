package mesh

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/mesh/internal/magicsock"

	"github.com/stretchr/testify/require"
)

// restartDev stops d and starts a device with the same key, addresses and
// UDP port: the same member after a restart, with no session.
func restartDev(t *testing.T, d *testDev) *testDev {
	t.Helper()
	d.close()
	nd, tnet, err := newNetstackDevice(d.priv, []netip.Addr{d.v4, d.v6}, d.port, DefaultMTU, 0, slog.New(slog.DiscardHandler), magicsock.Config{PrivateKey: d.priv})
	require.NoError(t, err)
	t.Cleanup(nd.close)
	return &testDev{wgDevice: nd, tnet: tnet, priv: d.priv, pub: d.pub, v4: d.v4, v6: d.v6}
}

// spokeAndRouter connects a (the spoke: it has b's endpoint) and b (the
// router: it has no endpoint for a, as for a spoke behind NAT) and checks
// that they talk.
func spokeAndRouter(t *testing.T) (a, b *testDev) {
	a, b = newTestDev(t, 1), newTestDev(t, 2)
	bp := b.peer(false, true)
	bp.Generation = 1
	require.NoError(t, a.applyPeers(peersOf(bp)))
	require.NoError(t, b.applyPeers(peersOf(a.peer(false, false))))
	roundTrip(t, a, echoTCP(t, b))
	return a, b
}

// When the router restarts, the spoke learns its new generation and
// handshakes at once: the restarted router, which cannot reach the spoke,
// reaches it again well before WireGuard's own timers (15 s) would have
// repaired the path (roundTrip gives up after 10 s).
func TestRestartedPeerHandshakesAtOnce(t *testing.T) {
	a, b := spokeAndRouter(t)
	b = restartDev(t, b)
	require.NoError(t, b.applyPeers(peersOf(a.peer(false, false))))
	bp := b.peer(false, true)
	bp.Generation = 2
	require.NoError(t, a.applyPeers(peersOf(bp)))
	roundTrip(t, b, echoTCP(t, a))
	require.Eventually(t, func() bool { return len(a.restartsOf()) == 0 }, 5*time.Second, 20*time.Millisecond,
		"the replacement handshook: nothing left to retry")
}

// The news of the restart may come before the restarted device is up: the
// spoke replaces the peer again until a handshake happens.
func TestRestartedPeerNewsBeforeDevice(t *testing.T) {
	a, b := spokeAndRouter(t)
	b.close()
	bp := b.peer(false, true)
	bp.Generation = 2
	require.NoError(t, a.applyPeers(peersOf(bp)))
	time.Sleep(restartRetries[0] / 2) // the first initiation is lost
	b = restartDev(t, b)
	require.NoError(t, b.applyPeers(peersOf(a.peer(false, false))))
	roundTrip(t, b, echoTCP(t, a))
}

// initiations is a slog.Handler that counts the handshake initiations a
// device logs sending (wireguard-go, at debug level).
type initiations struct{ n atomic.Int64 }

func (c *initiations) Enabled(context.Context, slog.Level) bool { return true }
func (c *initiations) WithAttrs([]slog.Attr) slog.Handler       { return c }
func (c *initiations) WithGroup(string) slog.Handler            { return c }
func (c *initiations) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, "Sending handshake initiation") {
		c.n.Add(1)
	}
	return nil
}

// A restarted peer that can reach this node initiates to it at once, about
// when the news of its restart arrives here: this node must not initiate
// as well, or the initiations cross (see restartRetries). Before the fix
// the spoke replaced the peer, and initiated, on the news itself.
func TestRestartedPeerThatInitiatesIsNotReplaced(t *testing.T) {
	inits := &initiations{}
	priv, err := newPrivateKey()
	require.NoError(t, err)
	v4, v6 := netip.MustParseAddr("100.64.0.1"), netip.MustParseAddr("fd00::1")
	ad, tnet, err := newNetstackDevice(priv, []netip.Addr{v4, v6}, 0, DefaultMTU, 0, slog.New(inits), magicsock.Config{PrivateKey: priv})
	require.NoError(t, err)
	t.Cleanup(ad.close)
	a := &testDev{wgDevice: ad, tnet: tnet, priv: priv, pub: api.PublicKey(priv), v4: v4, v6: v6}
	b := newTestDev(t, 2)
	bp := b.peer(false, true)
	bp.Generation = 1
	require.NoError(t, a.applyPeers(peersOf(bp)))
	// b has no endpoint for a, so only a initiates (crossing initiations
	// are what this test is about), and b's first initiation is the one
	// after the restart (a peer rejects as a replay an initiation less
	// than wireguard-go's timestamp resolution, about 16 ms, after the
	// previous one).
	require.NoError(t, b.applyPeers(peersOf(a.peer(false, false))))
	roundTrip(t, a, echoTCP(t, b))

	b = restartDev(t, b)
	sent := inits.n.Load()
	bp.Generation = 2
	require.NoError(t, a.applyPeers(peersOf(bp)))
	require.NoError(t, b.applyPeers(peersOf(a.peer(false, true))))
	roundTrip(t, b, echoTCP(t, a))
	require.Eventually(t, func() bool { return len(a.restartsOf()) == 0 }, 5*time.Second, 20*time.Millisecond,
		"the restarted peer handshook: nothing left to replace")
	require.Equal(t, sent, inits.n.Load(), "the spoke sent no handshake initiation of its own")
}

// An unchanged generation keeps the session (see
// TestReconcileKeepsUnchangedSessions), and so does an unknown one (0).
func TestSameGenerationKeepsSession(t *testing.T) {
	a, b := spokeAndRouter(t)
	st, err := a.stats()
	require.NoError(t, err)
	hs := st.peers[b.pub].lastHandshake
	for _, gen := range []uint64{1, 0} {
		bp := b.peer(false, true)
		bp.Generation = gen
		require.NoError(t, a.applyPeers(peersOf(bp)))
		st, err := a.stats()
		require.NoError(t, err)
		require.Equal(t, hs, st.peers[b.pub].lastHandshake, "generation %d", gen)
		require.Empty(t, a.restartsOf())
	}
}

func (d *wgDevice) restartsOf() map[string]int {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[string]int{}
	for k, r := range d.restarts {
		out[k.String()] = r.tries
	}
	return out
}
