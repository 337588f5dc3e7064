package mesh_test

import (
	"net/netip"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/internal/netlab"
)

// requireKernelMode skips t unless it can run a kernel-mode node: root,
// /dev/net/tun and nftables' nft.
func requireKernelMode(t *testing.T) {
	t.Helper()
	netlab.RequireRoot(t)
	netlab.RequireTUN(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nftables: `nft` not found on PATH; skipping kernel-mode test")
	}
}

// runTestInNetNS runs the test named child alone, with this test binary,
// in h's network namespace (`ip netns exec` also gives it a mount
// namespace of its own), with env set to val in its environment. It fails
// t unless the child passes within 3 minutes, and returns its output.
func runTestInNetNS(t *testing.T, h *netlab.Host, child, env, val string) string {
	t.Helper()
	t.Setenv(env, val)
	p := h.Start(t, os.Args[0], "-test.run=^"+child+"$", "-test.v", "-test.count=1", "-test.timeout=3m")
	select {
	case <-p.Done():
	case <-time.After(3 * time.Minute):
		t.Fatalf("%s did not finish; output:\n%s", child, p.Output())
	}
	out := p.Output()
	require.NoError(t, p.Stop(), out)
	require.Contains(t, out, "--- PASS: "+child, out)
	return out
}

// inNetNSEnv marks the copy of the test binary that runInRouterNetNS runs
// inside the namespace.
const inNetNSEnv = "WIREMESH_TEST_FORWARD_NETNS"

// routerNetNSAddr is the address on the namespace's lo: the "service
// behind the router"; nothing else of 198.18.77.0/24 exists.
var routerNetNSAddr = netip.MustParseAddr("198.18.77.1")

// runInRouterNetNS reports whether t runs inside the namespace, and should
// go on. Outside it (it needs root) it makes a network namespace whose lo
// carries routerNetNSAddr, runs t again there (runTestInNetNS) and
// reports false: the caller returns. So everything t starts, service,
// router and spoke included, lives in the namespace and no traffic leaves
// it.
func runInRouterNetNS(t *testing.T) bool {
	t.Helper()
	if os.Getenv(inNetNSEnv) != "" {
		return true
	}
	netlab.RequireRoot(t)
	h := netlab.New(t).Host("router")
	h.AddAddr("lo", netip.PrefixFrom(routerNetNSAddr, 32))
	out := runTestInNetNS(t, h, t.Name(), inNetNSEnv, "1")
	t.Logf("inside namespace %s:\n%s", h.NS(), out)
	return false
}
