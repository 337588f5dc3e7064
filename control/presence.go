package control

import (
	"sync"
	"time"
)

// presence tracks which members hold a watch stream to this service
// process (DESIGN: online = holds a watch stream) and when each was last
// seen on one. It is in memory: a restart forgets it until members
// reconnect (seconds), and replicas sharing a store each know only their
// own streams.
type presence struct {
	now func() time.Time

	mu   sync.Mutex // guards devs and subs
	devs map[string]*presenceEntry
	subs map[chan<- presenceEvent]struct{}
}

// presenceEntry is what is known of one device.
type presenceEntry struct {
	zone     string
	streams  int       // watch streams open now
	lastSeen time.Time // when the last stream ended (valid when streams == 0)
}

// presenceEvent says a device went online or offline.
type presenceEvent struct {
	Zone     string `json:"zone"`
	DeviceID string `json:"device_id"`
	Online   bool   `json:"online"`
}

func newPresence(now func() time.Time) *presence {
	return &presence{now: now, devs: make(map[string]*presenceEntry), subs: make(map[chan<- presenceEvent]struct{})}
}

// connect records a watch stream of device id opening.
func (p *presence) connect(zone, id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.devs[id]
	if e == nil {
		e = &presenceEntry{zone: zone}
		p.devs[id] = e
	}
	e.streams++
	if e.streams == 1 {
		p.notifyLocked(presenceEvent{Zone: zone, DeviceID: id, Online: true})
	}
}

// disconnect records a watch stream of device id ending. forget drops what
// is known of the device (it was deleted).
func (p *presence) disconnect(zone, id string, forget bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.devs[id]
	if e == nil {
		return
	}
	e.streams--
	e.lastSeen = p.now().UTC()
	if e.streams <= 0 {
		if forget {
			delete(p.devs, id)
		}
		p.notifyLocked(presenceEvent{Zone: zone, DeviceID: id, Online: false})
	}
}

// state returns whether device id holds a watch stream now and when it was
// last seen on one (now while online; zero if never since start).
func (p *presence) state(id string) (online bool, lastSeen time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.devs[id]
	switch {
	case e == nil:
		return false, time.Time{}
	case e.streams > 0:
		return true, p.now().UTC().Truncate(time.Second)
	default:
		return false, e.lastSeen.Truncate(time.Second)
	}
}

// subscribe sends every later presence change to ch without blocking (a
// full channel misses the event; subscribers treat any event as "refresh").
// The returned func unsubscribes.
func (p *presence) subscribe(ch chan<- presenceEvent) (cancel func()) {
	p.mu.Lock()
	p.subs[ch] = struct{}{}
	p.mu.Unlock()
	return func() {
		p.mu.Lock()
		delete(p.subs, ch)
		p.mu.Unlock()
	}
}

func (p *presence) notifyLocked(ev presenceEvent) {
	for ch := range p.subs {
		select {
		case ch <- ev:
		default:
		}
	}
}
