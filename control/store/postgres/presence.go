package postgres

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/wiremesh/wiremesh/control/store"
)

// UpdatePresence implements store.IdentityStore.UpdatePresence.
func (s *Store) UpdatePresence(ctx context.Context, p store.PresenceUpdate) ([]string, error) {
	now := s.clock(p.Now)
	var zones []string
	err := s.write(ctx, "update presence", func(tx pgx.Tx) error {
		zones = nil // fn may run again after a conflict
		cands, err := expireLeases(ctx, tx, now)
		if err != nil {
			return err
		}
		for _, id := range p.Offline {
			if _, err := tx.Exec(ctx, `DELETE FROM device_streams WHERE device_id = $1 AND holder = $2`, id, p.Holder); err != nil {
				return err
			}
		}
		for _, id := range p.Online {
			if _, err := tx.Exec(ctx, `
				INSERT INTO device_streams (device_id, holder, until) SELECT id, $1, $2 FROM devices WHERE id = $3
				ON CONFLICT (device_id, holder) DO UPDATE SET until = excluded.until`,
				p.Holder, p.Until.UnixNano(), id); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `UPDATE devices SET last_seen = $1 WHERE id = $2`, now.UnixNano(), id); err != nil {
				return err
			}
		}
		cands = append(append(cands, p.Offline...), p.Online...)
		slices.Sort(cands) // one lock order for every transaction settling presence
		for _, id := range slices.Compact(cands) {
			zone, err := s.settlePresence(ctx, tx, id, now)
			if err != nil {
				return err
			}
			if zone != "" && !slices.Contains(zones, zone) {
				zones = append(zones, zone)
			}
		}
		return nil
	})
	return zones, err
}

// expireLeases drops the leases that ended at or before now and returns
// the devices that held them.
func expireLeases(ctx context.Context, tx pgx.Tx, now time.Time) ([]string, error) {
	rows, err := tx.Query(ctx, `DELETE FROM device_streams WHERE until <= $1 RETURNING device_id`, now.UnixNano())
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// settlePresence makes device id's stored Online agree with its leases,
// appending a ChangePresence when it changes; it returns the zone changed
// ("" when nothing changed or the device is gone).
func (s *Store) settlePresence(ctx context.Context, tx pgx.Tx, id string, now time.Time) (string, error) {
	d, err := lockDevice(ctx, tx, `id = $1`, id)
	if errors.Is(err, store.ErrNotFound) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	var live bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM device_streams WHERE device_id = $1)`, id).Scan(&live); err != nil {
		return "", err
	}
	if d.Online == live {
		return "", nil
	}
	if _, err := tx.Exec(ctx, `UPDATE devices SET online = $1, last_seen = $2 WHERE id = $3`, live, now.UnixNano(), id); err != nil {
		return "", err
	}
	d.Online, d.LastSeen = live, now.UTC()
	if _, err := s.appendChange(ctx, tx, store.ChangePresence, d); err != nil {
		return "", err
	}
	return d.Zone, nil
}

// DeleteEphemeral implements store.IdentityStore.DeleteEphemeral.
func (s *Store) DeleteEphemeral(ctx context.Context, cutoff, now time.Time) ([]store.Device, error) {
	now = s.clock(now)
	var gone []store.Device
	err := s.write(ctx, "delete offline ephemeral devices", func(tx pgx.Tx) error {
		gone = nil
		rows, err := tx.Query(ctx, `SELECT id FROM devices d WHERE `+idleEphemeral+` ORDER BY id`,
			cutoff.UnixNano(), now.UnixNano())
		if err != nil {
			return err
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		for _, id := range ids {
			d, err := lockDevice(ctx, tx, `id = $1`, id)
			if errors.Is(err, store.ErrNotFound) {
				continue // deleted meanwhile
			}
			if err != nil {
				return err
			}
			// Check again with what the lock's previous holder committed
			// (it may have come online).
			var idle bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM devices d WHERE d.id = $3 AND `+idleEphemeral+`)`,
				cutoff.UnixNano(), now.UnixNano(), id).Scan(&idle); err != nil {
				return err
			}
			if !idle {
				continue
			}
			if _, err := tx.Exec(ctx, `DELETE FROM devices WHERE id = $1`, id); err != nil {
				return err
			}
			if _, err := s.appendChange(ctx, tx, store.ChangeRemove, d); err != nil {
				return err
			}
			gone = append(gone, d)
		}
		return nil
	})
	return gone, err
}

// idleEphemeral matches the ephemeral devices d that are offline and were
// last seen before $1, with no lease live at $2.
const idleEphemeral = `d.ephemeral AND NOT d.online AND COALESCE(d.last_seen, d.updated_at) < $1
	AND NOT EXISTS (SELECT 1 FROM device_streams s WHERE s.device_id = d.id AND s.until > $2)`
