package mesh

import (
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	"github.com/wiremesh/wiremesh/mesh/internal/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/mesh/internal/magicsock"
)

// Idle peers are trimmed from the WireGuard device.
//
// wireguard-go keeps, per peer, two 1024-slot queues, timers, handshake
// state and two goroutines, and its pools keep buffers for the
// keepalives and handshakes every configured peer sends: in a full mesh
// of 100 that is most of an idle member's memory. Like Tailscale, a node
// keeps in the device only the peers in use and trims the others: the
// Node, the bind (paths, probes) and, in kernel mode, the routes still
// know every peer; only the device forgets the idle ones.
//
// A peer is idle when no IP packet went to or came from it through the
// tunnel for the idle timeout (WithPeerIdleTimeout; keepalives and
// handshakes are not IP packets, so they do not count). An idle peer
// first goes quiet: its persistent keepalive is turned off, so that the
// keepalives stop renewing the session. It is trimmed once its last
// handshake is more than defaultTrimSessionAge ago: every key the peer may still
// hold for this node is then older than WireGuard's Reject-After-Time, so
// the first packet the peer sends here is a handshake initiation, never
// data this node could no longer decrypt. A peer whose keepalives keep
// coming (its own side is not idle, or it runs without trimming) keeps
// renewing the session and is never trimmed.
//
// Nothing is lost on the way back:
//
//   - Outbound: the tun device between the network stack (netstack or the
//     TUN interface) and wireguard-go (activityTUN) sees each packet's
//     destination before wireguard-go does. A packet to a trimmed peer's
//     allowed IPs configures the peer first (synchronously, in the device's
//     TUN reader), then goes on: wireguard-go queues it while it
//     handshakes, as for any peer without a session.
//   - Inbound: the bind catches the first message of a trimmed peer (by its
//     address, the relay, or the initiator's key read from the
//     initiation), has the peer configured and then delivers the message
//     (magicsock/sleep.go): the initiation is answered at once.
//
// Either way the trimmed peer costs one handshake, the round trip every
// peer without a session costs. Peers held for their first handshake
// (holdDelay) or being replaced after a restart (restartRetries) are not
// trimmed while that lasts; a new peer starts active.
//
// DefaultPeerIdleTimeout is the default idle timeout.
const DefaultPeerIdleTimeout = 2 * time.Minute

// minPeerIdleTimeout is the shortest idle timeout: activity is recorded
// at most every actGranularity.
const minPeerIdleTimeout = time.Second

// actGranularity: a peer's activity time is updated at most this often
// (an atomic load per packet, a store per peer this often).
const actGranularity = 250 * time.Millisecond

// defaultTrimSessionAge is how long ago a peer's last handshake must be
// for the peer to be trimmed: WireGuard's Reject-After-Time, after which
// neither side sends with that session's keys, and a margin.
const defaultTrimSessionAge = device.RejectAfterTime + 5*time.Second

// trimSessionAge is defaultTrimSessionAge in nanoseconds; tests that
// trim both sides of a pair (so that neither holds a session) shorten it.
var trimSessionAge atomic.Int64

func init() { trimSessionAge.Store(int64(defaultTrimSessionAge)) }

// peerAct is a peer's activity as the tunnel sees it.
type peerAct struct {
	key     api.Key
	last    atomic.Int64 // unix nanoseconds of the last IP packet to or from the peer
	trimmed atomic.Bool  // the peer is not in the device: a packet to it wakes it
	// Guarded by wgDevice.mu:
	woke       time.Time // when the peer was last woken (see wakeKey)
	wasTrimmed bool      // the peer was in the device before: not held back as a new one when it wakes (see holdDelay)
	// learned is the endpoint the device had for the peer when it was
	// trimmed (advertised, or learnt from the peer's packets): given to
	// the device again when the peer wakes, as replaceConfig does, so
	// that a packet to a member that advertises no endpoint can start a
	// handshake.
	learned netip.AddrPort
	// drowsy: asleep in the bind, still in the device (the first phase
	// of a trim, see onTrimTimer); drowsyHS is its last handshake then.
	drowsy   bool
	drowsyHS time.Time
	// base is what earlier device instances of the peer counted (a woken
	// peer is a new wireguard-go peer whose counters start at 0): their
	// byte counts summed and the last handshake.
	base peerStats
}

// plus returns ps counted on top of base (see peerAct.base).
func (base peerStats) plus(ps peerStats) peerStats {
	ps.rxBytes += base.rxBytes
	ps.txBytes += base.txBytes
	if ps.lastHandshake.IsZero() || base.lastHandshake.After(ps.lastHandshake) {
		ps.lastHandshake = base.lastHandshake
	}
	return ps
}

// idleFor is how long no IP packet went to or came from the peer.
func (a *peerAct) idleFor(now time.Time) time.Duration {
	return now.Sub(time.Unix(0, a.last.Load()))
}

// actTable maps tunnel addresses to the peer whose allowed IPs hold them
// (longest prefix first).
type actTable struct {
	exact    map[netip.Addr]*peerAct // host prefixes
	prefixes []actPrefix             // the others, longest first
}

type actPrefix struct {
	p netip.Prefix
	a *peerAct
}

func newActTable(want map[api.Key]wgPeer, acts map[api.Key]*peerAct) *actTable {
	t := &actTable{exact: map[netip.Addr]*peerAct{}}
	for k, w := range want {
		a := acts[k]
		for _, p := range w.AllowedIPs {
			if p.IsSingleIP() {
				t.exact[p.Addr()] = a
			} else {
				t.prefixes = append(t.prefixes, actPrefix{p, a})
			}
		}
	}
	slices.SortFunc(t.prefixes, func(x, y actPrefix) int { return y.p.Bits() - x.p.Bits() })
	return t
}

func (t *actTable) lookup(a netip.Addr) *peerAct {
	if x, ok := t.exact[a]; ok {
		return x
	}
	for _, e := range t.prefixes {
		if e.p.Contains(a) {
			return e.a
		}
	}
	return nil
}

// activityTUN is the tun.Device wireguard-go reads and writes: it records
// the activity of the peers packets go to (Read) and come from (Write),
// and wakes a trimmed peer before a packet to it reaches wireguard-go.
type activityTUN struct {
	tun.Device
	table atomic.Pointer[actTable]
	wake  func(api.Key) // configures a trimmed peer; returns once it is in the device
}

// Read implements tun.Device.
func (t *activityTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n, err := t.Device.Read(bufs, sizes, offset)
	if n > 0 {
		t.note(bufs[:n], sizes, offset, true)
	}
	return n, err
}

// Write implements tun.Device.
func (t *activityTUN) Write(bufs [][]byte, offset int) (int, error) {
	t.note(bufs, nil, offset, false)
	return t.Device.Write(bufs, offset)
}

// note records activity for the peer of each packet's destination (out)
// or source, once per distinct address in a row.
func (t *activityTUN) note(bufs [][]byte, sizes []int, offset int, out bool) {
	tab := t.table.Load()
	if tab == nil {
		return
	}
	now := time.Now().UnixNano()
	var prev netip.Addr
	for i, b := range bufs {
		if sizes != nil {
			b = b[offset : offset+sizes[i]]
		} else {
			b = b[offset:]
		}
		addr, ok := packetPeerAddr(b, out)
		if !ok || addr == prev {
			continue
		}
		prev = addr
		a := tab.lookup(addr)
		if a == nil {
			continue
		}
		// Store before reading trimmed (the trimmer sets trimmed before
		// it reads last): either it sees this packet's time and keeps the
		// peer, or this sees trimmed and wakes it.
		if now-a.last.Load() >= int64(actGranularity) {
			a.last.Store(now)
		}
		if out && a.trimmed.Load() {
			t.wake(a.key)
		}
	}
}

// packetPeerAddr returns the destination (out) or source address of an
// IP packet.
func packetPeerAddr(b []byte, out bool) (netip.Addr, bool) {
	if len(b) == 0 {
		return netip.Addr{}, false
	}
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return netip.Addr{}, false
		}
		off := 12
		if out {
			off = 16
		}
		return netip.AddrFrom4([4]byte(b[off : off+4])), true
	case 6:
		if len(b) < 40 {
			return netip.Addr{}, false
		}
		off := 8
		if out {
			off = 24
		}
		return netip.AddrFrom16([16]byte(b[off : off+16])), true
	}
	return netip.Addr{}, false
}

// trimState is the part of wgDevice that trims idle peers (guarded by
// wgDevice.mu).
type trimState struct {
	idle   time.Duration        // 0: never trim
	tun    *activityTUN         // nil when idle is 0
	acts   map[api.Key]*peerAct // one per wanted peer
	quiet  map[api.Key]bool     // idle, keepalive off, waiting for the session to expire
	asleep map[api.Key]bool     // trimmed (their stats are in peerAct.base)
	timer  *time.Timer
}

// trimEvery is how often the device looks for idle peers.
func (d *wgDevice) trimEvery() time.Duration {
	return min(max(d.trim.idle/4, actGranularity), 30*time.Second)
}

// setActsLocked gives every peer of d.want an activity record (a new peer
// starts active) and publishes the address table.
func (d *wgDevice) setActsLocked(now time.Time) {
	if d.trim.tun == nil {
		return
	}
	for k := range d.want {
		if d.trim.acts[k] == nil {
			a := &peerAct{key: k}
			a.last.Store(now.UnixNano())
			d.trim.acts[k] = a
		}
	}
	for k := range d.trim.acts {
		if _, ok := d.want[k]; !ok {
			delete(d.trim.acts, k)
			delete(d.trim.quiet, k)
			delete(d.trim.asleep, k)
		}
	}
	d.trim.tun.table.Store(newActTable(d.want, d.trim.acts))
}

// onTrimTimer quiets and trims the idle peers (see above).
func (d *wgDevice) onTrimTimer() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return
	}
	defer d.trim.timer.Reset(d.trimEvery())
	now := time.Now()
	st, err := d.stats()
	if err != nil {
		d.log.Debug("mesh: reading the device state", "err", err)
		return
	}
	changed := false
	for k, a := range d.trim.acts {
		if _, ok := d.trim.asleep[k]; ok {
			continue
		}
		if a.idleFor(now) < d.trim.idle {
			a.wakeDrowsy(d, k)
			if d.trim.quiet[k] { // in use again: keepalive back on
				delete(d.trim.quiet, k)
				changed = true
			}
			continue
		}
		if now.Sub(a.woke) < d.trim.idle {
			// Woken by the peer, no IP packet yet: the handshake it
			// started may still be on its way.
			continue
		}
		_, held := d.pending[k]
		_, restarting := d.restarts[k]
		ps, configured := st.peers[k]
		if held || restarting || !configured {
			a.wakeDrowsy(d, k)
			continue
		}
		if !d.trim.quiet[k] {
			d.trim.quiet[k] = true
			changed = changed || d.want[k].Keepalive != 0
		}
		if hs := ps.lastHandshake; !hs.IsZero() && now.Sub(hs) < time.Duration(trimSessionAge.Load()) {
			a.wakeDrowsy(d, k)
			continue
		}
		// Two phases. First the bind marks the peer asleep: from then on
		// an initiation from it wakes it (wakeKey) instead of reaching
		// the device. An initiation that got into wireguard-go before
		// that is handled by the peer still configured; the next tick
		// trims the peer only if its last handshake did not change and
		// nothing woke it.
		if !a.drowsy {
			a.drowsy, a.drowsyHS = true, ps.lastHandshake
			d.ms.SetAsleep(k, true)
			continue
		}
		if !ps.lastHandshake.Equal(a.drowsyHS) {
			a.wakeDrowsy(d, k)
			continue
		}
		a.drowsy = false
		a.trimmed.Store(true)
		if a.idleFor(now) < d.trim.idle { // a packet came meanwhile (see note)
			a.trimmed.Store(false)
			d.ms.SetAsleep(k, false)
			continue
		}
		a.wasTrimmed = true
		a.learned = ps.endpoint
		a.base = a.base.plus(ps)
		a.base.endpoint, a.base.asleep = netip.AddrPort{}, true
		d.trim.asleep[k] = true
		changed = true
	}
	if !changed {
		return
	}
	if err := d.syncLocked(now); err != nil {
		d.log.Warn("mesh: trimming idle peers", "err", err)
	}
}

// wakeDrowsy ends the first phase of a trim (see onTrimTimer): the peer
// is awake in the bind again. d.mu is held.
func (a *peerAct) wakeDrowsy(d *wgDevice, k api.Key) {
	if a.drowsy {
		a.drowsy = false
		d.ms.SetAsleep(k, false)
	}
}

// wakeKey configures the trimmed peer k in the device again (quiet: the
// packet that woke it starts the handshake, and a keepalive sent now
// would cross an initiation from the peer) and returns once it is there.
// The trim timer turns the keepalive back on once IP packets flow.
func (d *wgDevice) wakeKey(k api.Key) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return
	}
	now := time.Now()
	a := d.trim.acts[k]
	if a == nil {
		return
	}
	if a.drowsy { // still in the device: only the bind slept
		a.woke = now
		a.wakeDrowsy(d, k)
		return
	}
	if _, ok := d.trim.asleep[k]; !ok {
		return
	}
	a.woke = now
	delete(d.trim.asleep, k)
	d.trim.quiet[k] = true
	// An initiation from the peer that arrived moments ago was a stale
	// copy (a live one would have woken the peer): ours must go out.
	// Only this peer's records: other peers' crossings still matter.
	eps := []string{magicsock.EndpointString(k)}
	if ep, err := d.ms.ParseEndpoint(eps[0]); err == nil {
		eps = append(eps, ep.DstToString())
	}
	d.guard.forgetEndpoints(eps...)
	if err := d.syncLocked(now); err != nil {
		// Not in the device: it stays asleep (the next packet to or
		// from it tries again), rather than awake in the Conn with no
		// WireGuard state to answer it.
		d.log.Warn("mesh: configuring a trimmed peer", "err", err)
		d.trim.asleep[k] = true
		return
	}
	a.trimmed.Store(false)
	d.ms.SetAsleep(k, false)
	d.log.Debug("mesh: woke a trimmed peer", "peer", d.want[k].Name)
}
