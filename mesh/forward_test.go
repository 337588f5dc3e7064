package mesh

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Host forwarding without root: a spoke a and a router b holding
// 10.9.0.0/24, whose host dials are redirected to loopback (the netstack
// never accepts loopback destinations from the tunnel, and tests send
// traffic to loopback only). 10.9.0.1 maps to 127.0.0.1; any other
// address hangs like an unreachable host until the dial times out.
var (
	fwdPrefix = netip.MustParsePrefix("10.9.0.0/24")
	fwdLive   = netip.MustParseAddr("10.9.0.1")
)

type fwdPair struct {
	a, b *testDev
	f    *forwarder
}

// newFwdPair starts the pair; udpIdle 0 keeps the default.
func newFwdPair(t *testing.T, udpIdle time.Duration, handlers ...prefixRoute) *fwdPair {
	t.Helper()
	a, b := newTestDev(t, 1), newTestDev(t, 2)
	require.NoError(t, a.applyPeers(peersOf(b.peer(false, true, fwdPrefix))))
	require.NoError(t, b.applyPeers(peersOf(a.peer(false, false))))
	f := newForwarder(b.tnet, handlers, nil)
	f.dialTimeout = 300 * time.Millisecond
	if udpIdle != 0 {
		f.udpIdle = udpIdle
	}
	f.dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		ap := netip.MustParseAddrPort(addr)
		if ap.Addr() != fwdLive {
			<-ctx.Done()
			return nil, ctx.Err()
		}
		var d net.Dialer
		return d.DialContext(ctx, network, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), ap.Port()).String())
	}
	require.NoError(t, f.start())
	t.Cleanup(f.close) // before the devices' cleanups
	f.setPrefixes([]netip.Prefix{fwdPrefix})
	return &fwdPair{a: a, b: b, f: f}
}

func (p *fwdPair) dialTCP(t *testing.T, to netip.AddrPort) (net.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := p.a.tnet.DialContextTCPAddrPort(ctx, to)
	if err == nil {
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
	}
	return c, err
}

func (p *fwdPair) flows() int {
	p.f.mu.Lock()
	defer p.f.mu.Unlock()
	return len(p.f.flows)
}

func waitCond(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// loopbackTCP serves on 127.0.0.1: each connection's input is read to EOF,
// then "got N from DST" is written back and the connection closed.
func loopbackTCP(t *testing.T) uint16 {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				n, _ := io.Copy(io.Discard, c)
				fmt.Fprintf(c, "got %d", n)
			}()
		}
	}()
	return uint16(l.Addr().(*net.TCPAddr).Port)
}

func loopbackUDPEcho(t *testing.T) uint16 {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(append([]byte("echo "), buf[:n]...), from)
		}
	}()
	return uint16(pc.LocalAddr().(*net.UDPAddr).Port)
}

func TestForwardTCPHalfClose(t *testing.T) {
	p := newFwdPair(t, 0)
	port := loopbackTCP(t)
	c, err := p.dialTCP(t, netip.AddrPortFrom(fwdLive, port))
	require.NoError(t, err)
	payload := make([]byte, 200_000)
	_, err = c.Write(payload)
	require.NoError(t, err)
	require.NoError(t, c.(interface{ CloseWrite() error }).CloseWrite())
	got, err := io.ReadAll(c)
	require.NoError(t, err)
	require.Equal(t, "got 200000", string(got))
	c.Close()
	waitCond(t, "the flow to end", func() bool { return p.flows() == 0 })
}

func TestForwardTCPRefusedNotHung(t *testing.T) {
	p := newFwdPair(t, 0)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closed := uint16(l.Addr().(*net.TCPAddr).Port)
	l.Close()

	for _, to := range []netip.AddrPort{
		netip.AddrPortFrom(fwdLive, closed),                     // refused by the host
		netip.MustParseAddrPort("10.9.0.77:80"),                 // host dial times out
		netip.AddrPortFrom(netip.MustParseAddr("10.9.1.1"), 80), // outside the prefix: dropped
	} {
		t.Run(to.String(), func(t *testing.T) {
			start := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			_, err := p.a.tnet.DialContextTCPAddrPort(ctx, to)
			require.Error(t, err)
			if fwdPrefix.Contains(to.Addr()) {
				require.ErrorContains(t, err, "refused")
				require.Less(t, time.Since(start), 2*time.Second)
			} else {
				require.ErrorIs(t, ctx.Err(), context.DeadlineExceeded, "not in the prefix: no answer at all")
			}
		})
	}
}

func TestForwardUDPFlowsAndIdle(t *testing.T) {
	p := newFwdPair(t, 300*time.Millisecond)
	port := loopbackUDPEcho(t)
	c, err := p.a.tnet.DialUDPAddrPort(netip.AddrPort{}, netip.AddrPortFrom(fwdLive, port))
	require.NoError(t, err)
	defer c.Close()
	buf := make([]byte, 100)
	for i := range 3 {
		msg := fmt.Sprintf("dgram %d", i)
		require.Eventually(t, func() bool {
			c.Write([]byte(msg))
			c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			n, err := c.Read(buf)
			return err == nil && string(buf[:n]) == "echo "+msg
		}, 10*time.Second, time.Millisecond)
	}
	require.Equal(t, 1, p.flows(), "one flow for one source port")
	waitCond(t, "the idle flow to end", func() bool { return p.flows() == 0 })
	// A new datagram starts a new flow.
	require.Eventually(t, func() bool {
		c.Write([]byte("again"))
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, err := c.Read(buf)
		return err == nil && string(buf[:n]) == "echo again"
	}, 10*time.Second, time.Millisecond)
}

func TestForwardReleaseClosesConnections(t *testing.T) {
	p := newFwdPair(t, 0)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	c, err := p.dialTCP(t, netip.AddrPortFrom(fwdLive, uint16(l.Addr().(*net.TCPAddr).Port)))
	require.NoError(t, err)
	_, err = c.Write([]byte("x"))
	require.NoError(t, err)
	_, err = io.ReadFull(c, make([]byte, 1))
	require.NoError(t, err)
	require.Equal(t, 1, p.flows())

	start := time.Now()
	p.f.setPrefixes(nil)
	io.ReadAll(c) // ends (EOF or reset) instead of waiting for the 10s deadline
	require.Less(t, time.Since(start), 5*time.Second)
	waitCond(t, "the flow to be closed", func() bool { return p.flows() == 0 })
	require.False(t, p.f.match(fwdLive))
}

// echoHandler answers TCP with "NAME ORIG\n" then echoes; UDP likewise per
// datagram; pings for addresses ending in .1.
func echoHandler(name string) PrefixHandlerFuncs {
	return PrefixHandlerFuncs{
		TCP: func(c net.Conn, orig netip.AddrPort) {
			fmt.Fprintf(c, "%s %s\n", name, orig)
			io.Copy(c, c)
		},
		UDP: func(c net.Conn, orig netip.AddrPort) {
			buf := make([]byte, 2048)
			for {
				n, err := c.Read(buf)
				if err != nil {
					return
				}
				fmt.Fprintf(c, "%s %s %s", name, orig, buf[:n])
			}
		},
		Ping: func(ctx context.Context, dst netip.Addr) bool { return dst.As4()[3] == 1 },
	}
}

func TestForwardHandlers(t *testing.T) {
	inner := netip.MustParsePrefix("10.9.0.128/25")
	var udpCalls atomic.Int32
	noTCP := PrefixHandlerFuncs{UDP: func(c net.Conn, orig netip.AddrPort) { udpCalls.Add(1) }}
	p := newFwdPair(t, 0,
		prefixRoute{fwdPrefix, echoHandler("outer")},
		prefixRoute{inner, echoHandler("inner")},
		prefixRoute{netip.MustParsePrefix("10.9.0.64/26"), noTCP},
	)
	for _, tc := range []struct {
		to   string
		want string
	}{
		{"10.9.0.5:80", "outer 10.9.0.5:80\n"},
		{"10.9.0.200:443", "inner 10.9.0.200:443\n"},
	} {
		c, err := p.dialTCP(t, netip.MustParseAddrPort(tc.to))
		require.NoError(t, err)
		got := make([]byte, len(tc.want))
		_, err = io.ReadFull(c, got)
		require.NoError(t, err)
		require.Equal(t, tc.want, string(got))
		_, err = c.Write([]byte("echo"))
		require.NoError(t, err)
		_, err = io.ReadFull(c, got[:4])
		require.NoError(t, err)
		require.Equal(t, "echo", string(got[:4]))
	}
	_, err := p.dialTCP(t, netip.MustParseAddrPort("10.9.0.70:80"))
	require.ErrorContains(t, err, "refused")

	u, err := p.a.tnet.DialUDPAddrPort(netip.AddrPort{}, netip.MustParseAddrPort("10.9.0.130:53"))
	require.NoError(t, err)
	defer u.Close()
	buf := make([]byte, 100)
	require.Eventually(t, func() bool {
		u.Write([]byte("q"))
		u.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, err := u.Read(buf)
		return err == nil && string(buf[:n]) == "inner 10.9.0.130:53 q"
	}, 10*time.Second, time.Millisecond)

	ctx := context.Background()
	require.True(t, p.f.ping(ctx, netip.MustParseAddr("10.9.0.1")))
	require.False(t, p.f.ping(ctx, netip.MustParseAddr("10.9.0.2")))
	require.False(t, p.f.ping(ctx, netip.MustParseAddr("10.9.0.65")), "handler without Ping")
	require.False(t, p.f.ping(ctx, netip.MustParseAddr("10.9.9.1")), "outside the prefixes")
}

func TestReachabilityCache(t *testing.T) {
	r := newReachability(nil)
	var calls atomic.Int32
	up := netip.MustParseAddr("10.0.0.1")
	r.probe = func(ctx context.Context, dst netip.Addr) bool {
		calls.Add(1)
		_, ok := ctx.Deadline()
		require.True(t, ok, "probes are bounded")
		return dst == up
	}
	ctx := context.Background()
	require.True(t, r.check(ctx, up))
	require.True(t, r.check(ctx, up))
	require.Equal(t, int32(1), calls.Load(), "answer reused")
	require.False(t, r.check(ctx, netip.MustParseAddr("10.0.0.2")))
	require.Equal(t, int32(2), calls.Load())
	for i := range reachCacheMax + 1 {
		r.check(ctx, netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}))
	}
	r.mu.Lock()
	require.LessOrEqual(t, len(r.cache), reachCacheMax)
	r.mu.Unlock()
}

// The real probe against loopback: as root an ICMP echo, otherwise (no
// ICMP socket allowed) a TCP attempt that the host refuses.
func TestProbeHostLoopback(t *testing.T) {
	r := newReachability(nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	require.True(t, r.probeHost(ctx, netip.MustParseAddr("127.0.0.1")))
	_, err := hostPing(ctx, netip.Addr{}, netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		require.ErrorIs(t, err, errNoICMP)
		t.Logf("no ICMP socket allowed (%v): the TCP fallback answered", err)
	}
}
