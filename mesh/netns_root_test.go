package mesh_test

import (
	"context"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/internal/netlab"
)

// inNetNSEnv marks the copy of the test binary that runInRouterNetNS runs
// inside the namespace.
const inNetNSEnv = "WIREMESH_TEST_FORWARD_NETNS"

// routerNetNSAddr is the address on the namespace's lo: the "service
// behind the router"; nothing else of 198.18.77.0/24 exists.
var routerNetNSAddr = netip.MustParseAddr("198.18.77.1")

// runInRouterNetNS reports whether t runs inside the namespace, and should
// go on. Outside it (it needs root) it makes a network namespace whose lo
// carries routerNetNSAddr, runs t alone again inside it with this test
// binary, fails t unless that run passed, and reports false: the caller
// returns. So everything t starts, service, router and spoke included,
// lives in the namespace and no traffic leaves it.
func runInRouterNetNS(t *testing.T) bool {
	t.Helper()
	if os.Getenv(inNetNSEnv) != "" {
		return true
	}
	netlab.RequireRoot(t)
	lab := netlab.New(t)
	h := lab.Host("router")
	h.AddAddr("lo", netip.PrefixFrom(routerNetNSAddr, 32))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := h.Run(ctx, "env", inNetNSEnv+"=1", os.Args[0],
		"-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1", "-test.timeout=2m")
	t.Logf("inside namespace %s:\n%s", h.NS(), out)
	require.NoError(t, err)
	require.Contains(t, string(out), "--- PASS: "+t.Name())
	return false
}
