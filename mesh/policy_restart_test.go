package mesh_test

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/mesh"
	"github.com/wiremesh/wiremesh/meshtest"
)

// A member restarted from its state directory while the service is down
// enforces the filter it saved: it must not fall back to accepting
// everything just because nobody can tell it the policy again.
func TestPolicyRestartWhileServiceDown(t *testing.T) {
	s := meshtest.NewServer(t)
	p := netip.MustParsePrefix("172.24.0.0/24")
	dir := t.TempDir()
	routerOpts := []mesh.Option{fast, mesh.WithHostname("router"), mesh.WithStateDir(dir),
		mesh.WithChildPrefix(p), mesh.WithPrefixHandler(p, serveAs("net24"))}
	router := meshtest.Join(t, s, routerOpts...)
	spoke := meshtest.Join(t, s, fast, mesh.WithHostname("spoke"))
	meshtest.WaitPeers(t, router, 1)
	meshtest.WaitPeers(t, spoke, 1)
	setPolicy(t, s, router, 1, `{"rules": [
  {"from": ["spoke"], "to": ["172.24.0.0/24:80"], "proto": "tcp"}
]}`)
	tcpGreeting(t, spoke, "172.24.0.10:80", "net24")
	refused(t, spoke, "172.24.0.10:81")
	addr := router.Addr()
	require.NoError(t, router.Close())

	s.Stop()
	router = meshtest.Join(t, s, routerOpts...)
	require.Equal(t, addr, router.Addr())
	st := router.Status()
	require.False(t, st.ControlConnected)
	require.True(t, st.Filter.Active, "the saved filter is in force")
	require.Len(t, st.Filter.Rules, 1)
	echoServer(t, router)

	// The allowed flow first: it proves the tunnel works, so that what
	// follows is refused by the filter and not by a missing tunnel.
	tcpGreeting(t, spoke, "172.24.0.10:80", "net24")
	refused(t, spoke, "172.24.0.10:81")
	refused(t, spoke, addr.String()+":7") // the router's own service
	pingLost(t, spoke, "172.24.0.10")
	f := router.Status().Filter
	require.Positive(t, f.Rules[0].Accepted, "the restarted router's rule accepted port 80")
	require.Positive(t, f.Dropped, "the restarted router dropped port 81, port 7 and the ping")

	// When the service returns, a change of policy reaches the router.
	s.Start(t)
	meshtest.WaitFor(t, "router connected", func() bool { return router.Status().ControlConnected })
	_, err := s.AdminClient(t).DeletePolicy(ctxT(t), api.DefaultZone)
	require.NoError(t, err)
	meshtest.WaitFor(t, "no filter", func() bool { return !router.Status().Filter.Active })
	tcpGreeting(t, spoke, "172.24.0.10:81", "net24")
	tcpEcho(t, spoke, addr.String())
}
