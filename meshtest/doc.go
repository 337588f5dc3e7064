// Package meshtest runs a wiremesh coordination service in-process, so that
// tests (ours and yours) can join userspace nodes and send real traffic
// through real WireGuard tunnels on 127.0.0.1: no root, no TUN device, no
// fixed port, nothing but loopback.
//
// [NewServer] starts the service for one test: TLS with a self-signed
// certificate (the join token pins it, so joining takes the same path as in
// production), STUN, and a reusable join token of zone "default" in
// [Server.Token]. [Join] joins a node and closes it when the test ends;
// [WaitPeers] and [WaitFor] poll with a deadline instead of sleeping.
// [Server.Stop] and [Server.Start] take the service away and bring it back
// on the same URL and state, to test what members do meanwhile.
//
//	func TestEcho(t *testing.T) {
//		s := meshtest.NewServer(t)
//		a := meshtest.Join(t, s)
//		b := meshtest.Join(t, s, mesh.WithChildPrefix(netip.MustParsePrefix("10.88.0.0/24")))
//		meshtest.WaitPeers(t, a, 1)
//		c, err := a.Dial(ctx, "tcp", netip.AddrPortFrom(b.Addr(), 80).String())
//		...
//	}
//
// Outside a test (an Example, a TestMain, a demo) use [Open] and
// [Server.Close], and join with [mesh.Join] and [Server.Token].
package meshtest
