package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"
)

var _ StatsStore = (*SQLite)(nil)

// PutStats replaces the device's report (see StatsStore).
func (s *SQLite) PutStats(ctx context.Context, st DeviceStats) error {
	peers, err := EncodeStatsPeers(st.Peers)
	if err != nil {
		return err
	}
	return s.write(ctx, "put stats", func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `
			INSERT INTO device_stats (device_id, reported_at, peers) SELECT id, ?, ? FROM devices WHERE id = ?
			ON CONFLICT (device_id) DO UPDATE SET reported_at = excluded.reported_at, peers = excluded.peers`,
			st.ReportedAt.UnixNano(), peers, st.DeviceID)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return fmt.Errorf("device %q: %w", st.DeviceID, ErrNotFound)
		}
		return nil
	})
}

// Stats returns the zone's reports (see StatsStore).
func (s *SQLite) Stats(ctx context.Context, zone string) ([]DeviceStats, error) {
	var out []DeviceStats
	err := s.read(ctx, "stats", func(tx *sql.Tx) error {
		out = nil
		rows, err := tx.QueryContext(ctx, `
			SELECT s.device_id, s.reported_at, s.peers FROM device_stats s JOIN devices d ON d.id = s.device_id
			WHERE ? = '' OR d.zone = ? ORDER BY s.device_id`, zone, zone)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var st DeviceStats
			var at int64
			var peers string
			if err := rows.Scan(&st.DeviceID, &at, &peers); err != nil {
				return err
			}
			st.ReportedAt = time.Unix(0, at).UTC()
			if st.Peers, err = DecodeStatsPeers(peers); err != nil {
				return err
			}
			out = append(out, st)
		}
		return rows.Err()
	})
	return out, err
}

// DeviceStats returns one device's report (see StatsStore).
func (s *SQLite) DeviceStats(ctx context.Context, id string) (DeviceStats, error) {
	var st DeviceStats
	err := s.read(ctx, "device stats", func(tx *sql.Tx) error {
		var at int64
		var peers string
		err := tx.QueryRowContext(ctx, `SELECT device_id, reported_at, peers FROM device_stats WHERE device_id = ?`, id).
			Scan(&st.DeviceID, &at, &peers)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("stats of device %q: %w", id, ErrNotFound)
		}
		if err != nil {
			return err
		}
		st.ReportedAt = time.Unix(0, at).UTC()
		st.Peers, err = DecodeStatsPeers(peers)
		return err
	})
	return st, err
}

// ZoneDeviceIDs returns which of ids are devices of zone (see StatsStore).
func (s *SQLite) ZoneDeviceIDs(ctx context.Context, zone string, ids []string) ([]string, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	if len(ids) > MaxZoneDeviceIDs {
		return nil, fmt.Errorf("zone device ids: %d ids (max %d)", len(ids), MaxZoneDeviceIDs)
	}
	list, err := json.Marshal(ids)
	if err != nil {
		return nil, fmt.Errorf("zone device ids: %w", err)
	}
	var out []string
	err = s.read(ctx, "zone device ids", func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `
			SELECT id FROM devices WHERE zone = ? AND id IN (SELECT value FROM json_each(?)) `, zone, string(list))
		if err != nil {
			return err
		}
		out, err = collectRows(rows, func(r scanner) (id string, err error) { return id, r.Scan(&id) })
		return err
	})
	slices.Sort(out)
	return out, err
}
