package control

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/control/store"
)

// Relay limits.
const (
	// relayConnsPerDevice bounds the relay connections one device may hold
	// at once (a reconnecting member briefly has two).
	relayConnsPerDevice = 4
	// relayQueueMessages and relayQueueBytes bound what waits to be
	// written to one member; beyond them messages for it are dropped, as a
	// congested UDP path would.
	relayQueueMessages = 256
	relayQueueBytes    = 4 << 20
)

// relayKey names a member on the relay: keys are unique within a zone, and
// a member only ever reaches keys of its own zone.
type relayKey struct {
	zone string
	key  api.Key
}

// relay forwards WireGuard datagrams between members of a zone over
// WebSocket (GET /v1/relay, see api.RelayPath for the message format). It
// never decrypts: it reads the destination key, writes the authenticated
// sender's key in its place and queues the message for the destination.
//
// A connection lasts only as long as what authorised it: it ends when the
// device is deleted or revoked or takes a new key, whichever replica
// sharing the store made the change (the relay follows the zone's change
// log through the hub), and when the device token it was opened with
// expires.
type relay struct {
	log *slog.Logger
	m   relayMetrics
	cfg relayConfig

	ctx    context.Context // cancelled by close
	cancel context.CancelFunc
	wg     sync.WaitGroup // connection handlers

	// mu guards the fields below.
	mu       sync.Mutex
	closed   bool
	byKey    map[relayKey]*relayConn // the newest connection of each member
	byDevice map[string]map[*relayConn]struct{}
}

// relayConfig is what the relay needs of the server.
type relayConfig struct {
	// now is the clock (token expiry).
	now func() time.Time
	// follow calls changed with every change of zone read from the
	// store's change log from now on, and lost when some were compacted
	// away (hub.follow); the returned function stops it.
	follow func(ctx context.Context, zone string, changed func(store.Change), lost func()) (stop func(), err error)
	// check reads d again from the store once follow has started: an
	// error if it was removed or took a new key since it authenticated.
	check func(ctx context.Context, d store.Device) *api.Error
}

// relayConn is one member's WebSocket.
type relayConn struct {
	rk       relayKey
	deviceID string
	expires  time.Time       // of the device token it was opened with; zero: never
	ws       *websocket.Conn // set by activate, under relay.mu
	revoked  string          // why it must end ("": it may go on), under relay.mu
	out      chan *[]byte    // from relayBufs
	queued   atomic.Int64    // bytes in out
	done     chan struct{}
	doneOnce sync.Once
}

type relayMetrics struct {
	conns    prometheus.Gauge
	messages *prometheus.CounterVec
	bytes    prometheus.Counter
}

func newRelay(log *slog.Logger, reg *prometheus.Registry, cfg relayConfig) *relay {
	m := relayMetrics{
		conns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wiremesh_relay_connections_active",
			Help: "Relay WebSocket connections currently open.",
		}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wiremesh_relay_messages_total",
			Help: "Relay messages by result: forwarded, or dropped (unknown_destination: no such key connected in the sender's zone; queue_full: the destination is too slow; malformed).",
		}, []string{"result"}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wiremesh_relay_forwarded_bytes_total",
			Help: "Bytes of relay messages forwarded.",
		}),
	}
	reg.MustRegister(m.conns, m.messages, m.bytes)
	ctx, cancel := context.WithCancel(context.Background())
	return &relay{log: log, m: m, cfg: cfg, ctx: ctx, cancel: cancel,
		byKey: map[relayKey]*relayConn{}, byDevice: map[string]map[*relayConn]struct{}{}}
}

// handle serves one member's relay connection until it ends.
func (rl *relay) handle(w http.ResponseWriter, r *http.Request, d store.Device) {
	c := &relayConn{rk: relayKey{d.Zone, api.Key(d.PublicKey)}, deviceID: d.ID, expires: d.TokenExpires,
		out: make(chan *[]byte, relayQueueMessages), done: make(chan struct{})}
	if aerr := rl.reserve(c); aerr != nil {
		writeError(w, aerr)
		return
	}
	defer rl.remove(c)
	// From here on every change of the zone reaches c, whichever replica
	// made it; what happened between the authentication and now, the
	// check below sees.
	stop, err := rl.cfg.follow(r.Context(), d.Zone, func(ch store.Change) { rl.changed(c, ch) }, func() {
		rl.revoke(c, "the zone's change history was compacted")
	})
	if errors.Is(err, errHubClosed) {
		writeError(w, apiErr(api.CodeUnavailable, "the service is shutting down"))
		return
	}
	if err != nil {
		rl.log.Error("relay: reading the zone failed", "zone", d.Zone, "err", err)
		writeError(w, apiErr(api.CodeUnavailable, "relay: reading zone %q failed; retry", d.Zone))
		return
	}
	defer stop()
	if aerr := rl.cfg.check(r.Context(), d); aerr != nil {
		writeError(w, aerr)
		return
	}
	ws, err := websocket.Accept(w, r, nil)
	if err != nil {
		rl.log.Debug("relay: upgrade failed", "device", d.ID, "err", err)
		return
	}
	ws.SetReadLimit(api.RelayMaxMessage)
	if why := rl.activate(c, ws); why != "" {
		rl.log.Info("relay: closed a connection at its start", "device", d.ID, "reason", why)
		ws.CloseNow()
		return
	}
	rl.log.Debug("relay: member connected", "zone", d.Zone, "device", d.ID, "hostname", d.Hostname)
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		rl.writeLoop(c)
	}()
	err = rl.readLoop(c)
	c.stop()
	<-writerDone
	switch websocket.CloseStatus(err) {
	case websocket.StatusMessageTooBig:
		rl.m.messages.WithLabelValues("malformed").Inc()
		rl.log.Info("relay: closed a connection that sent an oversized message", "device", d.ID)
	case websocket.StatusNormalClosure, websocket.StatusGoingAway:
	default:
		rl.log.Debug("relay: member disconnected", "device", d.ID, "err", err)
	}
	ws.CloseNow()
}

// reserve counts c against its device's connection limit and makes it the
// member's connection for datagrams sent to it.
func (rl *relay) reserve(c *relayConn) *api.Error {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	if rl.closed {
		return apiErr(api.CodeUnavailable, "the service is shutting down")
	}
	set := rl.byDevice[c.deviceID]
	if len(set) >= relayConnsPerDevice {
		return apiErr(api.CodeRateLimited, "device %s already holds %d relay connections", c.deviceID, len(set))
	}
	if set == nil {
		set = map[*relayConn]struct{}{}
		rl.byDevice[c.deviceID] = set
	}
	set[c] = struct{}{}
	// Messages for the member queue up from now on, so that once its
	// WebSocket handshake is done nothing sent to it is lost.
	rl.byKey[c.rk] = c
	rl.wg.Add(1)
	return nil
}

// activate records the WebSocket of c, or says why c must end instead:
// the relay is closing, or c was revoked while its WebSocket handshake
// was under way.
func (rl *relay) activate(c *relayConn, ws *websocket.Conn) string {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	if rl.closed {
		return "the service is shutting down"
	}
	if c.revoked != "" {
		return c.revoked
	}
	c.ws = ws
	rl.m.conns.Inc()
	return ""
}

// changed ends c when ch removes its device or gives it another key.
func (rl *relay) changed(c *relayConn, ch store.Change) {
	if ch.Device.ID != c.deviceID {
		return
	}
	switch {
	case ch.Kind == store.ChangeRemove:
		rl.revoke(c, "the device was deleted or revoked")
	case ch.Kind == store.ChangeUpsert && api.Key(ch.Device.PublicKey) != c.rk.key:
		rl.revoke(c, "the device took a new key")
	}
}

// revoke ends c, now or, during its WebSocket handshake, as soon as it is
// activated.
func (rl *relay) revoke(c *relayConn, why string) {
	rl.mu.Lock()
	first := c.revoked == ""
	if first {
		c.revoked = why
	}
	ws := c.ws
	rl.mu.Unlock()
	if first && ws != nil {
		rl.log.Info("relay: closing a connection", "device", c.deviceID, "reason", why)
	}
	if ws != nil {
		ws.CloseNow()
	}
}

func (rl *relay) remove(c *relayConn) {
	rl.mu.Lock()
	if rl.byKey[c.rk] == c {
		delete(rl.byKey, c.rk)
	}
	if set := rl.byDevice[c.deviceID]; set != nil {
		delete(set, c)
		if len(set) == 0 {
			delete(rl.byDevice, c.deviceID)
		}
	}
	if c.ws != nil {
		rl.m.conns.Dec()
	}
	rl.mu.Unlock()
	rl.wg.Done()
}

func (c *relayConn) stop() { c.doneOnce.Do(func() { close(c.done) }) }

// relayBufs recycles message buffers: a message is read into one, queued
// and written, then the buffer comes back (io.ReadAll, which
// websocket.Conn.Read uses, allocates and grows a new one per message).
var relayBufs = sync.Pool{New: func() any { b := make([]byte, 0, relayBufCap); return &b }}

// relayBufCap is the capacity of a pooled buffer: a WireGuard datagram of
// the default MTU and its 32-byte key header fit. A buffer grown past it
// (a larger message) is not pooled again, so that a small message never
// holds a large buffer in a queue, where the bound counts capacity.
const relayBufCap = 2 << 10

// putRelayBuf returns bp to relayBufs unless it grew past relayBufCap.
func putRelayBuf(bp *[]byte) {
	if cap(*bp) > relayBufCap {
		return
	}
	*bp = (*bp)[:0]
	relayBufs.Put(bp)
}

// readMessage reads one message into a buffer from relayBufs.
func readMessage(ctx context.Context, ws *websocket.Conn) (websocket.MessageType, *[]byte, error) {
	typ, r, err := ws.Reader(ctx)
	if err != nil {
		return 0, nil, err
	}
	bp := relayBufs.Get().(*[]byte)
	b := (*bp)[:0]
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			*bp = b
			return typ, bp, nil
		}
		if err != nil {
			*bp = b[:0]
			putRelayBuf(bp)
			return 0, nil, err
		}
	}
}

// readLoop forwards c's messages until the connection fails.
func (rl *relay) readLoop(c *relayConn) error {
	for {
		typ, bp, err := readMessage(rl.ctx, c.ws)
		if err != nil {
			return err
		}
		msg := *bp
		if typ != websocket.MessageBinary {
			putRelayBuf(bp)
			return c.ws.Close(websocket.StatusUnsupportedData, "binary messages only")
		}
		dst, err := api.ParseRelayMessage(msg, nil)
		if err != nil {
			putRelayBuf(bp)
			rl.m.messages.WithLabelValues("malformed").Inc()
			continue
		}
		rl.forward(c, relayKey{c.rk.zone, dst}, bp)
	}
}

// forward queues the message in bp, with the sender's key in place of
// dst's, for dst; the buffer goes back to relayBufs once written or
// dropped.
func (rl *relay) forward(from *relayConn, dst relayKey, bp *[]byte) {
	rl.mu.Lock()
	to := rl.byKey[dst]
	rl.mu.Unlock()
	if to == nil || to == from || dst.key == from.rk.key {
		putRelayBuf(bp)
		rl.m.messages.WithLabelValues("unknown_destination").Inc()
		return
	}
	copy(*bp, from.rk.key[:])
	// The queue bound counts the memory a queued message holds (its
	// buffer's capacity), not its length.
	n, size := int64(cap(*bp)), len(*bp) // bp is the writer's once queued
	if to.queued.Add(n) > relayQueueBytes {
		to.queued.Add(-n)
		putRelayBuf(bp)
		rl.m.messages.WithLabelValues("queue_full").Inc()
		return
	}
	select {
	case to.out <- bp:
		rl.m.messages.WithLabelValues("forwarded").Inc()
		rl.m.bytes.Add(float64(size))
	default:
		to.queued.Add(-n)
		putRelayBuf(bp)
		rl.m.messages.WithLabelValues("queue_full").Inc()
	}
}

// writeLoop writes c's queue until c stops, a write fails or the device
// token c was opened with expires.
func (rl *relay) writeLoop(c *relayConn) {
	defer c.ws.CloseNow() // a failed write ends the read loop too
	var expired <-chan time.Time
	if !c.expires.IsZero() {
		t := time.NewTimer(c.expires.Sub(rl.cfg.now()))
		defer t.Stop()
		expired = t.C
	}
	for {
		select {
		case <-c.done:
			return
		case <-expired:
			rl.log.Info("relay: closing a connection", "device", c.deviceID, "reason", "its device token expired")
			return
		case bp := <-c.out:
			c.queued.Add(-int64(cap(*bp)))
			err := c.ws.Write(rl.ctx, websocket.MessageBinary, *bp)
			putRelayBuf(bp)
			if err != nil {
				return
			}
		}
	}
}

// dropDevice ends the relay connections of a device deleted or re-keyed
// through this replica at once (the change log brings the news a moment
// later, and from other replicas).
func (rl *relay) dropDevice(id, why string) {
	rl.mu.Lock()
	cs := make([]*relayConn, 0, len(rl.byDevice[id]))
	for c := range rl.byDevice[id] {
		cs = append(cs, c)
	}
	rl.mu.Unlock()
	for _, c := range cs {
		rl.revoke(c, why)
	}
}

// close ends every relay connection and waits for their handlers.
func (rl *relay) close() {
	rl.mu.Lock()
	rl.closed = true
	rl.mu.Unlock()
	rl.cancel()
	rl.wg.Wait()
}

// followZone is relayConfig.follow over the hub.
func (s *server) followZone(ctx context.Context, zone string, changed func(store.Change), lost func()) (func(), error) {
	f, err := s.hub.follow(ctx, zone, changed, lost)
	if err != nil {
		return nil, err
	}
	return func() { s.hub.unfollow(f) }, nil
}

// checkRelayDevice is relayConfig.check: d, as authenticated, must still
// be in the store under the same key.
func (s *server) checkRelayDevice(ctx context.Context, d store.Device) *api.Error {
	cur, err := s.cfg.Store.Device(ctx, d.ID)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return apiErr(api.CodeUnauthorized, "device %s was deleted", d.ID)
	case err != nil:
		return s.storeErr(ctx, "relay", err)
	case cur.PublicKey != d.PublicKey:
		return apiErr(api.CodeUnauthorized, "device %s took a new key", d.ID)
	}
	return nil
}
