package netstack

import (
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestReadKeepsCallersBuffers: a packet the stack sends to its own address
// is delivered back into it by Read, and the packets for the tunnel are
// moved up by copying: every bufs[i] stays the caller's i-th buffer.
// wireguard-go ties bufs[i] to its i-th queue element; a swap made the
// element it went on to fill own a buffer already queued for encryption
// (plaintext written over a packet being sealed or sent).
func TestReadKeepsCallersBuffers(t *testing.T) {
	n, err := New(Config{Addrs: []netip.Addr{testAddrA}})
	require.NoError(t, err)
	defer n.Close()
	ln, err := n.ListenUDPAddrPort(netip.AddrPortFrom(testAddrA, 7000))
	require.NoError(t, err)
	defer ln.Close()
	self, err := n.DialUDPAddrPort(netip.AddrPort{}, netip.AddrPortFrom(testAddrA, 7000))
	require.NoError(t, err)
	defer self.Close()
	remote, err := n.DialUDPAddrPort(netip.AddrPort{}, netip.AddrPortFrom(testAddrB, 7000))
	require.NoError(t, err)
	defer remote.Close()
	for _, c := range []interface {
		SetWriteDeadline(time.Time) error
		Write([]byte) (int, error)
	}{self, remote, self} {
		require.NoError(t, c.SetWriteDeadline(time.Now().Add(5*time.Second)))
		_, err = c.Write([]byte("a datagram"))
		require.NoError(t, err)
	}

	const offset = 16
	orig := [][]byte{make([]byte, 2048), make([]byte, 2048), make([]byte, 2048), make([]byte, 2048)}
	bufs, sizes := append([][]byte(nil), orig...), make([]int, len(orig))
	k, err := n.Read(bufs, sizes, offset)
	require.NoError(t, err)
	require.Equal(t, 1, k, "the packet to the peer, not the two to ourselves")
	require.Equal(t, testAddrB, dstAddr(bufs[0][offset:offset+sizes[0]]))
	for i := range bufs {
		require.Same(t, &orig[i][0], &bufs[i][0], "bufs[%d] is still the caller's buffer %d", i, i)
	}
	require.NoError(t, ln.SetReadDeadline(time.Now().Add(5*time.Second)))
	b := make([]byte, 64)
	for range 2 {
		m, err := ln.Read(b)
		require.NoError(t, err, "the datagrams to ourselves come back through Read")
		require.Equal(t, "a datagram", string(b[:m]))
	}
}
