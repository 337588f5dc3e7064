package mesh

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// EventType says what an Event reports.
type EventType int

const (
	// PeerAdded: a member joined the zone (or was first seen).
	PeerAdded EventType = iota + 1
	// PeerUpdated: a member's endpoints, prefixes or hostname changed.
	PeerUpdated
	// PeerRemoved: a member left the zone.
	PeerRemoved
	// ControlLost: the connection to the service broke. The data plane keeps
	// working with the last known peers; the node reconnects with backoff.
	ControlLost
	// ControlRestored: the node is in sync with the service again.
	ControlRestored
	// PeerOnline: a member connected to the service (Peer.Online set).
	PeerOnline
	// PeerOffline: a member's connection to the service ended; it may
	// still carry traffic with the members it knows.
	PeerOffline
)

func (t EventType) String() string {
	switch t {
	case PeerAdded:
		return "peer-added"
	case PeerUpdated:
		return "peer-updated"
	case PeerRemoved:
		return "peer-removed"
	case ControlLost:
		return "control-lost"
	case ControlRestored:
		return "control-restored"
	case PeerOnline:
		return "peer-online"
	case PeerOffline:
		return "peer-offline"
	default:
		return fmt.Sprintf("EventType(%d)", int(t))
	}
}

// Event is one change seen by a node.
type Event struct {
	Type EventType
	Time time.Time
	// Peer is the member concerned (PeerAdded, PeerUpdated, PeerRemoved,
	// PeerOnline, PeerOffline).
	Peer Peer
	// Err is why the connection to the service broke (ControlLost).
	Err error
}

// eventBuffer is how many events a Watch channel holds before further
// events are dropped (and counted in Status.EventsDropped).
const eventBuffer = 256

// eventHub fans events out to Watch channels without ever blocking the
// emitter.
type eventHub struct {
	// mu guards subs; it is held while sending (non-blocking) and while
	// closing a channel, so no send hits a closed channel.
	mu      sync.Mutex
	subs    map[chan Event]struct{}
	closed  bool
	dropped atomic.Uint64
}

func (h *eventHub) emit(evs ...Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, ev := range evs {
		for ch := range h.subs {
			select {
			case ch <- ev:
			default:
				h.dropped.Add(1)
			}
		}
	}
}

// subscribe returns a channel and a function that unsubscribes and closes
// it. After close, it returns an already closed channel.
func (h *eventHub) subscribe() (chan Event, func()) {
	ch := make(chan Event, eventBuffer)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		close(ch)
		return ch, func() {}
	}
	if h.subs == nil {
		h.subs = map[chan Event]struct{}{}
	}
	h.subs[ch] = struct{}{}
	return ch, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if _, ok := h.subs[ch]; ok {
			delete(h.subs, ch)
			close(ch)
		}
	}
}

// close closes every channel; later subscriptions get closed channels.
func (h *eventHub) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	for ch := range h.subs {
		close(ch)
	}
	h.subs = nil
}

// Watch returns a channel of the node's events. It is closed when ctx is
// done or the node closes. A reader that falls more than 256 events behind
// loses events (counted in Status.EventsDropped): the node never waits for
// a reader.
func (n *Node) Watch(ctx context.Context) <-chan Event {
	ch, cancel := n.events.subscribe()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		cancel()
		return ch
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		select {
		case <-ctx.Done():
		case <-n.ctx.Done():
		}
		cancel()
	}()
	return ch
}
