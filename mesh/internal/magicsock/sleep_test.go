package magicsock

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/wiremesh/wiremesh/mesh/internal/wireguard/device"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/mesh/internal/udpbind"
)

// TestAsleepPeerWokenByFirstMessage: b's device does not have a (a sleeps
// in b's Conn); a sends one packet to b. b's Conn must catch a's
// handshake initiation, have a configured (the wake function) and then
// deliver the initiation, so that the one packet arrives: without the
// wake, b's device drops the initiation and every retry of it, and the
// packet never arrives. Once with a known by its address, once with a
// known to b's Conn without any candidate (b learns a's address from a's
// probes, or, if the initiation comes first, reads a's key from it: see
// TestWakeByInitiationFromUnknownAddress).
func TestAsleepPeerWokenByFirstMessage(t *testing.T) {
	for _, known := range []bool{true, false} {
		t.Run(fmt.Sprintf("known_address=%v", known), func(t *testing.T) {
			a, b := newNode(t, 1, Config{}), newNode(t, 2, Config{})
			a.addPeer(t, b, b.local())
			var cands []api.Candidate
			if known {
				cands = a.local()
			}
			b.setPeer(a, cands)
			var mu sync.Mutex
			var woken []api.Key
			b.conn.SetWake(func(k api.Key) {
				mu.Lock()
				woken = append(woken, k)
				mu.Unlock()
				cfg := fmt.Sprintf("public_key=%s\nendpoint=%s\nallowed_ip=%s/32\n", hex.EncodeToString(a.pub[:]), EndpointString(a.pub), a.addr)
				require.NoError(t, b.dev.IpcSet(cfg))
				b.conn.SetAsleep(k, false)
			})
			b.conn.SetAsleep(a.pub, true)
			require.EqualValues(t, 1, b.conn.asleepN.Load())

			pkt := tuntest.Ping(b.addr, a.addr)
			a.tun.Outbound <- pkt // once: WireGuard queues it while it handshakes
			select {
			case got := <-b.tun.Inbound:
				require.Equal(t, pkt, got)
			case <-time.After(20 * time.Second):
				t.Fatal("the packet to a peer asleep never arrived")
			}
			// The initiation that woke a was handed on (not a's retry,
			// which would have carried the packet all the same).
			require.GreaterOrEqual(t, b.conn.WokenDelivered(), uint64(1), "woken initiations delivered")
			mu.Lock()
			require.NotEmpty(t, woken)
			for _, k := range woken {
				require.Equal(t, a.pub, k)
			}
			mu.Unlock()
			require.EqualValues(t, 0, b.conn.asleepN.Load())
		})
	}
}

// TestWakeByInitiationFromUnknownAddress: an initiation from an address
// no peer is known by is read (initiatorKey), wakes the sleeping peer it
// names, and is delivered with the endpoint it came from; other messages
// from unknown addresses pass through untouched.
func TestWakeByInitiationFromUnknownAddress(t *testing.T) {
	bPriv, bPub := newTestKeys()
	aPriv, aPub := newTestKeys()
	c, fns := openWithPeer(t, bPriv, aPub)
	woke := make(chan api.Key, 4)
	c.SetWake(func(k api.Key) {
		woke <- k
		c.SetAsleep(k, false)
	})
	c.SetAsleep(aPub, true)

	init := wgInitiationFrom(t, aPriv, bPub)
	from := udpbind.NewEndpoint(netip.MustParseAddrPort("192.0.2.1:4242"))
	data := make([]byte, 32)
	data[0] = 4 // a transport message
	fn := func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		sizes[0], eps[0] = copy(bufs[0], init), from
		sizes[1], eps[1] = copy(bufs[1], data), from
		return 2, nil
	}
	bufs := [][]byte{make([]byte, 1500), make([]byte, 1500)}
	sizes, eps := make([]int, 2), make([]conn.Endpoint, 2)
	n, err := c.wrapReceive(fn, false)(bufs, sizes, eps)
	require.NoError(t, err)
	require.Equal(t, 1, n, "the initiation is taken out of the batch")
	require.Equal(t, data, bufs[0][:sizes[0]])
	select {
	case k := <-woke:
		require.Equal(t, aPub, k)
	case <-time.After(20 * time.Second):
		t.Fatal("the peer was not woken")
	}

	// Delivered through the socket's receive function (which carries the
	// relay's queue), from where it came.
	relayFn := fns[0]
	got := make(chan error, 1)
	go func() {
		n, err := relayFn(bufs, sizes, eps)
		if err == nil && (n != 1 || !bytes.Equal(bufs[0][:sizes[0]], init) || eps[0] != conn.Endpoint(from)) {
			err = fmt.Errorf("delivered %d messages, first %d bytes from %v", n, sizes[0], eps[0])
		}
		got <- err
	}()
	select {
	case err := <-got:
		require.NoError(t, err)
	case <-time.After(20 * time.Second):
		t.Fatal("the initiation was not delivered")
	}
}

// TestAsleepPeerProbedSlowly: a peer asleep is not probed at the
// heartbeat (a full mesh of trimmed peers would ping each of them every
// 2 s), yet keeps its direct path (no pong for longer than trustTimeout
// must not drop it: that would bring up the relay for a peer nobody talks
// to); once woken it is probed at once and its path answers.
func TestAsleepPeerProbedSlowly(t *testing.T) {
	a, b := newNode(t, 1, Config{}), newNode(t, 2, Config{})
	a.addPeer(t, b, b.local())
	b.addPeer(t, a, a.local())
	ping(t, a, b)
	waitPath(t, a, b, PathDirect)
	// b's keepalive would wake b in a: this wake function leaves it
	// asleep (its messages are dropped), the test wakes it itself.
	a.conn.SetWake(func(api.Key) {})
	a.conn.SetAsleep(b.pub, true)

	// The probe scheduled before it fell asleep may still go out.
	time.Sleep(heartbeat + 500*time.Millisecond)
	before := a.conn.PingsSent()
	time.Sleep(3*heartbeat + trustTimeout/2)
	require.Equal(t, before, a.conn.PingsSent(), "pings to a peer asleep")
	require.Equal(t, PathDirect, a.conn.PeerPath(b.pub).Path, "the path of a peer asleep stays")

	woke := time.Now()
	a.conn.SetAsleep(b.pub, false)
	p := a.conn.peer(b.pub, false)
	require.Eventually(t, func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.best != nil && p.best.lastPong.After(woke)
	}, time.Second, 5*time.Millisecond, "the woken peer's path answers a probe at once")
	require.Greater(t, a.conn.PingsSent(), before)
	require.Equal(t, PathDirect, a.conn.PeerPath(b.pub).Path)
	ping(t, a, b)
}

// forgedInitiations returns n initiations to pub with a valid mac1 and
// random ephemeral keys: anyone who knows pub can make them.
func forgedInitiations(t *testing.T, pub api.Key, n int) [][]byte {
	t.Helper()
	aPriv, _ := newTestKeys()
	tmpl := wgInitiationFrom(t, aPriv, pub)
	var cg device.CookieGenerator
	cg.Init(device.NoisePublicKey(pub))
	out := make([][]byte, n)
	for i := range out {
		b := bytes.Clone(tmpl)
		_, _ = rand.Read(b[initEphemeralOff : initEphemeralOff+32])
		cg.AddMacs(b)
		out[i] = b
	}
	return out
}

// TestForgedInitiationFloodRateLimited: a flood of initiations with a
// valid mac1 from addresses no peer is known by, while a peer is asleep,
// costs at most the rate limiter's X25519s (initLimiter), and the data in
// the same batches still passes.
func TestForgedInitiationFloodRateLimited(t *testing.T) {
	bPriv, bPub := newTestKeys()
	_, aPub := newTestKeys()
	c, _ := openWithPeer(t, bPriv, aPub)
	c.SetWake(func(api.Key) {})
	c.SetAsleep(aPub, true)

	const n = 2000
	forged := forgedInitiations(t, bPub, n)
	data := make([]byte, 32)
	data[0] = 4 // a transport message
	i := 0
	fn := func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		// 1,000 sources, two initiations each, and one data message.
		from := udpbind.NewEndpoint(netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 4242))
		sizes[0], eps[0] = copy(bufs[0], forged[i]), from
		sizes[1], eps[1] = copy(bufs[1], forged[i+1]), from
		sizes[2], eps[2] = copy(bufs[2], data), from
		i += 2
		return 3, nil
	}
	recv := c.wrapReceive(fn, false)
	bufs := [][]byte{make([]byte, 1500), make([]byte, 1500), make([]byte, 1500)}
	sizes, eps := make([]int, 3), make([]conn.Endpoint, 3)
	before := x25519Calls.Load()
	start := time.Now()
	passed := 0
	for i < n {
		k, err := recv(bufs, sizes, eps)
		require.NoError(t, err)
		for j := 0; j < k; j++ {
			if bytes.Equal(bufs[j][:sizes[j]], data) {
				passed++
			}
		}
	}
	elapsed := time.Since(start)
	calls := x25519Calls.Load() - before
	limit := uint64(initLimitBurst + initLimitRate*elapsed.Seconds() + 1)
	require.LessOrEqual(t, calls, limit, "X25519s for %d forged initiations in %v", n, elapsed)
	require.Greater(t, calls, uint64(0), "some were read")
	require.Equal(t, n/2, passed, "data messages passed")

	// One source alone gets its own bucket's burst, not the node's.
	l := newInitLimiter()
	now := time.Now()
	a := netip.MustParseAddr("192.0.2.7")
	got := 0
	for range 100 {
		if l.allow(a, now) {
			got++
		}
	}
	require.Equal(t, initLimitPerSourceBurst, got)
	require.True(t, l.allow(netip.MustParseAddr("192.0.2.8"), now) || l.allow(netip.MustParseAddr("192.0.2.9"), now))
	require.True(t, l.allow(a, now.Add(time.Second)), "refilled")
}

// TestAsleepPeerWokenOnlyByInitiation: from a sleeping peer's known
// address, only a handshake initiation with a valid mac1 for this node
// wakes it; a transport message, a cookie reply and an initiation with a
// bad mac1 go to wireguard-go as before.
func TestAsleepPeerWokenOnlyByInitiation(t *testing.T) {
	bPriv, bPub := newTestKeys()
	aPriv, aPub := newTestKeys()
	c := New(Config{PrivateKey: bPriv, LocalAddrs: func() []netip.Addr { return nil }})
	_, _, err := c.Open(0)
	require.NoError(t, err)
	defer c.Close()
	aAddr := netip.MustParseAddrPort("192.0.2.1:4242")
	c.SetPeers([]PeerInfo{{Key: aPub, Name: "a", Candidates: []api.Candidate{{Addr: aAddr, Type: api.CandidateLocal}}}})
	woke := make(chan api.Key, 4)
	c.SetWake(func(k api.Key) { woke <- k })
	c.SetAsleep(aPub, true)

	from := udpbind.NewEndpoint(aAddr)
	data := make([]byte, 32)
	data[0] = 4 // a transport message
	cookie := make([]byte, 64)
	cookie[0] = 3
	badMAC := wgInitiationFrom(t, aPriv, bPub)
	badMAC[initMAC1Off] ^= 1
	msgs := [][]byte{data, cookie, badMAC}
	fn := func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		for i, m := range msgs {
			sizes[i], eps[i] = copy(bufs[i], m), from
		}
		return len(msgs), nil
	}
	bufs := [][]byte{make([]byte, 1500), make([]byte, 1500), make([]byte, 1500)}
	sizes, eps := make([]int, 3), make([]conn.Endpoint, 3)
	n, err := c.wrapReceive(fn, false)(bufs, sizes, eps)
	require.NoError(t, err)
	require.Equal(t, len(msgs), n, "passed on")
	select {
	case <-woke:
		t.Fatal("woken by a message that is not an initiation")
	case <-time.After(200 * time.Millisecond):
	}

	msgs = [][]byte{wgInitiationFrom(t, aPriv, bPub)}
	n, err = c.wrapReceive(fn, false)(bufs, sizes, eps)
	require.NoError(t, err)
	require.Equal(t, 0, n, "the initiation is caught")
	select {
	case k := <-woke:
		require.Equal(t, aPub, k)
	case <-time.After(20 * time.Second):
		t.Fatal("not woken by an initiation")
	}
}

// TestWokenInitiationsBoundedAndDelivered: a peer waking keeps at most
// maxWakeQueue initiations, each in a buffer of its own size (not a
// pooled message buffer), and delivers them even when the receive function's
// queue is full at that moment (waiting for room, not dropping them).
func TestWokenInitiationsBoundedAndDelivered(t *testing.T) {
	bPriv, bPub := newTestKeys()
	aPriv, aPub := newTestKeys()
	c, fns := openWithPeer(t, bPriv, aPub)
	release, woke := make(chan struct{}), make(chan struct{})
	c.SetWake(func(k api.Key) {
		<-release
		c.SetAsleep(k, false)
		close(woke)
	})
	c.SetAsleep(aPub, true)
	p := c.peer(aPub, false)

	from := udpbind.NewEndpoint(netip.MustParseAddrPort("192.0.2.1:4242"))
	var inits [][]byte
	for range 4 {
		inits = append(inits, wgInitiationFrom(t, aPriv, bPub))
	}
	i := 0
	fn := func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		sizes[0], eps[0] = copy(bufs[0], inits[i]), from
		i++
		return 1, nil
	}
	recv := c.wrapReceive(fn, false)
	bufs, sizes, eps := [][]byte{make([]byte, 1500)}, make([]int, 1), make([]conn.Endpoint, 1)
	for range inits {
		n, err := recv(bufs, sizes, eps)
		require.NoError(t, err)
		require.Zero(t, n)
	}
	p.mu.Lock()
	require.Len(t, p.wakeQ, maxWakeQueue)
	for _, m := range p.wakeQ {
		require.Less(t, cap(*m.buf), 256, "a woken initiation's buffer")
	}
	p.mu.Unlock()

	// The receive function's queue is full when the peer wakes.
	for range relayInQueue {
		b := append([]byte(nil), aPub[:]...)
		require.True(t, c.relay.enqueue(relayIn{p: p, buf: &b, released: true}))
	}
	close(release)
	<-woke
	// Give wakePeer time to find the queue full: a delivery that does
	// not wait for room drops them now.
	time.Sleep(100 * time.Millisecond)

	got := make(chan [][]byte, 1)
	go func() {
		var out [][]byte
		for len(out) < maxWakeQueue {
			n, err := fns[0](bufs, sizes, eps)
			if err != nil {
				break
			}
			for j := 0; j < n; j++ {
				out = append(out, bytes.Clone(bufs[j][:sizes[j]]))
			}
		}
		got <- out
	}()
	select {
	case out := <-got:
		require.Equal(t, inits[:maxWakeQueue], out)
	case <-time.After(10 * time.Second):
		t.Fatal("the woken initiations were not delivered")
	}
	require.EqualValues(t, maxWakeQueue, c.wokenDelivered.Load())
}

// openWithPeer opens a Conn with the private key priv, no local
// addresses and one peer, "a", with the key peer; it is closed when the
// test ends.
func openWithPeer(t *testing.T, priv, peer api.Key) (*Conn, []conn.ReceiveFunc) {
	t.Helper()
	c := New(Config{PrivateKey: priv, LocalAddrs: func() []netip.Addr { return nil }})
	fns, _, err := c.Open(0)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	c.SetPeers([]PeerInfo{{Key: peer, Name: "a"}})
	return c, fns
}
