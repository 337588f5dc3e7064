package mesh

import (
	"context"
	hexpkg "encoding/hex"
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/mesh/internal/magicsock"
	"github.com/wiremesh/wiremesh/mesh/internal/netstack"
	"github.com/wiremesh/wiremesh/mesh/internal/wireguard/device"
)

// testDev is a device with hand-made configuration, for data plane tests
// without a service.
type testDev struct {
	*wgDevice
	tnet      *netstack.Net
	priv, pub api.Key
	v4, v6    netip.Addr
}

func newTestDev(t *testing.T, i int) *testDev {
	t.Helper()
	priv, err := newPrivateKey()
	require.NoError(t, err)
	v4 := netip.AddrFrom4([4]byte{100, 64, 0, byte(i)})
	v6 := netip.MustParseAddr("fd00::" + string(rune('0'+i)))
	d, tnet, err := newNetstackDevice(priv, []netip.Addr{v4, v6}, 0, DefaultMTU, 0, slog.New(slog.DiscardHandler), magicsock.Config{PrivateKey: priv})
	require.NoError(t, err)
	t.Cleanup(d.close)
	require.NotZero(t, d.port)
	return &testDev{wgDevice: d, tnet: tnet, priv: priv, pub: api.PublicKey(priv), v4: v4, v6: v6}
}

// peer is d's configuration; hold marks it as seen live (see shouldHold).
func (d *testDev) peer(hold, withEndpoint bool, extra ...netip.Prefix) wgPeer {
	p := api.Peer{PublicKey: d.pub, IPv4: d.v4, IPv6: d.v6, ChildPrefixes: extra}
	if withEndpoint {
		p.Endpoints = []netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), d.port)}
	}
	w, ok := peerConfig(p)
	if !ok {
		panic("bad peer")
	}
	w.Hold = shouldHold(hold, true, w)
	return w
}

func peersOf(ps ...wgPeer) map[api.Key]wgPeer {
	m := map[api.Key]wgPeer{}
	for _, p := range ps {
		m[p.PublicKey] = p
	}
	return m
}

// echoTCP serves one echo listener on d at port and returns its address.
func echoTCP(t *testing.T, d *testDev) netip.AddrPort {
	t.Helper()
	l, err := d.tnet.ListenTCPAddrPort(netip.AddrPortFrom(d.v4, 0))
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	return netip.MustParseAddrPort(l.Addr().String())
}

func roundTrip(t *testing.T, d *testDev, to netip.AddrPort) {
	t.Helper()
	start := time.Now()
	defer func() { t.Logf("round trip to %s: %v", to, time.Since(start)) }()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := d.tnet.DialContextTCPAddrPort(ctx, to)
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = c.Write([]byte("hello"))
	require.NoError(t, err)
	buf := make([]byte, 5)
	_, err = io.ReadFull(c, buf)
	require.NoError(t, err)
	require.Equal(t, "hello", string(buf))
}

func TestDevicesTalk(t *testing.T) {
	a, b := newTestDev(t, 1), newTestDev(t, 2)
	// b has no endpoint for a: a (the spoke) initiates.
	require.NoError(t, a.applyPeers(peersOf(b.peer(false, true))))
	require.NoError(t, b.applyPeers(peersOf(a.peer(true, false))))
	roundTrip(t, a, echoTCP(t, b))
	roundTrip(t, b, echoTCP(t, a)) // b learnt a's endpoint from its packets

	st, err := a.stats()
	require.NoError(t, err)
	ps := st.peers[b.pub]
	require.False(t, ps.lastHandshake.IsZero())
	require.NotZero(t, ps.rxBytes)
	require.NotZero(t, ps.txBytes)
	// The endpoint shows once probing confirmed the direct path (traffic
	// flows before that, sent to every candidate).
	require.Eventually(t, func() bool {
		st, err := a.stats()
		return err == nil && st.peers[b.pub].endpoint == netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), b.port)
	}, 10*time.Second, 10*time.Millisecond)
}

// An unchanged peer keeps its session when another peer changes: its last
// handshake stays the same and traffic flows without a new one.
func TestReconcileKeepsUnchangedSessions(t *testing.T) {
	a, b, c := newTestDev(t, 1), newTestDev(t, 2), newTestDev(t, 3)
	// a is the newcomer (peers from its snapshot); b and c see it live.
	require.NoError(t, a.applyPeers(peersOf(b.peer(false, true), c.peer(false, true))))
	require.NoError(t, b.applyPeers(peersOf(a.peer(true, true))))
	require.NoError(t, c.applyPeers(peersOf(a.peer(true, true))))
	bEcho := echoTCP(t, b)
	roundTrip(t, a, bEcho)
	st, err := a.stats()
	require.NoError(t, err)
	hs := st.peers[b.pub].lastHandshake
	require.False(t, hs.IsZero())

	// c changes (a new child prefix), then goes away, then comes back.
	steps := []map[api.Key]wgPeer{
		peersOf(b.peer(false, true), c.peer(true, true, netip.MustParsePrefix("10.9.0.0/24"))),
		peersOf(b.peer(false, true)),
		peersOf(b.peer(false, true), c.peer(true, true)),
	}
	for i, want := range steps {
		require.NoError(t, a.applyPeers(want), "step %d", i)
		roundTrip(t, a, bEcho)
		st, err := a.stats()
		require.NoError(t, err)
		require.Equal(t, hs, st.peers[b.pub].lastHandshake, "step %d: b's session was reset", i)
		require.Len(t, st.peers, len(want))
	}
}

func TestDiffPeers(t *testing.T) {
	k1, k2, k3 := api.Key{1}, api.Key{2}, api.Key{3}
	ep := netip.MustParseAddrPort("127.0.0.1:5000")
	ep2 := netip.MustParseAddrPort("127.0.0.1:5001")
	pfx := func(s ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, x := range s {
			out = append(out, netip.MustParsePrefix(x))
		}
		return out
	}
	p1 := wgPeer{PublicKey: k1, Endpoint: ep, AllowedIPs: pfx("100.64.0.1/32"), Keepalive: 25}
	p2 := wgPeer{PublicKey: k2, AllowedIPs: pfx("100.64.0.2/32")}
	hex := func(k api.Key) string { return "public_key=" + hexpkg.EncodeToString(k[:]) + "\n" }
	tests := []struct {
		name       string
		have, want map[api.Key]wgPeer
		out        string
	}{
		{"nothing", nil, nil, ""},
		{"unchanged", peersOf(p1, p2), peersOf(p1, p2), ""},
		{"add", nil, peersOf(p1), hex(k1) + "endpoint=" + magicsock.EndpointString(k1) + "\nreplace_allowed_ips=true\nallowed_ip=100.64.0.1/32\npersistent_keepalive_interval=25\n"},
		{"add without endpoint", nil, peersOf(p2), hex(k2) + "replace_allowed_ips=true\nallowed_ip=100.64.0.2/32\n"},
		{"remove", peersOf(p1, p2), peersOf(p2), hex(k1) + "remove=true\n"},
		{"endpoint only", peersOf(p1, p2), peersOf(wgPeer{PublicKey: k1, Endpoint: ep2, AllowedIPs: p1.AllowedIPs, Keepalive: 25}, p2),
			hex(k1) + "update_only=true\nendpoint=" + magicsock.EndpointString(k1) + "\n"},
		{"allowed ips only", peersOf(p1, p2), peersOf(p1, wgPeer{PublicKey: k2, AllowedIPs: pfx("10.0.0.0/8", "100.64.0.2/32")}),
			hex(k2) + "update_only=true\nreplace_allowed_ips=true\nallowed_ip=10.0.0.0/8\nallowed_ip=100.64.0.2/32\n"},
		{"endpoint learnt, keepalive on", peersOf(p2), peersOf(wgPeer{PublicKey: k2, Endpoint: ep, AllowedIPs: p2.AllowedIPs, Keepalive: 25}),
			hex(k2) + "update_only=true\nendpoint=" + magicsock.EndpointString(k2) + "\npersistent_keepalive_interval=25\n"},
		{"remove before add", peersOf(p1), peersOf(wgPeer{PublicKey: k3, AllowedIPs: p1.AllowedIPs}),
			hex(k1) + "remove=true\n" + hex(k3) + "replace_allowed_ips=true\nallowed_ip=100.64.0.1/32\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.out, diffPeers(tt.have, tt.want))
		})
	}
}

func TestParseStats(t *testing.T) {
	in := "private_key=00\nlisten_port=51820\npublic_key=0100000000000000000000000000000000000000000000000000000000000000\n" +
		"endpoint=127.0.0.1:5000\nlast_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\ntx_bytes=10\nrx_bytes=20\n" +
		"public_key=0200000000000000000000000000000000000000000000000000000000000000\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\n"
	st, err := parseStats(in)
	require.NoError(t, err)
	require.Equal(t, uint16(51820), st.listenPort)
	require.Len(t, st.peers, 2)
	p := st.peers[api.Key{1}]
	require.Equal(t, netip.MustParseAddrPort("127.0.0.1:5000"), p.endpoint)
	require.Equal(t, time.Unix(1700000000, 5), p.lastHandshake)
	require.Equal(t, uint64(20), p.rxBytes)
	require.Equal(t, uint64(10), p.txBytes)
	require.True(t, st.peers[api.Key{2}].lastHandshake.IsZero())

	_, err = parseStats("public_key=zz\n")
	require.Error(t, err)
}

// A node holds back towards a peer seen live; when the peer does not
// initiate (here it cannot: it has no endpoint for us), the hold ends and
// this side initiates itself.
func TestHoldEndsWithOwnHandshake(t *testing.T) {
	a, b := newTestDev(t, 1), newTestDev(t, 2)
	bp := b.peer(true, true)
	require.True(t, bp.Hold)
	start := time.Now()
	require.NoError(t, a.applyPeers(peersOf(bp)))
	require.NoError(t, b.applyPeers(peersOf(a.peer(false, false))))
	st, err := a.stats()
	require.NoError(t, err)
	require.False(t, st.peers[b.pub].endpoint.IsValid(), "endpoint held back")

	deadline := time.Now().Add(holdDelay + 10*time.Second)
	for {
		st, err := a.stats()
		require.NoError(t, err)
		if !st.peers[b.pub].lastHandshake.IsZero() {
			require.GreaterOrEqual(t, time.Since(start), holdDelay)
			require.Equal(t, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), b.port), st.peers[b.pub].endpoint)
			break
		}
		require.True(t, time.Now().Before(deadline), "no handshake after the hold")
		time.Sleep(20 * time.Millisecond)
	}
	roundTrip(t, b, echoTCP(t, a))
}

// A held peer that initiates itself is answered at once, and the endpoint
// learnt from its handshake is kept when the hold ends.
func TestHoldAnsweredByPeer(t *testing.T) {
	a, b := newTestDev(t, 1), newTestDev(t, 2)
	require.NoError(t, a.applyPeers(peersOf(b.peer(true, true))))
	require.NoError(t, b.applyPeers(peersOf(a.peer(false, true))))
	start := time.Now()
	roundTrip(t, a, echoTCP(t, b)) // staged on a until b's handshake arrives
	require.Less(t, time.Since(start), holdDelay)
	st, err := a.stats()
	require.NoError(t, err)
	hs := st.peers[b.pub].lastHandshake
	require.False(t, hs.IsZero())
	require.Eventually(t, func() bool { // once probing confirmed b's address
		st, err := a.stats()
		return err == nil && st.peers[b.pub].endpoint.IsValid()
	}, 10*time.Second, 10*time.Millisecond, "endpoint learnt from b's packets")
}

// TestUserspaceDeviceBufferSize: a userspace device, trimming or not, gets
// message buffers sized by its netstack (the fork's NewDeviceSized), not
// upstream's 64 KiB: the activity wrapper that trimming puts in front of
// the netstack must not hide it.
func TestUserspaceDeviceBufferSize(t *testing.T) {
	for _, idle := range []time.Duration{0, time.Minute} {
		for _, mtu := range []int{1280, DefaultMTU, 9000} {
			priv, err := newPrivateKey()
			require.NoError(t, err)
			v4 := netip.AddrFrom4([4]byte{100, 64, 0, 1})
			d, tnet, err := newNetstackDevice(priv, []netip.Addr{v4}, 0, mtu, idle, slog.New(slog.DiscardHandler), magicsock.Config{PrivateKey: priv})
			require.NoError(t, err)
			got, want := d.dev.BufferSize(), tnet.MessageBufferSize()
			d.close()
			require.Equal(t, want, got, "idle timeout %v, MTU %d", idle, mtu)
			require.Less(t, got, device.MaxMessageSize, "idle timeout %v, MTU %d", idle, mtu)
		}
	}
}
