package magicsock

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.zx2c4.com/wireguard/conn"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/mesh/internal/udpbind"
)

// TestCrossingInitiations: when both sides of a pair initiate at once,
// the side with the higher key answers the other's initiation and the
// side with the lower key withholds it (its own is on the way), so one
// handshake completes instead of two that each side drops the answer to.
// A withheld initiation is dropped when the answer to ours comes, and
// delivered after all when it does not.
func TestCrossingInitiations(t *testing.T) {
	from := netip.MustParseAddrPort("192.0.2.7:51820")
	initiation := make([]byte, 148)
	binary.LittleEndian.PutUint32(initiation, wgInitiation)
	response := make([]byte, 92)
	binary.LittleEndian.PutUint32(response, wgResponse)

	// receive runs one datagram from "from" through the Conn's filter.
	receive := func(c *Conn, b []byte) (int, conn.Endpoint) {
		fn := c.wrapReceive(func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
			sizes[0] = copy(bufs[0], b)
			eps[0] = udpbind.NewEndpoint(from)
			return 1, nil
		}, false)
		bufs, sizes, eps := [][]byte{make([]byte, 2000)}, []int{0}, []conn.Endpoint{nil}
		n, err := fn(bufs, sizes, eps)
		require.NoError(t, err)
		return n, eps[0]
	}
	for _, tt := range []struct {
		name      string
		lowerKey  bool // this side's key is the lower one
		sentAgo   time.Duration
		wantDrops bool
	}{
		{"lower key keeps its own", true, 10 * time.Millisecond, true},
		{"higher key answers", false, 10 * time.Millisecond, false},
		{"not crossing: ours is old", true, 2 * initCrossWindow, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var c *Conn
			var peerKey api.Key
			for {
				c = New(Config{PrivateKey: newKey()})
				peerKey = pubOf(newKey())
				if pub := c.keys().pub; (string(pub[:]) < string(peerKey[:])) == tt.lowerKey {
					break
				}
			}
			c.SetPeers([]PeerInfo{{Key: peerKey, Candidates: []api.Candidate{{Addr: from, Type: api.CandidateReflexive}}}})
			p := c.peer(peerKey, false)
			p.init.Store(time.Now().Add(-tt.sentAgo).UnixNano())
			n, ep := receive(c, initiation)
			if tt.wantDrops {
				require.Zero(t, n)
				return
			}
			require.Equal(t, 1, n)
			require.Same(t, p.ep, ep, "a known address of the peer gives the peer's endpoint")
		})
	}

	// lowerConn returns an open Conn with the lower key of the pair, and
	// the peer's state, with our initiation just sent.
	lowerConn := func(t *testing.T) (*Conn, *peer) {
		for {
			c := New(Config{PrivateKey: newKey()})
			k := pubOf(newKey())
			if pub := c.keys().pub; string(pub[:]) >= string(k[:]) {
				continue
			}
			_, _, err := c.Open(0)
			require.NoError(t, err)
			t.Cleanup(func() { c.Close() })
			c.SetPeers([]PeerInfo{{Key: k, Candidates: []api.Candidate{{Addr: from, Type: api.CandidateReflexive}}}})
			p := c.peer(k, false)
			p.init.Store(time.Now().UnixNano())
			return c, p
		}
	}
	// released reads what the Conn delivers on its own (not from a socket)
	// within the given time.
	released := func(t *testing.T, c *Conn, within time.Duration) (int, []byte, conn.Endpoint) {
		rr := &relayReader{r: c.relay}
		bufs, sizes, eps := [][]byte{make([]byte, 2000)}, []int{0}, []conn.Endpoint{nil}
		for end := time.Now().Add(within); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
			if n, _ := rr.next(bufs, sizes, eps); n > 0 {
				return n, bufs[0][:sizes[0]], eps[0]
			}
		}
		return 0, nil, nil
	}
	t.Run("a withheld initiation is delivered when no answer comes", func(t *testing.T) {
		c, p := lowerConn(t)
		n, _ := receive(c, initiation)
		require.Zero(t, n)
		n, b, ep := released(t, c, 10*time.Second)
		require.Equal(t, 1, n)
		require.Equal(t, initiation, b)
		require.Same(t, p.ep, ep)
	})
	t.Run("a withheld initiation is dropped when ours is answered", func(t *testing.T) {
		c, _ := lowerConn(t)
		n, _ := receive(c, initiation)
		require.Zero(t, n)
		n, _ = receive(c, response)
		require.Equal(t, 1, n)
		n, _, _ = released(t, c, 3*crossHold)
		require.Zero(t, n, "nothing delivered")
	})

	t.Run("a response ends the crossing window", func(t *testing.T) {
		c := New(Config{PrivateKey: newKey()})
		k := pubOf(newKey())
		c.SetPeers([]PeerInfo{{Key: k, Candidates: []api.Candidate{{Addr: from, Type: api.CandidateReflexive}}}})
		p := c.peer(k, false)
		p.init.Store(time.Now().UnixNano())
		n, _ := receive(c, response)
		require.Equal(t, 1, n)
		require.Zero(t, p.init.Load())
	})
}
