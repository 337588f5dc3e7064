// Package netlab builds throwaway multi-host topologies from network
// namespaces for privileged (root, Linux) end-to-end tests.
//
// # Model
//
// A [Lab] is one test's private world. Every object it makes lives inside
// network namespaces it creates — hosts ([Lab.Host]), switches ([Lab.Switch],
// a bridge in a namespace of its own, e.g. the "WAN"), veth pairs
// ([Lab.Connect], [Lab.Wire], [Lab.AttachToBridge]) and bridges inside hosts
// ([Host.Bridge]). Nothing is created in the host's namespace, so the host's
// firewall (Docker sets the FORWARD policy to DROP) and its real networks
// never take part: traffic only ever flows between namespaces the lab made.
//
// Every namespace is named "wm<run id>-<name>", where the run id is six
// random hex digits, so parallel runs never collide. A state file
// /run/wiremesh-netlab/<run id> records the owning process (pid and start
// time); [New] sweeps namespaces of runs whose process is gone, so a crashed
// run's leftovers disappear on the next run. [New] registers a cleanup that
// stops every process, kills whatever else still runs in the lab's
// namespaces and deletes the namespaces (taking their veths, bridges, routes
// and nftables tables with them), even when the test failed.
//
// A new host starts as a plain host: lo up, IPv4 forwarding off (namespaces
// would otherwise inherit the host's setting), loose reverse-path filtering
// (rp_filter=2, the usual distribution default) and no bridge netfilter.
//
// # Probes without external tools
//
// [Host.Ping], [Host.DialTCP] and [Host.ServeTCP] run inside the namespace
// from Go: a goroutine locks its OS thread, enters the namespace with
// setns(2) and creates the socket there; a socket stays in the namespace it
// was created in, so the rest of the work happens on ordinary goroutines.
// The locked thread is never unlocked, so the Go runtime discards it and a
// namespace switch can never leak into other goroutines. This needs no
// TestMain hook and no iputils: Ping sends ICMP echo on a raw socket.
//
// # Example
//
//	func TestSpokeBehindNAT(t *testing.T) {
//		netlab.RequireRoot(t)
//		bin := netlab.BuildBinary(t, "github.com/wiremesh/wiremesh/cmd/wiremesh")
//		l := netlab.New(t)
//		wan := l.Switch("wan")
//		svc := l.Host("service")
//		l.Connect(svc, wan, netip.MustParsePrefix("192.0.2.1/24"))
//		nat := l.Host("nat")
//		l.Connect(nat, wan, netip.MustParsePrefix("192.0.2.9/24"))
//		spoke := l.Host("spoke")
//		l.Wire(spoke, netip.MustParsePrefix("10.99.0.2/24"), nat, netip.MustParsePrefix("10.99.0.1/24"))
//		spoke.DefaultRoute(netip.MustParseAddr("10.99.0.1"))
//		nat.EnableForwarding()
//		nat.Masquerade("wan")
//		svc.Start(t, bin, "serve", "--listen=192.0.2.1:8443")
//		... // start routers and the spoke the same way, then:
//		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
//		defer cancel()
//		require.NoError(t, spoke.Ping(ctx, netip.MustParseAddr("172.24.0.2")))
//	}
package netlab
