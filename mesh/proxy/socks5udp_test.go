package proxy_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/mesh"
)

// serveUDPEcho answers every datagram to port 7 of n with the same bytes.
func serveUDPEcho(t *testing.T, n *mesh.Node) {
	pc, err := n.ListenPacket("udp", ":7")
	require.NoError(t, err)
	done := make(chan struct{})
	t.Cleanup(func() { pc.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			k, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:k], from)
		}
	}()
}

// udpAssociate opens an association with the SOCKS5 proxy at addr (a
// hand-written client: golang.org/x/net/proxy has no UDP) and returns the
// control connection and the relay's address.
func udpAssociate(t *testing.T, addr string) (net.Conn, netip.AddrPort) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = c.Write([]byte{5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0})
	require.NoError(t, err)
	var resp [12]byte
	_, err = io.ReadFull(c, resp[:])
	require.NoError(t, err)
	require.Equal(t, []byte{5, 0, 5, 0, 0, 1}, resp[:6], "method selection, then success with an IPv4 address")
	relay := netip.AddrPortFrom(netip.AddrFrom4([4]byte(resp[6:10])), binary.BigEndian.Uint16(resp[10:]))
	require.Equal(t, "127.0.0.1", relay.Addr().String(), "the relay listens where the client reached the proxy")
	return c, relay
}

func TestSOCKS5UDPAssociate(t *testing.T) {
	f := newFixture(t)
	serveUDPEcho(t, f.a)
	ctrl, relay := udpAssociate(t, f.socks)
	defer ctrl.Close()
	u, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(relay))
	require.NoError(t, err)
	defer u.Close()

	a4 := f.a.Addr().As4()
	byAddr := append([]byte{0, 0, 0, 1}, a4[:]...)
	byAddr = append(byAddr, 0, 7)
	byName := append([]byte{0, 0, 0, 3, byte(len("server-a"))}, "server-a"...)
	byName = append(byName, 0, 7)
	for _, hdr := range [][]byte{byAddr, byName} {
		payload := []byte("datagram through the mesh")
		want := append(append([]byte{}, byAddr...), payload...) // replies name the source address
		// The first datagrams may race the tunnel's handshake: retry.
		var got []byte
		deadline := time.Now().Add(20 * time.Second)
		for got == nil && time.Now().Before(deadline) {
			_, err := u.Write(append(append([]byte{}, hdr...), payload...))
			require.NoError(t, err)
			u.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			buf := make([]byte, 2048)
			if k, err := u.Read(buf); err == nil {
				got = buf[:k]
			}
		}
		require.Equal(t, want, got)
	}

	// A fragment is dropped, and so is a destination outside the mesh;
	// an unfragmented datagram after them still gets its echo.
	frag := append([]byte{0, 0, 1}, byAddr[3:]...)
	outside := []byte{0, 0, 0, 1, 192, 0, 2, 1, 0, 7}
	for _, d := range [][]byte{append(frag, 'x'), append(outside, 'y'), append(append([]byte{}, byAddr...), 'z')} {
		_, err := u.Write(d)
		require.NoError(t, err)
	}
	u.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 2048)
	k, err := u.Read(buf)
	require.NoError(t, err)
	require.True(t, bytes.Equal(append(append([]byte{}, byAddr...), 'z'), buf[:k]), "%q", buf[:k])

	// Closing the control connection ends the association.
	ctrl.Close()
	require.Eventually(t, func() bool {
		u.Write(append(append([]byte{}, byAddr...), 'w'))
		u.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		_, err := u.Read(buf)
		var ne net.Error
		return err != nil && !(errors.As(err, &ne) && ne.Timeout())
	}, 10*time.Second, 50*time.Millisecond, "the relay socket is closed: reads see ECONNREFUSED")
}
