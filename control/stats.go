package control

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/control/store"
)

// Members report a per-peer summary (path, last handshake, bytes) to
// POST /v1/devices/self/stats; the store keeps the latest report per
// device, outside the change log, so the admin API and the dashboard of
// every replica show it (see docs/HARDENING.md for the limits).

// maxStatsID bounds a peer id in a report (device ids are "dev_" and 16
// hex digits).
const maxStatsID = 64

// maxHandshakeAge bounds a reported handshake age (10 years).
const maxHandshakeAge = 10 * 365 * 24 * 3600

func (s *server) handleStats(w http.ResponseWriter, r *http.Request, d store.Device) {
	if !s.cfg.limits.noRateLimits {
		if ok, wait := s.statsLimit.take(d.ID); !ok {
			writeRateLimited(w, wait, "too many stats reports from this device")
			return
		}
	}
	body, aerr := readBodyMax(w, r, api.MaxStatsBodyBytes)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	var rep api.StatsReport
	if aerr := decodeJSON(body, &rep); aerr != nil {
		writeError(w, aerr)
		return
	}
	now := s.cfg.Now().UTC()
	peers, aerr := checkStats(rep, d.ID, now)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	err := s.cfg.Store.PutStats(r.Context(), store.DeviceStats{DeviceID: d.ID, ReportedAt: now, Peers: peers})
	if err != nil {
		writeError(w, s.storeErr(r.Context(), "stats report", err))
		return
	}
	s.statsEvents.notify(statsEvent{Zone: d.Zone, DeviceID: d.ID})
	w.WriteHeader(http.StatusNoContent)
}

// checkStats validates a report from device self and turns it into the
// stored form (handshake ages become times on the service's clock).
// Peer ids are checked for form only: an id that is no device of the zone
// (a peer deleted since the member last heard) is kept, and left out when
// reports are shown.
func checkStats(rep api.StatsReport, self string, now time.Time) ([]store.PeerStats, *api.Error) {
	if len(rep.Peers) > api.MaxStatsPeers {
		return nil, apiErr(api.CodeBadRequest, "too many peers in the report: %d (max %d)", len(rep.Peers), api.MaxStatsPeers)
	}
	seen := make(map[string]bool, len(rep.Peers))
	out := make([]store.PeerStats, 0, len(rep.Peers))
	for i, p := range rep.Peers {
		switch {
		case p.DeviceID == "" || len(p.DeviceID) > maxStatsID || !idChars(p.DeviceID):
			return nil, apiErr(api.CodeBadRequest, "peers[%d].device_id %q: want a device id", i, p.DeviceID)
		case p.DeviceID == self:
			return nil, apiErr(api.CodeBadRequest, "peers[%d].device_id %q: the reporting device itself", i, p.DeviceID)
		case seen[p.DeviceID]:
			return nil, apiErr(api.CodeBadRequest, "peers[%d].device_id %q: reported twice", i, p.DeviceID)
		case p.Path != "" && p.Path != api.PathDirect && p.Path != api.PathRelay:
			return nil, apiErr(api.CodeBadRequest, "peers[%d].path %q: want %q, %q or none", i, p.Path, api.PathDirect, api.PathRelay)
		case !p.LastHandshake.IsZero():
			return nil, apiErr(api.CodeBadRequest, "peers[%d].last_handshake: set by the service; report handshake_age_seconds", i)
		case p.HandshakeAgeSeconds != nil && (*p.HandshakeAgeSeconds < 0 || *p.HandshakeAgeSeconds > maxHandshakeAge):
			return nil, apiErr(api.CodeBadRequest, "peers[%d].handshake_age_seconds %d: want 0 to %d", i, *p.HandshakeAgeSeconds, maxHandshakeAge)
		}
		seen[p.DeviceID] = true
		ps := store.PeerStats{DeviceID: p.DeviceID, Path: p.Path, RxBytes: p.RxBytes, TxBytes: p.TxBytes}
		if p.HandshakeAgeSeconds != nil {
			ps.LastHandshake = now.Add(-time.Duration(*p.HandshakeAgeSeconds) * time.Second)
		}
		out = append(out, ps)
	}
	return out, nil
}

// idChars reports whether s has only the characters of device ids.
func idChars(s string) bool {
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// withStats attaches the zone's latest reports to devices (the admin
// API's answer; zone "" means every zone), keeping only peers that are
// devices of the reporter's zone among all.
func (s *server) withStats(ctx context.Context, zone string, devices []api.Device, all []store.Device) ([]api.Device, error) {
	reports, err := s.cfg.Store.Stats(ctx, zone)
	if err != nil || len(reports) == 0 {
		return devices, err
	}
	zoneOf := make(map[string]string, len(all))
	for _, d := range all {
		zoneOf[d.ID] = d.Zone
	}
	byID := make(map[string]store.DeviceStats, len(reports))
	for _, r := range reports {
		byID[r.DeviceID] = r
	}
	for i := range devices {
		r, ok := byID[devices[i].ID]
		if !ok {
			continue
		}
		st := &api.DeviceStats{ReportedAt: r.ReportedAt.Truncate(time.Second), Peers: []api.PeerStats{}}
		for _, p := range r.Peers {
			if z, ok := zoneOf[p.DeviceID]; !ok || z != devices[i].Zone {
				continue
			}
			st.Peers = append(st.Peers, api.PeerStats{DeviceID: p.DeviceID, Path: p.Path,
				LastHandshake: p.LastHandshake.Truncate(time.Second), RxBytes: p.RxBytes, TxBytes: p.TxBytes})
		}
		devices[i].Stats = st
	}
	return devices, nil
}

// statsEvent tells this replica's dashboards that a device reported.
type statsEvent struct {
	Zone     string `json:"zone"`
	DeviceID string `json:"device_id"`
}

// statsEvents fans stats reports out to dashboard streams; a stream that
// is not reading misses events (it reloads on its timer anyway).
type statsEvents struct {
	mu   sync.Mutex // guards subs
	subs map[chan<- statsEvent]struct{}
}

func newStatsEvents() *statsEvents { return &statsEvents{subs: map[chan<- statsEvent]struct{}{}} }

func (e *statsEvents) subscribe(ch chan<- statsEvent) (cancel func()) {
	e.mu.Lock()
	e.subs[ch] = struct{}{}
	e.mu.Unlock()
	return func() {
		e.mu.Lock()
		delete(e.subs, ch)
		e.mu.Unlock()
	}
}

func (e *statsEvents) notify(ev statsEvent) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for ch := range e.subs {
		select {
		case ch <- ev:
		default:
		}
	}
}
