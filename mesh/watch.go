package mesh

import (
	"context"
	"errors"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/wiremesh/wiremesh/control/api"
)

// run keeps the node in sync with the service until Close: it registers
// when needed (a node started from saved state), then watches the zone,
// reconnecting with bounded exponential backoff and jitter and resuming
// from the last revision.
func (n *Node) run(needRegister bool) {
	defer n.wg.Done()
	bo := backoff{min: n.cfg.backoffMin, max: n.cfg.backoffMax}
	for n.ctx.Err() == nil {
		if needRegister {
			resp, err := n.register(n.ctx, n.port)
			if err != nil {
				if n.ctx.Err() != nil {
					return
				}
				n.controlDown(err)
				if errors.Is(wrapService("", err), ErrRevoked) {
					n.log.Error("mesh: the service revoked this node's key; it no longer talks to the service", "err", err)
					return
				}
				d := bo.next()
				n.log.Debug("mesh: registration failed, retrying", "err", err, "in", d)
				if !sleepCtx(n.ctx, d) {
					return
				}
				continue
			}
			n.adoptRegistration(resp, n.port)
			if err := n.saveState(); err != nil {
				n.log.Warn("mesh: saving state", "err", err)
			}
			needRegister = false
			n.log.Info("mesh: registered with the service", "url", n.url, "addr", resp.IPv4)
		}

		n.mu.Lock()
		since, zone := n.revision, n.self.zone
		if !n.synced {
			since = 0 // a fresh snapshot at the start of every run
		}
		n.mu.Unlock()
		if since > 0 {
			// A resumed stream starts with the missed changes only, possibly
			// none: check the service answers before calling it restored.
			if _, err := n.client.Self(n.ctx); err == nil {
				n.controlUp()
			}
		}
		err := n.client.Watch(n.ctx, zone, since, func(ev api.WatchEvent) error {
			bo.reset()
			return n.handleEvent(ev)
		})
		if n.ctx.Err() != nil {
			return
		}
		n.controlDown(err)
		var ae *api.Error
		if errors.As(err, &ae) && ae.Code == api.CodeRevoked {
			n.log.Error("mesh: the service revoked this node's key; it no longer talks to the service", "err", err)
			return
		}
		if errors.As(err, &ae) && (ae.Code == api.CodeUnauthorized || ae.Code == api.CodeNotFound || ae.Code == api.CodeTokenExpired) {
			if n.cfg.token != "" {
				n.log.Warn("mesh: the service no longer knows this device; registering again", "err", err)
				needRegister = true
			} else {
				n.log.Error("mesh: the service refused the device token and there is no join token to register again", "err", err)
			}
		}
		d := bo.next()
		n.log.Debug("mesh: watch ended, reconnecting", "err", err, "in", d)
		if !sleepCtx(n.ctx, d) {
			return
		}
	}
}

// handleEvent applies one watch event.
func (n *Node) handleEvent(ev api.WatchEvent) error {
	n.mu.Lock()
	cur := n.peers
	n.mu.Unlock()
	var next map[api.Key]api.Peer
	switch ev.Type {
	case api.EventSnapshot:
		next = peerMap(ev.Peers, n.keys().pub)
		for k, p := range next {
			if n.isSelf(p) { // under its other key, around a key rotation
				delete(next, k)
			}
		}
		n.updateSelf(ev.Peers)
		n.applyFilter(ev.Filter) // enforce: before the peers it may restrict
	case api.EventUpsert:
		if ev.Peer == nil {
			n.log.Warn("mesh: upsert event without a peer; ignored", "revision", ev.Revision)
			return nil
		}
		if n.isSelf(*ev.Peer) {
			n.updateSelf([]api.Peer{*ev.Peer})
			n.setRevision(ev.Revision)
			return nil
		}
		next = maps.Clone(cur)
		// The same device under a new key: drop the old entry.
		for k, p := range next {
			if p.ID != "" && p.ID == ev.Peer.ID && k != ev.Peer.PublicKey {
				delete(next, k)
			}
		}
		next[ev.Peer.PublicKey] = *ev.Peer
	case api.EventRemove:
		if ev.Peer == nil {
			n.log.Warn("mesh: remove event without a peer; ignored", "revision", ev.Revision)
			return nil
		}
		next = maps.Clone(cur)
		delete(next, ev.Peer.PublicKey)
		for k, p := range next {
			if ev.Peer.ID != "" && p.ID == ev.Peer.ID {
				delete(next, k)
			}
		}
	case api.EventHeartbeat:
		n.setRevision(ev.Revision)
		n.controlUp()
		return nil
	case api.EventPresence:
		n.applyPresence(ev)
		return nil
	case api.EventFilter: // enforce
		n.applyFilter(ev.Filter)
		n.setRevision(ev.Revision)
		if err := n.saveState(); err != nil {
			n.log.Warn("mesh: saving state", "err", err)
		}
		return nil
	default:
		n.log.Debug("mesh: unknown watch event type; ignored", "type", ev.Type)
		return nil
	}
	return n.applyPeerSet(next, ev.Revision, ev.Type == api.EventSnapshot, ev.Type == api.EventUpsert)
}

// applyPeerSet makes next the node's peer set: configures the device,
// records the revision, saves the state and emits events for what changed.
// live is true for a change seen as it happens (an upsert): new peers are
// then held back (see holdDelay).
func (n *Node) applyPeerSet(next map[api.Key]api.Peer, rev int64, snapshot, live bool) error {
	n.mu.Lock()
	advertises := len(n.self.endpoints) > 0
	n.mu.Unlock()
	want := make(map[api.Key]wgPeer, len(next))
	for k, p := range next {
		w, ok := peerConfig(p)
		if !ok {
			n.log.Warn("mesh: peer without key or address; skipped", "id", p.ID, "hostname", p.Hostname)
			continue
		}
		w.Hold = shouldHold(live, advertises, w)
		want[k] = w
	}
	if err := n.plane.setPeers(want); err != nil {
		return err // the watch reconnects and gets a fresh chance
	}

	n.mu.Lock()
	prev := n.peers
	n.peers = next
	if rev > n.revision || snapshot {
		n.revision = rev
	}
	first := snapshot && !n.synced
	if snapshot {
		n.synced = true
	}
	n.mu.Unlock()

	if err := n.saveState(); err != nil {
		n.log.Warn("mesh: saving state", "err", err)
	}
	now := time.Now()
	var evs []Event
	for _, k := range sortedPeerKeys(prev) {
		if _, ok := next[k]; !ok {
			evs = append(evs, Event{Type: PeerRemoved, Time: now, Peer: publicPeer(prev[k])})
			n.log.Info("mesh: peer removed", "hostname", prev[k].Hostname, "addr", prev[k].IPv4)
		}
	}
	for _, k := range sortedPeerKeys(next) {
		p := next[k]
		old, ok := prev[k]
		switch {
		case !ok:
			evs = append(evs, Event{Type: PeerAdded, Time: now, Peer: publicPeer(p)})
			n.log.Info("mesh: peer up", "hostname", p.Hostname, "addr", p.IPv4)
		case !samePeer(old, p):
			evs = append(evs, Event{Type: PeerUpdated, Time: now, Peer: publicPeer(p)})
			n.log.Debug("mesh: peer updated", "hostname", p.Hostname, "addr", p.IPv4)
		}
	}
	n.events.emit(evs...)
	if snapshot {
		n.controlUp()
	}
	if first {
		close(n.firstSync)
	}
	return nil
}

// updateSelf picks up changes to the node's own entry (hostname, prefixes
// released or added by an admin).
func (n *Node) updateSelf(ps []api.Peer) {
	for _, p := range ps {
		if !n.isSelf(p) {
			continue
		}
		n.mu.Lock()
		if p.Hostname != "" {
			n.self.hostname = p.Hostname
		}
		n.setPrefixesLocked(canonPrefixes(p.ChildPrefixes))
		n.mu.Unlock()
	}
}

func (n *Node) setRevision(rev int64) {
	n.mu.Lock()
	if rev > n.revision {
		n.revision = rev
	}
	n.mu.Unlock()
}

// controlUp records that the node is in sync with the service.
func (n *Node) controlUp() {
	n.mu.Lock()
	was := n.connected
	n.connected = true
	n.mu.Unlock()
	if !was {
		n.events.emit(Event{Type: ControlRestored, Time: time.Now()})
		n.log.Info("mesh: connected to the service", "url", n.url)
	}
}

// controlDown records that the connection to the service broke.
func (n *Node) controlDown(err error) {
	n.mu.Lock()
	was := n.connected
	n.connected = false
	n.mu.Unlock()
	if was {
		n.events.emit(Event{Type: ControlLost, Time: time.Now(), Err: err})
		n.log.Warn("mesh: lost the service; the mesh keeps working with the last known peers", "url", n.url, "err", err)
	}
}

// peerMap indexes peers by public key, leaving out self.
func peerMap(ps []api.Peer, self api.Key) map[api.Key]api.Peer {
	m := make(map[api.Key]api.Peer, len(ps))
	for _, p := range ps {
		if p.PublicKey != self && !p.PublicKey.IsZero() {
			m[p.PublicKey] = p
		}
	}
	return m
}

func samePeer(a, b api.Peer) bool {
	return a.ID == b.ID && a.Hostname == b.Hostname && a.IPv4 == b.IPv4 && a.IPv6 == b.IPv6 &&
		slices.Equal(a.ChildPrefixes, b.ChildPrefixes) && slices.Equal(a.Endpoints, b.Endpoints) &&
		a.Generation == b.Generation
}

func sortedPeerKeys(m map[api.Key]api.Peer) []api.Key {
	ks := slices.Collect(maps.Keys(m))
	slices.SortFunc(ks, func(a, b api.Key) int {
		if c := strings.Compare(m[a].Hostname, m[b].Hostname); c != 0 {
			return c
		}
		return strings.Compare(string(a[:]), string(b[:]))
	})
	return ks
}

// backoff is a bounded exponential backoff with full jitter in [d/2, d].
type backoff struct {
	min, max time.Duration
	cur      time.Duration
}

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(b.cur*2, b.max)
	}
	half := b.cur / 2
	return half + time.Duration(rand.Int64N(int64(half)+1))
}

func (b *backoff) reset() { b.cur = 0 }

// sleepCtx waits d; false when ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
