package mesh_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/mesh"
	"github.com/wiremesh/wiremesh/meshtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fast makes nodes reconnect quickly after the service comes back.
var fast = mesh.WithReconnectBackoff(20*time.Millisecond, 300*time.Millisecond)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// echoServer serves TCP and UDP echo on port 7 of n until the test ends.
func echoServer(t *testing.T, n *mesh.Node) {
	t.Helper()
	l, err := n.Listen("tcp", ":7")
	require.NoError(t, err)
	pc, err := n.ListenPacket("udp", ":7")
	require.NoError(t, err)
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
			pc.WriteTo(buf[:k], from)
		}
	}()
}

func tcpEcho(t *testing.T, from *mesh.Node, host string) {
	t.Helper()
	c, err := from.Dial(ctxT(t), "tcp", net.JoinHostPort(host, "7"))
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	msg := []byte("ping " + host)
	_, err = c.Write(msg)
	require.NoError(t, err)
	got := make([]byte, len(msg))
	_, err = io.ReadFull(c, got)
	require.NoError(t, err)
	require.Equal(t, msg, got)
}

func udpEcho(t *testing.T, from *mesh.Node, host string) {
	t.Helper()
	c, err := from.Dial(ctxT(t), "udp", net.JoinHostPort(host, "7"))
	require.NoError(t, err)
	defer c.Close()
	msg := []byte("dgram " + host)
	buf := make([]byte, 100)
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		_, err = c.Write(msg)
		require.NoError(t, err)
		c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		k, err := c.Read(buf)
		if err != nil {
			continue // lost while the tunnel handshakes; send again
		}
		require.Equal(t, msg, buf[:k])
		return
	}
	t.Fatalf("no UDP echo from %s", host)
}

func TestThreeNodes(t *testing.T) {
	s := meshtest.NewServer(t)
	a := meshtest.Join(t, s, mesh.WithHostname("alpha"))
	b := meshtest.Join(t, s, mesh.WithHostname("beta"))
	c := meshtest.Join(t, s, mesh.WithHostname("gamma"))
	nodes := []*mesh.Node{a, b, c}
	for _, n := range nodes {
		meshtest.WaitPeers(t, n, 2)
		echoServer(t, n)
	}
	require.NotEqual(t, a.Addr(), b.Addr())
	require.True(t, a.Addr().Is4())
	require.Len(t, a.Addrs(), 2)
	require.True(t, a.Addrs()[1].Is6())

	for i, x := range nodes {
		for j, y := range nodes {
			if i == j {
				continue
			}
			tcpEcho(t, x, y.Addr().String())
			udpEcho(t, x, y.Addr().String())
			rtt, err := x.Ping(ctxT(t), y.Addr())
			require.NoError(t, err)
			require.Positive(t, rtt)
		}
	}
	// IPv6 tunnel addresses, and hostnames resolved from the peer list.
	tcpEcho(t, a, b.Addrs()[1].String())
	_, err := a.Ping(ctxT(t), c.Addrs()[1])
	require.NoError(t, err)
	tcpEcho(t, c, "alpha")
	_, err = a.Dial(ctxT(t), "tcp", "nosuchpeer:7")
	var dnsErr *net.DNSError
	require.ErrorAs(t, err, &dnsErr)

	// HTTP through the mesh.
	l, err := b.Listen("tcp4", ":80")
	require.NoError(t, err)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s", r.RemoteAddr)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	resp, err := a.HTTPClient().Get("http://" + b.Addr().String() + "/")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.Contains(t, string(body), "hello "+a.Addr().String())

	// Status reflects the traffic.
	st := a.Status()
	require.True(t, st.ControlConnected)
	require.Equal(t, "alpha", st.Self.Hostname)
	require.Len(t, st.Peers, 2)
	for _, p := range st.Peers {
		require.False(t, p.LastHandshake.IsZero(), p.Hostname)
		require.NotZero(t, p.RxBytes)
		require.NotZero(t, p.TxBytes)
		require.True(t, p.Endpoint.IsValid())
		require.Len(t, p.Addrs, 2)
	}
}

func TestNoRoute(t *testing.T) {
	s := meshtest.NewServer(t)
	a := meshtest.Join(t, s)

	// A real listener on the host: the node must not reach it.
	host, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer host.Close()
	for _, addr := range []string{host.Addr().String(), "10.99.0.1:80", "[2001:db8::1]:80"} {
		_, err := a.Dial(ctxT(t), "tcp", addr)
		require.ErrorIs(t, err, mesh.ErrNoRoute, addr)
		var nr *mesh.NoRouteError
		require.ErrorAs(t, err, &nr)
		_, err = a.Dial(ctxT(t), "udp", addr)
		require.ErrorIs(t, err, mesh.ErrNoRoute, addr)
	}
	_, err = a.Ping(ctxT(t), netip.MustParseAddr("127.0.0.1"))
	require.ErrorIs(t, err, mesh.ErrNoRoute)

	// A tunnel address of the zone that no member holds fails at once (it
	// used to hang until TCP gave up), and so does one whose member left.
	b := meshtest.Join(t, s)
	meshtest.WaitPeers(t, a, 1)
	gone := b.Addr()
	require.NoError(t, b.Close()) // ephemeral (no state dir): Close deletes it
	meshtest.WaitPeers(t, a, 0)
	for _, ip := range []netip.Addr{netip.MustParseAddr("100.64.0.200"), gone} {
		start := time.Now()
		_, err := a.Dial(ctxT(t), "tcp", netip.AddrPortFrom(ip, 80).String())
		require.ErrorIs(t, err, mesh.ErrNoRoute, ip)
		require.ErrorContains(t, err, "no member of the zone holds", ip)
		_, err = a.Ping(ctxT(t), ip)
		require.ErrorIs(t, err, mesh.ErrNoRoute, ip)
		require.Less(t, time.Since(start), time.Second, "refused at once, not after a timeout")
	}

	// Nothing was dialled on the host: the first connection the listener
	// accepts is this one.
	mine, err := net.Dial("tcp", host.Addr().String())
	require.NoError(t, err)
	defer mine.Close()
	got, err := host.Accept()
	require.NoError(t, err)
	defer got.Close()
	require.Equal(t, mine.LocalAddr().String(), got.RemoteAddr().String())

	// Bad networks and addresses.
	_, err = a.Dial(ctxT(t), "ip", "100.64.0.1:1")
	require.Error(t, err)
	_, err = a.Dial(ctxT(t), "tcp", "100.64.0.1:http")
	require.ErrorContains(t, err, `port "http"`)
	_, err = a.Listen("tcp", "10.0.0.1:80")
	require.ErrorContains(t, err, "not an address of this node")
}

func TestRestartKeepsAddressAndPeersReachIt(t *testing.T) {
	s := meshtest.NewServer(t)
	a := meshtest.Join(t, s)
	echoServer(t, a)
	dir := t.TempDir()
	b := meshtest.Join(t, s, mesh.WithStateDir(dir), mesh.WithHostname("b"))
	addr := b.Addr()
	require.NoError(t, b.Close())

	b2 := meshtest.Join(t, s, mesh.WithStateDir(dir), mesh.WithHostname("b"))
	require.Equal(t, addr, b2.Addr())
	meshtest.WaitPeers(t, b2, 1)
	echoServer(t, b2)
	tcpEcho(t, a, addr.String())
	tcpEcho(t, b2, a.Addr().String())
}

func TestLateJoinerIsReached(t *testing.T) {
	s := meshtest.NewServer(t)
	a := meshtest.Join(t, s)
	b := meshtest.Join(t, s)
	meshtest.WaitPeers(t, a, 1)
	events := a.Watch(ctxT(t))

	c := meshtest.Join(t, s, mesh.WithHostname("late"))
	echoServer(t, c)
	meshtest.WaitPeers(t, a, 2)
	meshtest.WaitPeers(t, b, 2)
	tcpEcho(t, a, c.Addr().String())
	tcpEcho(t, b, "late")

	for {
		select {
		case ev := <-events:
			switch ev.Type {
			case mesh.PeerUpdated: // b (or c) advertising the candidates it discovered
				continue
			case mesh.PeerOnline, mesh.PeerOffline:
				continue
			}
			require.Equal(t, mesh.PeerAdded, ev.Type)
			require.Equal(t, "late", ev.Peer.Hostname)
			require.Equal(t, c.Addr(), ev.Peer.Addrs[0])
			return
		case <-time.After(10 * time.Second):
			t.Fatal("no PeerAdded event")
		}
	}
}

func TestServiceDownAndBack(t *testing.T) {
	s := meshtest.NewServer(t)
	a := meshtest.Join(t, s, fast)
	b := meshtest.Join(t, s, fast)
	meshtest.WaitPeers(t, a, 1)
	meshtest.WaitPeers(t, b, 1)
	echoServer(t, a)
	echoServer(t, b)
	events := a.Watch(ctxT(t))

	s.Stop()
	waitEvent(t, events, mesh.ControlLost)
	require.False(t, a.Status().ControlConnected)
	tcpEcho(t, a, b.Addr().String())
	tcpEcho(t, b, a.Addr().String())
	udpEcho(t, a, b.Addr().String())

	s.Start(t)
	waitEvent(t, events, mesh.ControlRestored)
	d := meshtest.Join(t, s, fast)
	echoServer(t, d)
	for _, n := range []*mesh.Node{a, b} {
		meshtest.WaitPeers(t, n, 2)
		tcpEcho(t, n, d.Addr().String())
	}
	tcpEcho(t, d, a.Addr().String())
}

func TestRestartWhileServiceDown(t *testing.T) {
	s := meshtest.NewServer(t)
	a := meshtest.Join(t, s, fast)
	dir := t.TempDir()
	b := meshtest.Join(t, s, fast, mesh.WithStateDir(dir))
	meshtest.WaitPeers(t, a, 1)
	meshtest.WaitPeers(t, b, 1)
	echoServer(t, a)
	addr := b.Addr()
	require.NoError(t, b.Close())

	s.Stop()
	b2 := meshtest.Join(t, s, fast, mesh.WithStateDir(dir))
	require.Equal(t, addr, b2.Addr())
	require.False(t, b2.Status().ControlConnected)
	require.Len(t, b2.Status().Peers, 1)
	echoServer(t, b2)
	tcpEcho(t, b2, a.Addr().String())
	tcpEcho(t, a, addr.String())

	// When the service returns, b2 registers again and syncs.
	s.Start(t)
	meshtest.WaitFor(t, "b2 connected", func() bool { return b2.Status().ControlConnected })
	require.Equal(t, addr, b2.Addr())
}

func waitEvent(t *testing.T, ch <-chan mesh.Event, want mesh.EventType) mesh.Event {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case ev, ok := <-ch:
			require.True(t, ok, "event channel closed")
			if ev.Type == want {
				return ev
			}
		case <-timeout:
			t.Fatalf("no %v event", want)
		}
	}
}

func TestJoinErrors(t *testing.T) {
	s := meshtest.NewServer(t)
	ctx := ctxT(t)

	_, fp, err := api.ParseJoinToken(s.Token)
	require.NoError(t, err)
	_, err = mesh.Join(ctx, s.URL, mesh.WithToken(api.FormatJoinToken("wmj_00000000000000000000000000000000", fp)))
	require.ErrorIs(t, err, mesh.ErrUnauthorized)
	require.ErrorContains(t, err, "mesh.Join")
	var ae *api.Error
	require.ErrorAs(t, err, &ae)
	require.Equal(t, api.CodeUnauthorized, ae.Code)

	// Kernel mode: see kernel_test.go (it would create a TUN device here).

	_, err = mesh.Join(ctx, s.URL)
	require.ErrorContains(t, err, "no join token")

	owner := meshtest.Join(t, s, mesh.WithHostname("owner"), mesh.WithChildPrefix(netip.MustParsePrefix("10.1.0.0/24")))
	require.Equal(t, []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24")}, owner.Prefixes())
	_, err = meshtest.TryJoin(t, s, mesh.WithChildPrefix(netip.MustParsePrefix("10.1.0.0/25")))
	require.ErrorIs(t, err, mesh.ErrPrefixConflict)
	require.ErrorAs(t, err, &ae)
	require.Equal(t, "owner", ae.Owner)
	require.NotErrorIs(t, err, mesh.ErrUnauthorized)

	_, err = meshtest.TryJoin(t, s, mesh.WithChildPrefix(netip.MustParsePrefix("127.0.0.0/8")))
	require.ErrorIs(t, err, mesh.ErrInvalidPrefix)
	_, err = meshtest.TryJoin(t, s, mesh.WithChildPrefix(netip.MustParsePrefix("10.2.0.1/24")))
	require.ErrorIs(t, err, mesh.ErrInvalidPrefix)
}

func TestChildPrefixRoutesThroughOwner(t *testing.T) {
	s := meshtest.NewServer(t)
	p := netip.MustParsePrefix("10.7.0.0/24")
	// A handler that refuses everything: no traffic to the host network.
	a := meshtest.Join(t, s, mesh.WithChildPrefix(p), mesh.WithPrefixHandler(p, mesh.PrefixHandlerFuncs{}))
	b := meshtest.Join(t, s)
	meshtest.WaitPeers(t, b, 1)
	require.Equal(t, []netip.Prefix{p}, b.Status().Peers[0].Prefixes)
	require.Equal(t, []netip.Prefix{p}, a.Prefixes())
	// Routed into the tunnel to a (whose handler refuses it), never
	// refused locally as no-route.
	_, err := b.Dial(ctxT(t), "tcp", "10.7.0.5:80")
	require.ErrorContains(t, err, "refused")
	require.NotErrorIs(t, err, mesh.ErrNoRoute)
	_, err = b.Dial(ctxT(t), "tcp", "10.7.1.5:80")
	require.ErrorIs(t, err, mesh.ErrNoRoute)
}

func TestCloseLeavesNothing(t *testing.T) {
	s := meshtest.NewServer(t)
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())

	ctx := ctxT(t)
	other, err := mesh.Join(ctx, s.URL, mesh.WithToken(s.Token), mesh.WithHostname("other"))
	require.NoError(t, err)
	defer other.Close()
	n, err := mesh.Join(ctx, s.URL, mesh.WithToken(s.Token), mesh.WithHostname("closer"))
	require.NoError(t, err)
	meshtest.WaitPeers(t, n, 1)
	l, err := other.Listen("tcp", ":80")
	require.NoError(t, err)
	defer l.Close()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})}
	go srv.Serve(l)
	defer srv.Close()
	resp, err := n.HTTPClient().Get("http://other/")
	require.NoError(t, err)
	resp.Body.Close()
	rtt, err := n.Ping(ctx, other.Addr())
	require.NoError(t, err)
	require.Positive(t, rtt)
	events := n.Watch(context.Background())

	require.NoError(t, n.Close())
	err = n.Close()
	require.ErrorIs(t, err, net.ErrClosed)
	_, ok := <-events
	require.False(t, ok, "event channel closed by Close")
	_, err = n.Dial(ctx, "tcp", other.Addr().String()+":80")
	require.ErrorIs(t, err, net.ErrClosed)
	_, err = n.Listen("tcp", ":1")
	require.ErrorIs(t, err, net.ErrClosed)
	_, err = n.Ping(ctx, other.Addr())
	require.ErrorIs(t, err, net.ErrClosed)
	_ = n.Status()
	_, ok = <-n.Watch(context.Background())
	require.False(t, ok)
}

func TestWatchChannelClosesWithContext(t *testing.T) {
	s := meshtest.NewServer(t)
	n := meshtest.Join(t, s)
	ctx, cancel := context.WithCancel(context.Background())
	ch := n.Watch(ctx)
	cancel()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-deadline:
			t.Fatal("channel not closed after cancel")
		}
	}
}

// A single-use join token is spent by the first registration; a restart
// with the state directory carries on with the saved device token.
func TestRestartWithSpentSingleUseToken(t *testing.T) {
	s := meshtest.NewServer(t)
	a := meshtest.Join(t, s)
	echoServer(t, a)
	tok, err := s.Service().CreateJoinToken(ctxT(t), "default", false, 0)
	require.NoError(t, err)
	dir := t.TempDir()
	b := meshtest.Join(t, s, mesh.WithToken(tok), mesh.WithStateDir(dir))
	addr := b.Addr()
	require.NoError(t, b.Close())

	_, err = meshtest.TryJoin(t, s, mesh.WithToken(tok)) // spent, no state
	require.ErrorIs(t, err, mesh.ErrUnauthorized)

	b2 := meshtest.Join(t, s, mesh.WithToken(tok), mesh.WithStateDir(dir))
	require.Equal(t, addr, b2.Addr())
	meshtest.WaitPeers(t, b2, 1)
	tcpEcho(t, b2, a.Addr().String())
}

func TestZonesAreSeparate(t *testing.T) {
	s := meshtest.NewServer(t)
	s.CreateZone(t, "lab")
	a := meshtest.Join(t, s)
	b := meshtest.Join(t, s, mesh.WithToken(s.CreateToken(t, "lab")))
	c := meshtest.Join(t, s, mesh.WithToken(s.CreateToken(t, "lab")), mesh.WithZone("lab"))
	require.Equal(t, "lab", b.Status().Self.Zone)
	meshtest.WaitPeers(t, b, 1)
	meshtest.WaitPeers(t, c, 1)
	echoServer(t, c)
	tcpEcho(t, b, c.Addr().String())
	require.Empty(t, a.Status().Peers)

	_, err := meshtest.TryJoin(t, s, mesh.WithToken(s.CreateToken(t, "lab")), mesh.WithZone("default"))
	require.Error(t, err)
}
