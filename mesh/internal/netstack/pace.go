package netstack

import (
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"
)

// Pacing: how many packets this Net lets into wireguard-go's pipeline.
//
// wireguard-go reads the tun device and its UDP socket as fast as it can
// and queues what it reads (up to 1024 batches per queue) until its
// encryption or decryption workers and the peer's sequential sender or
// receiver get to it, each packet in a 64 KiB message buffer of its own.
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
//     in the socket's receive buffer (7 MiB), and beyond it the kernel
//     drops, a loss TCP backs off from.
//
// This bounds only the queues inside this process, not what is in flight
// on the network, so long paths keep their window.
//
// The counts only see packets enter and leave: packets that wireguard-go
// drops in between (out: no peer for the address, a full staged queue
// while handshaking, no endpoint; in: an unknown receiver index, a replay,
// a failed decryption, a source outside the peer's allowed IPs) leave them
// too high. So a wait lasts at most paceWait, after which the count is
// forgotten: a busy machine that delays the pipeline that long only
// loosens the bound, and dropped packets cost at most one paceWait per
// maxInFlight of them (someone who can make wireguard-go drop 128 packets
// every 5 ms, 26,000 per second, slows this member's receiving down).
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
// does not pace.
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
	return &pacedBind{Bind: b, p: &n.ep.pace, rx: &n.ep.paceRx, done: n.ep.done}
}

type pacedBind struct {
	conn.Bind
	p    *pacer
	rx   *pacer
	done chan struct{}
}

// Open wraps the receive functions so that they stop receiving while
// maxInFlight data packets they returned have not reached tun Write yet:
// the backlog then waits in the socket's buffer (and beyond it the kernel
// drops, a loss TCP sees and backs off from) instead of in wireguard-go's
// queues, one 64 KiB buffer per packet.
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
		k := 0
		for i := range n {
			if sizes[i] > transportKeepaliveLen && bufs[i][0] == transportType {
				k++
			}
		}
		b.rx.read(k)
		return n, err
	}
}

// Send counts transport data messages (type 4) longer than a keepalive:
// those, and only those, carry a packet that tun Read handed out.
func (b *pacedBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	k := 0
	for _, m := range bufs {
		if len(m) > transportKeepaliveLen && m[0] == transportType {
			k++
		}
	}
	err := b.Bind.Send(bufs, ep)
	b.p.sent(k)
	return err
}

const (
	transportType         = 4  // WireGuard message type of transport data (little-endian uint32)
	transportKeepaliveLen = 32 // header 16 + empty payload's tag 16
)
