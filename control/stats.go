package control

import (
	"context"
	"errors"
	"math"
	"net/http"
	"slices"
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
	// A refused report changes nothing, not even the device's budget:
	// check it whole before taking a token.
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
	if !s.cfg.limits.noRateLimits {
		if ok, wait := s.statsLimit.take(d.ID); !ok {
			writeRateLimited(w, wait, "too many stats reports from this device")
			return
		}
	}
	// Only the zone's devices are kept: a member cannot fill the store
	// with made-up peers.
	peers, err := s.zonePeers(r.Context(), d.Zone, peers)
	if err == nil {
		err = s.cfg.Store.PutStats(r.Context(), store.DeviceStats{DeviceID: d.ID, ReportedAt: now, Peers: peers})
	}
	if errors.Is(err, store.ErrNotFound) {
		// Deleted since it authenticated: a not_found other than the
		// unknown route's of an older service (see mesh's statsLoop).
		writeError(w, apiErr(api.CodeNotFound, "stats report: device %q was deleted", d.ID))
		return
	}
	if err != nil {
		writeError(w, s.storeErr(r.Context(), "stats report", err))
		return
	}
	s.statsEvents.notify(statsEvent{Zone: d.Zone, DeviceID: d.ID})
	w.WriteHeader(http.StatusNoContent)
}

// zonePeers keeps the peers that are devices of zone, looking up only
// their ids.
func (s *server) zonePeers(ctx context.Context, zone string, peers []store.PeerStats) ([]store.PeerStats, error) {
	if len(peers) == 0 {
		return peers, nil
	}
	ids := make([]string, len(peers))
	for i, p := range peers {
		ids[i] = p.DeviceID
	}
	known, err := s.cfg.Store.ZoneDeviceIDs(ctx, zone, ids)
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(peers, func(p store.PeerStats) bool {
		_, ok := slices.BinarySearch(known, p.DeviceID)
		return !ok
	}), nil
}

// checkStats validates a report from device self and turns it into the
// stored form (handshake ages become times on the service's clock).
// Peer ids are checked for form only here; the handler then drops those
// that are no device of the zone (a peer deleted since the member last
// heard, or made up), and reports are shown without peers deleted since.
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
// API's list; zone "" means every zone) as summaries, with each peer too
// when full, counting only peers that are devices of the reporter's zone
// among all.
func (s *server) withStats(ctx context.Context, zone string, devices []api.Device, all []store.Device, full bool) ([]api.Device, error) {
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
		devices[i].Stats = toAPIStats(r, full, func(id string) bool {
			z, ok := zoneOf[id]
			return ok && z == devices[i].Zone
		})
	}
	return devices, nil
}

// deviceStats is one device's report for GET /v1/devices/{id}: summary,
// and peers when full, counting only peers still devices of its zone (nil
// if it never reported). It reads that report and resolves its peers' ids
// only.
func (s *server) deviceStats(ctx context.Context, d store.Device, full bool) (*api.DeviceStats, error) {
	r, err := s.cfg.Store.DeviceStats(ctx, d.ID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if r.Peers, err = s.zonePeers(ctx, d.Zone, r.Peers); err != nil {
		return nil, err
	}
	return toAPIStats(r, full, func(string) bool { return true }), nil
}

// toAPIStats summarizes a report over the peers keep accepts, listing
// them too when full (then [] for none).
func toAPIStats(r store.DeviceStats, full bool, keep func(id string) bool) *api.DeviceStats {
	st := &api.DeviceStats{ReportedAt: r.ReportedAt.Truncate(time.Second)}
	if full {
		st.Peers = []api.PeerStats{}
	}
	for _, p := range r.Peers {
		if !keep(p.DeviceID) {
			continue
		}
		switch p.Path {
		case api.PathDirect:
			st.Direct++
		case api.PathRelay:
			st.Relay++
		default:
			st.NoPath++
		}
		hs := p.LastHandshake.Truncate(time.Second)
		if hs.After(st.LastHandshake) {
			st.LastHandshake = hs
		}
		st.RxBytes = addSat(st.RxBytes, p.RxBytes)
		st.TxBytes = addSat(st.TxBytes, p.TxBytes)
		if full {
			st.Peers = append(st.Peers, api.PeerStats{DeviceID: p.DeviceID, Path: p.Path,
				LastHandshake: hs, RxBytes: p.RxBytes, TxBytes: p.TxBytes})
		}
	}
	return st
}

// addSat adds without wrapping around.
func addSat(a, b uint64) uint64 {
	if a+b < a {
		return math.MaxUint64
	}
	return a + b
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
