package mesh_test

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/internal/netlab"
	"github.com/wiremesh/wiremesh/mesh"
	"github.com/wiremesh/wiremesh/meshtest"
)

// The privileged kernel-mode test re-runs this test binary inside a network
// namespace (TestKernelModeInNamespace), so that the TUN device, routes and
// nftables table live there and nothing touches the host's network.

// kernelTestEnv marks the child process of TestKernelMode.
const kernelTestEnv = "WIREMESH_KERNEL_TEST_NETNS"

// TestKernelMode runs TestKernelModeInNamespace in a fresh network
// namespace (root, Linux, /dev/net/tun).
func TestKernelMode(t *testing.T) {
	requireKernelMode(t)
	out := runTestInNetNS(t, netlab.New(t).Host("kernel"), "TestKernelModeInNamespace", kernelTestEnv, "1")
	t.Logf("child output:\n%s", out)
}

// TestKernelModeInNamespace is run by TestKernelMode inside a namespace of
// its own: a service on 127.0.0.1, userspace peers, and a kernel-mode node
// on TUN device "wmk0" that finds leftovers of a crashed run first.
func TestKernelModeInNamespace(t *testing.T) {
	if os.Getenv(kernelTestEnv) == "" {
		t.Skip("runs only inside the network namespace made by TestKernelMode")
	}
	const ifname = "wmk0"
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		require.NoError(t, err, "%s %v: %s", name, args, out)
		return string(out)
	}
	s := meshtest.NewServer(t)
	pfx := netip.MustParsePrefix

	// An idle TUN device of the same name that is not ours: refused, kept.
	run("ip", "tuntap", "add", "dev", ifname, "mode", "tun")
	_, err := meshtest.TryJoin(t, meshtest.NewServer(t), mesh.WithMode(mesh.Kernel), mesh.WithInterfaceName(ifname))
	require.ErrorContains(t, err, "was not made by wiremesh")
	require.Contains(t, run("ip", "link", "show", ifname), ifname)

	// Leftovers of a "crashed" run (our TUN device carries our alias), and
	// a directly connected network that a peer's prefix will overlap.
	run("ip", "link", "set", ifname, "alias", "wiremesh")
	run("nft", "add", "table", "inet", "wiremesh-"+ifname)
	run("ip", "link", "add", "dum0", "type", "veth", "peer", "name", "dum1")
	run("ip", "link", "set", "dum1", "up")
	run("ip", "addr", "add", "10.88.0.1/24", "dev", "dum0")
	run("ip", "link", "set", "dum0", "up")
	require.Equal(t, "0", strings.TrimSpace(readFile(t, "/proc/sys/net/ipv4/ip_forward")))

	u1 := meshtest.Join(t, s, mesh.WithHostname("u1"), mesh.WithChildPrefix(pfx("10.77.0.0/24")))
	meshtest.Join(t, s, mesh.WithHostname("u2"), mesh.WithChildPrefix(pfx("10.88.0.0/24")))
	k := meshtest.Join(t, s, mesh.WithHostname("k"), mesh.WithMode(mesh.Kernel), mesh.WithInterfaceName(ifname), mesh.WithChildPrefix(pfx("10.66.0.0/24")), mesh.WithMasquerade())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	st := k.Status()
	require.Equal(t, ifname, st.Self.Interface)
	require.Equal(t, mesh.Kernel, st.Self.Mode)
	require.Contains(t, run("ip", "-d", "link", "show", ifname), "tun type tun")
	require.Contains(t, run("ip", "addr", "show", ifname), k.Addr().String()+"/")

	// Routes: u1's prefix through the device, u2's skipped (dum0 has it).
	waitFor(t, "route to 10.77.0.0/24", func() bool {
		return strings.Contains(run("ip", "route", "show", "proto", "87"), "10.77.0.0/24 dev "+ifname)
	})
	require.NotContains(t, run("ip", "route", "show", "proto", "87"), "10.88.0.0/24")
	skipped := k.Status().SkippedRoutes
	require.Len(t, skipped, 1)
	require.Equal(t, pfx("10.88.0.0/24"), skipped[0].Prefix)
	require.Contains(t, skipped[0].Reason, "dum0")
	_, err = k.Dial(ctx, "tcp", "10.88.0.5:80")
	require.ErrorIs(t, err, mesh.ErrNoRoute)
	require.ErrorContains(t, err, "dum0")
	_, err = k.Dial(ctx, "tcp", "192.0.2.1:80")
	require.ErrorIs(t, err, mesh.ErrNoRoute)

	// The router side: forwarding on for the TUN device only (the global
	// switch is never written), firewall table for its prefix.
	require.Equal(t, "1", strings.TrimSpace(readFile(t, "/proc/sys/net/ipv4/conf/"+ifname+"/forwarding")))
	require.Equal(t, "0", strings.TrimSpace(readFile(t, "/proc/sys/net/ipv4/ip_forward")))
	require.Equal(t, "0", strings.TrimSpace(readFile(t, "/proc/sys/net/ipv4/conf/dum0/forwarding")))
	rules := run("nft", "list", "table", "inet", "wiremesh-"+ifname)
	require.Contains(t, rules, "10.66.0.0/24")
	require.Contains(t, rules, "masquerade")

	// Traffic both ways through the tunnel.
	_, err = k.Ping(ctx, u1.Addr())
	require.NoError(t, err)
	_, err = u1.Ping(ctx, k.Addr())
	require.NoError(t, err)
	echoBothWays(t, ctx, k, u1)
	echoBothWays(t, ctx, u1, k)
	pc, err := k.ListenPacket("udp", ":0")
	require.NoError(t, err)
	defer pc.Close()
	_, port, _ := net.SplitHostPort(pc.LocalAddr().String())
	uc, err := u1.Dial(ctx, "udp", net.JoinHostPort(k.Addr().String(), port))
	require.NoError(t, err)
	defer uc.Close()
	buf := make([]byte, 16)
	for attempt := 0; ; attempt++ {
		require.Less(t, attempt, 10, "no datagram arrived")
		_, err = uc.Write([]byte("datagram"))
		require.NoError(t, err)
		pc.SetReadDeadline(time.Now().Add(time.Second))
		nr, from, err := pc.ReadFrom(buf)
		if err == nil {
			require.Equal(t, "datagram", string(buf[:nr]))
			require.Equal(t, u1.Addr().String(), from.(*net.UDPAddr).AddrPort().Addr().Unmap().String())
			break
		}
		require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	}
	require.NotZero(t, k.Status().Peers[0].RxBytes)

	// A peer that comes and goes: its prefix is routed, then not.
	u3 := meshtest.Join(t, s, mesh.WithHostname("u3"), mesh.WithChildPrefix(pfx("10.79.0.0/24")))
	waitFor(t, "route to 10.79.0.0/24", func() bool {
		return strings.Contains(run("ip", "route", "show", "proto", "87"), "10.79.0.0/24 dev "+ifname)
	})
	// Without a state directory u3 is ephemeral: Close deletes it.
	require.NoError(t, u3.Close())
	waitFor(t, "route to 10.79.0.0/24 removed", func() bool {
		return !strings.Contains(run("ip", "route", "show", "proto", "87"), "10.79.0.0/24")
	})
	// Its address is in the zone's range, routed on-link through the TUN
	// device, but no member holds it: refused at once, not left to hang.
	waitFor(t, "u3 gone from the peers", func() bool { return len(k.Status().Peers) == 2 })
	_, err = k.Dial(ctx, "tcp", netip.AddrPortFrom(u3.Addr(), 80).String())
	require.ErrorIs(t, err, mesh.ErrNoRoute)
	require.ErrorContains(t, err, "no member of the zone holds")

	// Close removes everything it added and restores forwarding.
	require.NoError(t, k.Close())
	require.NotContains(t, run("ip", "link", "show"), ifname)
	require.Empty(t, strings.TrimSpace(run("ip", "route", "show", "proto", "87")))
	require.Empty(t, strings.TrimSpace(run("ip", "-6", "route", "show", "proto", "87")))
	require.NotContains(t, run("nft", "list", "tables"), "wiremesh-"+ifname)
	require.Equal(t, "0", strings.TrimSpace(readFile(t, "/proc/sys/net/ipv4/ip_forward")))
	require.ErrorIs(t, k.Close(), net.ErrClosed)
}

// echoBothWays listens on b and has a dial b's tunnel address and
// exchange a line.
func echoBothWays(t *testing.T, ctx context.Context, a, b *mesh.Node) {
	t.Helper()
	l, err := b.Listen("tcp", ":0")
	require.NoError(t, err)
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	c, err := a.Dial(ctx, "tcp", net.JoinHostPort(b.Addr().String(), port))
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = c.Write([]byte("hello\n"))
	require.NoError(t, err)
	buf := make([]byte, 6)
	_, err = io.ReadFull(c, buf)
	require.NoError(t, err)
	require.Equal(t, "hello\n", string(buf))
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return string(b)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
