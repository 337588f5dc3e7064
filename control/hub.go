package control

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/control/store"
)

// subscriberBuffer is how many events a watcher may fall behind before it
// is disconnected (it reconnects with since= and loses nothing). The queue
// holding them grows on demand: an idle watcher holds none.
const subscriberBuffer = 256

// hubCoalesce is how long the hub's worker waits after a wake-up before it
// reads the change log: changes arriving meanwhile share one pass.
const hubCoalesce = 2 * time.Millisecond

// errHubClosed is returned by subscribe after close.
var errHubClosed = errors.New("watch hub closed")

// hubEvent is one change, encoded once as its NDJSON line (with the
// trailing newline). line is shared by every subscriber: never modify it.
// In a zone with a policy it is one or more lines of the same revision for
// one subscriber (hub_policy.go).
type hubEvent struct {
	rev  int64
	line []byte
	// removed is the id of the device a remove event is about ("" for
	// upserts): that device's own stream ends after it.
	removed string
	// at is when the hub read the change from the store (watch lag).
	at time.Time
	// presenceOf is the id of the device a presence event is about ("" for
	// other events): that device's own stream skips it.
	presenceOf string
}

// subscriber is one watch stream of a zone. Its reader waits on wake and
// then calls take. The hub ends it when it is dropped (too slow, history
// compacted) or the hub closes.
type subscriber struct {
	zone *hubZone
	// wake (capacity 1) is signalled when events are queued or the
	// subscriber is dropped.
	wake chan struct{}
	// member is a member's watch stream (counted in the watchers gauge);
	// false for an observer such as the dashboard's event stream.
	member bool
	gone   bool // guarded by zone.mu; ended is set
	// device is the watching member ("": none, the whole zone is seen);
	// view is what it was sent, guarded by zone.mu (hub_policy.go).
	device string
	view   subView

	mu    sync.Mutex // guards queue and ended; taken after zone.mu
	queue []hubEvent // not taken yet, oldest first; nil when idle
	ended bool       // dropped: what is queued is the last
}

// take returns the events queued for sub, oldest first, and whether sub is
// still subscribed: with false, the events returned are its last.
func (sub *subscriber) take() ([]hubEvent, bool) {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	q := sub.queue
	sub.queue = nil
	return q, !sub.ended
}

// signal wakes sub's reader without blocking.
func (sub *subscriber) signal() {
	select {
	case sub.wake <- struct{}{}:
	default:
	}
}

// hubZone is the fan-out state of one zone.
type hubZone struct {
	name string

	// mu guards the fields below and serializes reads of the zone's change
	// log, so every change is read and encoded once.
	mu      sync.Mutex
	ready   bool  // lastRev is valid (there are subscribers)
	lastRev int64 // every change <= lastRev was handed to all subscribers
	subs    map[*subscriber]struct{}
	// followers see every change of the zone, as read (relay
	// connections: see follow). The zone stays ready while it has
	// subscribers or followers.
	followers map[*follower]struct{}
	view      zoneView // the zone at lastRev, valid when ready (hub_policy.go)
}

// follower is told of every change of a zone the hub reads from the
// store's change log, whichever replica made it: the relay learns there
// that a device it serves was removed or took a new key.
type follower struct {
	zone *hubZone
	// changed is called with each change, in order, on the hub's worker
	// with the zone's lock held: it must be quick, must not block (no
	// network I/O: the one worker serves every zone) and must not call
	// the hub.
	changed func(store.Change)
	// lost is called, as changed is, when changes the follower was owed
	// are gone from the log (compacted): it cannot know what it missed.
	lost func()
}

// hub fans the store's change log out to watch streams. Its worker
// goroutine, woken after a mutation (update), when a store.ChangeListener
// says some replica sharing the store committed one (update, wakeAll), and
// on a slow poll (the safety net),
// reads store.Changes(zone, lastRev), encodes each change once and appends
// the same bytes to every subscriber's queue: cost per change is
// O(watchers), paid off the mutating request's path.
type hub struct {
	store   store.Store
	log     *slog.Logger
	metrics *metrics
	buf     int

	ctx    context.Context // cancelled by close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	closed atomic.Bool
	mu     sync.Mutex // guards zones and dirty; held before any hubZone.mu
	zones  map[string]*hubZone
	dirty  map[string]struct{} // zones the worker is to update
	kick   chan struct{}       // capacity 1: wakes the worker

	encodes atomic.Int64 // changes encoded (tests check encode-once)
}

func newHub(st store.Store, log *slog.Logger, m *metrics, poll time.Duration) *hub {
	ctx, cancel := context.WithCancel(context.Background())
	h := &hub{
		store:   st,
		log:     log,
		metrics: m,
		buf:     subscriberBuffer,
		ctx:     ctx,
		cancel:  cancel,
		zones:   make(map[string]*hubZone),
		dirty:   make(map[string]struct{}),
		kick:    make(chan struct{}, 1),
	}
	h.wg.Add(1)
	go h.run(poll)
	if l, ok := changeListener(st); ok {
		h.wg.Add(1)
		go h.listen(l)
	}
	return h
}

// changeListener finds a store.ChangeListener in st or in the stores it
// wraps (Unwrap).
func changeListener(st store.Store) (store.ChangeListener, bool) {
	for st != nil {
		if l, ok := st.(store.ChangeListener); ok {
			return l, true
		}
		u, ok := st.(interface{ Unwrap() store.Store })
		if !ok {
			break
		}
		st = u.Unwrap()
	}
	return nil, false
}

// listen wakes the worker for the zones that other replicas sharing the
// store change, as soon as they commit; the poll stays as the safety net
// for notifications lost with their connection.
func (h *hub) listen(l store.ChangeListener) {
	defer h.wg.Done()
	err := l.ListenChanges(h.ctx, func(zone string) {
		if zone == "" {
			h.wakeAll() // (re)connected: anything may have changed
			return
		}
		h.update(zone)
	})
	if h.ctx.Err() == nil && !errors.Is(err, store.ErrClosed) {
		h.log.Error("change notifications ended; falling back to polling", "err", err)
	}
}

// run is the worker: it updates the zones marked dirty when kicked, and
// every zone every poll (0: no poll).
func (h *hub) run(poll time.Duration) {
	defer h.wg.Done()
	var tick <-chan time.Time
	if poll > 0 {
		t := time.NewTicker(poll)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-h.ctx.Done():
			return
		case <-h.kick:
			// Let the request that kicked finish answering before the
			// fan-out wakes every stream, and batch what comes meanwhile.
			select {
			case <-h.ctx.Done():
				return
			case <-time.After(hubCoalesce):
			}
		case <-tick:
			h.markAll()
		}
		h.mu.Lock()
		names := make([]string, 0, len(h.dirty))
		for n := range h.dirty {
			names = append(names, n)
		}
		clear(h.dirty)
		h.mu.Unlock()
		for _, n := range names {
			h.updateNow(n)
		}
	}
}

// zone returns the state of a zone, creating it. Zones are never removed
// (their number is bounded by the zones that exist).
func (h *hub) zone(name string) *hubZone {
	h.mu.Lock()
	defer h.mu.Unlock()
	z := h.zones[name]
	if z == nil {
		z = &hubZone{name: name, subs: make(map[*subscriber]struct{}), followers: make(map[*follower]struct{})}
		h.zones[name] = z
	}
	return z
}

// subscribe registers a watcher of zone. Every change with a revision
// above the store's revision at the time subscribe returns will be
// delivered (or the subscriber dropped), so a caller that reads its backlog
// after subscribing and skips live events at or below the backlog's
// revision misses nothing and sees nothing twice.
func (h *hub) subscribe(ctx context.Context, zone string) (*subscriber, error) {
	return h.add(ctx, zone, "", true)
}

// subscribeAs is subscribe for the watch stream of device. In a zone with
// a policy the device's view starts as the one hub.snapshot returns.
func (h *hub) subscribeAs(ctx context.Context, zone, device string) (*subscriber, error) {
	return h.add(ctx, zone, device, true)
}

// observe is subscribe for a reader that is not a member (the dashboard):
// same delivery, the whole zone, not counted as a watch stream.
func (h *hub) observe(ctx context.Context, zone string) (*subscriber, error) {
	return h.add(ctx, zone, "", false)
}

func (h *hub) add(ctx context.Context, zone, device string, member bool) (*subscriber, error) {
	z, err := h.lockReady(ctx, zone)
	if err != nil {
		return nil, err
	}
	defer z.mu.Unlock()
	sub := &subscriber{zone: z, wake: make(chan struct{}, 1), member: member, device: device}
	sub.view = z.view.viewOf(device)
	z.subs[sub] = struct{}{}
	if member {
		h.metrics.watchers.Inc()
	}
	return sub, nil
}

// lockReady returns zone locked, its view loaded; on error nothing is
// locked.
func (h *hub) lockReady(ctx context.Context, zone string) (*hubZone, error) {
	z := h.zone(zone)
	z.mu.Lock()
	if h.closed.Load() {
		z.mu.Unlock()
		return nil, errHubClosed
	}
	if !z.ready {
		if err := h.loadView(ctx, z); err != nil {
			z.mu.Unlock()
			return nil, err
		}
		z.ready = true
	}
	return z, nil
}

// follow has changed called with every change of zone the hub reads
// from now on, until unfollow. Every change with a revision above the
// store's revision at the time follow returns is passed to changed (or,
// if compacted away, lost is called), so a caller that reads the state
// after follow returns misses nothing.
func (h *hub) follow(ctx context.Context, zone string, changed func(store.Change), lost func()) (*follower, error) {
	z, err := h.lockReady(ctx, zone)
	if err != nil {
		return nil, err
	}
	defer z.mu.Unlock()
	f := &follower{zone: z, changed: changed, lost: lost}
	z.followers[f] = struct{}{}
	return f, nil
}

// unfollow removes f.
func (h *hub) unfollow(f *follower) {
	z := f.zone
	z.mu.Lock()
	defer z.mu.Unlock()
	delete(z.followers, f)
	h.idleLocked(z)
}

// idleLocked forgets the zone's view once nobody needs it. z.mu is held.
func (h *hub) idleLocked(z *hubZone) {
	if len(z.subs) == 0 && len(z.followers) == 0 {
		z.ready = false // re-read the revision when someone subscribes again
		z.view = zoneView{}
	}
}

// unsubscribe removes sub; safe to call after the hub dropped it.
func (h *hub) unsubscribe(sub *subscriber) {
	z := sub.zone
	z.mu.Lock()
	defer z.mu.Unlock()
	h.dropLocked(sub)
}

// dropLocked removes sub and ends it. z.mu must be held.
func (h *hub) dropLocked(sub *subscriber) {
	if sub.gone {
		return
	}
	z := sub.zone
	sub.gone = true
	sub.mu.Lock()
	sub.ended = true
	sub.mu.Unlock()
	sub.signal()
	delete(z.subs, sub)
	if sub.member {
		h.metrics.watchers.Dec()
	}
	h.idleLocked(z)
}

// update has the worker read the zone's new changes and fan them out
// soon; it does not wait. Mutating handlers call it after each change.
// Updates that come while the worker is busy are coalesced.
func (h *hub) update(zone string) {
	h.mu.Lock()
	if h.zones[zone] != nil {
		h.dirty[zone] = struct{}{}
	}
	h.mu.Unlock()
	h.wakeWorker()
}

// wakeAll has the worker read every watched zone's new changes soon, as
// the poll does: for a signal that some replica sharing the store changed
// something (a database notification).
func (h *hub) wakeAll() {
	h.markAll()
	h.wakeWorker()
}

// markAll marks every watched zone dirty.
func (h *hub) markAll() {
	h.mu.Lock()
	for n := range h.zones {
		h.dirty[n] = struct{}{}
	}
	h.mu.Unlock()
}

func (h *hub) wakeWorker() {
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// updateNow reads the zone's new changes and fans them out before it
// returns (the worker's step; tests call it to wait for the fan-out).
func (h *hub) updateNow(zone string) {
	if h.closed.Load() {
		return
	}
	h.mu.Lock()
	z := h.zones[zone]
	h.mu.Unlock()
	if z == nil {
		return
	}
	z.mu.Lock()
	defer z.mu.Unlock()
	h.updateLocked(z)
}

// updateLocked is update with z.mu held.
func (h *hub) updateLocked(z *hubZone) {
	zone := z.name
	if !z.ready || (len(z.subs) == 0 && len(z.followers) == 0) || h.closed.Load() {
		return
	}
	ctx, cancel := context.WithTimeout(h.ctx, 10*time.Second)
	defer cancel()
	changes, _, err := h.store.Changes(ctx, zone, z.lastRev)
	if errors.Is(err, store.ErrCompacted) {
		// History we still owed the watchers is gone: drop them all; they
		// reconnect with since= and get a fresh snapshot.
		h.log.Warn("watch history compacted; disconnecting watchers", "zone", zone, "since", z.lastRev)
		for sub := range z.subs {
			h.dropLocked(sub)
		}
		if len(z.followers) > 0 {
			for f := range z.followers {
				f.lost()
			}
			// Followers stay until they unfollow: start them afresh from
			// the current state, or have the next follow do so.
			if err := h.loadView(ctx, z); err != nil {
				h.log.Error("re-reading a compacted zone failed", "zone", zone, "err", err)
				z.ready = false
				z.view = zoneView{}
			}
		}
		return
	}
	if err != nil {
		if h.ctx.Err() == nil {
			h.log.Error("reading change log failed", "zone", zone, "since", z.lastRev, "err", err)
		}
		return
	}
	for _, c := range changes {
		if c.Rev <= z.lastRev {
			continue
		}
		handled, err := h.applyPolicy(ctx, z, c)
		if err != nil {
			// Not consumed: the next update retries from here.
			h.log.Error("applying a change to the watch views failed", "zone", zone, "rev", c.Rev, "err", err)
			return
		}
		if !handled && len(z.subs) > 0 {
			ev := hubEvent{rev: c.Rev, line: h.encode(c), at: time.Now()}
			switch c.Kind {
			case store.ChangeRemove:
				ev.removed = c.Device.ID
			case store.ChangePresence:
				ev.presenceOf = c.Device.ID
			}
			for sub := range z.subs {
				h.send(sub, ev)
			}
		}
		for f := range z.followers {
			f.changed(c)
		}
		z.lastRev = c.Rev
	}
}

// send queues ev for sub, dropping sub when it is too slow (h.buf events
// behind). z.mu is held.
func (h *hub) send(sub *subscriber, ev hubEvent) {
	sub.mu.Lock()
	full := len(sub.queue) >= h.buf
	if !full {
		sub.queue = append(sub.queue, ev)
	}
	sub.mu.Unlock()
	if full {
		h.log.Warn("watcher too slow; disconnecting", "zone", sub.zone.name)
		h.metrics.dropped.Inc()
		h.dropLocked(sub)
		return
	}
	h.metrics.fanout.Inc()
	sub.signal()
}

// encode turns a change into its NDJSON line, counting encodes.
func (h *hub) encode(c store.Change) []byte {
	h.encodes.Add(1)
	h.metrics.encoded.Inc()
	return encodeChange(c)
}

// encodeChange turns a change into its NDJSON line.
func encodeChange(c store.Change) []byte {
	ev := api.WatchEvent{Revision: c.Rev}
	switch c.Kind {
	case store.ChangeRemove:
		ev.Type = api.EventRemove
		ev.Peer = &api.Peer{
			ID:            c.Device.ID,
			Hostname:      c.Device.Hostname,
			PublicKey:     api.Key(c.Device.PublicKey),
			IPv4:          c.Device.IPv4,
			IPv6:          c.Device.IPv6,
			ChildPrefixes: []netip.Prefix{},
			Endpoints:     []netip.AddrPort{},
		}
	case store.ChangePresence:
		ev.Type = api.EventPresence
		ev.Peer = &api.Peer{
			ID:            c.Device.ID,
			Hostname:      c.Device.Hostname,
			PublicKey:     api.Key(c.Device.PublicKey),
			IPv4:          c.Device.IPv4,
			IPv6:          c.Device.IPv6,
			ChildPrefixes: []netip.Prefix{},
			Endpoints:     []netip.AddrPort{},
			Online:        &c.Device.Online,
			LastSeen:      c.Device.LastSeen,
		}
	default:
		ev.Type = api.EventUpsert
		p := toPeer(c.Device)
		ev.Peer = &p
	}
	return encodeLine(ev)
}

// encodeLine marshals an event and appends the newline.
func encodeLine(ev api.WatchEvent) []byte {
	b, err := json.Marshal(ev)
	if err != nil {
		// Only netip and plain types: cannot fail.
		panic("control: encoding watch event: " + err.Error())
	}
	return append(b, '\n')
}

// close drops every subscriber, refuses new ones and stops the worker.
func (h *hub) close() {
	h.closed.Store(true)
	h.cancel()
	h.mu.Lock()
	zones := make([]*hubZone, 0, len(h.zones))
	for _, z := range h.zones {
		zones = append(zones, z)
	}
	h.mu.Unlock()
	for _, z := range zones {
		z.mu.Lock()
		for sub := range z.subs {
			h.dropLocked(sub)
		}
		z.mu.Unlock()
	}
	h.wg.Wait()
}
