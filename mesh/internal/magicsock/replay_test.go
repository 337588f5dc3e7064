package magicsock

import (
	"bytes"
	"crypto/rand"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
)

// fakePeer is a member's key on a plain UDP socket: it makes probes by
// hand, as an attacker replaying captured ones would send them.
type fakePeer struct {
	priv api.Key
	mac  []byte // shared with the node under test
}

func newFakePeer(t *testing.T, n *node) fakePeer {
	priv := newKey()
	mac, err := discoKey(priv, n.pub)
	require.NoError(t, err)
	return fakePeer{priv: priv, mac: mac}
}

func (f fakePeer) ping(at time.Time, tx txID) []byte {
	return appendDisco(nil, discoPing, pubOf(f.priv), at, tx, f.mac)
}

func udpSocket(t *testing.T) *net.UDPConn {
	s, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

func sockAddr(s *net.UDPConn) netip.AddrPort { return s.LocalAddr().(*net.UDPAddr).AddrPort() }

// pongFor reports whether s receives a pong for tx within d (the node's
// own pings to s are skipped).
func (f fakePeer) pongFor(t *testing.T, s *net.UDPConn, tx txID, d time.Duration) bool {
	t.Helper()
	deadline := time.Now().Add(d)
	buf := make([]byte, 1500)
	for {
		require.NoError(t, s.SetReadDeadline(deadline))
		n, _, err := s.ReadFromUDPAddrPort(buf)
		if err != nil {
			return false
		}
		kind, _, got, err := parseDisco(buf[:n], f.mac)
		if err == nil && kind == discoPong && got == tx {
			return true
		}
	}
}

func (n *node) udpAddr() netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), n.port)
}

func (n *node) candidatesOf(k api.Key) []netip.AddrPort {
	p := n.conn.peer(k, false)
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []netip.AddrPort
	for _, pc := range p.cands {
		out = append(out, pc.addr)
	}
	return out
}

// TestReplayedPingGetsNoPong: a ping is answered once. The same bytes
// again, from the same or another address, get no pong and plant no
// address; neither does a correctly signed ping made outside the time
// window. A new ping from the other address is answered (what the
// refusals refused was the replay).
func TestReplayedPingGetsNoPong(t *testing.T) {
	a := newNode(t, 1, Config{})
	b := newFakePeer(t, a)
	sock, evil := udpSocket(t), udpSocket(t)
	a.conn.SetPeers([]PeerInfo{{Key: pubOf(b.priv), Name: "b",
		Candidates: []api.Candidate{{Addr: sockAddr(sock), Type: api.CandidateLocal}}}})

	tx := newTxID()
	ping := b.ping(time.Now(), tx)
	_, err := sock.WriteToUDPAddrPort(ping, a.udpAddr())
	require.NoError(t, err)
	require.True(t, b.pongFor(t, sock, tx, 10*time.Second), "a fresh ping is answered")

	_, err = sock.WriteToUDPAddrPort(ping, a.udpAddr())
	require.NoError(t, err)
	require.False(t, b.pongFor(t, sock, tx, 500*time.Millisecond), "replayed from its source")
	_, err = evil.WriteToUDPAddrPort(ping, a.udpAddr())
	require.NoError(t, err)
	require.False(t, b.pongFor(t, evil, tx, 500*time.Millisecond), "replayed from elsewhere")

	for _, at := range []time.Time{time.Now().Add(-discoWindow - time.Second), time.Now().Add(discoWindow + time.Second)} {
		old := newTxID()
		_, err = evil.WriteToUDPAddrPort(b.ping(at, old), a.udpAddr())
		require.NoError(t, err)
		require.False(t, b.pongFor(t, evil, old, 500*time.Millisecond), "made at %v", at)
	}
	require.NotContains(t, a.candidatesOf(pubOf(b.priv)), sockAddr(evil), "no replay planted the address")

	fresh := newTxID()
	_, err = evil.WriteToUDPAddrPort(b.ping(time.Now(), fresh), a.udpAddr())
	require.NoError(t, err)
	require.True(t, b.pongFor(t, evil, fresh, 10*time.Second), "a new ping from there is answered")
}

// TestPingDoesNotChangePath: a valid ping from a new address adds an
// address to probe but leaves the path alone; a ping from another peer's
// address does not even add it (that would unmap the address from its
// owner).
func TestPingDoesNotChangePath(t *testing.T) {
	a, b := newNode(t, 1, Config{}), newNode(t, 2, Config{})
	a.addPeer(t, b, b.local())
	b.addPeer(t, a, a.local())
	ping(t, a, b)
	before := waitPath(t, a, b, PathDirect)

	other := newFakePeer(t, a)
	otherSock := udpSocket(t)
	a.setPeer(&node{name: "other", pub: pubOf(other.priv)}, []api.Candidate{{Addr: sockAddr(otherSock), Type: api.CandidateLocal}})

	bAsFake := fakePeer{priv: b.priv}
	var err error
	bAsFake.mac, err = discoKey(b.priv, a.pub)
	require.NoError(t, err)

	// From a new address: answered and probed, not chosen.
	stranger := udpSocket(t)
	tx := newTxID()
	_, err = stranger.WriteToUDPAddrPort(bAsFake.ping(time.Now(), tx), a.udpAddr())
	require.NoError(t, err)
	require.True(t, bAsFake.pongFor(t, stranger, tx, 10*time.Second))
	// Learned right after the pong went out (on the receive goroutine).
	require.Eventually(t, func() bool { return slices.Contains(a.candidatesOf(b.pub), sockAddr(stranger)) },
		10*time.Second, 5*time.Millisecond, "the stranger's address is probed")
	require.Equal(t, before.Endpoint, a.conn.PeerPath(b.pub).Endpoint)

	// From the other peer's address: not learned; the address stays the
	// other peer's.
	tx = newTxID()
	_, err = otherSock.WriteToUDPAddrPort(bAsFake.ping(time.Now(), tx), a.udpAddr())
	require.NoError(t, err)
	require.True(t, bAsFake.pongFor(t, otherSock, tx, 10*time.Second))
	require.NotContains(t, a.candidatesOf(b.pub), sockAddr(otherSock))
	require.Equal(t, pubOf(other.priv), (*a.conn.byAddr.Load())[sockAddr(otherSock)].key)
	require.Equal(t, before.Endpoint, a.conn.PeerPath(b.pub).Endpoint)
}

// lockedBuffer is a log sink safe for concurrent writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestOlderProbeFormatIsLoggedOncePerPeer: a probe in format v1 (no time,
// 65 bytes) from a peer says in the log, once per peer, that the peer
// runs an older wiremesh and gets no direct path until it upgrades; a v1
// probe claiming a key that is no peer's logs nothing. The v1 probes are
// still dropped: no pong.
func TestOlderProbeFormatIsLoggedOncePerPeer(t *testing.T) {
	var logs lockedBuffer
	a := newNode(t, 1, Config{Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))})
	b := newFakePeer(t, a)
	sock := udpSocket(t)
	a.conn.SetPeers([]PeerInfo{{Key: pubOf(b.priv), Name: "old-b",
		Candidates: []api.Candidate{{Addr: sockAddr(sock), Type: api.CandidateLocal}}}})
	v1 := func(sender api.Key) []byte {
		p := append([]byte(discoMagic), discoPing)
		p = append(p, sender[:]...)
		tail := make([]byte, discoTxLen+discoMACLen)
		_, _ = rand.Read(tail)
		return append(p, tail...)
	}
	require.Len(t, v1(pubOf(b.priv)), discoV1Len)

	for range 3 {
		_, err := sock.WriteToUDPAddrPort(v1(pubOf(b.priv)), a.udpAddr())
		require.NoError(t, err)
		_, err = sock.WriteToUDPAddrPort(v1(pubOf(newKey())), a.udpAddr())
		require.NoError(t, err)
	}
	// A v2 ping sent after them is answered once they were all handled.
	tx := newTxID()
	_, err := sock.WriteToUDPAddrPort(b.ping(time.Now(), tx), a.udpAddr())
	require.NoError(t, err)
	require.True(t, b.pongFor(t, sock, tx, 10*time.Second), "v2 is answered; v1 is not")
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "probe format v1") }, 10*time.Second, 5*time.Millisecond)
	out := logs.String()
	require.Equal(t, 1, strings.Count(out, "probe format v1"), "once per peer:\n%s", out)
	require.Contains(t, out, "peer=old-b")
	require.Contains(t, out, "level=INFO")
}
