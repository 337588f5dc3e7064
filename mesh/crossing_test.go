package mesh

import (
	"encoding/binary"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/wiremesh/wiremesh/mesh/internal/wireguard/device"
	"golang.zx2c4.com/wireguard/conn"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/mesh/internal/magicsock"
)

// recBind is a conn.Bind that records what is sent and receives what a
// test puts in its inbox.
type recBind struct {
	sent  [][]byte
	inbox chan recvd
}

type recvd struct {
	b  []byte
	ep conn.Endpoint
}

func (r *recBind) Open(uint16) ([]conn.ReceiveFunc, uint16, error) {
	return []conn.ReceiveFunc{func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		m := <-r.inbox
		sizes[0] = copy(packets[0], m.b)
		eps[0] = m.ep
		return 1, nil
	}}, 1, nil
}
func (r *recBind) Close() error         { return nil }
func (r *recBind) SetMark(uint32) error { return nil }
func (r *recBind) BatchSize() int       { return 1 }
func (r *recBind) ParseEndpoint(s string) (conn.Endpoint, error) {
	return &conn.StdNetEndpoint{AddrPort: netip.MustParseAddrPort(s)}, nil
}
func (r *recBind) Send(bufs [][]byte, _ conn.Endpoint) error {
	r.sent = append(r.sent, bufs...)
	return nil
}

func wgMessage(typ uint32, size int) []byte {
	b := make([]byte, size)
	binary.LittleEndian.PutUint32(b, typ)
	return b
}

func TestCrossGuard(t *testing.T) {
	rb := &recBind{inbox: make(chan recvd, 1)}
	g := guardCrossing(rb, slog.New(slog.DiscardHandler))
	now := time.Unix(1000, 0)
	g.now = func() time.Time { return now }
	fns, _, err := g.Open(0)
	require.NoError(t, err)
	peer := &conn.StdNetEndpoint{AddrPort: netip.MustParseAddrPort("192.0.2.1:51820")}
	other := &conn.StdNetEndpoint{AddrPort: netip.MustParseAddrPort("192.0.2.2:51820")}
	receive := func(b []byte, ep conn.Endpoint) {
		rb.inbox <- recvd{b, ep}
		bufs, sizes, eps := [][]byte{make([]byte, 2048)}, []int{0}, []conn.Endpoint{nil}
		n, err := fns[0](bufs, sizes, eps)
		require.NoError(t, err)
		require.Equal(t, 1, n)
	}
	init, resp, data := wgMessage(1, 148), wgMessage(2, 92), wgMessage(4, 148)
	sends := func(b []byte, ep conn.Endpoint) bool {
		before := len(rb.sent)
		require.NoError(t, g.Send([][]byte{b}, ep))
		return len(rb.sent) > before
	}

	require.True(t, sends(init, peer), "nothing received yet")
	receive(data, peer)
	require.True(t, sends(init, peer), "a data packet is no initiation")
	receive(init, peer)
	require.False(t, sends(init, peer), "would cross the peer's initiation")
	require.True(t, sends(resp, peer), "the answer goes out")
	require.True(t, sends(data, peer))
	require.True(t, sends(init, other), "another endpoint")
	now = now.Add(crossWindow)
	require.True(t, sends(init, peer), "after the window")

	// Forgetting one peer's records leaves the others'.
	receive(init, peer)
	receive(init, other)
	g.forgetEndpoints(peer.DstToString())
	require.True(t, sends(init, peer), "forgotten")
	require.False(t, sends(init, other), "another peer's record stays")
}

// TestCrossGuardBounded: only initiations with a valid mac1 for this node
// are recorded, and however many senders there are the records stay
// bounded and pruned.
func TestCrossGuardBounded(t *testing.T) {
	var priv api.Key
	priv[0], priv[31] = 0x48, 0x41 // any clamped scalar
	pub := api.PublicKey(priv)
	mc := magicsock.New(magicsock.Config{PrivateKey: priv, LocalAddrs: func() []netip.Addr { return nil }})
	rb := &recBind{inbox: make(chan recvd, 1)}
	g := guardCrossing(rb, slog.New(slog.DiscardHandler))
	g.valid = mc.IsInitiation
	now := time.Unix(1000, 0)
	g.now = func() time.Time { return now }
	fns, _, err := g.Open(0)
	require.NoError(t, err)
	bufs, sizes, eps := [][]byte{make([]byte, 2048)}, []int{0}, []conn.Endpoint{nil}
	receive := func(b []byte, ep conn.Endpoint) {
		rb.inbox <- recvd{b, ep}
		n, err := fns[0](bufs, sizes, eps)
		require.NoError(t, err)
		require.Equal(t, 1, n)
	}
	var cg device.CookieGenerator
	cg.Init(device.NoisePublicKey(pub))
	valid := wgMessage(1, 148)
	cg.AddMacs(valid)
	invalid := wgMessage(1, 148) // mac1 zero

	peer := &conn.StdNetEndpoint{AddrPort: netip.MustParseAddrPort("192.0.2.1:51820")}
	receive(invalid, peer)
	require.Empty(t, g.from, "no mac1: not recorded")
	receive(valid, peer)
	require.Len(t, g.from, 1)

	for i := range 20000 {
		ep := &conn.StdNetEndpoint{AddrPort: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 51820)}
		receive(valid, ep)
		require.LessOrEqual(t, len(g.from), maxCrossRecords)
		if i%1000 == 999 {
			now = now.Add(crossWindow / 2)
		}
	}
	require.LessOrEqual(t, len(g.from), maxCrossRecords)
	now = now.Add(crossWindow)
	receive(valid, peer)
	require.Len(t, g.from, 1, "pruned once the window passed")
	require.False(t, func() bool {
		before := len(rb.sent)
		require.NoError(t, g.Send([][]byte{valid}, peer))
		return len(rb.sent) > before
	}(), "the peer's initiation is still guarded")
}
