//go:build linux

// Package docker_test runs the docker-child-prefix scenario against the
// real Docker engine of the machine (testing tier 4):
//
//   - node1 is this host: a user-defined bridge network 172.24.0.0/24 made
//     by examples/docker-child-prefix/start-node.sh with a workload
//     container at 172.24.0.2 (no published port), and a kernel-mode
//     router (TUN device "wm<run id>d") advertising the network, which
//     opens Docker's DOCKER-USER chain for it;
//   - node2 is a network namespace routing its own child prefix
//     172.28.0.0/24, a bridge with a workload namespace at 172.28.0.10;
//   - spoke is a namespace behind a NAT namespace;
//   - the service runs in a namespace; the namespaces share a switch
//     ("wan", 10.213.0.0/24) that a veth joins to the host (10.213.0.1).
//
// The container reaches node2's workload and the spoke; the spoke, node2
// and node2's workload reach the container's own address (it sees their
// mesh addresses, not a NAT or published port); TCP and ping both. All it
// makes is removed afterwards, even on failure, and checked to be gone;
// what a crashed run left behind is swept by the next run. Without a
// Docker engine the test is skipped with "docker test did not run: ...".
package docker_test

import (
	"context"
	"net/netip"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/internal/netlab"
)

var (
	node1Prefix = netip.MustParsePrefix("172.24.0.0/24")
	container   = netip.MustParseAddr("172.24.0.2")
	node2Prefix = netip.MustParsePrefix("172.28.0.0/24")
	work2       = netip.MustParseAddr("172.28.0.10")
	wanNet      = netip.MustParsePrefix("10.213.0.0/24")
	tunnelPool  = netip.MustParsePrefix("100.64.0.0/16") // zone default's IPv4 pool
)

// workloadPort is where every workload serves (the example's default).
const workloadPort = 7000

// reachTimeout bounds each connectivity check: handshakes through the NAT
// and route programming may take a few seconds after the nodes are ready.
const reachTimeout = 60 * time.Second

// exampleDir holds the scripts the README uses; the test uses them too.
var exampleDir = filepath.Join("..", "..", "examples", "docker-child-prefix")

func TestDockerChildPrefix(t *testing.T) {
	requireDocker(t)
	lockHost(t)
	sweep(t)
	checkHostFree(t, node1Prefix, node2Prefix, wanNet, tunnelPool)

	// Runs after everything else (cleanups run last-registered first,
	// and this is registered before the lab and everything in it).
	var runID string
	t.Cleanup(func() {
		if runID == "" {
			return
		}
		left, err := leftovers(runID)
		require.NoError(t, err)
		require.Empty(t, left, "the test left these behind")
	})

	start := time.Now()
	wiremesh := netlab.BuildBinary(t, "github.com/wiremesh/wiremesh/cmd/wiremesh")
	workload := netlab.BuildBinary(t, "github.com/wiremesh/wiremesh/examples/docker-child-prefix/workload")
	t.Logf("built binaries in %v", time.Since(start).Round(time.Millisecond))

	l := netlab.New(t)
	runID = l.ID()
	var (
		image   = "wm" + runID + "-workload"
		network = "wm" + runID + "-net1"
		ctr     = "wm" + runID + "-c1"
		tunName = "wm" + runID + "d"
		vethDev = "wm" + runID + "v"
	)

	// node1's Docker side, exactly as the README does it.
	start = time.Now()
	t.Cleanup(func() { _, _ = docker(context.Background(), "rmi", "--force", image) })
	script(t, "build-image.sh", image)
	t.Cleanup(func() { script(t, "stop-node.sh", network, ctr) })
	script(t, "start-node.sh", network, node1Prefix.String(), ctr, container.String(), image)
	ports, err := docker(context.Background(), "inspect", "--format", "{{json .NetworkSettings.Ports}}", ctr)
	require.NoError(t, err)
	require.Contains(t, []string{"{}", "null"}, ports, "the container publishes no port")
	t.Logf("image, network and container up in %v", time.Since(start).Round(time.Millisecond))

	// The lab: a switch joined to the host by a veth, the service, node2
	// with its workload, a spoke behind NAT.
	wan := l.Switch("wan")
	hostAddr := netip.MustParsePrefix("10.213.0.1/24")
	connectHost(t, wan, vethDev, hostAddr)
	svc := l.Host("service")
	l.Connect(svc, wan, netip.MustParsePrefix("10.213.0.2/24"))
	node2 := l.Host("node2")
	l.Connect(node2, wan, netip.MustParsePrefix("10.213.0.3/24"))
	node2.Bridge("br1", netip.MustParsePrefix("172.28.0.1/24"))
	w2 := l.Host("work2")
	l.AttachToBridge(w2, node2, "br1", netip.PrefixFrom(work2, 24))
	w2.DefaultRoute(netip.MustParseAddr("172.28.0.1"))
	nat := l.Host("nat")
	l.Connect(nat, wan, netip.MustParsePrefix("10.213.0.9/24"))
	spoke := l.Host("spoke")
	l.Wire(spoke, netip.MustParsePrefix("10.99.0.2/24"), nat, netip.MustParsePrefix("10.99.0.1/24"))
	spoke.DefaultRoute(netip.MustParseAddr("10.99.0.1"))
	nat.Masquerade("wan")

	// The service and the members.
	start = time.Now()
	svcProc := svc.Start(t, wiremesh, "serve", "--data-dir", t.TempDir(),
		"--listen", "10.213.0.2:8443", "--stun-listen", "10.213.0.2:3478")
	joinLine := svcProc.WaitFor(t, "wiremesh join --token", 30*time.Second)
	f := strings.Fields(joinLine)
	require.Len(t, f, 5, "join line %q", joinLine)
	token, url := f[3], f[4]

	sockets := t.TempDir()
	n2 := node2.Start(t, wiremesh, "router", "--child-prefix", node2Prefix.String(), "--hostname", "node2",
		"--interface", "wm0", "--listen-port", "51820", "--socket", filepath.Join(sockets, "node2.sock"), "--state-dir", filepath.Join(sockets, "node2"),
		"--token", token, url)
	n2Addr := joinedAddr(t, n2.WaitFor(t, "joined zone", time.Minute))
	w2.Start(t, workload, "serve", "--name", "work2", "--listen", ":7000").WaitFor(t, "serving tcp", 10*time.Second)

	// node1's router, first without touching Docker: the mesh reaches the
	// router, but Docker's FORWARD policy drops what it forwards to the
	// container. This is what the DOCKER-USER rule is for.
	r1 := newNode1(t, wiremesh, url, token, tunName, filepath.Join(sockets, "node1.sock"))
	n1 := r1.start(t, false)
	n1Addr := r1.ready(t, n1, tunName, false)
	requirePing(t, node2, n1Addr)
	requirePing(t, node2, netip.MustParseAddr("172.24.0.1")) // the bridge: node2 routes node1's prefix to node1
	require.NotContains(t, nftList(t, "chain", "ip", "filter", "DOCKER-USER"), tunName)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	require.Error(t, node2.Ping(ctx, container), "Docker drops mesh traffic to the container without the DOCKER-USER rule")
	cancel()
	require.NoError(t, n1.stop())

	// And now as the README runs it: the router opens DOCKER-USER for its
	// prefix on the Docker bridge.
	n1 = r1.start(t, true)
	require.Equal(t, n1Addr, r1.ready(t, n1, tunName, true), "a restart keeps the registration")

	// The spoke joins only now: a member that held a WireGuard session
	// with the router before its restart reaches it again only once its
	// rekey timeout (15 s) has passed, unless the router sends to it first.
	sp := spoke.Start(t, wiremesh, "join", "--hostname", "spoke", "--interface", "wm0",
		"--socket", filepath.Join(sockets, "spoke.sock"), "--state-dir", filepath.Join(sockets, "spoke"), "--token", token, url)
	spokeAddr := joinedAddr(t, sp.WaitFor(t, "joined zone", time.Minute))
	spoke.Start(t, workload, "serve", "--name", "spoke", "--listen", ":7000").WaitFor(t, "serving tcp", 10*time.Second)
	t.Logf("service and three members up in %v", time.Since(start).Round(time.Millisecond))

	// The rule the router added to DOCKER-USER, before Docker's RETURN.
	chain := nftList(t, "chain", "ip", "filter", "DOCKER-USER")
	rule := `iifname "` + tunName + `" ip daddr ` + node1Prefix.String()
	require.Contains(t, chain, rule)
	require.Less(t, strings.Index(chain, rule), strings.Index(chain, "return"), chain)

	start = time.Now()
	ctrAP := netip.AddrPortFrom(container, workloadPort).String()
	// The container's side first: node2 still holds its WireGuard session
	// with the router from before the restart, which the router no longer
	// knows; the router sending first handshakes at once, node2 sending
	// first would wait out its rekey timeout (15 s).
	t.Run("container reaches node2's workload", func(t *testing.T) {
		containerRun(t, ctr, "ping", "--timeout", "60s", work2.String())
		greet := containerRun(t, ctr, "dial", "--timeout", "60s", "--expect", "work2", netip.AddrPortFrom(work2, workloadPort).String())
		require.Equal(t, netip.AddrPortFrom(work2, workloadPort).String(), greetField(t, greet, "local"))
	})
	t.Run("container reaches the spoke", func(t *testing.T) {
		containerRun(t, ctr, "ping", "--timeout", "60s", spokeAddr.String())
		containerRun(t, ctr, "dial", "--timeout", "60s", "--expect", "spoke", netip.AddrPortFrom(spokeAddr, workloadPort).String())
	})
	t.Run("spoke reaches the container", func(t *testing.T) {
		requirePing(t, spoke, container)
		greet := hostDial(t, spoke, workload, ctrAP, ctr)
		require.Equal(t, spokeAddr, greetAddr(t, greet, "remote"), "the container sees the spoke's own mesh address")
		require.Equal(t, ctrAP, greetField(t, greet, "local"), "the spoke reached the container's own address")
	})
	t.Run("node2 reaches the container", func(t *testing.T) {
		requirePing(t, node2, container)
		greet := hostDial(t, node2, workload, ctrAP, ctr)
		require.Equal(t, n2Addr, greetAddr(t, greet, "remote"))
		requirePing(t, w2, container)
		greet = hostDial(t, w2, workload, ctrAP, ctr)
		require.Equal(t, work2, greetAddr(t, greet, "remote"), "node2's workload reaches the container with its own address")
	})
	t.Logf("connectivity checks done in %v", time.Since(start).Round(time.Millisecond))
	if t.Failed() {
		return
	}

	// Stopping the router takes its rule out of DOCKER-USER and its
	// device and table away.
	require.NoError(t, n1.stop())
	require.NotContains(t, nftList(t, "chain", "ip", "filter", "DOCKER-USER"), tunName)
	require.NotContains(t, nftList(t, "tables"), tunName)
	links, err := exec.Command("ip", "-o", "link", "show").Output()
	require.NoError(t, err)
	require.NotContains(t, string(links), tunName+":")
}

// script runs one of the example's scripts and fails t on error.
func script(t *testing.T, name string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "sh", append([]string{filepath.Join(exampleDir, name)}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	t.Logf("%s: %s", name, strings.TrimSpace(string(out)))
}

// connectHost joins the host's namespace to the switch sw with a veth
// named dev, holding addr on the host side; a cleanup removes it (and
// deleting the switch's namespace would take it along anyway).
func connectHost(t *testing.T, sw *netlab.Switch, dev string, addr netip.Prefix) {
	t.Helper()
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	ns := sw.Host().NS()
	ip("link", "add", "name", dev, "type", "veth", "peer", "name", "node1", "netns", ns)
	t.Cleanup(func() {
		if err := exec.Command("ip", "link", "show", "dev", dev).Run(); err == nil {
			ip("link", "del", "dev", dev)
		}
	})
	ip("-n", ns, "link", "set", "dev", "node1", "master", "br0", "up")
	ip("addr", "add", addr.String(), "dev", dev)
	ip("link", "set", "dev", dev, "up")
}

var joinedPattern = regexp.MustCompile(`^joined zone .*: address ([0-9.]+)[ ,]`)

// joinedAddr returns the tunnel address of wiremesh's "joined zone" line.
func joinedAddr(t *testing.T, line string) netip.Addr {
	t.Helper()
	m := joinedPattern.FindStringSubmatch(line)
	require.NotNil(t, m, "joined line %q", line)
	return netip.MustParseAddr(m[1])
}

// nftList runs `nft list ARGS` on the host.
func nftList(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("nft", append([]string{"list"}, args...)...).CombinedOutput()
	require.NoError(t, err, "nft list %s: %s", strings.Join(args, " "), out)
	return string(out)
}

// requirePing pings dst from h until it answers (reachTimeout).
func requirePing(t *testing.T, h *netlab.Host, dst netip.Addr) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), reachTimeout)
	defer cancel()
	require.NoError(t, h.Ping(ctx, dst), "ping %s from %s", dst, h.Name())
}

// hostDial runs `workload dial` in h against dst, which must be served by
// a workload named want, and returns the greeting.
func hostDial(t *testing.T, h *netlab.Host, workload, dst, want string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), reachTimeout+10*time.Second)
	defer cancel()
	out, err := h.Run(ctx, workload, "dial", "--timeout", reachTimeout.String(), "--expect", want, dst)
	require.NoError(t, err, "%s", out)
	return strings.TrimSpace(string(out))
}

// containerRun runs the workload binary inside the container with args
// (`docker exec`) and returns its output.
func containerRun(t *testing.T, ctr string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), reachTimeout+30*time.Second)
	defer cancel()
	out, err := docker(ctx, append([]string{"exec", ctr, "/workload"}, args...)...)
	require.NoError(t, err)
	return out
}

// greetField returns field key of a workload greeting
// ("workload name=c1 local=172.24.0.2:7000 remote=100.64.0.3:40000").
func greetField(t *testing.T, greet, key string) string {
	t.Helper()
	for _, f := range strings.Fields(greet) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return v
		}
	}
	t.Fatalf("no %s= in greeting %q", key, greet)
	return ""
}

// greetAddr returns the address of an ADDR:PORT field of a greeting.
func greetAddr(t *testing.T, greet, key string) netip.Addr {
	t.Helper()
	ap, err := netip.ParseAddrPort(greetField(t, greet, key))
	require.NoError(t, err, "greeting %q", greet)
	return ap.Addr()
}
