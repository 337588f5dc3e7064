package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/wiremesh/wiremesh/control/store"
)

var _ store.StatsStore = (*Store)(nil)

// PutStats implements store.StatsStore.PutStats.
func (s *Store) PutStats(ctx context.Context, st store.DeviceStats) error {
	peers, err := store.EncodeStatsPeers(st.Peers)
	if err != nil {
		return err
	}
	return s.write(ctx, "put stats", func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `
			INSERT INTO device_stats (device_id, reported_at, peers) SELECT id, $1, $2 FROM devices WHERE id = $3
			ON CONFLICT (device_id) DO UPDATE SET reported_at = excluded.reported_at, peers = excluded.peers`,
			st.ReportedAt.UnixNano(), peers, st.DeviceID)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("device %q: %w", st.DeviceID, store.ErrNotFound)
		}
		return nil
	})
}

// Stats implements store.StatsStore.Stats.
func (s *Store) Stats(ctx context.Context, zone string) ([]store.DeviceStats, error) {
	var out []store.DeviceStats
	err := s.read(ctx, "stats", func(tx pgx.Tx) error {
		out = nil
		rows, err := tx.Query(ctx, `
			SELECT s.device_id, s.reported_at, s.peers FROM device_stats s JOIN devices d ON d.id = s.device_id
			WHERE $1 = '' OR d.zone = $1 ORDER BY s.device_id`, zone)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var st store.DeviceStats
			var at int64
			var peers string
			if err := rows.Scan(&st.DeviceID, &at, &peers); err != nil {
				return err
			}
			st.ReportedAt = time.Unix(0, at).UTC()
			if st.Peers, err = store.DecodeStatsPeers(peers); err != nil {
				return err
			}
			out = append(out, st)
		}
		return rows.Err()
	})
	return out, err
}

// DeviceStats implements store.StatsStore.DeviceStats.
func (s *Store) DeviceStats(ctx context.Context, id string) (store.DeviceStats, error) {
	var st store.DeviceStats
	err := s.read(ctx, "device stats", func(tx pgx.Tx) error {
		var at int64
		var peers string
		err := tx.QueryRow(ctx, `SELECT device_id, reported_at, peers FROM device_stats WHERE device_id = $1`, id).
			Scan(&st.DeviceID, &at, &peers)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("stats of device %q: %w", id, store.ErrNotFound)
		}
		if err != nil {
			return err
		}
		st.ReportedAt = time.Unix(0, at).UTC()
		st.Peers, err = store.DecodeStatsPeers(peers)
		return err
	})
	return st, err
}

// ZoneDeviceIDs implements store.StatsStore.ZoneDeviceIDs.
func (s *Store) ZoneDeviceIDs(ctx context.Context, zone string, ids []string) ([]string, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	if len(ids) > store.MaxZoneDeviceIDs {
		return nil, fmt.Errorf("zone device ids: %d ids (max %d)", len(ids), store.MaxZoneDeviceIDs)
	}
	var out []string
	err := s.read(ctx, "zone device ids", func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT id FROM devices WHERE zone = $1 AND id = ANY($2::text[]) `, zone, ids)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	})
	slices.Sort(out)
	return out, err
}
