package netlab_test

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/internal/netlab"
)

// udpReflector answers every datagram with the address it came from.
func udpReflector(t *testing.T, h *netlab.Host, at netip.AddrPort) {
	var c *net.UDPConn
	require.NoError(t, h.Do(func() (err error) {
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(at))
		return err
	}))
	done := make(chan struct{})
	t.Cleanup(func() { c.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			_, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			c.WriteToUDPAddrPort([]byte(from.String()), from)
		}
	}()
}

// reflexive sends from c to dst and returns the source address dst saw,
// or an invalid one when no answer comes. Late answers to earlier
// questions (from another destination) are skipped.
func reflexive(t *testing.T, c *net.UDPConn, dst netip.AddrPort) netip.AddrPort {
	for range 3 {
		_, err := c.WriteToUDPAddrPort([]byte("?"), dst)
		require.NoError(t, err)
		end := time.Now().Add(300 * time.Millisecond)
		c.SetReadDeadline(end)
		buf := make([]byte, 100)
		for time.Now().Before(end) {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				break
			}
			if from == dst {
				return netip.MustParseAddrPort(string(buf[:n]))
			}
		}
	}
	return netip.AddrPort{}
}

func TestNATKinds(t *testing.T) {
	netlab.RequireRoot(t)
	l := netlab.New(t)
	wan := l.Switch("wan")
	srv := l.Host("srv")
	l.Connect(srv, wan, pfx("192.0.2.1/24"))
	s1, s2 := ap("192.0.2.1:3478"), ap("192.0.2.1:3479")
	udpReflector(t, srv, s1)
	udpReflector(t, srv, s2)

	inside := func(name string, i byte, kind netlab.NATKind) (*netlab.Host, *net.UDPConn) {
		nat := l.Host("nat" + name)
		l.Connect(nat, wan, netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 0, 2, 10 + i}), 24))
		h := l.Host("in" + name)
		l.Wire(h, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, i, 0, 2}), 24), nat, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, i, 0, 1}), 24))
		h.DefaultRoute(netip.AddrFrom4([4]byte{10, i, 0, 1}))
		nat.NAT("wan", kind)
		var c *net.UDPConn
		require.NoError(t, h.Do(func() (err error) {
			c, err = net.ListenUDP("udp4", &net.UDPAddr{Port: 40000})
			return err
		}))
		t.Cleanup(func() { c.Close() })
		return nat, c
	}

	natEI, cEI := inside("ei", 1, netlab.NATEndpointIndependent)
	natSym, cSym := inside("sym", 2, netlab.NATSymmetric)
	natNo, cNo := inside("noudp", 3, netlab.NATNoUDP)

	t.Run("endpoint-independent keeps one mapping", func(t *testing.T) {
		a, b := reflexive(t, cEI, s1), reflexive(t, cEI, s2)
		require.Equal(t, ap("192.0.2.11:40000"), a)
		require.Equal(t, a, b)
	})
	t.Run("symmetric maps per destination", func(t *testing.T) {
		a, b := reflexive(t, cSym, s1), reflexive(t, cSym, s2)
		require.Equal(t, addr("192.0.2.12"), a.Addr())
		require.Equal(t, addr("192.0.2.12"), b.Addr())
		require.NotEqual(t, a.Port(), b.Port())
	})
	t.Run("no UDP until allowed", func(t *testing.T) {
		require.False(t, reflexive(t, cNo, s1).IsValid())
		natNo.AllowUDP()
		require.Equal(t, ap("192.0.2.13:40000"), reflexive(t, cNo, s1))
		natNo.BlockUDP()
		require.False(t, reflexive(t, cNo, s2).IsValid())
	})
	t.Run("the NAT filters unsolicited inbound", func(t *testing.T) {
		var c *net.UDPConn
		require.NoError(t, srv.Do(func() (err error) {
			c, err = net.ListenUDP("udp4", &net.UDPAddr{Port: 5555})
			return err
		}))
		defer c.Close()
		// A new source towards the EI mapping is not let in.
		require.False(t, reflexive(t, c, ap("192.0.2.11:40000")).IsValid())
	})
	t.Run("flushing conntrack forgets mappings", func(t *testing.T) {
		natSym.FlushConntrack()
		natEI.FlushConntrack()
		require.Equal(t, ap("192.0.2.11:40000"), reflexive(t, cEI, s1))
		require.True(t, reflexive(t, cSym, s1).IsValid())
	})
}
