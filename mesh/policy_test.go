package mesh_test

import (
	"bufio"
	"context"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/mesh"
	"github.com/wiremesh/wiremesh/meshtest"
)

// refused checks that a TCP connection from n to addr does not open
// (its SYN is dropped or reset) within a second.
func refused(t *testing.T, n *mesh.Node, addr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	c, err := n.Dial(ctx, "tcp", addr)
	if err == nil {
		c.Close()
		t.Fatalf("%s: connection opened, want refused", addr)
	}
}

// pingLost checks that no echo reply comes back from dst within a second.
func pingLost(t *testing.T, n *mesh.Node, dst string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := n.Ping(ctx, netip.MustParseAddr(dst))
	require.Error(t, err, "ping %s answered, want lost", dst)
}

// setPolicy sets the default zone's policy and waits until node
// enforces a filter of rules rules (not a speed goal: the time it took is
// logged).
func setPolicy(t *testing.T, s *meshtest.Server, node *mesh.Node, rules int, doc string) {
	t.Helper()
	start := time.Now()
	_, err := s.AdminClient(t).SetPolicy(ctxT(t), api.DefaultZone, []byte(doc))
	require.NoError(t, err)
	meshtest.WaitFor(t, "the new filter", func() bool {
		f := node.Status().Filter
		return f.Active && len(f.Rules) == rules
	})
	t.Logf("filter in force %v after the policy was set", time.Since(start))
}

// The scenario in userspace mode: a policy lets the spoke reach the
// router's 172.24.0.0/24 on port 80 (and udp 53) only.
func TestPolicyEnforcedUserspace(t *testing.T) {
	s := meshtest.NewServer(t)
	p1, p2 := netip.MustParsePrefix("172.24.0.0/24"), netip.MustParsePrefix("172.28.0.0/24")
	router := meshtest.Join(t, s, mesh.WithHostname("router"),
		mesh.WithChildPrefix(p1), mesh.WithPrefixHandler(p1, serveAs("net24")),
		mesh.WithChildPrefix(p2), mesh.WithPrefixHandler(p2, serveAs("net28")))
	spoke := meshtest.Join(t, s, mesh.WithHostname("spoke"))
	meshtest.WaitPeers(t, router, 1)
	meshtest.WaitPeers(t, spoke, 1)
	echoServer(t, router)
	echoServer(t, spoke)
	require.False(t, router.Status().Filter.Active)

	// Without a policy everything is open; keep a connection open across
	// the policy changes.
	tcpGreeting(t, spoke, "172.28.0.10:81", "net28")
	tcpEcho(t, spoke, router.Addr().String())
	open, err := spoke.Dial(ctxT(t), "tcp", "172.24.0.10:80")
	require.NoError(t, err)
	defer open.Close()
	openR := bufio.NewReader(open)
	_, err = openR.ReadString('\n')
	require.NoError(t, err)
	stillOpen := func() {
		t.Helper()
		open.SetDeadline(time.Now().Add(10 * time.Second))
		_, err := open.Write([]byte("ping"))
		require.NoError(t, err)
		got := make([]byte, 4)
		_, err = io.ReadFull(openR, got)
		require.NoError(t, err, "the connection opened before the change broke")
		require.Equal(t, "ping", string(got))
	}

	setPolicy(t, s, router, 2, `{"rules": [
  {"from": ["spoke"], "to": ["172.24.0.0/24:80"], "proto": "tcp"},
  {"from": ["spoke"], "to": ["172.24.0.0/24:53"], "proto": "udp"}
]}`)
	meshtest.WaitFor(t, "the spoke's filter", func() bool { return spoke.Status().Filter.Active })
	stillOpen()
	tcpGreeting(t, spoke, "172.24.0.10:80", "net24")
	udpGreeting(t, spoke, "172.24.0.10:53", "net24") // the reply passes the spoke's deny-all filter
	refused(t, spoke, "172.24.0.10:81")
	refused(t, spoke, "172.28.0.10:80")
	refused(t, spoke, router.Addr().String()+":7") // the router's own service
	pingLost(t, spoke, "172.24.0.10")
	pingLost(t, spoke, router.Addr().String())
	refused(t, router, spoke.Addr().String()+":7") // nothing allows router -> spoke
	// The router still reaches its own services, and its outbound flows
	// come back through the spoke's filter: replies pass.
	st := router.Status().Filter
	require.Positive(t, st.Rules[0].Accepted, "rule 1 accepted the spoke's port-80 connection")
	require.Positive(t, st.Rules[1].Accepted, "rule 2 accepted the spoke's udp flow")
	require.Positive(t, st.Dropped, "port 81, 172.28 and the pings were dropped")
	require.Equal(t, 1, st.Rules[0].Rule)

	// Opening port 81 and the router's own port 7, closing port 80: the
	// connection open on port 80 keeps working, new ones are refused.
	setPolicy(t, s, router, 2, `{"rules": [
  {"from": ["spoke"], "to": ["172.24.0.0/24:81"], "proto": "tcp"},
  {"from": ["spoke"], "to": ["router:7"], "proto": "tcp"}
]}`)
	stillOpen()
	tcpGreeting(t, spoke, "172.24.0.10:81", "net24")
	tcpEcho(t, spoke, router.Addr().String())
	refused(t, spoke, "172.24.0.10:80")
	stillOpen()

	// Removing the policy opens everything again.
	_, err = s.AdminClient(t).DeletePolicy(ctxT(t), api.DefaultZone)
	require.NoError(t, err)
	meshtest.WaitFor(t, "no filter", func() bool { return !router.Status().Filter.Active })
	tcpGreeting(t, spoke, "172.28.0.10:80", "net28")
	_, err = spoke.Ping(ctxT(t), netip.MustParseAddr("172.24.0.10"))
	require.NoError(t, err)
}
