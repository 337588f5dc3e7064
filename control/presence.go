package control

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/wiremesh/wiremesh/control/store"
)

// defaultPresenceLease is how long a service process's word that a device
// holds a watch stream lasts unless renewed (every third of it). A process
// that dies without saying its devices left makes them offline after at
// most this long, when another process (or itself, restarted) next
// reports.
const defaultPresenceLease = 45 * time.Second

// presence tracks which members hold a watch stream to this service
// process (DESIGN: online = holds a watch stream) and records it in the
// store as leases (store.UpdatePresence), so that online state and last
// seen survive restarts, are shared by replicas, and reach peers as
// presence events through the change log. It also deletes ephemeral
// devices that stayed offline for cfg.EphemeralTimeout.
//
// In memory it counts streams per device; the store hears of a device when
// its first stream opens and its last one ends, and every lease/3 for all
// devices with a stream (renewal). Presence changes are also sent to
// subscribers (the dashboard).
type presence struct {
	now      func() time.Time
	st       store.Store
	log      *slog.Logger
	holder   string // this process, in the store's leases
	lease    time.Duration
	ephemTTL time.Duration
	changed  func(zone string) // fans out new changes of a zone (hub.update)

	ctx    context.Context // cancelled by close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// reportMu serializes reports to the store, so that the last report
	// of a device always reflects its latest stream count.
	reportMu sync.Mutex

	mu     sync.Mutex // guards devs, subs, closed
	devs   map[string]*presenceEntry
	subs   map[chan<- presenceEvent]struct{}
	closed bool
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

// presenceConfig configures newPresence.
type presenceConfig struct {
	now              func() time.Time
	store            store.Store
	log              *slog.Logger
	lease            time.Duration // zero: defaultPresenceLease
	ephemeralTimeout time.Duration
	changed          func(zone string)
}

// newPresence starts the renewal and reaping loop; close stops it.
func newPresence(c presenceConfig) *presence {
	if c.lease <= 0 {
		c.lease = defaultPresenceLease
	}
	var id [8]byte
	rand.Read(id[:])
	p := &presence{
		now: c.now, st: c.store, log: c.log, holder: "svc_" + hex.EncodeToString(id[:]),
		lease: c.lease, ephemTTL: c.ephemeralTimeout, changed: c.changed,
		devs: make(map[string]*presenceEntry), subs: make(map[chan<- presenceEvent]struct{}),
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	if p.st != nil {
		p.wg.Add(1)
		go p.run()
	}
	return p
}

// close stops the loop and further reports. The leases this process holds
// are left to run out, so a quick restart does not flap members offline.
func (p *presence) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.cancel()
	p.wg.Wait()
}

// connect records a watch stream of device id opening.
func (p *presence) connect(zone, id string) {
	p.mu.Lock()
	e := p.devs[id]
	if e == nil {
		e = &presenceEntry{zone: zone}
		p.devs[id] = e
	}
	e.streams++
	first := e.streams == 1
	if first {
		p.notifyLocked(presenceEvent{Zone: zone, DeviceID: id, Online: true})
	}
	p.mu.Unlock()
	if first {
		p.report(id)
	}
}

// disconnect records a watch stream of device id ending. forget drops what
// is known of the device (it was deleted).
func (p *presence) disconnect(zone, id string, forget bool) {
	p.mu.Lock()
	e := p.devs[id]
	if e == nil {
		p.mu.Unlock()
		return
	}
	e.streams--
	e.lastSeen = p.now().UTC()
	last := e.streams <= 0
	if last {
		if forget {
			delete(p.devs, id)
		}
		p.notifyLocked(presenceEvent{Zone: zone, DeviceID: id, Online: false})
	}
	p.mu.Unlock()
	if last && !forget {
		p.report(id)
	}
}

// report tells the store whether device id holds a stream here now.
func (p *presence) report(id string) {
	if p.st == nil {
		return
	}
	p.reportMu.Lock()
	defer p.reportMu.Unlock()
	p.mu.Lock()
	closed := p.closed
	e := p.devs[id]
	online := e != nil && e.streams > 0
	p.mu.Unlock()
	if closed {
		return
	}
	u := store.PresenceUpdate{Holder: p.holder}
	if online {
		u.Online = []string{id}
	} else {
		u.Offline = []string{id}
	}
	p.update(u)
}

// update sends u to the store and fans out the changes it made.
func (p *presence) update(u store.PresenceUpdate) {
	now := p.now().UTC()
	u.Now, u.Until = now, now.Add(p.lease)
	ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
	defer cancel()
	zones, err := p.st.UpdatePresence(ctx, u)
	if err != nil {
		if p.ctx.Err() == nil {
			p.log.Warn("recording presence failed", "err", err)
		}
		return
	}
	for _, z := range zones {
		p.changed(z)
	}
}

// run renews this process's leases every lease/3 (which also takes the
// devices of dead processes offline) and deletes ephemeral devices that
// stayed offline too long.
func (p *presence) run() {
	defer p.wg.Done()
	t := time.NewTicker(p.lease / 3)
	defer t.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
		}
		p.renew()
		p.reap()
	}
}

func (p *presence) renew() {
	p.reportMu.Lock()
	defer p.reportMu.Unlock()
	p.mu.Lock()
	var ids []string
	for id, e := range p.devs {
		if e.streams > 0 {
			ids = append(ids, id)
		}
	}
	p.mu.Unlock()
	slices.Sort(ids)
	p.update(store.PresenceUpdate{Holder: p.holder, Online: ids})
}

// reap deletes the ephemeral devices offline for longer than ephemTTL.
func (p *presence) reap() {
	if p.ephemTTL <= 0 {
		return
	}
	now := p.now().UTC()
	ctx, cancel := context.WithTimeout(p.ctx, 30*time.Second)
	defer cancel()
	gone, err := p.st.DeleteEphemeral(ctx, now.Add(-p.ephemTTL), now)
	if err != nil {
		if p.ctx.Err() == nil {
			p.log.Warn("deleting offline ephemeral devices failed", "err", err)
		}
		return
	}
	var zones []string
	for _, d := range gone {
		p.log.Info("ephemeral device deleted after being offline", "zone", d.Zone, "id", d.ID, "hostname", d.Hostname,
			"last_seen", d.LastSeen, "timeout", p.ephemTTL)
		if !slices.Contains(zones, d.Zone) {
			zones = append(zones, d.Zone)
		}
	}
	for _, z := range zones {
		p.changed(z)
	}
}

// state returns whether device id holds a watch stream to this process now
// and when it was last seen on one (now while online; zero if never since
// start).
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
