package mesh_test

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/internal/netlab"
	"github.com/wiremesh/wiremesh/mesh"
	"github.com/wiremesh/wiremesh/mesh/internal/netstack/nsbench"
	"github.com/wiremesh/wiremesh/meshtest"
)

// trimmedPair joins two members that trim each other after idle, with the
// session age shortened (the test waits until both sides trimmed, so
// neither holds a session, as after the real age).
func trimmedPair(tb testing.TB, s *meshtest.Server, idle time.Duration) (a, b *mesh.Node) {
	tb.Helper()
	restore := mesh.SetTrimSessionAge(0)
	tb.Cleanup(restore)
	a = meshtest.Join(tb, s, mesh.WithHostname("a"), mesh.WithPeerIdleTimeout(idle))
	b = meshtest.Join(tb, s, mesh.WithHostname("b"), mesh.WithPeerIdleTimeout(idle))
	meshtest.WaitPeers(tb, a, 1)
	meshtest.WaitPeers(tb, b, 1)
	return a, b
}

// waitTrimmed waits until every node has trimmed every peer.
func waitTrimmed(tb testing.TB, nodes ...*mesh.Node) {
	tb.Helper()
	meshtest.WaitFor(tb, "peers trimmed", func() bool {
		for _, n := range nodes {
			for _, p := range n.Status().Peers {
				if !p.Trimmed {
					return false
				}
			}
		}
		return true
	})
}

// sendOne sends one UDP datagram from `from` to pc (listening on `to`) and
// waits for it; it fails the test when it does not arrive (WireGuard would
// not send it again: a datagram dropped because its peer was not in the
// device is lost).
func sendOne(t *testing.T, from *mesh.Node, to netip.AddrPort, pc net.PacketConn, msg string) {
	t.Helper()
	sendOneTo(t, from, nil, to, pc, msg)
}

// sendOneTo is sendOne; with dst set (the receiver, both sides trimmed)
// it also checks that the receiver handed on the initiation that woke
// the sender in it, rather than waiting for the sender's retry.
func sendOneTo(t *testing.T, from, dst *mesh.Node, to netip.AddrPort, pc net.PacketConn, msg string) {
	t.Helper()
	var before uint64
	if dst != nil {
		before = mesh.WokenDelivered(dst)
	}
	c, err := from.Dial(ctxT(t), "udp", to.String())
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Write([]byte(msg))
	require.NoError(t, err)
	buf := make([]byte, 100)
	require.NoError(t, pc.SetReadDeadline(time.Now().Add(20*time.Second)))
	n, _, err := pc.ReadFrom(buf)
	require.NoError(t, err, "the first datagram to a trimmed peer was lost")
	require.Equal(t, msg, string(buf[:n]))
	if dst != nil {
		require.Greater(t, mesh.WokenDelivered(dst), before, "the initiation that woke the sender was handed on")
	}
}

// TestTrimmedPeerFirstPacket trims an idle pair and checks that the first
// packet either way reaches the trimmed peer: a single UDP datagram
// (nothing would send it again) from each side, and a TCP connection.
// Each send finds both sides trimmed, so it exercises the sender's
// outbound wake (its tun device configures the peer before wireguard-go
// sees the packet) and the receiver's inbound wake (its bind configures
// the peer, then hands it the handshake initiation).
func TestTrimmedPeerFirstPacket(t *testing.T) {
	s := meshtest.NewServer(t)
	a, b := trimmedPair(t, s, time.Second)
	pa, err := a.ListenPacket("udp", netip.AddrPortFrom(a.Addr(), 9).String())
	require.NoError(t, err)
	defer pa.Close()
	pb, err := b.ListenPacket("udp", netip.AddrPortFrom(b.Addr(), 9).String())
	require.NoError(t, err)
	defer pb.Close()
	pb6, err := b.ListenPacket("udp", netip.AddrPortFrom(b.Addrs()[1], 9).String())
	require.NoError(t, err)
	defer pb6.Close()
	echoServer(t, b)

	// From a session that carried traffic.
	sendOne(t, a, netip.AddrPortFrom(b.Addr(), 9), pb, "warm")
	waitTrimmed(t, a, b)
	for _, n := range []*mesh.Node{a, b} {
		p := n.Status().Peers[0]
		require.False(t, p.LastHandshake.IsZero(), "a trimmed peer keeps its last stats")
	}

	sendOneTo(t, a, b, netip.AddrPortFrom(b.Addr(), 9), pb, "a to trimmed b")
	require.False(t, a.Status().Peers[0].Trimmed)
	require.False(t, b.Status().Peers[0].Trimmed)

	waitTrimmed(t, a, b)
	sendOneTo(t, b, a, netip.AddrPortFrom(a.Addr(), 9), pa, "b to trimmed a")

	// IPv6 too, and TCP: the SYN is the first packet.
	waitTrimmed(t, a, b)
	sendOneTo(t, a, b, netip.AddrPortFrom(b.Addrs()[1], 9), pb6, "a to trimmed b over IPv6")
	waitTrimmed(t, a, b)
	before := mesh.WokenDelivered(b)
	c, err := a.Dial(ctxT(t), "tcp", netip.AddrPortFrom(b.Addr(), 7).String())
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Write([]byte("tcp"))
	require.NoError(t, err)
	buf := make([]byte, 3)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(20*time.Second)))
	_, err = io.ReadFull(c, buf)
	require.NoError(t, err)
	require.Equal(t, "tcp", string(buf))
	require.Greater(t, mesh.WokenDelivered(b), before, "the initiation that woke a was handed on")
}

// TestPeerIdleTimeoutOff keeps every peer when trimming is off, and
// refuses a negative timeout.
func TestPeerIdleTimeoutOff(t *testing.T) {
	s := meshtest.NewServer(t)
	restore := mesh.SetTrimSessionAge(0)
	defer restore()
	a := meshtest.Join(t, s, mesh.WithPeerIdleTimeout(0))
	b := meshtest.Join(t, s, mesh.WithPeerIdleTimeout(0))
	meshtest.WaitPeers(t, a, 1)
	meshtest.WaitPeers(t, b, 1)
	time.Sleep(2 * time.Second)
	for _, n := range []*mesh.Node{a, b} {
		require.False(t, n.Status().Peers[0].Trimmed)
	}
	_, err := meshtest.TryJoin(t, s, mesh.WithPeerIdleTimeout(-time.Second))
	require.ErrorContains(t, err, "WithPeerIdleTimeout")
}

// BenchmarkTrimmedPeerFirstEcho measures what reaching a trimmed peer
// costs: the time from sending one UDP datagram until its echo came back,
// (1) to a peer both sides have trimmed, (2) to a "cold" peer, configured
// on both sides but without a session (so the datagram waits for one
// handshake, the round trip WireGuard adds to any first packet), and (3)
// to a warm peer (a session up: one round trip). The trimmed and cold
// pairs run in zones of their own in the same process, one after the
// other in each iteration. trimmed/cold near 1 means that waking a
// trimmed peer costs nothing beyond the handshake, i.e. one extra round
// trip; cold/warm is what that round trip costs here. It also counts the
// WireGuard messages both members send per echo (probes excluded): a
// trimmed peer needs as many as a cold one (initiation, response, the
// datagram, its echo), a warm one two. A datagram that never comes back
// fails the benchmark (nothing would send it again).
func BenchmarkTrimmedPeerFirstEcho(b *testing.B) {
	s := meshtest.NewServer(b)
	defer mesh.SetTrimSessionAge(0)()
	pair := func(zone string, idle time.Duration) (*mesh.Node, *mesh.Node) {
		s.CreateZone(b, zone)
		tok := s.CreateToken(b, zone)
		x := meshtest.Join(b, s, mesh.WithToken(tok), mesh.WithZone(zone), mesh.WithPeerIdleTimeout(idle))
		y := meshtest.Join(b, s, mesh.WithToken(tok), mesh.WithZone(zone), mesh.WithPeerIdleTimeout(idle))
		meshtest.WaitPeers(b, x, 1)
		meshtest.WaitPeers(b, y, 1)
		udpEchoServer(b, y)
		return x, y
	}
	ta, tb := pair("trim", time.Second)
	ca, cb := pair("cold", 0)
	// Handshakes, buffer pools and the netstacks' first sockets are not
	// what is measured.
	echoOnce(b, ta, tb)
	echoOnce(b, ca, cb)

	var trimmed, cold, warm, toCold, toWarm, coldToWarm, trimmedMsgs, coldMsgs, warmMsgs []float64
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	// echo times one echo and counts the WireGuard messages both members
	// sent for it (taken 50 ms later: a keepalive answering the last one
	// belongs to it too).
	echo := func(x, y *mesh.Node) (time.Duration, float64) {
		n0 := mesh.MessagesSent(x) + mesh.MessagesSent(y)
		d := echoOnce(b, x, y)
		time.Sleep(50 * time.Millisecond)
		return d, float64(mesh.MessagesSent(x) + mesh.MessagesSent(y) - n0)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		waitTrimmed(b, ta, tb)
		t, tm := echo(ta, tb)
		wt, wm := echo(ta, tb)
		require.NoError(b, mesh.DropSessions(ca))
		require.NoError(b, mesh.DropSessions(cb))
		c, cm := echo(ca, cb)
		wc, wm2 := echo(ca, cb)
		trimmed, cold, warm = append(trimmed, ms(t)), append(cold, ms(c)), append(warm, ms(wt), ms(wc))
		toCold, toWarm, coldToWarm = append(toCold, ms(t)/ms(c)), append(toWarm, ms(t)/ms(wt)), append(coldToWarm, ms(c)/ms(wc))
		trimmedMsgs, coldMsgs, warmMsgs = append(trimmedMsgs, tm), append(coldMsgs, cm), append(warmMsgs, wm, wm2)
	}
	med := nsbench.Median
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(med(trimmed), "trimmed_ms")
	b.ReportMetric(med(cold), "cold_ms")
	b.ReportMetric(med(warm), "warm_ms")
	b.ReportMetric(med(toCold), "trimmed/cold")
	b.ReportMetric(med(toWarm), "trimmed/warm")
	b.ReportMetric(med(coldToWarm), "cold/warm")
	b.ReportMetric(med(trimmedMsgs), "trimmed_msgs")
	b.ReportMetric(med(coldMsgs), "cold_msgs")
	b.ReportMetric(med(warmMsgs), "warm_msgs")
	b.ReportMetric(slices.Max(trimmedMsgs), "trimmed_msgs_max")
}

// udpEchoServer echoes UDP datagrams on port 7 of n until the benchmark
// ends.
func udpEchoServer(tb testing.TB, n *mesh.Node) {
	tb.Helper()
	pc, err := n.ListenPacket("udp", ":7")
	require.NoError(tb, err)
	done := make(chan struct{})
	tb.Cleanup(func() {
		pc.Close()
		<-done
	})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			k, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:k], from)
		}
	}()
}

// echoOnce sends one datagram from `from` to to's UDP echo server and
// returns the time until it came back; it fails when it does not.
func echoOnce(tb testing.TB, from, to *mesh.Node) time.Duration {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := from.Dial(ctx, "udp", netip.AddrPortFrom(to.Addr(), 7).String())
	require.NoError(tb, err)
	defer c.Close()
	msg := []byte("first")
	buf := make([]byte, 100)
	require.NoError(tb, c.SetReadDeadline(time.Now().Add(20*time.Second)))
	start := time.Now()
	_, err = c.Write(msg)
	require.NoError(tb, err)
	k, err := c.Read(buf)
	require.NoError(tb, err, "no echo: the datagram or its echo was lost")
	require.Equal(tb, msg, buf[:k])
	return time.Since(start)
}

// kernelTrimEnv marks the child process of TestKernelTrim.
const kernelTrimEnv = "WIREMESH_KERNEL_TRIM_NETNS"

// TestKernelTrim runs TestKernelTrimInNamespace in a fresh network
// namespace (root, Linux, /dev/net/tun).
func TestKernelTrim(t *testing.T) {
	netlab.RequireRoot(t)
	netlab.RequireTUN(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nftables: `nft` not found on PATH")
	}
	l := netlab.New(t)
	h := l.Host("ktrim")
	t.Setenv(kernelTrimEnv, "1")
	p := h.Start(t, os.Args[0], "-test.run=^TestKernelTrimInNamespace$", "-test.v", "-test.count=1", "-test.timeout=3m")
	select {
	case <-p.Done():
	case <-time.After(3 * time.Minute):
		t.Fatalf("TestKernelTrimInNamespace did not finish; output:\n%s", p.Output())
	}
	out := p.Output()
	require.NoError(t, p.Stop(), out)
	require.Contains(t, out, "--- PASS: TestKernelTrimInNamespace", out)
}

// TestKernelTrimInNamespace is TestTrimmedPeerFirstPacket with a kernel-mode
// member: its TUN device is read through the same activity wrapper, so a
// datagram the host sends to a trimmed peer configures the peer first.
func TestKernelTrimInNamespace(t *testing.T) {
	if os.Getenv(kernelTrimEnv) == "" {
		t.Skip("runs only inside the network namespace made by TestKernelTrim")
	}
	s := meshtest.NewServer(t)
	defer mesh.SetTrimSessionAge(0)()
	k := meshtest.Join(t, s, mesh.WithHostname("k"), mesh.WithMode(mesh.Kernel), mesh.WithInterfaceName("wmtrim0"),
		mesh.WithPeerIdleTimeout(time.Second))
	u := meshtest.Join(t, s, mesh.WithHostname("u"), mesh.WithPeerIdleTimeout(time.Second))
	meshtest.WaitPeers(t, k, 1)
	meshtest.WaitPeers(t, u, 1)
	pk, err := k.ListenPacket("udp", netip.AddrPortFrom(k.Addr(), 9).String())
	require.NoError(t, err)
	defer pk.Close()
	pu, err := u.ListenPacket("udp", netip.AddrPortFrom(u.Addr(), 9).String())
	require.NoError(t, err)
	defer pu.Close()

	sendOne(t, k, netip.AddrPortFrom(u.Addr(), 9), pu, "warm")
	waitTrimmed(t, k, u)
	sendOne(t, k, netip.AddrPortFrom(u.Addr(), 9), pu, "kernel to trimmed u")
	waitTrimmed(t, k, u)
	sendOne(t, u, netip.AddrPortFrom(k.Addr(), 9), pk, "u to trimmed kernel member")
}
