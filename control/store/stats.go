package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
)

// StatsStore keeps each device's latest report of its peers (path, last
// handshake, bytes), outside the change log: a report changes nothing
// members see, so it appends no Change and moves no revision. Every
// replica on one database reads the same reports.
type StatsStore interface {
	// PutStats replaces the device's report with s (s.DeviceID). It
	// keeps s.Peers as given (the service bounds and checks them). A
	// report is deleted with its device. ErrNotFound if the device does
	// not exist.
	PutStats(ctx context.Context, s DeviceStats) error
	// Stats returns the latest reports of a zone's devices ("" = all
	// zones), ordered by device id. Devices that never reported are
	// absent.
	Stats(ctx context.Context, zone string) ([]DeviceStats, error)
}

// DeviceStats is a device's latest report of its peers.
type DeviceStats struct {
	DeviceID string
	// ReportedAt is when the service received it (stored to the
	// nanosecond, UTC).
	ReportedAt time.Time
	Peers      []PeerStats
}

// PeerStats is one peer in a report.
type PeerStats struct {
	// DeviceID is the peer's device id, as the reporter sent it.
	DeviceID string `json:"device_id"`
	// Path is "direct", "relay" or "" (none yet).
	Path string `json:"path,omitempty"`
	// LastHandshake is on the service's clock; zero when none.
	LastHandshake time.Time `json:"last_handshake,omitzero"`
	RxBytes       uint64    `json:"rx_bytes"`
	TxBytes       uint64    `json:"tx_bytes"`
}

// EncodeStatsPeers is how every store keeps a report's peers: a JSON array
// with names of its own ("[]" for none), stable across Go renames.
func EncodeStatsPeers(ps []PeerStats) (string, error) {
	if ps == nil {
		ps = []PeerStats{}
	}
	b, err := json.Marshal(ps)
	if err != nil {
		return "", fmt.Errorf("encode stats: %w", err)
	}
	return string(b), nil
}

// DecodeStatsPeers is the inverse of EncodeStatsPeers; times come back in
// UTC, and no peers as nil.
func DecodeStatsPeers(s string) ([]PeerStats, error) {
	var ps []PeerStats
	if err := json.Unmarshal([]byte(s), &ps); err != nil {
		return nil, fmt.Errorf("decode stats: %w", err)
	}
	for i := range ps {
		if !ps[i].LastHandshake.IsZero() {
			ps[i].LastHandshake = ps[i].LastHandshake.UTC()
		}
	}
	if len(ps) == 0 {
		return nil, nil
	}
	return ps, nil
}
