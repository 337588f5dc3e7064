package control

import (
	"context"
	"errors"
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

	var backlog [][]byte
	var rev int64
	// In a zone with a policy, or from before a policy change, a member's
	// view is not the shared log: it starts over (hub_policy.go).
	snapshot := since == 0 || s.hub.needsSnapshot(sub, since)
	if !snapshot {
		changes, cur, err := s.cfg.Store.Changes(ctx, zone, since)
		switch {
		case errors.Is(err, store.ErrCompacted) || (err == nil && since > cur) || isPolicyChange(changes):
			// History gone, or a revision this store never issued (the
			// service's state was replaced): start over.
			snapshot = true
		case err != nil:
			writeError(w, s.storeErr(ctx, "watch", err))
			return
		default:
			rev = cur
			for _, c := range changes {
				backlog = append(backlog, encodeChange(c))
			}
			// A heartbeat closes the backlog, so a resuming client knows at
			// once that the stream is live even when it missed nothing.
			backlog = append(backlog, encodeLine(api.WatchEvent{Type: api.EventHeartbeat, Revision: rev}))
		}
	}
	if snapshot {
		// The hub's copy of the zone, at the revision up to which it has
		// handed changes to sub: nothing lost, nothing twice.
		var line []byte
		line, rev = s.hub.snapshot(sub)
		backlog = [][]byte{line}
	}

	h := w.Header()
	h.Set("Content-Type", "application/x-ndjson")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	send := func(lines ...[]byte) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(watchWriteTimeout))
		for _, l := range lines {
			if _, err := w.Write(l); err != nil {
				return false
			}
		}
		return rc.Flush() == nil
	}
	if !send(backlog...) {
		return
	}
	start := "resume"
	if snapshot {
		start = "snapshot"
	}
	s.metrics.watchStreams.WithLabelValues(start).Inc()
	s.presence.connect(zone, d.ID)
	deleted := false
	defer func() { s.presence.disconnect(zone, d.ID, deleted) }()
	s.log.DebugContext(ctx, "watch started", "zone", zone, "device", d.ID, "since", since, "rev", rev, "snapshot", snapshot)

	hb := time.NewTicker(s.cfg.HeartbeatInterval)
	defer hb.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-sub.ch:
			if !ok {
				return // dropped (too slow, compacted) or shutting down
			}
			if ev.rev <= rev {
				continue
			}
			rev = ev.rev
			if ev.presenceOf == d.ID {
				continue // a member knows whether it is online
			}
			if !send(ev.line) {
				return
			}
			s.metrics.watchLag.Observe(time.Since(ev.at).Seconds())
			if ev.removed == d.ID {
				deleted = true
				// The device was deleted: it is told (the remove event
				// about itself is the stream's last line), then its
				// credentials are gone, and so is its view of the zone.
				s.log.InfoContext(ctx, "watch ended: device deleted", "zone", zone, "device", d.ID)
				return
			}
			hb.Reset(s.cfg.HeartbeatInterval)
		case <-hb.C:
			// A stream must not outlive its device, even if the remove
			// event was missed (a dropped hub subscription is closed, but
			// be strict): check before every heartbeat.
			if _, err := s.cfg.Store.Device(ctx, d.ID); errors.Is(err, store.ErrNotFound) {
				deleted = true
				s.sendOwnRemoval(ctx, sub, d, rev, send)
				return
			}
			if !send(encodeLine(api.WatchEvent{Type: api.EventHeartbeat, Revision: rev})) {
				return
			}
		}
	}
}

// sendOwnRemoval ends the stream of a device that a heartbeat found deleted
// before its remove event arrived (deleted through another replica sharing
// the store, or by a handler that has not fanned the change out yet). The
// deletion is committed, so after hub.update the remove event is in sub.ch:
// it sends what is pending up to and including it, and the stream ends the
// same way whichever path noticed the deletion first.
func (s *server) sendOwnRemoval(ctx context.Context, sub *subscriber, d store.Device, rev int64, send func(...[]byte) bool) {
	s.hub.update(d.Zone)
	for {
		select {
		case ev, ok := <-sub.ch:
			if !ok {
				return // dropped or shutting down: the client reconnects and gets 401
			}
			if ev.rev <= rev {
				continue
			}
			rev = ev.rev
			if !send(ev.line) || ev.removed == d.ID {
				s.log.InfoContext(ctx, "watch ended: device deleted", "zone", d.Zone, "device", d.ID)
				return
			}
		default:
			return
		}
	}
}
