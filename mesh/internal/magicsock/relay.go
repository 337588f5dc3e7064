package magicsock

import (
	"context"
	"encoding/binary"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"golang.zx2c4.com/wireguard/conn"

	"github.com/wiremesh/wiremesh/control/api"
)

// Relay timing and bounds.
const (
	// relayLinger keeps the relay connection this long after the last peer
	// stopped needing it.
	relayLinger      = 30 * time.Second
	relayDialTimeout = 10 * time.Second
	relayRetryMax    = 10 * time.Second
	// relayPing keeps the connection (and NATs on the way) alive.
	relayPing = 20 * time.Second
	// relayQueue bounds the messages waiting to be written; beyond it
	// datagrams are dropped, as on a congested UDP path.
	relayQueue   = 256
	relayInQueue = 64
)

// RelayDialer opens a WebSocket to the service's relay (api.RelayPath),
// authenticated as this device.
type RelayDialer func(ctx context.Context) (*websocket.Conn, error)

// relayClient is the Conn's connection to the relay: up while some peer
// has no direct path (and relayLinger after).
type relayClient struct {
	c    *Conn
	dial RelayDialer
	in   chan relayIn // read from the relay, for the receive function
	up   atomic.Bool
	// blocked is set while the receive function that delivers relay
	// messages waits on the socket (see enqueue).
	blocked atomic.Bool

	// mu guards the fields below.
	mu       sync.Mutex
	out      chan []byte // the current connection's write queue; nil when down
	running  bool        // run is going
	cancel   context.CancelFunc
	lastNeed time.Time
	wg       sync.WaitGroup
}

type relayIn struct {
	p        *peer
	buf      *[]byte       // from msgPool; the message, key included
	released bool          // a withheld initiation (see Conn.withhold), or a message that woke p (see Conn.wake)
	woken    bool          // a message that woke p (counted when handed on: Conn.WokenDelivered)
	ep       conn.Endpoint // the endpoint to deliver with; nil: p's
}

var msgPool = sync.Pool{New: func() any { b := make([]byte, 0, msgBufSize); return &b }}

// msgBufSize is the capacity of msgPool's buffers. A message kept for a
// peer that wakes (Conn.wake) has a buffer of its own size, never pooled.
const msgBufSize = 64 << 10

func newRelayClient(c *Conn, dial RelayDialer) *relayClient {
	return &relayClient{c: c, dial: dial, in: make(chan relayIn, relayInQueue)}
}

func (r *relayClient) connected() bool { return r.up.Load() }

// needChanged wakes the loop to connect or schedule a disconnect.
func (r *relayClient) needChanged() { r.c.wakeLoop() }

// maintain connects when some peer lacks a direct path and disconnects
// relayLinger after none does. It returns when to look again (zero: no
// need).
func (r *relayClient) maintain(s *session, now time.Time) time.Time {
	if r.dial == nil {
		return time.Time{}
	}
	need := false
	for _, p := range r.c.snapshotPeers() {
		if p.cur.Load().direct == nil {
			need = true
			break
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if need {
		r.lastNeed = now
		if !r.running {
			r.running = true
			ctx, cancel := context.WithCancel(s.ctx)
			r.cancel = cancel
			r.wg.Add(1)
			go r.run(ctx)
		}
		return time.Time{}
	}
	if !r.running {
		return time.Time{}
	}
	if end := r.lastNeed.Add(relayLinger); now.Before(end) {
		return end
	}
	r.cancel()
	r.running = false
	return time.Time{}
}

// stop ends the connection and waits for its goroutines.
func (r *relayClient) stop() {
	r.mu.Lock()
	if r.cancel != nil {
		r.cancel()
	}
	r.running = false
	r.mu.Unlock()
	r.wg.Wait()
}

// run keeps a relay connection until ctx ends, redialing with backoff.
func (r *relayClient) run(ctx context.Context) {
	defer r.wg.Done()
	fails := 0
	for ctx.Err() == nil {
		dctx, cancel := context.WithTimeout(ctx, relayDialTimeout)
		ws, err := r.dial(dctx)
		cancel()
		if err == nil {
			fails = 0
			r.serve(ctx, ws)
		} else if ctx.Err() == nil {
			fails++
			r.c.log.Debug("magicsock: relay connection failed", "err", err)
		}
		d := min(relayRetryMax, 500*time.Millisecond<<min(fails, 5))
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
	}
}

// serve carries one relay connection until it fails or ctx ends.
func (r *relayClient) serve(ctx context.Context, ws *websocket.Conn) {
	ws.SetReadLimit(api.RelayMaxMessage)
	out := make(chan []byte, relayQueue)
	r.mu.Lock()
	r.out = out
	r.mu.Unlock()
	r.setUp(true)
	r.c.log.Debug("magicsock: relay connected")
	cctx, cancel := context.WithCancel(ctx)
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		defer cancel()
		r.readLoop(cctx, ws)
	}()
	ping := time.NewTicker(relayPing)
	defer ping.Stop()
loop:
	for {
		select {
		case <-cctx.Done():
			break loop
		case <-ping.C:
			pctx, pcancel := context.WithTimeout(cctx, relayDialTimeout)
			err := ws.Ping(pctx)
			pcancel()
			if err != nil {
				break loop
			}
		case msg := <-out:
			err := ws.Write(cctx, websocket.MessageBinary, msg)
			msgPool.Put(&msg)
			if err != nil {
				break loop
			}
		}
	}
	cancel()
	ws.CloseNow()
	<-readDone
	r.mu.Lock()
	r.out = nil
	r.mu.Unlock()
	r.setUp(false)
	r.c.log.Debug("magicsock: relay disconnected")
}

func (r *relayClient) setUp(up bool) {
	if r.up.Swap(up) == up {
		return
	}
	for _, p := range r.c.snapshotPeers() {
		r.c.updatePath(p)
	}
}

func (r *relayClient) readLoop(ctx context.Context, ws *websocket.Conn) {
	for {
		typ, bp, err := readMessage(ctx, ws)
		if err != nil {
			return
		}
		msg := *bp
		var k api.Key
		copy(k[:], msg)
		var p *peer
		if typ == websocket.MessageBinary && len(msg) > len(k) {
			p = r.c.peer(k, false)
		}
		if p == nil { // not (or no longer) a peer
			msgPool.Put(bp)
			continue
		}
		select {
		case r.in <- relayIn{p: p, buf: bp}:
			r.notify()
		case <-ctx.Done():
			msgPool.Put(bp)
			return
		}
	}
}

// readMessage reads one message into a buffer from msgPool (Conn.Read
// would allocate and grow a new one per message).
func readMessage(ctx context.Context, ws *websocket.Conn) (websocket.MessageType, *[]byte, error) {
	typ, rd, err := ws.Reader(ctx)
	if err != nil {
		return 0, nil, err
	}
	bp := msgPool.Get().(*[]byte)
	b := (*bp)[:0]
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := rd.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			*bp = b
			return typ, bp, nil
		}
		if err != nil {
			*bp = b[:0]
			msgPool.Put(bp)
			return 0, nil, err
		}
	}
}

// send queues bufs for peer k; false when the relay is not connected.
func (r *relayClient) send(k api.Key, bufs [][]byte) bool {
	r.mu.Lock()
	out := r.out
	r.mu.Unlock()
	if out == nil {
		return false
	}
	mp := msgPool.Get().(*[]byte)
	msg := append((*mp)[:0], k[:]...)
	flush := func() {
		select {
		case out <- msg:
		default: // congested: drop, as UDP would
			msgPool.Put(&msg)
		}
	}
	for _, b := range bufs {
		if len(msg)+2+len(b) > api.RelayMaxMessage && len(msg) > 32 {
			flush()
			mp = msgPool.Get().(*[]byte)
			msg = append((*mp)[:0], k[:]...)
		}
		var err error
		if msg, err = api.AppendRelayDatagram(msg, b); err != nil {
			continue
		}
	}
	if len(msg) > 32 {
		flush()
	} else {
		msgPool.Put(&msg)
	}
	return true
}

// Delivery. Relayed datagrams reach wireguard-go through the UDP socket's
// receive function (see Conn.wrapReceive), not a receive function of
// their own: wireguard-go keeps BatchSize message buffers for every
// receive function for the device's life (64 KiB each upstream, 1 MiB per
// device at batch 16; 2 KiB each in userspace with the wiremesh fork), for
// a relay most members never use. The socket's
// receive function returns queued relay messages first and blocks on the
// socket only when the queue is empty; a message queued meanwhile wakes
// it (udpbind.Bind.Wake). No wake-up is lost: the writer queues, then
// wakes if the reader is (about to be) blocked; the reader marks itself
// blocked, then looks at the queue, and after a wake clears it (inside
// udpbind) before looking again.

// enqueue queues m for delivery without blocking; false when the queue is
// full (the caller keeps m's buffer).
func (r *relayClient) enqueue(m relayIn) bool {
	select {
	case r.in <- m:
		r.notify()
		return true
	default:
		return false
	}
}

// enqueueWait queues m for delivery, waiting for room until ctx ends;
// false when it ended (the caller keeps m's buffer).
func (r *relayClient) enqueueWait(ctx context.Context, m relayIn) bool {
	select {
	case r.in <- m:
		r.notify()
		return true
	case <-ctx.Done():
		return false
	}
}

// notify wakes the receive function if it waits on the socket.
func (r *relayClient) notify() {
	if r.blocked.Load() {
		r.c.inner.Wake()
	}
}

// relayReader cuts relay messages into datagrams for one receive
// function; it is used from that function's goroutine only.
type relayReader struct {
	r        *relayClient
	cur      *peer
	held     *[]byte // the message rest points into
	rest     []byte
	released bool
	woken    bool
	ep       conn.Endpoint
}

// next fills bufs with datagrams of the current relay message, or of the
// next queued one, and returns how many; ok is false when none was
// queued (nothing to deliver: block on the socket). A message may give no
// datagram at all (they woke a peer, or were withheld).
func (rr *relayReader) next(bufs [][]byte, sizes []int, eps []conn.Endpoint) (n int, ok bool) {
	r := rr.r
	if len(rr.rest) == 0 {
		if rr.held != nil {
			if cap(*rr.held) >= msgBufSize {
				msgPool.Put(rr.held)
			}
			rr.held = nil
		}
		select {
		case m := <-r.in:
			rr.cur, rr.held, rr.rest, rr.released, rr.woken, rr.ep = m.p, m.buf, (*m.buf)[32:], m.released, m.woken, m.ep
			if rr.ep == nil {
				rr.ep = rr.cur.ep
			}
		default:
			return 0, false
		}
	}
	k := 0
	for k < len(bufs) && len(rr.rest) >= 2 {
		n := int(binary.BigEndian.Uint16(rr.rest))
		if len(rr.rest) < 2+n {
			rr.rest = nil
			break
		}
		d := rr.rest[2 : 2+n]
		rr.rest = rr.rest[2+n:]
		if !rr.released && wgType(d) == wgInitiation && rr.cur.asleep.Load() && r.c.keys().ik.isInitiation(d) {
			r.c.wake(rr.cur, d, nil)
			continue
		}
		if len(d) > len(bufs[k]) {
			continue // larger than wireguard-go's buffers: see udpbind's receive
		}
		switch wgType(d) {
		case wgInitiation:
			if !rr.released && r.c.withhold(rr.cur, d) {
				continue
			}
		case wgResponse:
			r.c.answered(rr.cur)
		}
		sizes[k] = copy(bufs[k], d)
		eps[k] = rr.ep
		k++
		if rr.woken {
			r.c.wokenDelivered.Add(1)
		}
	}
	return k, true
}
