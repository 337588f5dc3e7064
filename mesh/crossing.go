package mesh

import (
	"encoding/binary"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"
)

// Crossed handshakes.
//
// WireGuard has no rule for two peers that initiate at the same time: each
// side answers the other's initiation, which replaces its own handshake
// state, so each side then drops the answer to its own initiation
// ("Received invalid response message") and both wait for wireguard-go's
// retry, 5 s later. The hold (see holdDelay) keeps a member that sees a
// newcomer live from initiating while the newcomer does. One crossing
// remained (TestHoldAnsweredByPeer failed about one run in twenty):
// wireguard-go builds an initiation for queued traffic before it has an
// endpoint to send it to (the peer is held), the peer's own initiation
// arrives and teaches the endpoint while that one is being built, and the
// stale initiation then goes out, after the answer has been decided and
// usually before it is sent. The same happens without a hold whenever an
// initiation from a peer arrives while this side is building one for it.
//
// crossGuard, between wireguard-go and the node's bind, drops an
// initiation to an endpoint from which an initiation arrived less than
// crossWindow ago. That is always right: wireguard-go answers the
// peer's initiation (and then sends no initiation of its own for 5 s, so a
// dropped one is never the only one), the peer completes the handshake
// with the answer and sends a keepalive with the new session at once. If
// the peer's initiation was not answered (a replayed copy, a key this node
// does not know), this node's own initiation would have crossed a
// handshake the peer is waiting on all the same. Initiations that cross
// in flight (both sent before either arrives) are not seen here; the hold
// is what keeps those rare.
const crossWindow = time.Second

// crossGuard is a conn.Bind that drops crossing initiations (see above).
// It forwards everything else unchanged to the bind it wraps.
type crossGuard struct {
	conn.Bind
	log *slog.Logger
	now func() time.Time // time.Now; tests replace it

	// valid reports whether a 148-byte type-1 datagram is an initiation
	// for this node (mac1: magicsock.Conn.IsInitiation); nil takes all.
	valid func([]byte) bool

	// mu guards from and pruned.
	mu     sync.Mutex
	from   map[string]time.Time // endpoint (DstToString) -> last initiation received
	pruned time.Time            // when from was last pruned

	sent atomic.Uint64 // WireGuard messages passed on to the bind (benchmarks count round trips with it)
}

var _ conn.Bind = (*crossGuard)(nil)

// guardCrossing wraps b in a crossGuard.
func guardCrossing(b conn.Bind, log *slog.Logger) *crossGuard {
	return &crossGuard{Bind: b, log: log, now: time.Now, from: map[string]time.Time{}}
}

// WireGuard handshake initiations: message type 1, 148 bytes.
const (
	msgInitiation  = 1
	sizeInitiation = 148
)

func isInitiation(b []byte) bool {
	return len(b) == sizeInitiation && binary.LittleEndian.Uint32(b) == msgInitiation
}

// Open wraps the bind's receive functions so that they record where
// initiations come from. The check costs one length comparison per packet.
func (g *crossGuard) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	fns, actual, err := g.Bind.Open(port)
	if err != nil {
		return nil, 0, err
	}
	out := make([]conn.ReceiveFunc, len(fns))
	for i, fn := range fns {
		out[i] = func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
			n, err := fn(packets, sizes, eps)
			for j := 0; j < n; j++ {
				if sizes[j] == sizeInitiation && isInitiation(packets[j][:sizes[j]]) && eps[j] != nil &&
					(g.valid == nil || g.valid(packets[j][:sizes[j]])) {
					g.received(eps[j].DstToString())
				}
			}
			return n, err
		}
	}
	return out, actual, nil
}

// maxCrossRecords bounds the initiations remembered. Only ones with a
// valid mac1 are (anyone who knows the node's public key can make those),
// and a record matters for crossWindow only: the map is pruned at most
// once per crossWindow (a scan of at most maxCrossRecords entries, O(1)
// amortized per initiation), and a sender that finds it full is not
// recorded (its initiation may then cross ours: a 5 s retry, as without
// the guard).
const maxCrossRecords = 1024

func (g *crossGuard) received(ep string) {
	now := g.now()
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.from[ep]; !ok && len(g.from) >= 64 && now.Sub(g.pruned) >= crossWindow {
		g.pruned = now // forget what no longer matters
		for k, t := range g.from {
			if now.Sub(t) >= crossWindow {
				delete(g.from, k)
			}
		}
	}
	if _, ok := g.from[ep]; ok || len(g.from) < maxCrossRecords {
		g.from[ep] = now
	}
}

// forget forgets the initiations received, so that the next initiations
// go out whatever arrived: for deliberate ones (see restartRetries).
func (g *crossGuard) forget() {
	g.mu.Lock()
	clear(g.from)
	g.mu.Unlock()
}

// forgetEndpoints forgets the initiations received from these endpoints
// (DstToString) only.
func (g *crossGuard) forgetEndpoints(eps ...string) {
	g.mu.Lock()
	for _, ep := range eps {
		delete(g.from, ep)
	}
	g.mu.Unlock()
}

// Send drops an initiation that would cross one received from ep (see
// crossWindow), reporting success as for a lost datagram.
func (g *crossGuard) Send(bufs [][]byte, ep conn.Endpoint) error {
	if len(bufs) == 1 && isInitiation(bufs[0]) && ep != nil {
		key := ep.DstToString()
		g.mu.Lock()
		t, ok := g.from[key]
		g.mu.Unlock()
		if ok && g.now().Sub(t) < crossWindow {
			g.log.Debug("mesh: not sending a handshake initiation that would cross the peer's own", "endpoint", key)
			return nil
		}
	}
	g.sent.Add(uint64(len(bufs)))
	return g.Bind.Send(bufs, ep)
}
