package mesh_test

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/mesh"
	"github.com/wiremesh/wiremesh/meshtest"
)

// serveListener greets each TCP connection of l with "NAME LOCALADDR\n"
// and echoes, and answers each datagram on pc with "NAME LOCALADDR DATA"
// (the format of tcpGreeting and udpGreeting), until the test ends.
func serveListener(t *testing.T, name string, l net.Listener, pc net.PacketConn) {
	t.Helper()
	done := make(chan struct{}, 2)
	t.Cleanup(func() {
		l.Close()
		pc.Close()
		<-done
		<-done
	})
	go func() {
		defer func() { done <- struct{}{} }()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				fmt.Fprintf(c, "%s %s\n", name, c.LocalAddr())
				io.Copy(c, c)
			}()
		}
	}()
	go func() {
		defer func() { done <- struct{}{} }()
		buf := make([]byte, 2048)
		for {
			k, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			fmt.Fprintf(pcWriter{pc, from}, "%s %s %s", name, pc.LocalAddr(), buf[:k])
		}
	}()
}

type pcWriter struct {
	pc net.PacketConn
	to net.Addr
}

func (w pcWriter) Write(b []byte) (int, error) { return w.pc.WriteTo(b, w.to) }

// A wildcard listener on a userspace router serves the router's own tunnel
// addresses only: traffic to its child prefixes still reaches the prefix
// handler (the netstack is promiscuous for forwarding, so a socket bound to
// the zero address would capture it).
func TestWildcardListenerLeavesChildPrefixes(t *testing.T) {
	s := meshtest.NewServer(t)
	p := netip.MustParsePrefix("10.99.0.0/16")
	r := meshtest.Join(t, s, mesh.WithHostname("router"), mesh.WithChildPrefix(p), mesh.WithPrefixHandler(p, serveAs("handler")))
	spoke := meshtest.Join(t, s, mesh.WithHostname("spoke"))
	meshtest.WaitPeers(t, r, 1)
	meshtest.WaitPeers(t, spoke, 1)

	require.Len(t, r.Addrs(), 2, "IPv4 and IPv6: the wildcard listener merges two")
	l, err := r.Listen("tcp", ":80")
	require.NoError(t, err)
	pc, err := r.ListenPacket("udp", ":53")
	require.NoError(t, err)
	serveListener(t, "listener", l, pc)

	tcpGreeting(t, spoke, "10.99.0.7:80", "handler")
	udpGreeting(t, spoke, "10.99.0.7:53", "handler")
	for _, a := range r.Addrs() {
		tcpGreeting(t, spoke, netip.AddrPortFrom(a, 80).String(), "listener")
	}
	udpGreeting(t, spoke, netip.AddrPortFrom(r.Addr(), 53).String(), "listener")
	require.Equal(t, netip.AddrPortFrom(r.Addr(), 53), pc.LocalAddr().(*net.UDPAddr).AddrPort(),
		"ListenPacket with an empty host binds the IPv4 tunnel address")
}
