package netlab_test

import (
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/wiremesh/wiremesh/internal/netlab"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var (
	pfx  = netip.MustParsePrefix
	addr = netip.MustParseAddr
	ap   = netip.MustParseAddrPort
)

func probeCtx(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestIssueTopology builds the privileged end-to-end topology of the issue,
// with static routes standing in for the mesh, and checks that it behaves
// like the real thing: a container behind node1's bridge, loopback
// services, and a spoke behind a NAT that holds.
func TestIssueTopology(t *testing.T) {
	l := netlab.New(t)
	wan := l.Switch("wan")
	svc := l.Host("service")
	l.Connect(svc, wan, pfx("192.0.2.1/24"))
	n1 := l.Host("node1")
	l.Connect(n1, wan, pfx("192.0.2.11/24"))
	n2 := l.Host("node2")
	l.Connect(n2, wan, pfx("192.0.2.12/24"))
	n1.AddAddr("lo", pfx("172.24.0.10/32"))
	n2.AddAddr("lo", pfx("172.28.0.10/32"))
	n1.Bridge("docker0", pfx("172.24.0.1/24"))
	ctr := l.Host("ctr")
	ctrLink := l.AttachToBridge(ctr, n1, "docker0", pfx("172.24.0.2/24"))
	ctr.DefaultRoute(addr("172.24.0.1"))
	n1.EnableForwarding()

	nat := l.Host("nat")
	natWAN := l.Connect(nat, wan, pfx("192.0.2.99/24"))
	spoke := l.Host("spoke")
	l.Wire(spoke, pfx("10.99.0.2/24"), nat, pfx("10.99.0.1/24"))
	spoke.DefaultRoute(addr("10.99.0.1"))
	nat.EnableForwarding()

	// Names: namespaces carry the run id, interfaces are named after what
	// they lead to.
	require.Regexp(t, `^wm[0-9a-f]{6}-node1$`, n1.NS())
	require.Equal(t, "wm"+l.ID()+"-node1", n1.NS())
	require.Equal(t, []string{"ctr", "docker0", "lo", "wan"}, n1.Links())
	require.Equal(t, []string{"br0", "lo", "nat", "node1", "node2", "service"}, wan.Host().Links())
	require.Equal(t, "wan", natWAN.A.Dev)
	require.Equal(t, "node1", ctrLink.A.Dev)
	require.Contains(t, n1.Routes(), "172.24.0.0/24 dev docker0")
	require.Equal(t, "1", strings.TrimSpace(nat.MustRun(t, "cat", "/proc/sys/net/ipv4/ip_forward")))
	require.Equal(t, "0", strings.TrimSpace(spoke.MustRun(t, "cat", "/proc/sys/net/ipv4/ip_forward")),
		"a new host must not forward, whatever the host namespace does")

	svcAddr := svc.ServeTCP(t, ap("192.0.2.1:7000"))
	ctrAddr := ctr.ServeTCP(t, ap("172.24.0.2:7000"))
	n1Lo := n1.ServeTCP(t, ap("172.24.0.10:7000"))
	spokeAddr := spoke.ServeTCP(t, ap("10.99.0.2:7000"))

	t.Run("node1 reaches its container", func(t *testing.T) {
		ctx := probeCtx(t, 5*time.Second)
		require.NoError(t, n1.Ping(ctx, addr("172.24.0.2")))
		b, err := n1.DialTCPBanner(ctx, ctrAddr)
		require.NoError(t, err)
		require.Equal(t, "ctr", b.Host)
		require.Equal(t, addr("172.24.0.1"), b.Remote.Addr())
	})

	t.Run("node2 reaches node1's prefix through node1", func(t *testing.T) {
		n2.AddRoute(pfx("172.24.0.0/24"), addr("192.0.2.11"))
		ctx := probeCtx(t, 5*time.Second)
		require.NoError(t, n2.Ping(ctx, addr("172.24.0.10")))
		require.NoError(t, n2.Ping(ctx, addr("172.24.0.2")))
		require.NoError(t, n2.DialTCP(ctx, n1Lo))
		b, err := n2.DialTCPBanner(ctx, ctrAddr)
		require.NoError(t, err)
		require.Equal(t, addr("192.0.2.12"), b.Remote.Addr(), "routed, not NATed")
	})

	// The service can reach the spoke's LAN until the NAT closes it: proves
	// the "NAT holds" check below fails for the right reason.
	svc.AddRoute(pfx("10.99.0.0/24"), addr("192.0.2.99"))
	t.Run("without NAT the spoke is reachable", func(t *testing.T) {
		b, err := svc.DialTCPBanner(probeCtx(t, 5*time.Second), spokeAddr)
		require.NoError(t, err)
		require.Equal(t, addr("192.0.2.1"), b.Remote.Addr())
	})

	nat.Masquerade("wan")
	rules := nat.NFTRuleset()
	require.Contains(t, rules, "table ip "+netlab.NATTable)
	require.Contains(t, rules, `oifname "wan" masquerade`)

	t.Run("spoke reaches the service through the NAT", func(t *testing.T) {
		ctx := probeCtx(t, 5*time.Second)
		require.NoError(t, spoke.Ping(ctx, addr("192.0.2.1")))
		b, err := spoke.DialTCPBanner(ctx, svcAddr)
		require.NoError(t, err)
		require.Equal(t, "service", b.Host)
		require.Equal(t, addr("192.0.2.99"), b.Remote.Addr(), "the service must see the NAT's address")
	})

	t.Run("service cannot open a connection to the spoke", func(t *testing.T) {
		start := time.Now()
		err := svc.DialTCP(probeCtx(t, 1500*time.Millisecond), spokeAddr)
		require.Error(t, err)
		require.Less(t, time.Since(start), 4*time.Second)
		require.Error(t, svc.Ping(probeCtx(t, 1500*time.Millisecond), addr("10.99.0.2")))
	})

	t.Run("a cut link stops traffic and comes back", func(t *testing.T) {
		ctrLink.Down()
		require.Error(t, n1.Ping(probeCtx(t, 500*time.Millisecond), addr("172.24.0.2")))
		ctrLink.Up()
		require.NoError(t, n1.Ping(probeCtx(t, 5*time.Second), addr("172.24.0.2")))
	})
}

func TestPingLoopbackAndUnreachable(t *testing.T) {
	l := netlab.New(t)
	h := l.Host("solo")
	ctx := probeCtx(t, 5*time.Second)
	require.NoError(t, h.Ping(ctx, addr("127.0.0.1")))
	if _, err := os.Stat("/proc/sys/net/ipv6"); err == nil {
		require.NoError(t, h.Ping(ctx, addr("::1")))
	}
	// No route at all: fails fast, by the deadline, with the cause.
	err := h.Ping(probeCtx(t, 300*time.Millisecond), addr("198.51.100.7"))
	require.ErrorContains(t, err, "unreachable")
	require.Error(t, h.DialTCP(probeCtx(t, 300*time.Millisecond), ap("198.51.100.7:80")))
	// Nothing listens: refused, retried until the deadline.
	require.ErrorContains(t, h.DialTCP(probeCtx(t, 300*time.Millisecond), ap("127.0.0.1:9")), "refused")
}

// TestCleanupRemovesEverything runs a lab in a subtest and checks that,
// once the subtest's cleanups ran, nothing of the run is left: no
// namespace, no link in the host namespace, no process (neither a Proc nor
// one that escaped into the background).
func TestCleanupRemovesEverything(t *testing.T) {
	netlab.RequireRoot(t)
	var id string
	var procPid, strayPid int
	t.Run("lab", func(t *testing.T) {
		l := netlab.New(t)
		id = l.ID()
		wan := l.Switch("wan")
		a, b := l.Host("a"), l.Host("b")
		l.Connect(a, wan, pfx("192.0.2.1/24"))
		l.Connect(b, wan, pfx("192.0.2.2/24"))
		a.Bridge("br1", pfx("172.24.0.1/24"))
		c := l.Host("c")
		l.AttachToBridge(c, a, "br1", pfx("172.24.0.2/24"))
		l.Wire(b, pfx("10.99.0.1/24"), c, pfx("10.99.0.2/24"))
		p := a.Start(t, "sleep", "300")
		procPid = p.Pid()
		out := b.MustRun(t, "sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!")
		var err error
		strayPid, err = strconv.Atoi(strings.TrimSpace(out))
		require.NoError(t, err)
		require.True(t, running(procPid) && running(strayPid))

		left, err := netlab.Leftovers(id)
		require.NoError(t, err)
		require.Len(t, left, 4, "the namespaces exist while the lab runs: %v", left)
		for _, e := range left {
			require.True(t, strings.HasPrefix(e, "namespace wm"+id+"-"), e)
		}
	})
	require.NotEmpty(t, id)
	left, err := netlab.Leftovers(id)
	require.NoError(t, err)
	require.Empty(t, left)
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.NotContains(t, string(out), id)
	out, err = exec.Command("ip", "-o", "link", "show").CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.NotContains(t, string(out), id)
	require.False(t, running(procPid), "Proc %d survived cleanup", procPid)
	require.False(t, running(strayPid), "background process %d survived cleanup", strayPid)
	_, err = os.Stat(netlab.StateDir + "/" + id)
	require.ErrorIs(t, err, os.ErrNotExist, "state file removed")
}

// running reports whether pid exists and is not a zombie.
func running(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && len(s) > i+2 && s[i+2] != 'Z' && s[i+2] != 'X'
}

func TestProcStoppedOnCleanup(t *testing.T) {
	netlab.RequireRoot(t)
	var p *netlab.Proc
	var nsPath string
	t.Run("lab", func(t *testing.T) {
		l := netlab.New(t)
		h := l.Host("app")
		nsPath = h.Path()
		p = h.Start(t, "sh", "-c", `trap "echo bye; exit 0" TERM; echo ready; while :; do sleep 0.05; done`)
		require.Equal(t, "ready", p.WaitFor(t, "ready", 5*time.Second))
		// It runs inside the namespace.
		var nsSt, procSt syscall.Stat_t
		require.NoError(t, syscall.Stat(nsPath, &nsSt))
		require.NoError(t, syscall.Stat("/proc/"+strconv.Itoa(p.Pid())+"/ns/net", &procSt))
		require.Equal(t, nsSt.Ino, procSt.Ino)
	})
	select {
	case <-p.Done():
	default:
		t.Fatal("process still running after the test's cleanup")
	}
	require.NoError(t, p.Stop(), "it exited 0 on SIGTERM")
	require.Contains(t, p.Output(), "bye")
}

func TestProcStopEscalatesToKill(t *testing.T) {
	l := netlab.New(t)
	h := l.Host("stubborn")
	p := h.Start(t, "sh", "-c", `trap "" TERM; echo ready; while :; do sleep 0.05; done`)
	p.WaitFor(t, "ready", 5*time.Second)
	start := time.Now()
	err := p.StopWithin(200 * time.Millisecond)
	require.ErrorContains(t, err, "did not exit within 200ms of SIGTERM; killed")
	require.Less(t, time.Since(start), 3*time.Second)
	require.Equal(t, err, p.Stop(), "later calls return the first result")
	<-p.Done()
}

func TestProcExitCodes(t *testing.T) {
	l := netlab.New(t)
	h := l.Host("short")
	ok := h.Start(t, "sh", "-c", "echo fine")
	bad := h.Start(t, "sh", "-c", "echo broken; exit 3")
	<-ok.Done()
	<-bad.Done()
	require.NoError(t, ok.Stop())
	require.ErrorContains(t, bad.Stop(), "exit status 3")
	require.Equal(t, "broken\n", bad.Output())
}

func TestBuildBinary(t *testing.T) {
	netlab.RequireRoot(t)
	bin := netlab.BuildBinary(t, "./testdata/hello")
	require.Equal(t, bin, netlab.BuildBinary(t, "./testdata/hello"), "built once per test binary")
	require.Equal(t, "hello", filepath.Base(bin))

	l := netlab.New(t)
	h := l.Host("runner")
	var nsSt syscall.Stat_t
	require.NoError(t, syscall.Stat(h.Path(), &nsSt))
	want := "hello a b netns=" + strconv.FormatUint(nsSt.Ino, 10)
	require.Equal(t, want+"\n", h.MustRun(t, bin, "a", "b"))
	p := h.Start(t, bin, "c")
	require.Contains(t, p.WaitFor(t, "hello c", 5*time.Second), "netns="+strconv.FormatUint(nsSt.Ino, 10))
	<-p.Done()
	require.NoError(t, p.Stop())
}
