//go:build linux

package mesh_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/internal/netlab"
	"github.com/wiremesh/wiremesh/mesh"
	"github.com/wiremesh/wiremesh/mesh/meshmetrics"
	"github.com/wiremesh/wiremesh/meshtest"
)

// uapiTestEnv marks the child process of TestWGShow.
const uapiTestEnv = "WIREMESH_UAPI_TEST_NETNS"

// TestWGShow runs TestWGShowInNamespace in a network namespace of its own
// (root, /dev/net/tun, wireguard-tools' `wg`). `ip netns exec` gives the
// child a mount namespace of its own too, where it mounts a tmpfs on
// /var/run/wireguard: the sockets of the test never appear on the host.
func TestWGShow(t *testing.T) {
	requireKernelMode(t)
	if _, err := exec.LookPath("wg"); err != nil {
		t.Skip("needs wireguard-tools: `wg` not found on PATH (apt-get install wireguard-tools); skipping the wg show test")
	}
	h := netlab.New(t).Host("wgshow")
	mnt, err := os.Readlink("/proc/self/ns/mnt")
	require.NoError(t, err)
	// The child checks it has another mount namespace.
	runTestInNetNS(t, h, "TestWGShowInNamespace", uapiTestEnv, mnt)
}

// TestWGShowInNamespace: `wg show` lists a kernel-mode node's peer with
// its endpoint, handshake and transfer; what `wg set` changes comes back;
// the socket is owner-only and gone after Close. Also the node's metrics
// include the TUN interface's counters.
func TestWGShowInNamespace(t *testing.T) {
	if os.Getenv(uapiTestEnv) == "" {
		t.Skip("runs only inside the namespaces made by TestWGShow")
	}
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		require.NoError(t, err, "%v: %s", args, out)
		return string(out)
	}
	self, err := os.Readlink("/proc/self/ns/mnt")
	require.NoError(t, err)
	require.NotEqual(t, os.Getenv(uapiTestEnv), self, "must run in a mount namespace of its own: the test mounts over /var/run/wireguard")
	require.NoError(t, os.MkdirAll("/var/run/wireguard", 0o755))
	run("mount", "-t", "tmpfs", "-o", "mode=0755", "wiremesh-test", "/var/run/wireguard")
	defer exec.Command("umount", "/var/run/wireguard").Run()

	const ifname = "wmwg0"
	s := meshtest.NewServer(t)
	u := meshtest.Join(t, s, mesh.WithHostname("u"))
	k := meshtest.Join(t, s, mesh.WithHostname("k"), mesh.WithMode(mesh.Kernel), mesh.WithInterfaceName(ifname))
	ctx := ctxT(t)
	_, err = k.Ping(ctx, u.Addr())
	require.NoError(t, err)

	sock := "/var/run/wireguard/" + ifname + ".sock"
	fi, err := os.Stat(sock)
	require.NoError(t, err)
	require.Equal(t, os.ModeSocket|0o600, fi.Mode()&(os.ModeType|os.ModePerm))
	require.Equal(t, ifname+"\n", run("wg", "show", "interfaces"))

	ukey := u.Status().Self.PublicKey.String()
	show := run("wg", "show", ifname)
	require.Contains(t, show, "public key: "+k.Status().Self.PublicKey.String())
	require.Contains(t, show, fmt.Sprintf("listening port: %d", k.Status().Self.ListenPort))
	require.Contains(t, show, "peer: "+ukey)
	require.Regexp(t, `endpoint: 127\.0\.0\.1:\d+`, show)
	require.Contains(t, show, "allowed ips: "+u.Addr().String()+"/32")
	require.Regexp(t, `latest handshake: \d+ seconds? ago|latest handshake: Now`, show)
	require.Regexp(t, `transfer: [\d.]+ \w?B received, [\d.]+ \w?B sent`, show)

	// What `wg set` changes, the node restores (at once: it checks after
	// each connection to the socket, and every few seconds anyway).
	allowed := func() string { return run("wg", "show", ifname, "allowed-ips") }
	want := allowed()
	stranger := api.PublicKey(api.Key{7, 7, 7}).String()
	for _, set := range [][]string{
		{"peer", ukey, "remove"},
		{"peer", ukey, "allowed-ips", "10.99.0.0/24"},
		{"peer", stranger, "allowed-ips", "10.98.0.0/24"},
		{"fwmark", "0x42"},
	} {
		run(append([]string{"wg", "set", ifname}, set...)...)
		waitFor(t, fmt.Sprintf("restored after wg set %v", set), func() bool {
			return allowed() == want && strings.TrimSpace(run("wg", "show", ifname, "fwmark")) == "off"
		})
	}
	_, err = k.Ping(ctx, u.Addr())
	require.NoError(t, err, "traffic flows after the restore")

	// Metrics of a kernel-mode node include the TUN interface's counters.
	srv := httptest.NewServer(meshmetrics.Handler(k))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	require.NoError(t, err)
	body := new(strings.Builder)
	_, err = fmt.Fprint(body, readAll(t, resp))
	require.NoError(t, err)
	require.Regexp(t, regexp.MustCompile(`(?m)^wiremesh_agent_interface_receive_packets_total\{interface="`+ifname+`"\} [1-9]`), body.String())
	require.Regexp(t, regexp.MustCompile(`(?m)^wiremesh_agent_interface_transmit_dropped_total\{interface="`+ifname+`"\} \d+`), body.String())

	require.NoError(t, k.Close())
	_, err = os.Lstat(sock)
	require.ErrorIs(t, err, os.ErrNotExist, "the socket is removed on Close")
	require.Empty(t, strings.TrimSpace(run("wg", "show", "interfaces")))
}

func readAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b := new(strings.Builder)
	_, err := io.Copy(b, resp.Body)
	require.NoError(t, err)
	return b.String()
}
