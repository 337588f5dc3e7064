package control

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/control/store"
)

// watchWriteTimeout bounds one write to a watch stream; a client that does
// not read for that long is disconnected.
const watchWriteTimeout = 30 * time.Second

func (s *server) handleWatch(w http.ResponseWriter, r *http.Request, d store.Device) {
	ctx := r.Context()
	zone := r.PathValue("zone")
	if zone != d.Zone {
		// Never reveal whether another zone exists.
		writeError(w, apiErr(api.CodeNotFound, "zone %q not found", zone))
		return
	}
	var since int64
	if q := r.URL.Query().Get("since"); q != "" {
		v, err := strconv.ParseInt(q, 10, 64)
		if err != nil || v < 0 {
			writeError(w, apiErr(api.CodeBadRequest, "since %q: want a revision (non-negative integer)", q))
			return
		}
		since = v
	}

	// Subscribe first, then read the backlog: live events at or below the
	// backlog's revision are skipped, so nothing is lost or sent twice.
	sub, err := s.hub.subscribeAs(ctx, zone, d.ID)
	if errors.Is(err, errHubClosed) {
		writeError(w, apiErr(api.CodeUnavailable, "the service is shutting down"))
		return
	}
	if err != nil {
		writeError(w, s.storeErr(ctx, "watch", err))
		return
	}
	defer s.hub.unsubscribe(sub)

	bl, err := s.watchBacklog(ctx, sub, d, since)
	if err != nil {
		writeError(w, s.storeErr(ctx, "watch", err))
		return
	}

	h := w.Header()
	h.Set("Content-Type", "application/x-ndjson")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	var deadline time.Time
	send := func(lines ...[]byte) bool {
		// Moving the deadline costs a timer update per write: move it only
		// once a third of it has passed, so a member that stops reading is
		// cut off after between 2/3 and all of watchWriteTimeout.
		if now := time.Now(); deadline.Sub(now) < watchWriteTimeout*2/3 {
			deadline = now.Add(watchWriteTimeout)
			_ = rc.SetWriteDeadline(deadline)
		}
		for _, l := range lines {
			if _, err := w.Write(l); err != nil {
				return false
			}
		}
		return rc.Flush() == nil
	}
	if !send(bl.lines...) || bl.deleted {
		if bl.deleted {
			s.log.InfoContext(ctx, "watch ended: device deleted", "zone", zone, "device", d.ID)
		}
		return
	}
	start := "resume"
	if bl.snapshot {
		start = "snapshot"
	}
	s.metrics.watchStreams.WithLabelValues(start).Inc()
	s.presence.connect(zone, d.ID)
	deleted := false
	defer func() { s.presence.disconnect(zone, d.ID, deleted) }()
	s.log.DebugContext(ctx, "watch started", "zone", zone, "device", d.ID, "since", since, "rev", bl.rev, "snapshot", bl.snapshot)
	deleted = s.streamWatch(ctx, sub, d, bl.rev, send)
}

// watchBacklog is what a watch stream starts with.
type watchBacklog struct {
	lines    [][]byte
	rev      int64 // live events at or below it are skipped
	snapshot bool  // lines is a snapshot (else the changes after since)
	deleted  bool  // lines end with the device's own removal: end there
}

// watchBacklog reads what sub's stream starts with: the changes after
// since, or a snapshot. It checks once that the device still exists (a
// deletion after that reaches the stream as its remove event).
func (s *server) watchBacklog(ctx context.Context, sub *subscriber, d store.Device, since int64) (watchBacklog, error) {
	// In a zone with a policy, or from before a policy change, a member's
	// view is not the shared log: it starts over (hub_policy.go).
	bl := watchBacklog{snapshot: since == 0 || s.hub.needsSnapshot(sub, since)}
	if !bl.snapshot {
		changes, cur, err := s.cfg.Store.Changes(ctx, d.Zone, since)
		switch {
		case errors.Is(err, store.ErrCompacted) || (err == nil && since > cur) || isPolicyChange(changes):
			// History gone, or a revision this store never issued (the
			// service's state was replaced): start over.
			bl.snapshot = true
		case err != nil:
			return bl, err
		default:
			bl.rev = cur
			for _, c := range changes {
				bl.lines = append(bl.lines, encodeChange(c))
				if c.Kind == store.ChangeRemove && c.Device.ID == d.ID {
					bl.deleted = true
					return bl, nil
				}
			}
			// A heartbeat closes the backlog, so a resuming client knows at
			// once that the stream is live even when it missed nothing.
			bl.lines = append(bl.lines, heartbeatLine(cur))
		}
	}
	if bl.snapshot {
		// The hub's copy of the zone, at the revision up to which it has
		// handed changes to sub: nothing lost, nothing twice.
		var line []byte
		line, bl.rev = s.hub.snapshot(sub)
		bl.lines = [][]byte{line}
	}
	// Deleted between authentication and subscription (its remove event
	// came before sub): told the same way, its own removal, then the end.
	if ok, rev := s.hub.present(sub); !ok {
		bl.lines = append(bl.lines, encodeChange(store.Change{Rev: max(rev, bl.rev), Zone: d.Zone, Kind: store.ChangeRemove, Device: d}))
		bl.deleted = true
	}
	return bl, nil
}

// streamWatch sends sub's events and jittered heartbeats until the stream
// ends; it reports whether it ended because the device was deleted (its
// own remove event was the last line sent). Heartbeats need no store: a
// deletion, even through another replica sharing the store, reaches the
// hub's change log (read on every update and poll) as a remove event.
func (s *server) streamWatch(ctx context.Context, sub *subscriber, d store.Device, rev int64, send func(...[]byte) bool) bool {
	every := s.cfg.HeartbeatInterval
	hb := time.NewTimer(heartbeatDelay(every))
	defer hb.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-sub.wake:
			evs, open := sub.take()
			var lines [][]byte
			from, deleted := rev, false
			for _, ev := range evs {
				if ev.rev <= rev {
					continue
				}
				rev = ev.rev
				if ev.presenceOf == d.ID {
					continue // a member knows whether it is online
				}
				lines = append(lines, ev.line)
				if ev.removed == d.ID {
					deleted = true
					break
				}
			}
			if len(lines) > 0 && !send(lines...) {
				return false
			}
			for _, ev := range evs {
				if ev.rev > from && ev.rev <= rev {
					s.metrics.watchLag.Observe(time.Since(ev.at).Seconds())
				}
			}
			if deleted {
				// The device was deleted: it is told (the remove event
				// about itself is the stream's last line), then its
				// credentials are gone, and so is its view of the zone.
				s.log.InfoContext(ctx, "watch ended: device deleted", "zone", d.Zone, "device", d.ID)
				return true
			}
			if !open {
				return false // dropped (too slow, compacted) or shutting down
			}
		case <-hb.C:
			if !send(heartbeatLine(rev)) {
				return false
			}
			hb.Reset(heartbeatDelay(every))
		}
	}
}

// heartbeatDelay is the wait before a stream's next heartbeat: every, less
// up to a quarter at random, so the streams of a zone (opened together
// after a restart, say) spread their heartbeats out instead of beating in
// lockstep. Events do not reset it.
func heartbeatDelay(every time.Duration) time.Duration {
	if every < 4 {
		return every
	}
	return every - rand.N(every/4)
}

func heartbeatLine(rev int64) []byte {
	return encodeLine(api.WatchEvent{Type: api.EventHeartbeat, Revision: rev})
}
