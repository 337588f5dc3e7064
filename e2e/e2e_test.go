package e2e

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/internal/netlab"
)

const wiremeshPkg = "github.com/wiremesh/wiremesh/cmd/wiremesh"

// Timeouts of the scenario.
const (
	startTimeout = 40 * time.Second // an agent or the service printing it is ready
	probeTimeout = 30 * time.Second // one ping or TCP exchange getting through
)

var (
	pfx  = netip.MustParsePrefix
	addr = netip.MustParseAddr
)

// service runs `wiremesh serve` in its own namespace on the WAN.
type service struct {
	host    *netlab.Host
	url     string
	token   string
	dataDir string
	bin     string
}

// startService runs the service at 192.0.2.1 with STUN off; extra flags
// come after the defaults (and so override them).
func startService(t testing.TB, l *netlab.Lab, wan *netlab.Switch, bin string, extra ...string) *service {
	t.Helper()
	h := l.Host("service")
	l.Connect(h, wan, pfx("192.0.2.1/24"))
	s := &service{host: h, dataDir: t.TempDir(), bin: bin}
	args := append([]string{"serve", "--insecure-http", "--listen=192.0.2.1:8443", "--stun-listen=off", "--data-dir", s.dataDir}, extra...)
	p := h.Start(t, bin, args...)
	line := p.WaitFor(t, "wiremesh join --token", startTimeout)
	m := regexp.MustCompile(`--token (\S+) (\S+)`).FindStringSubmatch(line)
	require.NotNil(t, m, "join line %q", line)
	s.token, s.url = m[1], m[2]
	require.Equal(t, "http://192.0.2.1:8443", s.url)
	return s
}

// admin runs an admin command of the wiremesh CLI next to the service.
func (s *service) admin(t testing.TB, args ...string) string {
	t.Helper()
	args = append(args, "--server", s.url, "--data-dir", s.dataDir)
	return s.host.MustRun(t, s.bin, args...)
}

// agent is a `wiremesh` member process.
type agent struct {
	name   string
	host   *netlab.Host
	proc   *netlab.Proc
	socket string
	state  string
	addr   netip.Addr // IPv4 tunnel address
	addr6  netip.Addr // IPv6 tunnel address
}

// startAgent runs `wiremesh [router --child-prefix=P ...] URL` in h and
// waits until it has joined.
func startAgent(t testing.TB, bin string, s *service, h *netlab.Host, state string, prefixes ...string) *agent {
	t.Helper()
	a := &agent{name: h.Name(), host: h, state: state}
	a.socket = filepath.Join(state, "status.sock")
	var args []string
	if len(prefixes) > 0 {
		args = append(args, "router")
		for _, p := range prefixes {
			args = append(args, "--child-prefix="+p)
		}
	}
	if os.Getenv("WIREMESH_E2E_VERBOSE") != "" {
		args = append(args, "-v") // debug logs in the failure output
	}
	args = append(args, "--token", s.token, "--insecure-http", "--hostname", a.name,
		"--state-dir", state, "--socket", a.socket, "--listen-port", "51820", s.url)
	a.proc = h.Start(t, bin, args...)
	line := a.proc.WaitFor(t, "joined zone", startTimeout)
	m := regexp.MustCompile(`address (\d+\.\d+\.\d+\.\d+) and ([0-9a-f:]+),`).FindStringSubmatch(line)
	require.NotNil(t, m, "joined line %q", line)
	a.addr, a.addr6 = addr(m[1]), addr(m[2])
	require.Contains(t, line, "interface wg0")
	return a
}

// snapshot is what a host's network looks like, for before/after checks.
type snapshot struct{ links, routes, rules, nft, forward, forwardIf string }

func snap(t *testing.T, h *netlab.Host) snapshot {
	t.Helper()
	return snapshot{
		links:   strings.Join(h.Links(), " "),
		routes:  withoutLinkLocal(h.Routes()),
		rules:   h.Rules(),
		nft:     h.NFTRuleset(),
		forward: strings.TrimSpace(h.MustRun(t, "cat", "/proc/sys/net/ipv4/ip_forward")),
		// Per interface (wg0 comes and goes with the agent).
		forwardIf: h.MustRun(t, "sh", "-c", "grep -H . /proc/sys/net/ipv4/conf/*/forwarding /proc/sys/net/ipv6/conf/*/force_forwarding 2>/dev/null | grep -v /wg0/ || true"),
	}
}

// withoutLinkLocal drops the local routes of IPv6 link-local addresses,
// which appear on their own once duplicate address detection is done.
func withoutLinkLocal(routes string) string {
	var keep []string
	for line := range strings.SplitSeq(routes, "\n") {
		if !strings.HasPrefix(line, "local fe80:") {
			keep = append(keep, line)
		}
	}
	return strings.Join(keep, "\n")
}

func probeCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	t.Cleanup(cancel)
	return ctx
}

// ourRoutes lists the routes the agents add (protocol 87) in h.
func ourRoutes(t *testing.T, h *netlab.Host) string {
	return h.MustRun(t, "ip", "route", "show", "proto", "87") + h.MustRun(t, "ip", "-6", "route", "show", "proto", "87")
}

// TestSeedScenario is the seed scenario in network namespaces: two routers
// with child prefixes (addresses on lo, and on node1 a "container" behind
// a bridge), a spoke behind a NAT without any inbound port, all in kernel
// mode, and the service on the WAN.
func TestSeedScenario(t *testing.T) {
	lab := newSeedLab(t)
	bin, svc := lab.bin, lab.svc
	node1, container, node2, spoke := lab.node1, lab.container, lab.node2, lab.spoke

	targets := map[string]netip.AddrPort{
		"node1":     node1.ServeTCP(t, netip.MustParseAddrPort("172.24.0.10:7000")),
		"container": container.ServeTCP(t, netip.MustParseAddrPort("172.24.0.2:7000")),
		"node2":     node2.ServeTCP(t, netip.MustParseAddrPort("172.28.0.10:7000")),
	}
	before := map[string]snapshot{"node1": snap(t, node1), "node2": snap(t, node2), "spoke": snap(t, spoke)}

	a1 := startAgent(t, bin, svc, node1, t.TempDir(), "172.24.0.0/24")
	a2 := startAgent(t, bin, svc, node2, t.TempDir(), "172.28.0.0/24")
	as := startAgent(t, bin, svc, spoke, t.TempDir())
	members := []*agent{a1, a2, as}

	t.Run("every member reaches every child prefix", func(t *testing.T) {
		for _, m := range members {
			for _, name := range []string{"node1", "node2", "container"} {
				dst := targets[name]
				require.NoError(t, m.host.Ping(probeCtx(t), dst.Addr()), "%s pings %s", m.name, dst.Addr())
				b, err := m.host.DialTCPBanner(probeCtx(t), dst)
				require.NoError(t, err, "%s opens TCP to %s", m.name, dst)
				require.Equal(t, name, b.Host, "%s reached the wrong host for %s", m.name, dst)
				if name == "container" && m != a1 {
					// Routed, not masqueraded: the container sees the member's tunnel address.
					require.Equal(t, m.addr, b.Remote.Addr(), "%s -> container", m.name)
				}
			}
		}
	})

	t.Run("the routers reach the spoke after it talked to them", func(t *testing.T) {
		dst := spoke.ServeTCP(t, netip.AddrPortFrom(as.addr, 7001))
		for _, m := range []*agent{a1, a2} {
			require.NoError(t, m.host.Ping(probeCtx(t), as.addr), "%s pings the spoke", m.name)
			require.NoError(t, m.host.DialTCP(probeCtx(t), dst), "%s opens TCP to the spoke", m.name)
		}
	})

	t.Run("IPv6 tunnel addresses", func(t *testing.T) {
		for _, from := range members {
			for _, to := range members {
				if from != to {
					require.NoError(t, from.host.Ping(probeCtx(t), to.addr6), "%s pings %s", from.name, to.addr6)
				}
			}
		}
	})

	t.Run("status", func(t *testing.T) {
		out := spoke.MustRun(t, bin, "status", "--socket", as.socket)
		require.Contains(t, out, `spoke in zone "default", interface wg0`)
		for _, m := range []*agent{a1, a2} {
			require.Regexp(t, `(?m)^`+m.name+` +`+regexp.QuoteMeta(m.addr.String())+`\S* +172\.\d+\.0\.0/24 +direct +192\.0\.2\.1\d:51820 +yes +\S+ ago +`, out)
		}
		out = node1.MustRun(t, bin, "status", "--socket", a1.socket)
		require.Regexp(t, `prefixes: +172\.24\.0\.0/24`, out)
	})

	// A router crashes (SIGKILL) and restarts from its state directory. The
	// restart runs in the test itself: a process started in a subtest
	// would be stopped when the subtest ends.
	crashed, err := os.FindProcess(a1.proc.Pid())
	require.NoError(t, err)
	require.NoError(t, crashed.Kill()) // SIGKILL
	<-a1.proc.Done()
	require.Contains(t, node1.NFTRuleset(), "wiremesh-wg0", "the crash left the firewall table")
	require.Equal(t, "1", strings.TrimSpace(node1.MustRun(t, "cat", "/proc/sys/net/ipv4/conf/br0/forwarding")), "the crash left forwarding on for the bridge")
	require.Equal(t, "0", strings.TrimSpace(node1.MustRun(t, "cat", "/proc/sys/net/ipv4/ip_forward")), "the global switch is never written")
	a1 = startAgent(t, bin, svc, node1, a1.state, "172.24.0.0/24")
	t.Run("a crashed router restarts cleanly", func(t *testing.T) {
		// The spoke learns that node1 registered again and handshakes with
		// it at once: node1 cannot reach the spoke behind its NAT, and
		// WireGuard's own timers would repair the path only after 12-15 s
		// (Keepalive-Timeout + Rekey-Timeout). BenchmarkRouterRestart
		// measures this.
		start := time.Now()
		require.NoError(t, spoke.Ping(probeCtxFor(t, 8*time.Second), addr("172.24.0.2")), "spoke -> container after node1 restarted")
		t.Logf("the spoke reached node1's container %v after node1 had joined again", time.Since(start))
		a1.proc.WaitFor(t, "removing leftover nftables table", startTimeout)
		a1.proc.WaitFor(t, "an earlier run crashed after turning IP forwarding on", startTimeout)
		start = time.Now()
		b, err := node2.DialTCPBanner(probeCtx(t), targets["container"])
		require.NoError(t, err, "node2 -> container after node1 restarted")
		t.Logf("node2 reached node1's container %v later", time.Since(start))
		require.Equal(t, "container", b.Host)
		waitFor(t, "node1 routes node2's prefix again", func() bool {
			return strings.Contains(ourRoutes(t, node1), "172.28.0.0/24 dev wg0")
		})
	})

	t.Run("stopping an agent leaves nothing behind", func(t *testing.T) {
		require.NoError(t, a2.proc.Stop(), a2.proc.Output())
		require.Equal(t, before["node2"], snap(t, node2))
	})

	t.Run("deleting a member removes its routes everywhere", func(t *testing.T) {
		for _, m := range []*agent{a1, as} {
			require.Contains(t, ourRoutes(t, m.host), "172.28.0.0/24 dev wg0", m.name)
		}
		id := deviceID(t, svc, "node2")
		svc.admin(t, "device", "delete", id)
		for _, m := range []*agent{a1, as} {
			waitFor(t, m.name+" drops the route to node2's prefix", func() bool {
				return !strings.Contains(ourRoutes(t, m.host), "172.28.0.0/24")
			})
			m.proc.WaitFor(t, "peer gone: node2", startTimeout)
		}
		require.Error(t, spoke.Ping(probeCtxFor(t, 2*time.Second), addr("172.28.0.10")))
		require.NoError(t, spoke.Ping(probeCtx(t), addr("172.24.0.2")), "the rest keeps working")
	})

	t.Run("a router that stops leaves forwarding on when a neighbour relies on it", func(t *testing.T) {
		// Docker (or another router) starts while node1 routes and turns
		// forwarding on everywhere; stopping node1 must not turn it off.
		fwd := "/proc/sys/net/ipv4/conf/br0/forwarding"
		node1.MustRun(t, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
		require.NoError(t, a1.proc.Stop(), a1.proc.Output())
		require.Equal(t, "1", strings.TrimSpace(node1.MustRun(t, "cat", "/proc/sys/net/ipv4/ip_forward")))
		require.Equal(t, "1", strings.TrimSpace(node1.MustRun(t, "cat", fwd)))
		node1.MustRun(t, "sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward") // the neighbour goes
		a1 = startAgent(t, bin, svc, node1, a1.state, "172.24.0.0/24")
		require.NoError(t, spoke.Ping(probeCtx(t), addr("172.24.0.2")), "spoke -> container")
		require.Equal(t, "1", strings.TrimSpace(node1.MustRun(t, "cat", fwd)))
	})

	t.Run("stopping every agent leaves nothing behind", func(t *testing.T) {
		for _, m := range []*agent{a1, as} {
			require.NoError(t, m.proc.Stop(), m.proc.Output())
			require.Equal(t, before[m.name], snap(t, m.host), m.name)
		}
	})
}

// deviceID finds a device's ID with `wiremesh device list`.
func deviceID(t *testing.T, s *service, hostname string) string {
	t.Helper()
	out := s.admin(t, "device", "list")
	for line := range strings.SplitSeq(out, "\n") {
		f := strings.Fields(line)
		if len(f) > 2 && f[2] == hostname {
			return f[0]
		}
	}
	t.Fatalf("no device %q in:\n%s", hostname, out)
	return ""
}

func probeCtxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(probeTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting until %s", probeTimeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
