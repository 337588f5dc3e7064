package netstack

import (
	"encoding/binary"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"
)

// Pacing: how many packets this Net lets into wireguard-go's pipeline.
//
// wireguard-go reads the tun device and its UDP socket as fast as it can
// and queues what it reads (up to 1024 batches per queue) until its
// encryption or decryption workers and the peer's sequential sender or
// receiver get to it, each packet in a message buffer of its own (64 KiB
// upstream, when this was written; MessageBufferSize now).
// TCP over a path that loses nothing grows its window to the buffer limit
// (8 MiB), so a bulk transfer between two members parked thousands of
// packets in those queues, on the sending and on the receiving member:
// 45x their size in buffers (peaks of 200-400 MiB of heap per member),
// buffers that wireguard-go allocates and clears as its pools grow, and a
// working set no cache holds.
//
// Both directions are now bounded at maxInFlight packets:
//
//   - Out: tun Read stops handing out packets while maxInFlight of them are
//     inside wireguard-go (read but not yet passed to the bind's Send).
//     TCP's segments wait in the endpoint's queue instead, as views of the
//     TCP send buffer that holds them anyway.
//   - In: the receive functions stop receiving while maxInFlight data
//     packets they returned have not reached tun Write. The backlog waits
//     in the socket's receive buffer (udpbind asks for 7 MiB; without
//     CAP_NET_ADMIN the kernel's rmem_max caps it), and beyond it the
//     kernel drops, a loss TCP backs off from.
//
// This bounds only the queues inside this process, not what is in flight
// on the network, so long paths keep their window.
//
// The receive side counts only transport data for a session index this
// device announced in a handshake message it sent (see indexes): datagrams
// with any other index, which anyone can send to the port, are dropped by
// wireguard-go at once and are not counted. The counts still only see
// packets enter and leave: packets that wireguard-go drops in between (out:
// no peer for the address, a full staged queue while handshaking, no
// endpoint; in: a replay, a failed decryption, a source outside the peer's
// allowed IPs) leave them too high. So a wait lasts at most paceWait, after
// which the count is forgotten: a busy machine that delays the pipeline
// that long only loosens the bound, and dropped packets cost at most one
// paceWait per maxInFlight of them.
//
// maxInFlight is eight batches: 128 packets at batch 16, where the limit
// was measured (64 and 256 were worse, docs/PERFORMANCE.md), 192 since
// batch 24 (whose measurements include it).
const (
	maxInFlight = 8 * DefaultBatchSize
	paceWait    = 5 * time.Millisecond
)

// pacer counts packets between tun Read and the bind's Send.
type pacer struct {
	limit    int64         // 0: no pacing
	wait     time.Duration // paceWait; tests set others
	inFlight atomic.Int64
	room     chan struct{} // capacity 1: a token means "a Send made room"
}

func (p *pacer) init(limit int) {
	p.limit, p.wait = int64(limit), paceWait
	p.room = make(chan struct{}, 1)
}

// full reports whether Read should wait.
func (p *pacer) full() bool { return p.limit > 0 && p.inFlight.Load() >= p.limit }

// read records n packets handed to wireguard-go.
func (p *pacer) read(n int) {
	if p.limit > 0 {
		p.inFlight.Add(int64(n))
	}
}

// sent records n data packets passed to the bind.
func (p *pacer) sent(n int) {
	if p.limit == 0 || n == 0 {
		return
	}
	v := p.inFlight.Add(-int64(n))
	if v < 0 { // forgotten by a timed-out wait, then sent after all
		p.inFlight.CompareAndSwap(v, 0)
	}
	if v < p.limit {
		select {
		case p.room <- struct{}{}:
		default:
		}
	}
}

// forget drops the count after a wait in which nothing was sent.
func (p *pacer) forget() { p.inFlight.Store(0) }

// PaceBind returns b with its Send counting the WireGuard data packets it
// sends, for the pacing of tun Read (see maxInFlight). The device that
// reads this Net must send through the returned Bind; without it Read
// does not pace. Call it once, before the device starts.
func (n *Net) PaceBind(b conn.Bind) conn.Bind {
	if n.noPace {
		return b
	}
	limit := maxInFlight
	if n.paceLimit > 0 {
		limit = n.paceLimit
	}
	n.ep.pace.init(limit)
	if !n.noPaceRx {
		n.ep.paceRx.init(limit)
	}
	if n.paceWait > 0 {
		n.ep.pace.wait, n.ep.paceRx.wait = n.paceWait, n.paceWait
	}
	return &pacedBind{Bind: b, p: &n.ep.pace, rx: &n.ep.paceRx, done: n.ep.done}
}

type pacedBind struct {
	conn.Bind
	p    *pacer
	rx   *pacer
	done chan struct{}
	ours indexes
}

// indexes holds the session indexes this device announced in the handshake
// messages it sent. A transport data message for this device carries one
// of them as its receiver index; the receive side counts only those, so
// that datagrams anyone can send to the port (an unknown index, dropped by
// wireguard-go at once) do not fill the count and make it wait.
type indexes struct {
	mu     sync.Mutex
	at     map[uint32]time.Time // index -> when a handshake message announced it
	pruned time.Time
}

// indexTTL covers a session's life: wireguard-go rejects a keypair 180 s
// after the handshake that made it.
const indexTTL = 4 * time.Minute

func (x *indexes) add(i uint32) {
	now := time.Now()
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.at == nil {
		x.at = map[uint32]time.Time{}
	}
	x.at[i] = now
	if now.Sub(x.pruned) > indexTTL {
		for k, t := range x.at {
			if now.Sub(t) > indexTTL {
				delete(x.at, k)
			}
		}
		x.pruned = now
	}
}

// count returns how many of the received datagrams are transport data
// (longer than a keepalive) for an index this device announced.
func (x *indexes) count(bufs [][]byte, sizes []int) int {
	k := 0
	var now time.Time
	x.mu.Lock()
	defer x.mu.Unlock()
	for i, b := range bufs {
		if sizes[i] <= transportKeepaliveLen || b[0] != transportType {
			continue
		}
		t, ok := x.at[binary.LittleEndian.Uint32(b[4:8])]
		if !ok {
			continue
		}
		if now.IsZero() {
			now = time.Now()
		}
		if now.Sub(t) <= indexTTL {
			k++
		}
	}
	return k
}

// Open wraps the receive functions so that they stop receiving while
// maxInFlight data packets they returned have not reached tun Write yet:
// the backlog then waits in the socket's buffer (and beyond it the kernel
// drops, a loss TCP sees and backs off from) instead of in wireguard-go's
// queues, one message buffer per packet.
func (b *pacedBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	fns, actual, err := b.Bind.Open(port)
	if err != nil || b.rx.limit == 0 {
		return fns, actual, err
	}
	for i, fn := range fns {
		fns[i] = b.pacedReceive(fn)
	}
	return fns, actual, nil
}

func (b *pacedBind) pacedReceive(fn conn.ReceiveFunc) conn.ReceiveFunc {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		if b.rx.full() {
			t.Reset(b.rx.wait)
		wait:
			for b.rx.full() {
				select {
				case <-b.rx.room:
				case <-t.C:
					b.rx.forget()
					break wait
				case <-b.done:
					break wait
				}
			}
			t.Stop()
		}
		n, err := fn(bufs, sizes, eps)
		b.rx.read(b.ours.count(bufs[:n], sizes))
		return n, err
	}
}

// Send counts transport data messages (type 4) longer than a keepalive:
// those, and only those, carry a packet that tun Read handed out.
func (b *pacedBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	k := 0
	for _, m := range bufs {
		switch {
		case len(m) > transportKeepaliveLen && m[0] == transportType:
			k++
		case len(m) >= 8 && (m[0] == initiationType || m[0] == responseType):
			b.ours.add(binary.LittleEndian.Uint32(m[4:8]))
		}
	}
	err := b.Bind.Send(bufs, ep)
	b.p.sent(k)
	return err
}

// WireGuard message types (the first byte of a little-endian uint32).
const (
	initiationType        = 1
	responseType          = 2
	transportType         = 4  // transport data
	transportKeepaliveLen = 32 // header 16 + empty payload's tag 16
)
