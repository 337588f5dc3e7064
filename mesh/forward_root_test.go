package mesh_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/mesh"
	"github.com/wiremesh/wiremesh/meshtest"
)

// A userspace router forwards to a real address inside its prefix with
// ordinary sockets, answers pings only for addresses the host reaches,
// and refuses connections the host cannot make.
//
// It needs root: the test makes a network namespace whose lo carries
// 198.18.77.1 (the "service behind the router"; nothing else of the
// prefix exists) and runs itself again inside it, service, router and
// spoke included, so no traffic leaves the namespace.
func TestUserspaceRouterForwardsToHost(t *testing.T) {
	if !runInRouterNetNS(t) {
		return
	}

	live := routerNetNSAddr
	absent := netip.MustParseAddr("198.18.77.2")
	l, err := net.Listen("tcp", netip.AddrPortFrom(live, 8080).String())
	require.NoError(t, err)
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(20 * time.Second))
				n, _ := io.Copy(io.Discard, c)
				fmt.Fprintf(c, "host %s got %d\n", c.LocalAddr(), n)
			}()
		}
	}()
	pc, err := net.ListenPacket("udp", netip.AddrPortFrom(live, 5353).String())
	require.NoError(t, err)
	defer pc.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(append([]byte("host "), buf[:n]...), from)
		}
	}()

	s := meshtest.NewServer(t)
	p := netip.MustParsePrefix("198.18.77.0/24")
	meshtest.Join(t, s, mesh.WithHostname("router"), mesh.WithChildPrefix(p))
	spoke := meshtest.Join(t, s, mesh.WithHostname("spoke"))
	meshtest.WaitPeers(t, spoke, 1)

	// TCP with a half-close: the host server answers after our FIN.
	c, err := spoke.Dial(ctxT(t), "tcp", "198.18.77.1:8080")
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	_, err = c.Write([]byte(strings.Repeat("x", 100_000)))
	require.NoError(t, err)
	require.NoError(t, c.(interface{ CloseWrite() error }).CloseWrite())
	line, err := bufio.NewReader(c).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "host 198.18.77.1:8080 got 100000\n", line)

	udpHost := func() string {
		u, err := spoke.Dial(ctxT(t), "udp", "198.18.77.1:5353")
		require.NoError(t, err)
		defer u.Close()
		buf := make([]byte, 100)
		for range 40 {
			u.Write([]byte("dgram"))
			u.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			if n, err := u.Read(buf); err == nil {
				return string(buf[:n])
			}
		}
		return ""
	}
	require.Equal(t, "host dgram", udpHost())

	rtt, err := spoke.Ping(ctxT(t), live)
	require.NoError(t, err)
	require.Positive(t, rtt)
	short, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err = spoke.Ping(short, absent)
	require.Error(t, err, "the host does not reach %s: no reply", absent)
	require.NotErrorIs(t, err, mesh.ErrNoRoute)

	// Refused, not hung: a closed port, and an address the host cannot reach.
	for _, to := range []string{"198.18.77.1:9", "198.18.77.2:80"} {
		start := time.Now()
		_, err := spoke.Dial(ctxT(t), "tcp", to)
		require.ErrorContains(t, err, "refused", to)
		require.Less(t, time.Since(start), 5*time.Second, to)
	}
}
