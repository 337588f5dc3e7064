// Package magicsock is the conn.Bind that lets members reach each other
// through NATs: it carries WireGuard over our udpbind socket, learns the
// socket's public address with STUN on that same socket, chooses a path to
// every peer with authenticated probes (hole punching, see disco.go) and
// falls back to the coordination service's relay (WebSocket over its HTTPS
// port) when no direct path works.
//
// wireguard-go neither knows nor cares: every peer's endpoint is an
// *Endpoint (UAPI "endpoint=" EndpointString(key)), and Send routes it
// through the path chosen for the peer: a direct address, or the relay.
// Datagrams arriving from a known address of a peer, or through the relay
// from that peer's key, are handed to wireguard-go with that same
// *Endpoint, so its roaming cannot undo the choice. STUN answers and probes
// never reach wireguard-go.
package magicsock

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/mesh/internal/udpbind"
)

// Path names, as Status reports them.
const (
	PathDirect = "direct"
	PathRelay  = "relay"
)

// endpointPrefix starts the UAPI endpoint string of a peer.
const endpointPrefix = "peer:"

// EndpointString is what to give wireguard-go as a peer's endpoint (UAPI
// "endpoint="): ParseEndpoint turns it into the peer's *Endpoint.
func EndpointString(k api.Key) string { return endpointPrefix + hex.EncodeToString(k[:]) }

// Config configures a Conn.
type Config struct {
	// PrivateKey is the device's WireGuard private key (probe MACs).
	PrivateKey api.Key
	// Batch is the bind's batch size (0: udpbind.DefaultBatchSize).
	Batch int
	// Logger receives path changes (info) and details (debug). Nil is quiet.
	Logger *slog.Logger
	// STUN are the service's STUN responders (usually two ports of one
	// host). Answers from any other address are ignored. None: no
	// reflexive candidate.
	STUN []netip.AddrPort
	// FindSTUN, when STUN is empty, is asked for the STUN responders (the
	// service's, from its /v1/info) until it answers. Nil: none.
	FindSTUN func(ctx context.Context) ([]netip.AddrPort, error)
	// DialRelay connects to the service's relay. Nil: no relay.
	DialRelay RelayDialer
	// Publish tells the service the node's candidates and NAT kind. It is
	// called from a goroutine of the Conn, with the latest value only,
	// and retried on error. Nil: nothing is published.
	Publish func(ctx context.Context, cands []api.Candidate, nat api.NATType) error
	// Manual are addresses configured by the operator, advertised first.
	Manual []netip.AddrPort
	// LocalAddrs returns the host's addresses to advertise as local
	// candidates (with the bound port). Nil: the addresses of the host's
	// interfaces that are up, minus loopback and link-local ones.
	LocalAddrs func() []netip.Addr
	// SkipLocal reports addresses never to advertise (the node's tunnel
	// addresses and routed prefixes). Nil: none.
	SkipLocal func(netip.Addr) bool
}

// Conn is the bind. Create it with New; wireguard-go opens and closes it.
type Conn struct {
	cfg   Config
	log   *slog.Logger
	key   atomic.Pointer[keyPair] // replaced by SetPrivateKey
	inner *udpbind.Bind

	// peersMu guards peers and byAddr; the maps are replaced, never
	// modified, so readers may keep a snapshot.
	peersMu sync.Mutex
	peers   map[api.Key]*peer
	byAddr  atomic.Pointer[map[netip.AddrPort]*peer]
	addrGen atomic.Uint64 // bumped with byAddr (receive caches)

	// mu guards the fields below (lifecycle of one Open..Close).
	mu      sync.Mutex
	open    *session
	stunCfg []netip.AddrPort

	pongs pongLimiter  // see probe.go
	relay *relayClient // see relay.go; lives as long as the Conn
	self  selfState    // see candidates.go

	pingsSent atomic.Uint64 // probes sent (see PingsSent)

	asleepN atomic.Int32                  // peers marked asleep (see SetAsleep)
	wakeFn  atomic.Pointer[func(api.Key)] // see SetWake

	initLimit      *initLimiter  // see ratelimit.go
	wokenDelivered atomic.Uint64 // messages that woke a peer, handed to wireguard-go (see WokenDelivered)
}

// session is what one Open starts and the next Close stops.
type session struct {
	port   uint16
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	wake   chan struct{}
}

var _ conn.Bind = (*Conn)(nil)

// New returns a Conn over a new udpbind.Bind.
func New(cfg Config) *Conn {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Conn{
		cfg:     cfg,
		log:     log,
		inner:   udpbind.New(cfg.Batch),
		peers:   map[api.Key]*peer{},
		stunCfg: cfg.STUN,

		initLimit: newInitLimiter(),
	}
	c.key.Store(newKeyPair(cfg.PrivateKey))
	empty := map[netip.AddrPort]*peer{}
	c.byAddr.Store(&empty)
	c.self.notify = make(chan struct{}, 1)
	c.relay = newRelayClient(c, cfg.DialRelay)
	return c
}

// BatchSize implements conn.Bind.
func (c *Conn) BatchSize() int { return c.inner.BatchSize() }

// SetMark implements conn.Bind.
func (c *Conn) SetMark(mark uint32) error { return c.inner.SetMark(mark) }

// Open implements conn.Bind: it opens the UDP socket and starts discovery
// and probing; the first receive function returned also delivers what the
// relay carries (see relayReader).
func (c *Conn) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	c.mu.Lock()
	if c.open != nil {
		c.mu.Unlock()
		return nil, 0, udpbind.ErrBindOpen
	}
	fns, actual, err := c.inner.Open(port)
	if err != nil {
		c.mu.Unlock()
		return nil, 0, err
	}
	s := &session{port: actual, wake: make(chan struct{}, 1)}
	// A new socket (maybe on a new port): learn the candidates afresh.
	c.self.mu.Lock()
	c.self.round, c.self.roundEnd, c.self.nextRound, c.self.fails = nil, time.Time{}, time.Time{}, 0
	c.self.mu.Unlock()
	s.ctx, s.cancel = context.WithCancel(context.Background())
	c.open = s
	out := make([]conn.ReceiveFunc, 0, len(fns))
	for i, fn := range fns {
		// The first one (the one Bind.Wake wakes) delivers the relay's
		// messages too (see relayReader).
		out = append(out, c.wrapReceive(fn, i == 0))
	}
	s.wg.Add(3)
	go c.loop(s)
	go c.publishLoop(s)
	go c.findSTUN(s)
	c.mu.Unlock()
	c.punchAll()
	return out, actual, nil
}

// Close implements conn.Bind: receive functions then return net.ErrClosed.
func (c *Conn) Close() error {
	c.mu.Lock()
	s := c.open
	c.open = nil
	c.mu.Unlock()
	if s != nil {
		s.cancel()
	}
	err := c.inner.Close()
	if s != nil {
		s.wg.Wait()
	}
	c.relay.stop()
	return err
}

// session returns the open session, or nil.
func (c *Conn) session() *session {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.open
}

// ParseEndpoint implements conn.Bind: EndpointString(key) gives the peer's
// *Endpoint (creating the peer if SetPeers has not named it yet); "ip:port"
// a plain udpbind endpoint.
func (c *Conn) ParseEndpoint(s string) (conn.Endpoint, error) {
	if h, ok := strings.CutPrefix(s, endpointPrefix); ok {
		b, err := hex.DecodeString(h)
		if err != nil || len(b) != 32 {
			return nil, fmt.Errorf("magicsock: parse endpoint %q: not a peer key", s)
		}
		var k api.Key
		copy(k[:], b)
		return c.peer(k, true).ep, nil
	}
	return c.inner.ParseEndpoint(s)
}

// peer returns the state of key, creating it when create is set.
func (c *Conn) peer(k api.Key, create bool) *peer {
	c.peersMu.Lock()
	defer c.peersMu.Unlock()
	p := c.peers[k]
	if p == nil && create {
		p = newPeer(c.keys().priv, k, time.Now())
		next := make(map[api.Key]*peer, len(c.peers)+1)
		for kk, pp := range c.peers {
			next[kk] = pp
		}
		next[k] = p
		c.peers = next
	}
	return p
}

// PeerInfo is a peer as the Conn needs it.
type PeerInfo struct {
	Key  api.Key
	Name string // for logs
	// Candidates are the peer's typed addresses; a peer that advertises
	// only endpoints gives them as CandidateManual.
	Candidates []api.Candidate
}

// SetPeers makes ps the set of peers: new ones and ones whose candidates
// changed are probed at once (the other side does the same when it learns
// of this node: both NATs open).
func (c *Conn) SetPeers(ps []PeerInfo) {
	now := time.Now()
	c.peersMu.Lock()
	self := c.keys()
	next := make(map[api.Key]*peer, len(ps))
	for _, pi := range ps {
		if pi.Key == self.pub || pi.Key.IsZero() {
			continue
		}
		p := c.peers[pi.Key]
		if p == nil {
			p = newPeer(self.priv, pi.Key, now)
		}
		p.mu.Lock()
		p.name = pi.Name
		if p.setCandidatesLocked(pi.Candidates) {
			p.punchLocked(now)
		}
		p.mu.Unlock()
		next[pi.Key] = p
	}
	c.peers = next
	var asleep int32
	for _, p := range next {
		if p.asleep.Load() {
			asleep++
		}
	}
	c.asleepN.Store(asleep)
	c.rebuildAddrsLocked()
	c.peersMu.Unlock()
	c.wakeLoop()
}

// rebuildAddrsLocked recomputes the address → peer map. An address
// claimed by two peers maps to neither (it proves nothing).
func (c *Conn) rebuildAddrsLocked() {
	m := map[netip.AddrPort]*peer{}
	dup := map[netip.AddrPort]bool{}
	for _, p := range c.peers {
		p.mu.Lock()
		for _, pc := range p.cands {
			if q, ok := m[pc.addr]; ok && q != p {
				dup[pc.addr] = true
			}
			m[pc.addr] = p
		}
		p.mu.Unlock()
	}
	for a := range dup {
		delete(m, a)
	}
	c.byAddr.Store(&m)
	c.addrGen.Add(1)
}

func (c *Conn) snapshotPeers() []*peer {
	c.peersMu.Lock()
	defer c.peersMu.Unlock()
	out := make([]*peer, 0, len(c.peers))
	for _, p := range c.peers {
		out = append(out, p)
	}
	return out
}

func (c *Conn) wakeLoop() {
	if s := c.session(); s != nil {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// punchAll starts a fast round of probes to every peer without a direct
// path (after this node's own candidates changed: peers learning them
// probe now, so this side must open its NAT towards them too).
func (c *Conn) punchAll() {
	now := time.Now()
	for _, p := range c.snapshotPeers() {
		p.mu.Lock()
		if p.best == nil {
			p.punchLocked(now)
		}
		p.mu.Unlock()
	}
	c.wakeLoop()
}

// Send implements conn.Bind.
func (c *Conn) Send(bufs [][]byte, ep conn.Endpoint) error {
	switch e := ep.(type) {
	case *Endpoint:
		return c.sendPeer(bufs, e.p)
	case *udpbind.Endpoint:
		return c.inner.Send(bufs, e)
	default:
		return fmt.Errorf("magicsock: send: foreign endpoint type %T", ep)
	}
}

func (c *Conn) sendPeer(bufs [][]byte, p *peer) error {
	if len(bufs) == 1 {
		switch wgType(bufs[0]) {
		case wgInitiation:
			// Just answered the peer's initiation: the handshake completes
			// with the peer's next packet. An initiation of ours now would
			// cross it (wireguard-go sends one for packets it queued while
			// it had no endpoint, the moment the peer's initiation gave it
			// one) and leave both sides waiting for a retry.
			if r := p.resp.Load(); r != 0 && time.Since(time.Unix(0, r)) < initCrossWindow {
				return nil
			}
			p.init.Store(time.Now().UnixNano())
			p.mu.Lock()
			p.lastInit = append(p.lastInit[:0], bufs[0]...)
			p.mu.Unlock()
		case wgResponse: // we accepted the peer's initiation: ours is moot
			p.init.Store(0)
			p.resp.Store(time.Now().UnixNano())
		}
	}
	if d := p.cur.Load().direct; d != nil {
		return c.inner.Send(bufs, d)
	}
	relayed := c.relay.send(p.key, bufs)
	// No direct path: every candidate too, as WireGuard would send to its
	// one endpoint, while probing has not given up on them (the peer may
	// not be on the relay yet); the first that works wins. A handshake
	// initiation goes out once only: copies arriving together could be
	// taken by two of the responder's handshake workers at the same time
	// (two answers, two different keys); it is sent again on the direct
	// path once probing finds one (updatePath).
	init := len(bufs) == 1 && wgType(bufs[0]) == wgInitiation
	p.mu.Lock()
	var eps []*udpbind.Endpoint
	if !relayed || p.burst < len(punchDelays) {
		eps = make([]*udpbind.Endpoint, 0, len(p.cands))
		for _, pc := range p.cands {
			if init && (relayed || len(eps) == 1) {
				break
			}
			eps = append(eps, pc.ep)
		}
	}
	p.mu.Unlock()
	var errs []error
	for _, e := range eps {
		if err := c.inner.Send(bufs, e); err != nil {
			errs = append(errs, err)
		}
	}
	if !relayed && len(eps) > 0 && len(errs) == len(eps) {
		return errors.Join(errs...)
	}
	return nil
}

// sendRaw sends one datagram straight to a.
func (c *Conn) sendRaw(b []byte, a netip.AddrPort) error {
	return c.inner.Send([][]byte{b}, udpbind.NewEndpoint(a))
}

// wrapReceive filters STUN and probes out of what fn reads and gives
// packets from a peer's known address the peer's *Endpoint. With relay
// set, it first returns the datagrams the relay's queue holds (see
// relayReader), and fn must be the receive function udpbind.Bind.Wake
// wakes.
func (c *Conn) wrapReceive(fn conn.ReceiveFunc, relay bool) conn.ReceiveFunc {
	var (
		lastUE *udpbind.Endpoint
		lastP  *peer
		gen    uint64
		rr     *relayReader
	)
	if relay {
		rr = &relayReader{r: c.relay}
	}
	return func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		var n int
		for {
			if rr != nil {
				if k, ok := rr.next(bufs, sizes, eps); ok {
					if k == 0 {
						continue // all woke a peer or were withheld
					}
					return k, nil
				}
				// Blocked from here; a message queued before the flag was
				// set is seen below, one queued after wakes fn.
				c.relay.blocked.Store(true)
				if len(c.relay.in) > 0 {
					c.relay.blocked.Store(false)
					continue
				}
			}
			var err error
			n, err = fn(bufs, sizes, eps)
			if rr != nil {
				c.relay.blocked.Store(false)
				if errors.Is(err, udpbind.ErrWoken) {
					continue // udpbind cleared the wake: look at the queue again
				}
			}
			if err != nil {
				return 0, err
			}
			break
		}
		k := 0
		for i := 0; i < n; i++ {
			b := bufs[i][:sizes[i]]
			ue, _ := eps[i].(*udpbind.Endpoint)
			if ue == nil {
				continue
			}
			if t := wgType(b); t != 0 {
				if g := c.addrGen.Load(); ue != lastUE || g != gen {
					lastUE, gen = ue, g
					lastP = (*c.byAddr.Load())[ue.AddrPort()]
				}
				if lastP == nil && t == wgInitiation && c.asleepN.Load() > 0 {
					// From an address no peer is known by: only the
					// initiation itself says who sent it.
					if p := c.asleepInitiator(b, ue.AddrPort().Addr()); p != nil {
						// Delivered from where it came: wireguard-go
						// learns the address once the initiation proves
						// to be the peer's (the key read from it does
						// not prove that yet).
						c.wake(p, b, ue)
						continue
					}
				}
				if lastP != nil {
					// Only an initiation for this node wakes a peer:
					// anything else it sends is dropped by wireguard-go
					// as before (no session to decrypt it with).
					if t == wgInitiation && lastP.asleep.Load() && c.keys().ik.isInitiation(b) {
						c.wake(lastP, b, nil)
						continue
					}
					if t == wgInitiation && c.withhold(lastP, b) {
						continue
					}
					if t == wgResponse {
						c.answered(lastP)
					}
					eps[i] = lastP.ep
				}
			} else if isSTUN(b) {
				c.handleSTUN(b, ue.AddrPort())
				continue
			} else if isDisco(b) {
				c.handleDisco(b, ue.AddrPort())
				continue
			}
			if k != i {
				copy(bufs[k], b)
				sizes[k], eps[k] = sizes[i], eps[i]
			}
			k++
		}
		return k, nil
	}
}

// crossed reports whether an initiation from p crossed one this node sent
// moments ago: when both sides initiate at once each answers the other's
// and drops the answer to its own, and both wait for WireGuard's 5 s
// retry. The side with the lower key keeps its initiation and withholds
// the peer's (see withhold); the other answers (both apply the same rule).
func (c *Conn) crossed(p *peer) bool {
	sent := p.init.Load()
	if sent == 0 || time.Since(time.Unix(0, sent)) > initCrossWindow {
		return false
	}
	pub := c.keys().pub
	return string(pub[:]) < string(p.key[:])
}

// withhold keeps an initiation b from p that crossed ours (see crossed)
// away from wireguard-go for crossHold, and reports whether it did. When
// the answer to ours arrives meanwhile (answered), the peer took our
// initiation and b is dropped; otherwise b is delivered after all
// (releaseHeld): the peer may have replaced its state for ours with a new
// initiation of its own, and then only answering b completes a handshake.
func (c *Conn) withhold(p *peer, b []byte) bool {
	if !c.crossed(p) {
		return false
	}
	p.mu.Lock()
	p.heldInit = append(p.heldInit[:0], b...)
	if p.heldTimer == nil {
		p.heldTimer = time.AfterFunc(crossHold, func() { c.releaseHeld(p) })
	} else {
		p.heldTimer.Reset(crossHold)
	}
	p.mu.Unlock()
	return true
}

// answered records a handshake response from p: our initiation is done,
// and one of p's that crossed it is moot.
func (c *Conn) answered(p *peer) {
	p.init.Store(0)
	p.mu.Lock()
	p.heldInit = p.heldInit[:0]
	if p.heldTimer != nil {
		p.heldTimer.Stop()
	}
	p.mu.Unlock()
}

// releaseHeld delivers a withheld initiation through the relay's queue
// (which carries datagrams of any origin with the peer's Endpoint; see
// relayReader).
func (c *Conn) releaseHeld(p *peer) {
	p.mu.Lock()
	b := p.heldInit
	p.heldInit = nil
	p.mu.Unlock()
	if len(b) == 0 || c.session() == nil {
		return
	}
	bp := msgPool.Get().(*[]byte)
	msg := append((*bp)[:0], p.key[:]...)
	msg, _ = api.AppendRelayDatagram(msg, b)
	*bp = msg
	if !c.relay.enqueue(relayIn{p: p, buf: bp, released: true}) {
		msgPool.Put(bp)
	}
}

// PingsSent returns how many probes (pings) the Conn has sent.
func (c *Conn) PingsSent() uint64 { return c.pingsSent.Load() }

// PathInfo says how a peer's packets travel.
type PathInfo struct {
	// Path is PathDirect, PathRelay, or "" (no path yet: sent to every
	// candidate).
	Path string
	// Endpoint is the peer's address in use on a direct path.
	Endpoint netip.AddrPort
	// RTT is the round-trip time of the last probe on the direct path.
	RTT time.Duration
}

// PeerPath returns how packets to k travel now.
func (c *Conn) PeerPath(k api.Key) PathInfo {
	p := c.peer(k, false)
	if p == nil {
		return PathInfo{}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.best != nil {
		return PathInfo{Path: PathDirect, Endpoint: p.best.addr, RTT: p.best.rtt}
	}
	return PathInfo{Path: p.pathName(c.relay.connected())}
}

// Paths returns how packets to every peer travel now.
func (c *Conn) Paths() map[api.Key]PathInfo {
	out := map[api.Key]PathInfo{}
	for _, p := range c.snapshotPeers() {
		out[p.key] = c.PeerPath(p.key)
	}
	return out
}

// keyPair is the device's key.
// keyPair is the device's key and what is derived from it alone; a
// rotation (SetPrivateKey) replaces it whole.
type keyPair struct {
	priv, pub api.Key
	ik        *initiatorKeys // reads the sender of an initiation (noise.go)
}

func newKeyPair(priv api.Key) *keyPair {
	pub := api.PublicKey(priv)
	return &keyPair{priv: priv, pub: pub, ik: newInitiatorKeys(priv, pub)}
}

// keys returns the device's current key.
func (c *Conn) keys() keyPair { return *c.key.Load() }

// SetPrivateKey replaces the device's private key (a key rotation; the
// WireGuard device gets it too): probes are signed with the new key from
// now on, the MAC key shared with every peer is derived again, pings sent
// with the old one are forgotten (their pongs cannot verify) and every
// peer is probed at once, so that the pair finds its path again as soon as
// the peer knows the new key.
func (c *Conn) SetPrivateKey(k api.Key) {
	now := time.Now()
	c.peersMu.Lock()
	c.key.Store(newKeyPair(k))
	for _, p := range c.peers {
		mac, _ := discoKey(k, p.key)
		p.mu.Lock()
		p.mac = mac
		clear(p.pending)
		p.punchLocked(now)
		p.mu.Unlock()
	}
	c.peersMu.Unlock()
	c.wakeLoop()
}
