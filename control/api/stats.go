package api

import "time"

// StatsPath is where a member reports its per-peer summary:
// POST /v1/devices/self/stats with a StatsReport, device token; 204.
const StatsPath = "/v1/devices/self/stats"

// Limits of a StatsReport.
const (
	// MaxStatsBodyBytes bounds the body of a stats report (413 too_large
	// beyond it).
	MaxStatsBodyBytes = 256 << 10
	// MaxStatsPeers bounds the peers in one report (400 bad_request beyond
	// it). A member with more peers reports those with the most recent
	// handshakes.
	MaxStatsPeers = 1024
	// StatsInterval is how often a member reports while nothing changes;
	// it reports sooner when a peer's path changes.
	StatsInterval = 30 * time.Second
)

// Peer paths in PeerStats.Path.
const (
	PathDirect = "direct"
	PathRelay  = "relay"
)

// StatsReport is a member's latest view of its peers: the body of
// POST /v1/devices/self/stats. The service keeps the latest report per
// device (replacing the previous one) for the admin API and the dashboard;
// it changes nothing other members see.
type StatsReport struct {
	Peers []PeerStats `json:"peers"`
}

// PeerStats is one peer as the reporting member sees it.
type PeerStats struct {
	// DeviceID is the peer's device id (Peer.ID). Ids that are not
	// devices of the reporter's zone (a peer deleted meanwhile) are kept
	// but left out of the admin API's answers.
	DeviceID string `json:"device_id"`
	// Path is PathDirect, PathRelay, or "" while no path is known.
	Path string `json:"path,omitempty"`
	// HandshakeAgeSeconds is how long ago the last WireGuard handshake with
	// the peer completed, in whole seconds; absent when none did. An age,
	// not a time, so that the member's clock does not matter. Reports
	// only: the admin API gives LastHandshake.
	HandshakeAgeSeconds *int64 `json:"handshake_age_seconds,omitempty"`
	// LastHandshake (admin API only) is the report's time minus the age,
	// on the service's clock. Absent when no handshake completed.
	LastHandshake time.Time `json:"last_handshake,omitzero"`
	// RxBytes and TxBytes are the bytes received from and sent to the
	// peer through the tunnel (WireGuard's counters since the member
	// started).
	RxBytes uint64 `json:"rx_bytes"`
	TxBytes uint64 `json:"tx_bytes"`
}

// DeviceStats (admin API only, in Device.Stats) is a device's latest
// stats report.
type DeviceStats struct {
	// ReportedAt is when the service received the report.
	ReportedAt time.Time   `json:"reported_at"`
	Peers      []PeerStats `json:"peers"`
}
