package mesh

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wiremesh/wiremesh/mesh/internal/netstack"
)

// The unprivileged router: a userspace node that holds child prefixes
// accepts the traffic peers send to addresses inside them and serves it
// with ordinary sockets on the host network (or with a PrefixHandler):
//
//   - TCP: the host destination is dialed first (ForwardDialTimeout); if
//     that fails the peer's connection is refused with a reset, so a dial
//     through the mesh fails at once instead of hanging. Otherwise the
//     handshake completes and bytes are copied both ways, half-closes
//     (FIN) included.
//   - UDP: each flow (peer address and port, destination) gets a connected
//     host socket; replies go back to the peer from the original
//     destination. A flow ends after UDPFlowIdleTimeout without a datagram
//     either way.
//   - ICMP echo: answered only when the host can reach the destination
//     itself (see probeHost).
//
// Traffic keeps flowing only while the prefix is held: releasing a prefix
// closes the connections and flows into it.
const (
	// ForwardDialTimeout bounds the host dial of a forwarded TCP connection
	// or UDP flow.
	ForwardDialTimeout = 10 * time.Second
	// UDPFlowIdleTimeout ends a forwarded UDP flow (and a PrefixHandler's
	// UDP conn) after this long without a datagram in either direction.
	UDPFlowIdleTimeout = 60 * time.Second
	// MaxForwardedFlows bounds the TCP connections and UDP flows a node
	// serves at once; beyond it new connections are refused and new flows
	// dropped.
	MaxForwardedFlows = 4096
)

// forwarder serves the traffic for a userspace node's child prefixes.
type forwarder struct {
	log  *slog.Logger
	tnet *netstack.Net
	// dial opens host sockets; tests replace it to reach loopback.
	dial        func(ctx context.Context, network, addr string) (net.Conn, error)
	dialTimeout time.Duration
	udpIdle     time.Duration
	reach       *reachability
	handlers    []prefixRoute // longest prefix first; fixed at creation

	prefixes atomic.Pointer[[]netip.Prefix] // the node's child prefixes

	ctx    context.Context // done on close
	cancel context.CancelFunc
	prune  chan struct{} // wakes pruneLoop after prefixes changed
	wg     sync.WaitGroup

	// mu guards closed and flows.
	mu     sync.Mutex
	closed bool
	flows  map[*fwdFlow]struct{}
}

// newForwarder returns a forwarder for tnet; start turns it on. It serves
// nothing until setPrefixes gives it prefixes.
func newForwarder(tnet *netstack.Net, handlers []prefixRoute, log *slog.Logger) *forwarder {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var d net.Dialer
	f := &forwarder{
		log:         log,
		tnet:        tnet,
		dial:        d.DialContext,
		dialTimeout: ForwardDialTimeout,
		udpIdle:     UDPFlowIdleTimeout,
		reach:       newReachability(log),
		handlers:    sortRoutes(handlers),
		prune:       make(chan struct{}, 1),
		flows:       map[*fwdFlow]struct{}{},
	}
	f.prefixes.Store(&[]netip.Prefix{})
	f.ctx, f.cancel = context.WithCancel(context.Background())
	return f
}

// start turns forwarding on in the netstack. On error the forwarder is
// closed.
func (f *forwarder) start() error {
	err := f.tnet.SetForwarding(netstack.Forwarding{
		Match: f.match,
		TCP:   f.serveTCP,
		UDP:   f.serveUDP,
		Ping:  f.ping,
	})
	if err != nil {
		f.close()
		return err
	}
	f.wg.Add(1)
	go f.pruneLoop()
	return nil
}

// close ends every forwarded connection and flow. The netstack, closed
// after, waits for the handlers.
func (f *forwarder) close() {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return
	}
	f.closed = true
	flows := f.flows
	f.flows = nil
	f.mu.Unlock()
	f.cancel()
	for fl := range flows {
		fl.close()
	}
	f.wg.Wait()
}

// setPrefixes replaces the served prefixes. Cheap and non-blocking: safe
// under the node's lock. Connections into prefixes that were dropped are
// closed in the background.
func (f *forwarder) setPrefixes(ps []netip.Prefix) {
	f.prefixes.Store(&ps)
	select {
	case f.prune <- struct{}{}:
	default:
	}
}

// match reports whether dst is inside one of the node's child prefixes.
// It runs for every inbound packet to a foreign address.
func (f *forwarder) match(dst netip.Addr) bool {
	for _, p := range *f.prefixes.Load() {
		if p.Contains(dst) {
			return true
		}
	}
	return false
}

func (f *forwarder) pruneLoop() {
	defer f.wg.Done()
	for {
		select {
		case <-f.ctx.Done():
			return
		case <-f.prune:
		}
		var gone []*fwdFlow
		f.mu.Lock()
		for fl := range f.flows {
			if !f.match(fl.dst) {
				gone = append(gone, fl)
				delete(f.flows, fl)
			}
		}
		f.mu.Unlock()
		for _, fl := range gone {
			f.log.Debug("mesh: prefix released; closing forwarded connection", "dst", fl.dst)
			fl.close()
		}
	}
}

// track registers a flow; nil once the forwarder is closed (the caller
// then closes conns itself).
func (f *forwarder) track(dst netip.Addr, conns ...io.Closer) *fwdFlow {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed || !f.match(dst) {
		return nil
	}
	if len(f.flows) >= MaxForwardedFlows {
		f.log.Warn("mesh: too many forwarded connections; refusing a new one", "dst", dst, "max", MaxForwardedFlows)
		return nil
	}
	fl := &fwdFlow{dst: dst, conns: conns}
	f.flows[fl] = struct{}{}
	return fl
}

// full reports whether MaxForwardedFlows are being served.
func (f *forwarder) full() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.flows) >= MaxForwardedFlows
}

func (f *forwarder) untrack(fl *fwdFlow) {
	f.mu.Lock()
	if f.flows != nil {
		delete(f.flows, fl)
	}
	f.mu.Unlock()
	fl.close()
}

// handlerFor returns the handler of the longest handler prefix holding dst.
func (f *forwarder) handlerFor(dst netip.Addr) PrefixHandler {
	for _, r := range f.handlers {
		if r.prefix.Contains(dst) {
			return r.handler
		}
	}
	return nil
}

// serveTCP runs in a netstack handler goroutine (Close waits for it) for
// each new TCP connection to a matched destination.
func (f *forwarder) serveTCP(req *netstack.TCPRequest) {
	dst := req.Dst
	if f.full() {
		req.Reject()
		return
	}
	if h := f.handlerFor(dst.Addr()); h != nil {
		if refusesTCP(h) {
			req.Reject()
			return
		}
		c, err := req.Accept()
		if err != nil {
			f.log.Debug("mesh: forward TCP: accept", "src", req.Src, "dst", dst, "err", err)
			return
		}
		fl := f.track(dst.Addr(), c)
		if fl == nil {
			c.Close()
			return
		}
		defer f.untrack(fl)
		h.ServeTCP(c, dst)
		return
	}

	ctx, cancel := context.WithTimeout(f.ctx, f.dialTimeout)
	hc, err := f.dial(ctx, "tcp", dst.String())
	cancel()
	if err != nil {
		f.log.Debug("mesh: forward TCP: host dial failed; refusing", "src", req.Src, "dst", dst, "err", err)
		req.Reject()
		return
	}
	c, err := req.Accept()
	if err != nil {
		hc.Close()
		f.log.Debug("mesh: forward TCP: accept", "src", req.Src, "dst", dst, "err", err)
		return
	}
	fl := f.track(dst.Addr(), c, hc)
	if fl == nil {
		c.Close()
		hc.Close()
		return
	}
	defer f.untrack(fl)
	splice(c, hc)
}

// serveUDP runs in a netstack handler goroutine for the first datagram of
// each new UDP flow to a matched destination; conn is connected to src and
// sends from dst.
func (f *forwarder) serveUDP(conn *netstack.UDPConn, src, dst netip.AddrPort) {
	h := f.handlerFor(dst.Addr())
	if h != nil && refusesUDP(h) {
		conn.Close()
		return
	}
	fl := f.track(dst.Addr(), conn)
	if fl == nil {
		conn.Close()
		return
	}
	defer f.untrack(fl)
	if h != nil {
		ic := &idleConn{Conn: conn}
		ic.idle = startIdle(f.udpIdle, func() { conn.Close() })
		defer ic.idle.stop()
		h.ServeUDP(ic, dst)
		return
	}

	ctx, cancel := context.WithTimeout(f.ctx, f.dialTimeout)
	hc, err := f.dial(ctx, "udp", dst.String())
	cancel()
	if err != nil {
		f.log.Debug("mesh: forward UDP: host socket", "src", src, "dst", dst, "err", err)
		return
	}
	if !fl.add(hc) {
		return
	}
	idle := startIdle(f.udpIdle, func() {
		conn.Close()
		hc.Close()
	})
	defer idle.stop()
	done := make(chan struct{})
	go func() {
		defer close(done)
		copyDatagrams(conn, hc, idle)
		conn.Close()
	}()
	copyDatagrams(hc, conn, idle)
	hc.Close()
	conn.Close()
	<-done
}

// ping decides an ICMP echo request to a matched destination: a
// PrefixHandler that implements PrefixPinger decides for its prefix (no
// reply otherwise); host-forwarded prefixes reply when the host reaches
// dst (see probeHost).
func (f *forwarder) ping(ctx context.Context, dst netip.Addr) bool {
	if !f.match(dst) {
		return false
	}
	if h := f.handlerFor(dst); h != nil {
		p, ok := h.(PrefixPinger)
		return ok && p.ServePing(ctx, dst)
	}
	return f.reach.check(ctx, dst)
}

// sortRoutes returns routes longest prefix first.
func sortRoutes(rs []prefixRoute) []prefixRoute {
	out := slices.Clone(rs)
	slices.SortStableFunc(out, func(a, b prefixRoute) int { return b.prefix.Bits() - a.prefix.Bits() })
	return out
}
