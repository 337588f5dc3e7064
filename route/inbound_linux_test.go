//go:build linux

package route

import (
	"errors"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// listenIn listens on TCP ap inside n and accepts until the test ends.
func listenIn(t *testing.T, n *testNS, ap string) {
	t.Helper()
	var l net.Listener
	require.NoError(t, n.run(func() (err error) {
		l, err = net.Listen("tcp", ap)
		return err
	}))
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}

// dialFrom reports whether a TCP connection from n to ap opens within
// half a second.
func dialFrom(t *testing.T, n *testNS, ap string) bool {
	t.Helper()
	var c net.Conn
	err := n.run(func() (err error) {
		c, err = net.DialTimeout("tcp", ap, 500*time.Millisecond)
		return err
	})
	if err != nil {
		var ne net.Error
		require.True(t, errors.As(err, &ne) && ne.Timeout(), "dial %s: %v", ap, err)
		return false
	}
	c.Close()
	return true
}

// A host (ns "router") whose mesh interface is a veth to a peer namespace:
// the inbound filter lets the peer reach port 80 only, established
// connections and the router's own outbound flows keep working, and the
// counters count.
func TestFirewallInbound(t *testing.T) {
	router, peer := newTestNS(t), newTestNS(t)
	router.veth(t, "wm0", "eth0", peer)
	router.addr(t, "wm0", "100.64.0.1/24")
	peer.addr(t, "eth0", "100.64.0.3/24")
	listenIn(t, router, "100.64.0.1:80")
	listenIn(t, router, "100.64.0.1:81")
	listenIn(t, peer, "100.64.0.3:22")

	fw, err := NewFirewall(FirewallConfig{Interface: "wm0", TableName: "wmtest"}, WithNetNS(router.ns))
	require.NoError(t, err)
	t.Cleanup(func() { fw.Close() })
	require.True(t, dialFrom(t, peer, "100.64.0.1:81"), "no filter: everything open")

	rules := []InboundRule{{Src: pfx("100.64.0.3/32"), Dst: pfx("100.64.0.1/32", "fd00::1/128"), Proto: "tcp", Ports: [][2]uint16{{80, 80}}}}
	require.NoError(t, fw.SetInbound(rules))
	require.True(t, dialFrom(t, peer, "100.64.0.1:80"))
	require.False(t, dialFrom(t, peer, "100.64.0.1:81"))
	require.True(t, dialFrom(t, router, "100.64.0.3:22"), "replies to the router's own connections pass")
	c, err := fw.InboundCounters()
	require.NoError(t, err)
	require.Equal(t, []uint64{1}, c.Accepted)
	require.Positive(t, c.Dropped)

	require.ErrorIs(t, fw.SetInbound([]InboundRule{{Proto: "icmp", Ports: [][2]uint16{{1, 2}}}}), ErrInvalid)
	require.True(t, dialFrom(t, peer, "100.64.0.1:80"), "a refused change changes nothing")

	// Deny all, then no filter again.
	require.NoError(t, fw.SetInbound([]InboundRule{}))
	require.False(t, dialFrom(t, peer, "100.64.0.1:80"))
	require.NoError(t, fw.SetInbound([]InboundRule{{Src: pfx("0.0.0.0/0"), Dst: pfx("100.64.0.0/24"), Proto: "tcp", Ports: [][2]uint16{{81, 65535}}}}))
	require.True(t, dialFrom(t, peer, "100.64.0.1:81"))
	require.False(t, dialFrom(t, peer, "100.64.0.1:80"))
	require.NoError(t, fw.SetInbound(nil))
	require.True(t, dialFrom(t, peer, "100.64.0.1:80"))
	require.NoError(t, fw.Close())
	require.False(t, nftTableExists(t, router, "wmtest"))
}
