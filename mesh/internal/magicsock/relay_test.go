package magicsock

import (
	"bytes"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.zx2c4.com/wireguard/conn"

	"github.com/wiremesh/wiremesh/control/api"
)

// TestRelayDeliveryWakesSocketReceive: relayed datagrams come out of the
// socket's receive function (there is no receive function of the relay).
// A relay message queued while that function blocks on the socket, or
// just before or after it starts to, is delivered at once, not with the
// next datagram on the socket (which never comes here); datagrams on the
// socket still come through in between. The timing of the queueing is
// varied to hit the windows between the reader's last look at the queue
// and its blocking read.
func TestRelayDeliveryWakesSocketReceive(t *testing.T) {
	c := New(Config{PrivateKey: newKey(), LocalAddrs: func() []netip.Addr { return nil }})
	fns, port, err := c.Open(0)
	require.NoError(t, err)
	defer c.Close()
	require.Len(t, fns, 1, "one receive function for socket and relay")
	k := pubOf(newKey())
	c.SetPeers([]PeerInfo{{Key: k, Name: "relayed"}})
	p := c.peer(k, false)

	type got struct {
		b   []byte
		ep  conn.Endpoint
		err error
	}
	out := make(chan got, 64)
	go func() {
		bufs := make([][]byte, c.BatchSize())
		for i := range bufs {
			bufs[i] = make([]byte, 2000)
		}
		sizes, eps := make([]int, len(bufs)), make([]conn.Endpoint, len(bufs))
		for {
			n, err := fns[0](bufs, sizes, eps)
			if err != nil {
				out <- got{err: err}
				return
			}
			for i := 0; i < n; i++ {
				out <- got{b: bytes.Clone(bufs[i][:sizes[i]]), ep: eps[i]}
			}
		}
	}()
	next := func(what string) got {
		t.Helper()
		select {
		case g := <-out:
			require.NoError(t, g.err)
			return g
		case <-time.After(10 * time.Second):
			t.Fatalf("%s not delivered", what)
			return got{}
		}
	}

	udp, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	defer udp.Close()
	to := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port)}

	data := func(i int) []byte {
		b := make([]byte, 32)
		b[0] = 4 // a transport message
		b[4] = byte(i)
		b[5] = byte(i >> 8)
		return b
	}
	for i := 0; i < 300; i++ {
		// Anywhere from well before to well after the reader blocks.
		time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond)
		d := data(i)
		bp := msgPool.Get().(*[]byte)
		msg := append((*bp)[:0], k[:]...)
		msg, err = api.AppendRelayDatagram(msg, d)
		require.NoError(t, err)
		*bp = msg
		require.True(t, c.relay.enqueue(relayIn{p: p, buf: bp}))
		g := next("relayed datagram")
		require.Equal(t, d, g.b)
		require.Same(t, p.ep, g.ep, "relayed datagrams carry the peer's endpoint")

		if i%50 == 0 { // the socket still works
			u := data(1 << 15)
			_, err := udp.WriteToUDP(u, to)
			require.NoError(t, err)
			require.Equal(t, u, next("UDP datagram").b)
		}
	}
	require.NoError(t, c.Close())
	select {
	case g := <-out:
		require.ErrorIs(t, g.err, net.ErrClosed)
	case <-time.After(10 * time.Second):
		t.Fatal("receive did not end on Close")
	}
}

// TestRelayOversizeDropped: a relayed datagram larger than the buffer it
// would go to is dropped, not delivered cut (wireguard-go's buffers may be
// sized for the tunnel MTU), and the datagrams after it in the same relay
// message are delivered.
func TestRelayOversizeDropped(t *testing.T) {
	c := New(Config{PrivateKey: newKey()})
	k := pubOf(newKey())
	c.SetPeers([]PeerInfo{{Key: k, Candidates: []api.Candidate{{Addr: netip.MustParseAddrPort("192.0.2.1:51820"), Type: api.CandidateReflexive}}}})
	p := c.peer(k, false)
	datagram := func(size int, mark byte) []byte {
		d := make([]byte, size)
		d[0], d[4] = 4, mark // a transport message
		return d
	}
	small, big, last := datagram(100, 1), datagram(1800, 2), datagram(1500, 3)
	buf := make([]byte, 32, msgBufSize)
	for _, d := range [][]byte{small, big, last} {
		buf = append(buf, byte(len(d)>>8), byte(len(d)))
		buf = append(buf, d...)
	}
	c.relay.in <- relayIn{p: p, buf: &buf}
	rr := &relayReader{r: c.relay}
	bufs := [][]byte{make([]byte, 1500), make([]byte, 1500), make([]byte, 1500)}
	sizes, eps := make([]int, 3), make([]conn.Endpoint, 3)
	n, ok := rr.next(bufs, sizes, eps)
	require.True(t, ok)
	require.Equal(t, 2, n, "the 1800-byte datagram is left out")
	require.Equal(t, small, bufs[0][:sizes[0]])
	require.Equal(t, last, bufs[1][:sizes[1]])
}
