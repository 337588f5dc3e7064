package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/mesh"
	"github.com/wiremesh/wiremesh/meshtest"
)

// joinOutput is a bytes.Buffer safe for one writer and concurrent readers.
type joinOutput struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *joinOutput) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *joinOutput) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// agentArgs returns flags that give an agent started by a test its own
// status socket and state directory under t.TempDir(), so tests never use
// the host-wide defaults (/run/wiremesh/wg0.sock) that a real agent on the
// machine may hold, followed by args.
func agentArgs(t *testing.T, args ...string) []string {
	t.Helper()
	dir := t.TempDir()
	return append([]string{"--socket", filepath.Join(dir, "status.sock"), "--state-dir", filepath.Join(dir, "state")}, args...)
}

func TestJoinCommand(t *testing.T) {
	s := meshtest.NewServer(t)
	first := meshtest.Join(t, s, mesh.WithHostname("first"))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sock := filepath.Join(t.TempDir(), "s.sock")
	var out, errOut joinOutput
	done := make(chan error, 1)
	go func() {
		done <- runJoin(ctx, []string{"--userspace", "--token", s.Token, "--hostname", "cli", "--state-dir", t.TempDir(), "--socket", sock, s.URL}, &out, &errOut)
	}()
	meshtest.WaitFor(t, "joined", func() bool { return strings.Contains(out.String(), "joined zone \"default\" as \"cli\"") })
	require.Contains(t, out.String(), "registering with "+s.URL)
	require.Contains(t, out.String(), "userspace mode")
	// The peer lines follow the "joined" line, once the status socket is up.
	meshtest.WaitFor(t, "peer up: first", func() bool { return strings.Contains(out.String(), "peer up: first "+first.Addr().String()) })

	// wiremesh status reads the agent's socket.
	var stOut bytes.Buffer
	meshtest.WaitFor(t, "status socket", func() bool { return statusSocketLive(sock) })
	// Probing finds the direct path within moments of the join.
	peerLine := regexp.MustCompile(`(?m)^first +` + regexp.QuoteMeta(first.Addr().String()) + `[,0-9a-f:]* +- +direct +[0-9a-f.:\[\]]+:\d+ +`)
	meshtest.WaitFor(t, "a direct path to first in the status", func() bool {
		stOut.Reset()
		return runStatus(ctx, []string{"--socket", sock}, &stOut, &errOut) == nil && peerLine.MatchString(stOut.String())
	})
	require.Contains(t, stOut.String(), `cli in zone "default", userspace mode`)
	stOut.Reset()
	require.NoError(t, runStatus(ctx, []string{"--socket", sock, "--json"}, &stOut, &errOut))
	var st statusJSON
	require.NoError(t, json.Unmarshal(stOut.Bytes(), &st))
	require.Equal(t, "cli", st.Self.Hostname)
	require.Equal(t, "userspace", st.Self.Mode)
	require.Len(t, st.Peers, 1)
	require.Equal(t, first.Addr(), st.Peers[0].Addresses[0])
	fi, err := os.Stat(sock)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	// A second agent on the same socket refuses to start.
	err = runJoin(ctx, []string{"--userspace", "--token", s.Token, "--state-dir", t.TempDir(), "--socket", sock, s.URL}, &bytes.Buffer{}, &bytes.Buffer{})
	require.ErrorContains(t, err, "another agent is running")

	late := meshtest.Join(t, s, mesh.WithHostname("late"))
	meshtest.WaitFor(t, "late peer", func() bool { return strings.Contains(out.String(), "peer up: late "+late.Addr().String()) })
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err, errOut.String())
	case <-time.After(10 * time.Second):
		t.Fatal("join did not stop on cancel")
	}
	_, err = os.Stat(sock)
	require.ErrorIs(t, err, os.ErrNotExist, "status socket removed")
	err = runStatus(context.Background(), []string{"--socket", sock}, &stOut, &errOut)
	require.ErrorContains(t, err, "no agent is running")
}

func TestJoinCommandErrors(t *testing.T) {
	s := meshtest.NewServer(t)
	_, fp, err := api.ParseJoinToken(s.Token)
	require.NoError(t, err)
	bad := api.FormatJoinToken("wmj_00000000000000000000000000000000", fp)
	var out, errOut bytes.Buffer
	err = runJoin(context.Background(), agentArgs(t, s.URL, "--userspace", "--token", bad), &out, &errOut)
	require.ErrorContains(t, err, "the service refused the join token: create a new one with `wiremesh token create`")

	err = runJoin(context.Background(), agentArgs(t, "--userspace", "--token", "nonsense", s.URL), &out, &errOut)
	require.ErrorContains(t, err, "not a wiremesh join token")

	err = runJoin(context.Background(), agentArgs(t, "--userspace"), &out, &errOut)
	require.ErrorContains(t, err, "want a service URL")

	err = runJoin(context.Background(), agentArgs(t, "--userspace", "--token", s.Token, s.URL, "ftp://replica"), &out, &errOut)
	require.ErrorContains(t, err, `service URL "ftp://replica"`)
}

func TestJoinKernelModeNeedsRoot(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("running as root: kernel mode is available (the e2e package covers it in namespaces)")
	}
	var out, errOut bytes.Buffer
	err := runJoin(context.Background(), agentArgs(t, "https://127.0.0.1:1"), &out, &errOut)
	require.ErrorContains(t, err, "needs root")
	require.ErrorContains(t, err, "--userspace")
}

func TestRouterUsage(t *testing.T) {
	var out, errOut bytes.Buffer
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no prefix", []string{"--userspace", "http://127.0.0.1:1"}, "at least one --child-prefix"},
		{"bad prefix", []string{"--userspace", "--child-prefix", "nonsense", "http://127.0.0.1:1"}, `--child-prefix "nonsense": not a CIDR`},
		{"host bits", []string{"--userspace", "--child-prefix", "172.24.0.1/24", "http://127.0.0.1:1"}, "did you mean 172.24.0.0/24"},
		{"bad interface", []string{"--interface", "a/b", "--child-prefix", "172.24.0.0/24", "http://127.0.0.1:1"}, "WithInterfaceName"},
		{"no URL", []string{"--child-prefix", "172.24.0.0/24"}, "want a service URL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := runRouter(context.Background(), agentArgs(t, tt.args...), &out, &errOut)
			require.ErrorContains(t, err, tt.want)
		})
	}
}

func TestPrintStatus(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	st := mesh.Status{
		Self: mesh.SelfStatus{Hostname: "node1", Zone: "default", Interface: "wg0", ListenPort: 51820,
			Addrs: []netip.Addr{netip.MustParseAddr("100.64.0.1")}, Prefixes: []netip.Prefix{netip.MustParsePrefix("172.24.0.0/24")}},
		ControlConnected: true,
		Revision:         7,
		Peers: []mesh.PeerStatus{{
			Hostname: "node2", Addrs: []netip.Addr{netip.MustParseAddr("100.64.0.2")},
			Prefixes:      []netip.Prefix{netip.MustParsePrefix("172.28.0.0/24")},
			Path:          mesh.PathDirect,
			Endpoint:      netip.MustParseAddrPort("192.0.2.12:51820"),
			LastHandshake: now.Add(-12 * time.Second), RxBytes: 1536, TxBytes: 10,
			LastSeen: now.Add(-90 * time.Second),
		}, {
			Hostname: "node3", Addrs: []netip.Addr{netip.MustParseAddr("100.64.0.3")}, Online: true,
		}},
		SkippedRoutes: []mesh.SkippedRoute{{Prefix: netip.MustParsePrefix("10.88.0.0/24"), Reason: "overlaps 10.88.0.0/24 directly connected on eth1"}},
	}
	var b bytes.Buffer
	require.NoError(t, printStatus(&b, st, now))
	out := b.String()
	require.Contains(t, out, `node1 in zone "default", interface wg0, WireGuard port 51820`)
	require.Contains(t, out, "prefixes:  172.24.0.0/24")
	require.Contains(t, out, "service:   connected (revision 7)")
	require.Contains(t, out, "reach:     NAT unknown, relay not in use")
	require.Regexp(t, `(?m)^node2 +100\.64\.0\.2 +172\.28\.0\.0/24 +direct +192\.0\.2\.12:51820 +no, seen 1m30s ago +12s ago +1\.5 KiB +10 B$`, out)
	require.Regexp(t, `(?m)^node3 +100\.64\.0\.3 +- +- +- +yes +never +0 B +0 B$`, out)
	require.Contains(t, out, "not routed: 10.88.0.0/24: overlaps 10.88.0.0/24 directly connected on eth1")
}

func TestJoinUnreachable(t *testing.T) {
	var out, errOut bytes.Buffer
	// Port 1 on loopback: nothing listens, the connection is refused.
	err := runJoin(context.Background(), agentArgs(t, "--userspace", "--token", "wmj_00000000000000000000000000000000", "http://127.0.0.1:1"), &out, &errOut)
	require.ErrorContains(t, err, "cannot reach the service at http://127.0.0.1:1")
	require.Contains(t, out.String(), "registering with http://127.0.0.1:1")
}

func TestPrintFilter(t *testing.T) {
	var b strings.Builder
	require.NoError(t, printFilter(&b, mesh.FilterStatus{}))
	require.Empty(t, b.String(), "no policy: nothing printed")
	f := mesh.FilterStatus{Active: true, Dropped: 7, Rules: []mesh.FilterRuleStatus{{
		Rule: 1, Src: []netip.Prefix{netip.MustParsePrefix("100.64.0.3/32")}, Dst: []netip.Prefix{netip.MustParsePrefix("172.24.0.0/24")},
		Proto: api.ProtoTCP, Ports: []api.PortRange{{First: 80, Last: 80}, {First: 8000, Last: 8099}}, Accepted: 3,
	}}}
	require.NoError(t, printFilter(&b, f))
	out := b.String()
	require.Contains(t, out, "1 rules, 7 packets of new flows dropped")
	require.Regexp(t, `1 +100\.64\.0\.3/32 +172\.24\.0\.0/24 +tcp +80,8000-8099 +3\n`, out)
	require.Regexp(t, `- +\* +\* +\* +\* +dropped 7\n`, out)
}

// TestJoinNoStatsFlag: --no-stats (join and router) turns the member's
// peer reports off (mesh.WithoutStatsReports) and is in the usage.
func TestJoinNoStatsFlag(t *testing.T) {
	for _, name := range []string{"join", "router"} {
		var errOut bytes.Buffer
		a, _, _, err := parseAgentArgs(name, joinUsage, agentArgs(t, "--userspace", "--no-stats", "https://127.0.0.1:1"), &errOut)
		require.NoError(t, err)
		require.True(t, a.noStats)
		with, err := a.options(name, &errOut)
		require.NoError(t, err)
		a.noStats = false
		without, err := a.options(name, &errOut)
		require.NoError(t, err)
		require.Len(t, with, len(without)+1, "one more option: mesh.WithoutStatsReports")

		_, fs, _, err := parseAgentArgs(name, joinUsage, agentArgs(t, "--userspace", "https://127.0.0.1:1"), &errOut)
		require.NoError(t, err)
		require.NotNil(t, fs.Lookup("no-stats"))
		fs.Usage()
		require.Contains(t, errOut.String(), "-no-stats")
	}
}
