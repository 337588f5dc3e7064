package control

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/control/dashboard"
	"github.com/wiremesh/wiremesh/control/store"
)

// dashboardZonesEvery is how often a dashboard event stream looks for zones
// created since it started, to observe them too.
const dashboardZonesEvery = 10 * time.Second

// newDashboard returns the web dashboard, which forwards its admin calls to
// the whole API (s.handler, read when a call arrives).
func (s *server) newDashboard() (*dashboard.Dashboard, error) {
	return dashboard.New(dashboard.Config{
		AdminToken: s.cfg.AdminToken,
		API:        http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.handler.ServeHTTP(w, r) }),
		Subscribe:  s.dashboardEvents,
		Logger:     s.log,
		KeepAlive:  s.cfg.HeartbeatInterval,
		Now:        s.cfg.Now,
	})
}

// withPresence is d in its admin form: with its presence (online, last
// seen) as the store records it for every replica.
func withPresence(d store.Device) api.Device {
	out := toAPIDevice(d)
	online := d.Online
	out.Online = &online
	out.LastSeen = d.LastSeen.Truncate(time.Second)
	return out
}

// dashboardEvents feeds a dashboard's live view: every zone's changes (as
// the watch hub fans them out, observed in every zone) and presence
// changes. The channel closes when ctx ends or the hub drops an observer
// that fell behind; the browser then reconnects and reloads.
func (s *server) dashboardEvents(ctx context.Context) (<-chan dashboard.Event, error) {
	o := &observer{s: s, out: make(chan dashboard.Event, 64), changes: make(chan dashboard.Event, 64),
		presence: make(chan presenceEvent, 64), stats: make(chan statsEvent, 64), subs: make(map[string]*subscriber)}
	o.ctx, o.cancel = context.WithCancel(ctx)
	if err := o.addZones(); err != nil {
		o.stop()
		return nil, err
	}
	unsub := s.presence.subscribe(o.presence)
	unsubStats := s.statsEvents.subscribe(o.stats)
	go func() {
		defer close(o.out)
		defer o.stop()
		defer unsub()
		defer unsubStats()
		o.run()
	}()
	return o.out, nil
}

// observer is one dashboard event stream. Its goroutines end with ctx.
type observer struct {
	s        *server
	ctx      context.Context
	cancel   context.CancelFunc
	out      chan dashboard.Event
	changes  chan dashboard.Event // from the per-zone forwarders
	presence chan presenceEvent
	stats    chan statsEvent // reports received by this replica
	wg       sync.WaitGroup
	subs     map[string]*subscriber // zone → observer subscription; owned by run
}

func (o *observer) run() {
	t := time.NewTicker(dashboardZonesEvery)
	defer t.Stop()
	for {
		var ev dashboard.Event
		select {
		case <-o.ctx.Done():
			return
		case ev = <-o.changes:
		case p := <-o.presence:
			b, _ := json.Marshal(p)
			ev = dashboard.Event{Type: "presence", Data: b}
		case st := <-o.stats:
			b, _ := json.Marshal(st)
			ev = dashboard.Event{Type: "stats", Data: b}
		case <-t.C:
			if err := o.addZones(); err != nil {
				return
			}
			continue
		}
		select {
		case o.out <- ev:
		case <-o.ctx.Done():
			return
		}
	}
}

// addZones observes every zone not observed yet.
func (o *observer) addZones() error {
	zs, err := o.s.cfg.Store.Zones(o.ctx)
	if err != nil {
		return fmt.Errorf("listing zones: %w", err)
	}
	for _, z := range zs {
		if o.subs[z.Name] != nil {
			continue
		}
		sub, err := o.s.hub.observe(o.ctx, z.Name)
		if err != nil {
			return fmt.Errorf("observing zone %q: %w", z.Name, err)
		}
		o.subs[z.Name] = sub
		o.wg.Add(1)
		go o.forward(z.Name, sub)
	}
	return nil
}

// forward relays one zone's hub events; a dropped subscription ends the
// whole stream.
func (o *observer) forward(zone string, sub *subscriber) {
	defer o.wg.Done()
	for {
		select {
		case <-o.ctx.Done():
			return
		case <-sub.wake:
			evs, open := sub.take()
			for _, ev := range evs {
				data := fmt.Appendf(nil, `{"zone":%q,"event":%s}`, zone, ev.line[:len(ev.line)-1])
				select {
				case o.changes <- dashboard.Event{Type: "change", Data: data}:
				case <-o.ctx.Done():
					return
				}
			}
			if !open {
				o.cancel()
				return
			}
		}
	}
}

// stop ends the forwarders and releases the hub subscriptions.
func (o *observer) stop() {
	o.cancel()
	for _, sub := range o.subs {
		o.s.hub.unsubscribe(sub)
	}
	o.wg.Wait()
}
