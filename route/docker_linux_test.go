//go:build linux

package route

import (
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// iptables runs an iptables-nft style command (iptables-nft, ip6tables-nft)
// inside n and returns its output; it skips the test when the tool is
// missing, and fails it when the command fails.
func (n *testNS) iptables(t *testing.T, tool string, args ...string) string {
	t.Helper()
	out, err := n.iptablesErr(t, tool, args...)
	require.NoError(t, err, "%s %s: %s", tool, strings.Join(args, " "), out)
	return out
}

func (n *testNS) iptablesErr(t *testing.T, tool string, args ...string) (string, error) {
	t.Helper()
	for _, need := range []string{tool, "nsenter"} {
		if _, err := exec.LookPath(need); err != nil {
			t.Skipf("needs %s on PATH to build Docker's chains the way Docker does: %v", need, err)
		}
	}
	fd, err := unix.Dup(int(n.ns))
	require.NoError(t, err)
	f := os.NewFile(uintptr(fd), "netns")
	defer f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pre := []string{"--net=/proc/self/fd/3", tool}
	if !strings.HasSuffix(tool, "-save") {
		pre = append(pre, "-w") // wait for the host-wide xtables lock
	}
	cmd := exec.CommandContext(ctx, "nsenter", append(pre, args...)...)
	cmd.ExtraFiles = []*os.File{f} // fd 3 in the child
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// dockerChains makes what Docker makes in table ip filter (and, with v6,
// ip6 filter) for DOCKER-USER: the chain ending in RETURN and the FORWARD
// jump, with policy DROP.
func (n *testNS) dockerChains(t *testing.T, v6 bool) {
	t.Helper()
	tools := []string{"iptables-nft"}
	if v6 {
		tools = append(tools, "ip6tables-nft")
	}
	for _, tool := range tools {
		n.iptables(t, tool, "-N", "DOCKER-USER")
		n.iptables(t, tool, "-A", "DOCKER-USER", "-j", "RETURN")
		n.iptables(t, tool, "-P", "FORWARD", "DROP")
		n.iptables(t, tool, "-A", "FORWARD", "-j", "DOCKER-USER")
	}
}

func TestDockerUserRules(t *testing.T) {
	defer func(d time.Duration) { dockerRecheck = d }(dockerRecheck)
	dockerRecheck = 100 * time.Millisecond
	n := newTestNS(t)
	ctx := WithNetNS(n.ns)

	ok, err := DockerUserExists(ctx)
	require.NoError(t, err)
	require.False(t, ok)
	_, err = NewDockerUser(DockerUserConfig{Interface: "wm0", Prefixes: pfx("172.24.0.0/24")}, ctx)
	require.ErrorIs(t, err, ErrNoDockerUser)
	removed, err := CleanupDockerUser("wm0", ctx)
	require.NoError(t, err)
	require.Zero(t, removed)

	n2 := newTestNS(t)
	ctx = WithNetNS(n2.ns)
	n2.dockerChains(t, false)
	ok, err = DockerUserExists(ctx)
	require.NoError(t, err)
	require.True(t, ok)

	// The host's own rule and leftovers of a crashed run: one of ours
	// (made with iptables, as a person following the README might) and one
	// of another interface's agent, which must survive.
	n2.iptables(t, "iptables-nft", "-I", "DOCKER-USER", "-s", "10.9.9.9", "-j", "DROP")
	n2.iptables(t, "iptables-nft", "-I", "DOCKER-USER", "-i", "wm1", "-d", "10.1.0.0/16", "-m", "comment", "--comment", "wiremesh:wm1: mesh to 10.1.0.0/16", "-j", "ACCEPT")
	n2.iptables(t, "iptables-nft", "-I", "DOCKER-USER", "-i", "wm0", "-d", "10.2.0.0/16", "-m", "comment", "--comment", "wiremesh:wm0: mesh to 10.2.0.0/16", "-j", "ACCEPT")

	d, err := NewDockerUser(DockerUserConfig{Interface: "wm0", Prefixes: pfx("172.25.0.5/32", "172.24.0.9/24", "fd00:24::/64")}, ctx)
	require.NoError(t, err)
	t.Cleanup(func() { d.Close() })
	require.Equal(t, pfx("172.24.0.0/24", "172.25.0.5/32", "fd00:24::/64"), d.Prefixes())
	foreign := []string{
		`-A DOCKER-USER -d 10.1.0.0/16 -i wm1 -m comment --comment "wiremesh:wm1: mesh to 10.1.0.0/16" -j ACCEPT`,
		`-A DOCKER-USER -s 10.9.9.9/32 -j DROP`,
		`-A DOCKER-USER -j RETURN`,
	}
	ours := func(ps ...string) []string {
		var out []string
		for _, p := range ps {
			out = append(out, `-A DOCKER-USER -d `+p+` -i wm0 -m comment --comment "wiremesh:wm0: mesh to `+p+`" -j ACCEPT`)
		}
		return out
	}
	// iptables reads our rules back as the rules it would have made itself:
	// first, in prefix order, the leftover gone, the IPv6 prefix skipped
	// (Docker manages no ip6tables here).
	chain := func() []string {
		lines := strings.Split(strings.TrimSpace(n2.iptables(t, "iptables-nft", "-S", "DOCKER-USER")), "\n")
		require.Equal(t, "-N DOCKER-USER", lines[0])
		return lines[1:]
	}
	require.Equal(t, append(ours("172.24.0.0/24", "172.25.0.5/32"), foreign...), chain())
	// The rules are in iptables-save too, so Docker's own restarts parse them.
	require.Contains(t, n2.iptables(t, "iptables-nft-save", "-t", "filter"), ours("172.24.0.0/24")[0])

	// Update replaces ours; invalid input changes nothing.
	require.NoError(t, d.Update(pfx("192.168.7.0/24")))
	require.Equal(t, pfx("192.168.7.0/24"), d.Prefixes())
	require.Equal(t, append(ours("192.168.7.0/24"), foreign...), chain())
	require.ErrorIs(t, d.Update([]netip.Prefix{{}}), ErrInvalid)
	require.Equal(t, append(ours("192.168.7.0/24"), foreign...), chain())

	// Update repairs a flushed chain (Docker's RETURN is Docker's business).
	n2.iptables(t, "iptables-nft", "-F", "DOCKER-USER")
	require.NoError(t, d.Update(d.Prefixes()))
	require.Equal(t, ours("192.168.7.0/24"), chain())
	n2.iptables(t, "iptables-nft", "-A", "DOCKER-USER", "-j", "RETURN")

	// So does the DockerUser itself, without being asked: a flush (Docker
	// or a firewall restarting) while it runs.
	n2.iptables(t, "iptables-nft", "-F", "DOCKER-USER")
	n2.iptables(t, "iptables-nft", "-A", "DOCKER-USER", "-j", "RETURN")
	deadline := time.Now().Add(10 * dockerRecheck)
	for !slices.Equal(append(ours("192.168.7.0/24"), `-A DOCKER-USER -j RETURN`), chain()) {
		require.True(t, time.Now().Before(deadline), "rules not put back: %q", chain())
		time.Sleep(50 * time.Millisecond)
	}

	// Close removes ours only; a second Close reports it.
	require.NoError(t, d.Close())
	require.Equal(t, []string{`-A DOCKER-USER -j RETURN`}, chain())
	require.ErrorIs(t, d.Close(), net.ErrClosed)
	require.ErrorIs(t, d.Update(nil), net.ErrClosed)
}

func TestDockerUserIPv6AndCleanup(t *testing.T) {
	n := newTestNS(t)
	ctx := WithNetNS(n.ns)
	n.dockerChains(t, true)

	d, err := NewDockerUser(DockerUserConfig{Interface: "wm0", Prefixes: pfx("fd00:24::/64", "172.24.0.0/24")}, ctx)
	require.NoError(t, err)
	require.Contains(t, n.iptables(t, "ip6tables-nft", "-S", "DOCKER-USER"),
		`-A DOCKER-USER -d fd00:24::/64 -i wm0 -m comment --comment "wiremesh:wm0: mesh to fd00:24::/64" -j ACCEPT`)

	// A crashed run: the rules stay until CleanupDockerUser, which takes
	// only those of its interface.
	d2, err := NewDockerUser(DockerUserConfig{Interface: "wm9", Prefixes: pfx("10.3.0.0/16")}, ctx)
	require.NoError(t, err)
	t.Cleanup(func() { d2.Close() })
	removed, err := CleanupDockerUser("wm0", ctx)
	require.NoError(t, err)
	require.Equal(t, 2, removed)
	require.NotContains(t, n.iptables(t, "ip6tables-nft", "-S", "DOCKER-USER"), "wm0")
	v4 := n.iptables(t, "iptables-nft", "-S", "DOCKER-USER")
	require.NotContains(t, v4, "wm0")
	require.Contains(t, v4, "wiremesh:wm9: mesh to 10.3.0.0/16")
	require.NoError(t, d.Close(), "nothing left to remove is not an error")
	require.NoError(t, d2.Close())
	require.NotContains(t, n.iptables(t, "iptables-nft", "-S", "DOCKER-USER"), "wiremesh")
}

func TestDockerUserInvalid(t *testing.T) {
	n := newTestNS(t)
	ctx := WithNetNS(n.ns)
	n.dockerChains(t, false)
	before := n.iptables(t, "iptables-nft", "-S")
	for _, tc := range []struct {
		name string
		cfg  DockerUserConfig
	}{
		{"no interface", DockerUserConfig{Prefixes: pfx("172.24.0.0/24")}},
		{"interface too long", DockerUserConfig{Interface: "a-very-long-ifname", Prefixes: pfx("172.24.0.0/24")}},
		{"invalid prefix", DockerUserConfig{Interface: "wm0", Prefixes: []netip.Prefix{{}}}},
		{"IPv4-mapped prefix", DockerUserConfig{Interface: "wm0", Prefixes: pfx("::ffff:172.24.0.0/120")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewDockerUser(tc.cfg, ctx)
			require.ErrorIs(t, err, ErrInvalid)
		})
	}
	_, err := CleanupDockerUser("", ctx)
	require.ErrorIs(t, err, ErrInvalid)
	_, err = DockerBridgePrefixes([]netip.Prefix{{}}, ctx)
	require.ErrorIs(t, err, ErrInvalid)
	require.Equal(t, before, n.iptables(t, "iptables-nft", "-S"))
}

func TestDockerBridgePrefixes(t *testing.T) {
	n := newTestNS(t)
	for _, b := range []struct{ name, addr string }{
		{"docker0", "172.17.0.1/16"},
		{"br-0123456789ab", "172.24.0.1/24"},
		{"br0", "172.26.0.1/24"}, // not Docker's
	} {
		n.bridge(t, b.name)
		n.addr(t, b.name, b.addr)
	}
	n.veth(t, "br-aaaaaaaaaaaa", "peer0", nil) // Docker's name, but no bridge
	n.addr(t, "br-aaaaaaaaaaaa", "172.27.0.1/24")

	got, err := DockerBridgePrefixes(pfx("10.0.0.0/8", "172.26.0.0/24", "172.27.0.0/24", "172.24.0.0/24", "172.17.5.0/24"), WithNetNS(n.ns))
	require.NoError(t, err)
	require.Equal(t, pfx("172.17.5.0/24", "172.24.0.0/24"), got)

	for _, tc := range []struct {
		name string
		want bool
	}{
		{"docker0", true}, {"br-0123456789ab", true}, {"br-0123456789a", false},
		{"br-0123456789AB", false}, {"br0", false}, {"docker1", false}, {"wg0", false},
	} {
		require.Equal(t, tc.want, IsDockerBridgeName(tc.name), tc.name)
	}
}
