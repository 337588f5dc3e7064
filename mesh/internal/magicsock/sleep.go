package magicsock

import (
	"net/netip"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/wiremesh/wiremesh/control/api"
)

// wakeMsg is a message waiting for its peer to wake.
type wakeMsg struct {
	buf *[]byte       // as a relay message (key, datagram), sized to it (not pooled)
	ep  conn.Endpoint // to deliver with; nil: the peer's
}

// Peers asleep.
//
// A node may keep idle peers out of its WireGuard device (the mesh trims
// them: wireguard-go's state per peer is most of an idle member's memory)
// while the Conn still knows them, their candidates and paths, and keeps
// probing them, slowly (asleepProbeInterval). The device drops every
// message from a peer it does not know, so the Conn catches a handshake
// initiation (with a valid mac1 for this node; nothing else wakes a peer)
// of a sleeping peer before wireguard-go sees it, asks the wake
// function (SetWake) to configure the peer and then delivers the
// message, as if it had just arrived: a handshake initiation
// from a trimmed peer is answered at once instead of after the peer's
// retry 5 s later. The sender is known by the address the message came
// from (a candidate of the peer), by the relay (which names it), or, for
// an initiation from an address no peer is known by, by the initiation
// itself (initiatorKey).

// SetWake sets the function that wakes a peer: it must configure the peer
// in the device and mark it awake (SetAsleep); the Conn then hands the
// initiation that woke it (and any that came meanwhile, up to
// maxWakeQueue) to wireguard-go, waiting for room in the receive
// function's queue rather than dropping them. It is called from a goroutine of its own, never from a
// receive function, so it may wait for locks held around device
// reconfiguration (which waits for the receive functions). Without it no
// peer sleeps.
func (c *Conn) SetWake(fn func(k api.Key)) { c.wakeFn.Store(&fn) }

// maxWakeQueue bounds the initiations kept per peer while it wakes (each
// in a buffer of its own size, about 200 bytes); more are dropped
// (WireGuard retries). Two: the one that woke it and a retry or a copy
// on another path; wireguard-go answers only the newest anyway.
const maxWakeQueue = 2

// SetAsleep marks k as asleep (its WireGuard state is not in the device:
// messages from it wake it through the function given to SetWake) or
// awake. Unknown keys are
// ignored.
func (c *Conn) SetAsleep(k api.Key, asleep bool) {
	p := c.peer(k, false)
	if p == nil || c.wakeFn.Load() == nil && asleep {
		return
	}
	if p.asleep.Swap(asleep) != asleep {
		if asleep {
			c.asleepN.Add(1)
			return
		}
		c.asleepN.Add(-1)
		// Probed at most once a minute while asleep (see
		// asleepProbeInterval): probe every candidate now, and give the
		// chosen path the usual time to answer before it is dropped.
		now := time.Now()
		p.mu.Lock()
		if p.best != nil {
			p.bestSeen = now
		}
		p.punchLocked(now)
		p.mu.Unlock()
		c.wakeLoop()
	}
}

// asleepInitiator returns the sleeping peer that sent the initiation b
// from an unknown address, or nil; reading it is rate limited (see
// initLimiter).
func (c *Conn) asleepInitiator(b []byte, from netip.Addr) *peer {
	ik := c.keys().ik
	if !ik.isInitiation(b) || !c.initLimit.allow(from, time.Now()) {
		return nil
	}
	k, ok := ik.readInitiator(b)
	if !ok {
		return nil
	}
	if p := c.peer(k, false); p != nil && p.asleep.Load() {
		return p
	}
	return nil
}

// wake keeps a copy of b, a message from the sleeping peer p, and makes
// sure a goroutine wakes p and then delivers it with ep (nil: p's
// Endpoint; see wakePeer). It runs on a receive function's goroutine and
// never blocks.
func (c *Conn) wake(p *peer, b []byte, ep conn.Endpoint) {
	p.mu.Lock()
	if len(p.wakeQ) >= maxWakeQueue {
		p.mu.Unlock()
		return
	}
	msg := append(make([]byte, 0, len(p.key)+2+len(b)), p.key[:]...)
	msg, err := api.AppendRelayDatagram(msg, b)
	if err != nil {
		p.mu.Unlock()
		return
	}
	bp := &msg
	p.wakeQ = append(p.wakeQ, wakeMsg{bp, ep})
	start := !p.waking
	p.waking = true
	p.mu.Unlock()
	if start {
		go c.wakePeer(p)
	}
}

// wakePeer asks the wake function to configure p and then delivers the messages
// that came for it through the relay's queue (which carries datagrams of
// any origin with the peer's Endpoint; see relayReader), waiting for
// room: a woken initiation dropped here would cost the peer WireGuard's
// 5 s retry. If p is still asleep afterwards (the device is closing), or
// the Conn closes meanwhile, they are dropped.
func (c *Conn) wakePeer(p *peer) {
	if fn := c.wakeFn.Load(); fn != nil && p.asleep.Load() {
		(*fn)(p.key)
	}
	p.mu.Lock()
	q := p.wakeQ
	p.wakeQ, p.waking = nil, false
	p.mu.Unlock()
	s := c.session()
	if p.asleep.Load() || s == nil {
		return
	}
	for _, m := range q {
		if !c.relay.enqueueWait(s.ctx, relayIn{p: p, buf: m.buf, released: true, woken: true, ep: m.ep}) {
			return
		}
	}
}

// WokenDelivered returns how many messages that woke a peer asleep the
// Conn has handed to wireguard-go.
func (c *Conn) WokenDelivered() uint64 { return c.wokenDelivered.Load() }

// IsInitiation reports whether b is a handshake initiation to this node:
// length, type and a valid mac1 for the node's current key (no X25519).
func (c *Conn) IsInitiation(b []byte) bool { return c.keys().ik.isInitiation(b) }

// Asleep reports whether k is marked asleep (see SetAsleep).
func (c *Conn) Asleep(k api.Key) bool {
	p := c.peer(k, false)
	return p != nil && p.asleep.Load()
}
