package mesh

import (
	"context"
	"errors"
	"maps"
	"slices"
	"time"

	"github.com/wiremesh/wiremesh/control/api"
)

// The node reports a summary of its peers (path, handshake age, bytes) to
// the service (POST /v1/devices/self/stats) for the admin API and the
// dashboard: every api.StatsInterval, and within statsCheck of a peer's
// path changing.

const (
	// defaultStatsCheck is how often the node looks for changed paths.
	defaultStatsCheck = 5 * time.Second
	// statsTimeout bounds one report.
	statsTimeout = 10 * time.Second
)

// statsLoop reports until the node closes. A service without the endpoint
// (404) ends it; other failures are retried with backoff.
func (n *Node) statsLoop() {
	defer n.wg.Done()
	var (
		sent   map[string]string // peer id → path state last reported
		sentAt time.Time
		next   time.Time // no report before (backoff after a failure)
		fails  int
	)
	for sleepCtx(n.ctx, n.cfg.statsCheck) {
		now := time.Now()
		if now.Before(next) {
			continue
		}
		rep, paths := statsReport(n.Status().Peers, now)
		if !statsDue(sent, paths, sentAt, now, n.cfg.statsInterval) {
			continue
		}
		ctx, cancel := context.WithTimeout(n.ctx, statsTimeout)
		err := n.client.ReportStats(ctx, rep)
		cancel()
		var ae *api.Error
		switch {
		case err == nil:
			sent, sentAt, fails = paths, now, 0
		case n.ctx.Err() != nil:
			return
		case errors.As(err, &ae) && ae.Code == api.CodeNotFound:
			n.log.Info("mesh: the service takes no peer reports (an older version); not reporting", "err", err)
			return
		default:
			fails++
			next = now.Add(min(n.cfg.statsInterval, n.cfg.statsCheck<<min(fails, 6)))
			n.log.Debug("mesh: reporting peer stats failed", "err", err, "retry_at", next)
		}
	}
}

// statsDue reports whether a report is due: none was sent yet, interval
// passed since the last, or a peer's path state (see statsReport) changed.
func statsDue(sent, paths map[string]string, sentAt, now time.Time, interval time.Duration) bool {
	return sentAt.IsZero() || now.Sub(sentAt) >= interval || !maps.Equal(paths, sent)
}

// statsReport summarizes peers for the service: at most api.MaxStatsPeers,
// those with the most recent handshakes first. It also returns each
// peer's path state, to notice changes: its path, and whether a handshake
// completed (the first one is worth reporting at once too).
func statsReport(peers []PeerStatus, now time.Time) (api.StatsReport, map[string]string) {
	peers = slices.Clone(peers)
	slices.SortStableFunc(peers, func(a, b PeerStatus) int { return b.LastHandshake.Compare(a.LastHandshake) })
	rep := api.StatsReport{Peers: make([]api.PeerStats, 0, min(len(peers), api.MaxStatsPeers))}
	paths := make(map[string]string, len(peers))
	for _, p := range peers {
		if p.DeviceID == "" || len(rep.Peers) == api.MaxStatsPeers {
			continue
		}
		ps := api.PeerStats{DeviceID: p.DeviceID, Path: p.Path, RxBytes: p.RxBytes, TxBytes: p.TxBytes}
		if !p.LastHandshake.IsZero() {
			ps.HandshakeAgeSeconds = new(max(0, int64(now.Sub(p.LastHandshake)/time.Second)))
		}
		rep.Peers = append(rep.Peers, ps)
		paths[p.DeviceID] = p.Path
		if p.LastHandshake.IsZero() {
			paths[p.DeviceID] += "/no-handshake"
		}
	}
	return rep, paths
}
