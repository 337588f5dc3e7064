package mesh_test

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/mesh"
	"github.com/wiremesh/wiremesh/meshtest"
)

// A userspace router without handlers forwards to real listeners on its
// host under a policy: the spoke reaches 198.18.77.1 port 8080 only; port
// 8081 of the same host, listening as well, is refused, and so is the
// router's own service. Like TestUserspaceRouterForwardsToHost it needs
// root and runs itself again inside a namespace whose lo carries
// 198.18.77.1, so no traffic leaves the namespace.
func TestPolicyUserspaceRouterForwardsToHost(t *testing.T) {
	if !runInRouterNetNS(t) {
		return
	}

	live := routerNetNSAddr
	for _, port := range []uint16{8080, 8081} {
		hostGreeter(t, netip.AddrPortFrom(live, port))
	}
	s := meshtest.NewServer(t)
	p := netip.MustParsePrefix("198.18.77.0/24")
	router := meshtest.Join(t, s, mesh.WithHostname("router"), mesh.WithChildPrefix(p))
	spoke := meshtest.Join(t, s, mesh.WithHostname("spoke"))
	meshtest.WaitPeers(t, router, 1)
	meshtest.WaitPeers(t, spoke, 1)
	echoServer(t, router)
	hostGreeting(t, spoke, "198.18.77.1:8081")

	setPolicy(t, s, router, 1, `{"rules": [
  {"from": ["spoke"], "to": ["198.18.77.0/24:8080"], "proto": "tcp"}
]}`)
	hostGreeting(t, spoke, "198.18.77.1:8080")
	refused(t, spoke, "198.18.77.1:8081")
	refused(t, spoke, router.Addr().String()+":7")
	pingLost(t, spoke, "198.18.77.1")
	f := router.Status().Filter
	require.Positive(t, f.Rules[0].Accepted, "the rule accepted the port-8080 connection")
	require.Positive(t, f.Dropped, "port 8081, port 7 and the ping were dropped")
}

// hostGreeter serves TCP on ap, a real host address: each connection gets
// "host LOCAL\n" and is closed.
func hostGreeter(t *testing.T, ap netip.AddrPort) {
	t.Helper()
	l, err := net.Listen("tcp", ap.String())
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "host %s\n", c.LocalAddr())
			c.Close()
		}
	}()
}

// hostGreeting dials addr through the mesh and checks that the host's
// listener at addr answered.
func hostGreeting(t *testing.T, n *mesh.Node, addr string) {
	t.Helper()
	c, err := n.Dial(ctxT(t), "tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "host "+addr+"\n", line)
}
