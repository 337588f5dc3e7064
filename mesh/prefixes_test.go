package mesh_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/mesh"
	"github.com/wiremesh/wiremesh/meshtest"
)

// serveAs is a PrefixHandler that greets TCP with "NAME ORIG\n" and then
// echoes, answers each UDP datagram with "NAME ORIG DATA", and answers
// every ping.
func serveAs(name string) mesh.PrefixHandler {
	return mesh.PrefixHandlerFuncs{
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
		Ping: func(context.Context, netip.Addr) bool { return true },
	}
}

// tcpGreeting dials addr from n, checks the greeting names want and addr,
// and that the connection echoes.
func tcpGreeting(t *testing.T, n *mesh.Node, addr, want string) {
	t.Helper()
	c, err := n.Dial(ctxT(t), "tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, want+" "+addr+"\n", line)
	_, err = c.Write([]byte("echo"))
	require.NoError(t, err)
	got := make([]byte, 4)
	_, err = io.ReadFull(br, got)
	require.NoError(t, err)
	require.Equal(t, "echo", string(got))
}

// udpGreeting sends datagrams to addr from n until the handler's answer
// (naming want and addr) comes back.
func udpGreeting(t *testing.T, n *mesh.Node, addr, want string) {
	t.Helper()
	c, err := n.Dial(ctxT(t), "udp", addr)
	require.NoError(t, err)
	defer c.Close()
	buf := make([]byte, 200)
	exp := fmt.Sprintf("%s %s hello", want, addr)
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		_, err = c.Write([]byte("hello"))
		require.NoError(t, err)
		c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		k, err := c.Read(buf)
		if err != nil {
			continue // lost while the tunnel handshakes; send again
		}
		require.Equal(t, exp, string(buf[:k]))
		return
	}
	t.Fatalf("no UDP answer from %s", addr)
}

func peerPrefixes(n *mesh.Node, hostname string) []netip.Prefix {
	for _, p := range n.Status().Peers {
		if p.Hostname == hostname {
			return p.Prefixes
		}
	}
	return nil
}

// The seed scenario without root: two routers serve 172.24.0.0/24 and
// 172.28.0.0/24 through handlers; a spoke and the routers reach both.
func TestRoutersServePrefixes(t *testing.T) {
	s := meshtest.NewServer(t)
	p1, p2 := netip.MustParsePrefix("172.24.0.0/24"), netip.MustParsePrefix("172.28.0.0/24")
	r1 := meshtest.Join(t, s, mesh.WithHostname("router1"), mesh.WithChildPrefix(p1), mesh.WithPrefixHandler(p1, serveAs("router1")))
	r2 := meshtest.Join(t, s, mesh.WithHostname("router2"), mesh.WithChildPrefix(p2), mesh.WithPrefixHandler(p2, serveAs("router2")))
	spoke := meshtest.Join(t, s, mesh.WithHostname("spoke"))
	for _, n := range []*mesh.Node{r1, r2, spoke} {
		meshtest.WaitPeers(t, n, 2)
	}
	require.Equal(t, []netip.Prefix{p1}, r1.Prefixes())
	require.Equal(t, []netip.Prefix{p1}, peerPrefixes(spoke, "router1"))
	require.Equal(t, []netip.Prefix{p2}, peerPrefixes(spoke, "router2"))

	for _, tc := range []struct {
		from       *mesh.Node
		addr, want string
	}{
		{spoke, "172.24.0.10:80", "router1"},
		{spoke, "172.28.0.10:80", "router2"},
		{spoke, "172.24.0.255:8080", "router1"},
		{r1, "172.28.0.2:443", "router2"},
		{r2, "172.24.0.2:443", "router1"},
	} {
		tcpGreeting(t, tc.from, tc.addr, tc.want)
		udpGreeting(t, tc.from, tc.addr, tc.want)
		ap := netip.MustParseAddrPort(tc.addr)
		rtt, err := tc.from.Ping(ctxT(t), ap.Addr())
		require.NoError(t, err)
		require.Positive(t, rtt)
	}

	// Neither a tunnel address nor inside a prefix: refused locally.
	_, err := spoke.Dial(ctxT(t), "tcp", "172.30.0.1:80")
	require.ErrorIs(t, err, mesh.ErrNoRoute)
	_, err = spoke.Dial(ctxT(t), "udp", "172.24.1.1:53")
	require.ErrorIs(t, err, mesh.ErrNoRoute)
	_, err = spoke.Ping(ctxT(t), netip.MustParseAddr("192.0.2.1"))
	require.ErrorIs(t, err, mesh.ErrNoRoute)
}

func handshakes(n *mesh.Node) map[string]time.Time {
	m := map[string]time.Time{}
	for _, p := range n.Status().Peers {
		m[p.Hostname] = p.LastHandshake
	}
	return m
}

func TestPrefixAddedAndReleasedAtRuntime(t *testing.T) {
	s := meshtest.NewServer(t)
	p := netip.MustParsePrefix("10.60.1.0/24")
	serve := mesh.WithPrefixHandler(netip.MustParsePrefix("10.60.0.0/16"), serveAs("router"))
	dir := t.TempDir()
	r := meshtest.Join(t, s, mesh.WithHostname("router"), mesh.WithStateDir(dir), serve)
	spoke := meshtest.Join(t, s, mesh.WithHostname("spoke"))
	meshtest.WaitPeers(t, r, 1)
	meshtest.WaitPeers(t, spoke, 1)
	require.Empty(t, r.Prefixes())
	_, err := spoke.Dial(ctxT(t), "tcp", "10.60.1.9:80")
	require.ErrorIs(t, err, mesh.ErrNoRoute)

	// A session that must survive the change.
	echoServer(t, r)
	c, err := spoke.Dial(ctxT(t), "tcp", net.JoinHostPort(r.Addr().String(), "7"))
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(25 * time.Second))
	roundTrip := func() {
		t.Helper()
		_, err := c.Write([]byte("abc"))
		require.NoError(t, err)
		got := make([]byte, 3)
		_, err = io.ReadFull(c, got)
		require.NoError(t, err)
		require.Equal(t, "abc", string(got))
	}
	roundTrip()
	before := handshakes(spoke)
	require.False(t, before["router"].IsZero())
	events := spoke.Watch(ctxT(t))

	start := time.Now()
	require.NoError(t, r.AdvertisePrefix(ctxT(t), p))
	require.Equal(t, []netip.Prefix{p}, r.Prefixes())
	require.Equal(t, []netip.Prefix{p}, r.Status().Self.Prefixes)
	meshtest.WaitFor(t, "the spoke to learn the prefix", func() bool {
		return len(peerPrefixes(spoke, "router")) == 1
	})
	require.Less(t, time.Since(start), 10*time.Second)
	ev := waitEvent(t, events, mesh.PeerUpdated)
	require.Equal(t, []netip.Prefix{p}, ev.Peer.Prefixes)
	tcpGreeting(t, spoke, "10.60.1.9:80", "router")
	udpGreeting(t, spoke, "10.60.1.9:53", "router")
	require.NoError(t, r.AdvertisePrefix(ctxT(t), p), "advertising a held prefix again is a no-op")
	require.Equal(t, []netip.Prefix{p}, r.Prefixes())

	// The existing session was not reset by the change of allowed IPs.
	roundTrip()
	require.Equal(t, before["router"], handshakes(spoke)["router"])
	c.Close()

	// A restart with the same state directory keeps the prefix, without
	// asking for it again.
	require.NoError(t, r.Close())
	r = meshtest.Join(t, s, mesh.WithHostname("router"), mesh.WithStateDir(dir), serve)
	require.Equal(t, []netip.Prefix{p}, r.Prefixes())
	tcpGreeting(t, spoke, "10.60.1.9:80", "router")

	// Released: gone at the service, on the router and, within seconds,
	// on the spoke.
	start = time.Now()
	require.NoError(t, r.ReleasePrefix(ctxT(t), p))
	require.Empty(t, r.Prefixes())
	meshtest.WaitFor(t, "the spoke to drop the prefix", func() bool {
		// The release reaches the spoke a moment after ReleasePrefix
		// returns (the service fans changes out off the request path), and
		// a dial that starts before then waits for a router that no longer
		// answers for the prefix: keep each attempt short.
		ctx, cancel := context.WithTimeout(ctxT(t), time.Second)
		defer cancel()
		c, err := spoke.Dial(ctx, "tcp", "10.60.1.9:80")
		if err == nil {
			c.Close()
		}
		return errors.Is(err, mesh.ErrNoRoute)
	})
	require.Less(t, time.Since(start), 10*time.Second)
	err = r.ReleasePrefix(ctxT(t), p)
	require.ErrorIs(t, err, mesh.ErrPrefixNotHeld)

	// Free in the zone: another member takes it.
	other := meshtest.Join(t, s, mesh.WithHostname("other"))
	require.NoError(t, other.AdvertisePrefix(ctxT(t), p))
	require.Equal(t, []netip.Prefix{p}, other.Prefixes())

	// And the router, restarted again, does not get it back.
	require.NoError(t, r.Close())
	r = meshtest.Join(t, s, mesh.WithHostname("router"), mesh.WithStateDir(dir), serve)
	require.Empty(t, r.Prefixes())
}

func TestPrefixErrors(t *testing.T) {
	s := meshtest.NewServer(t, meshtest.WithHeartbeatInterval(time.Second))
	owned := netip.MustParsePrefix("172.24.0.0/24")
	mine := netip.MustParsePrefix("10.70.0.0/24")
	owner := meshtest.Join(t, s, mesh.WithHostname("owner"), mesh.WithChildPrefix(owned))
	n := meshtest.Join(t, s, mesh.WithHostname("member"), mesh.WithChildPrefix(mine), fast)
	ctx := ctxT(t)

	for _, tc := range []struct {
		name, prefix, owner, held string
	}{
		{"inside", "172.24.0.128/25", "owner", "172.24.0.0/24"},
		{"equal", "172.24.0.0/24", "owner", "172.24.0.0/24"},
		{"containing", "172.16.0.0/12", "owner", "172.24.0.0/24"},
		{"tunnel pool", "100.64.0.0/24", "", ""},
	} {
		t.Run("conflict "+tc.name, func(t *testing.T) {
			err := n.AdvertisePrefix(ctx, netip.MustParsePrefix(tc.prefix))
			require.ErrorIs(t, err, mesh.ErrPrefixConflict)
			require.NotErrorIs(t, err, mesh.ErrInvalidPrefix)
			require.ErrorContains(t, err, tc.prefix)
			var ae *api.Error
			require.ErrorAs(t, err, &ae)
			if tc.owner != "" {
				require.ErrorContains(t, err, tc.owner)
				require.ErrorContains(t, err, tc.held)
				require.Equal(t, tc.owner, ae.Owner)
				require.Equal(t, tc.held, ae.Prefix)
			}
			require.Equal(t, []netip.Prefix{mine}, n.Prefixes())
		})
	}
	for _, bad := range []netip.Prefix{
		{},
		netip.PrefixFrom(netip.MustParseAddr("10.1.2.3"), 16), // host bits
		netip.MustParsePrefix("127.0.0.0/8"),
		netip.MustParsePrefix("169.254.0.0/16"),
		netip.MustParsePrefix("224.0.0.0/4"),
		netip.MustParsePrefix("0.0.0.0/0"),
		netip.MustParsePrefix("fe80::/64"),
	} {
		t.Run("invalid "+bad.String(), func(t *testing.T) {
			err := n.AdvertisePrefix(ctx, bad)
			require.ErrorIs(t, err, mesh.ErrInvalidPrefix)
			require.NotErrorIs(t, err, mesh.ErrPrefixConflict)
			require.Equal(t, []netip.Prefix{mine}, n.Prefixes())
			if !bad.IsValid() || bad != bad.Masked() {
				require.ErrorIs(t, n.ReleasePrefix(ctx, bad), mesh.ErrInvalidPrefix)
			}
		})
	}
	// Someone else's prefix cannot be released by a member.
	require.ErrorIs(t, n.ReleasePrefix(ctx, owned), mesh.ErrPrefixNotHeld)
	require.Equal(t, []netip.Prefix{owned}, owner.Prefixes())

	// Joining with an overlapping prefix names the owner and its prefix.
	_, err := meshtest.TryJoin(t, s, mesh.WithChildPrefix(netip.MustParsePrefix("172.24.0.0/23")))
	require.ErrorIs(t, err, mesh.ErrPrefixConflict)
	require.ErrorContains(t, err, "owner")
	require.ErrorContains(t, err, "172.24.0.0/24")

	// Service down: errors, nothing changes.
	s.Stop()
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	require.Error(t, n.AdvertisePrefix(short, netip.MustParsePrefix("10.71.0.0/24")))
	require.Error(t, n.ReleasePrefix(short, mine))
	require.Equal(t, []netip.Prefix{mine}, n.Prefixes())
	s.Start(t)
	meshtest.WaitFor(t, "the node to reach the service again", func() bool { return n.Status().ControlConnected })
	require.NoError(t, n.AdvertisePrefix(ctx, netip.MustParsePrefix("10.71.0.0/24")))
	require.Equal(t, []netip.Prefix{mine, netip.MustParsePrefix("10.71.0.0/24")}, n.Prefixes())
}

// Zones are separate meshes: the same prefix lives in both, each served
// by its own member, and releasing it in one leaves the other alone.
func TestSamePrefixInTwoZones(t *testing.T) {
	s := meshtest.NewServer(t)
	s.CreateZone(t, "lab")
	lab := s.CreateToken(t, "lab")
	p := netip.MustParsePrefix("172.24.0.0/24")
	ra := meshtest.Join(t, s, mesh.WithHostname("r-default"), mesh.WithChildPrefix(p), mesh.WithPrefixHandler(p, serveAs("default")))
	rb := meshtest.Join(t, s, mesh.WithToken(lab), mesh.WithHostname("r-lab"), mesh.WithChildPrefix(p), mesh.WithPrefixHandler(p, serveAs("lab")))
	sa := meshtest.Join(t, s, mesh.WithHostname("s-default"))
	sb := meshtest.Join(t, s, mesh.WithToken(lab), mesh.WithHostname("s-lab"))
	meshtest.WaitPeers(t, sa, 1)
	meshtest.WaitPeers(t, sb, 1)
	require.Equal(t, []netip.Prefix{p}, rb.Prefixes())
	tcpGreeting(t, sa, "172.24.0.10:80", "default")
	tcpGreeting(t, sb, "172.24.0.10:80", "lab")
	udpGreeting(t, sb, "172.24.0.10:53", "lab")

	require.NoError(t, ra.ReleasePrefix(ctxT(t), p))
	meshtest.WaitFor(t, "the default zone to drop the prefix", func() bool { return len(peerPrefixes(sa, "r-default")) == 0 })
	_, err := sa.Dial(ctxT(t), "tcp", "172.24.0.10:80")
	require.ErrorIs(t, err, mesh.ErrNoRoute)
	tcpGreeting(t, sb, "172.24.0.10:80", "lab")
	require.Equal(t, []netip.Prefix{p}, rb.Prefixes())
}

func TestWithPrefixHandlerErrors(t *testing.T) {
	s := meshtest.NewServer(t)
	h := serveAs("x")
	for _, tc := range []struct {
		name string
		opts []mesh.Option
		is   error
	}{
		{"zero prefix", []mesh.Option{mesh.WithPrefixHandler(netip.Prefix{}, h)}, mesh.ErrInvalidPrefix},
		{"host bits", []mesh.Option{mesh.WithPrefixHandler(netip.PrefixFrom(netip.MustParseAddr("10.0.0.1"), 8), h)}, mesh.ErrInvalidPrefix},
		{"nil handler", []mesh.Option{mesh.WithPrefixHandler(netip.MustParsePrefix("10.0.0.0/8"), nil)}, nil},
		{"twice", []mesh.Option{
			mesh.WithPrefixHandler(netip.MustParsePrefix("10.0.0.0/8"), h),
			mesh.WithPrefixHandler(netip.MustParsePrefix("10.0.0.0/8"), h),
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := meshtest.TryJoin(t, s, tc.opts...)
			require.Error(t, err)
			require.ErrorContains(t, err, "WithPrefixHandler")
			if tc.is != nil {
				require.ErrorIs(t, err, tc.is)
			}
		})
	}
}
