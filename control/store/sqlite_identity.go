package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"time"
)

// uniqueHostname returns want, or its first free suffixed form, among the
// hostnames of zone's devices other than selfID (compared folded).
func uniqueHostname(ctx context.Context, tx *sql.Tx, zone, want, selfID string) (string, error) {
	taken := func(h string) (bool, error) {
		var one int
		err := tx.QueryRowContext(ctx,
			`SELECT 1 FROM devices WHERE zone = ? AND hostname_fold = ? AND id <> ? LIMIT 1`,
			zone, FoldHostname(h), selfID).Scan(&one)
		if errors.Is(err, sql.ErrNoRows) {
			return false, nil
		}
		return err == nil, err
	}
	h := want
	for n := 2; ; n++ {
		t, err := taken(h)
		if err != nil {
			return "", err
		}
		if !t {
			return h, nil
		}
		if n > maxHostnameSuffix {
			return "", fmt.Errorf("%w: %q and its suffixed forms up to %q", ErrHostnameTaken, want, h)
		}
		h = suffixedHostname(want, n)
	}
}

// checkNotRevoked gives ErrRevoked for a revoked or retired key.
func checkNotRevoked(ctx context.Context, tx *sql.Tx, key Key) error {
	var reason string
	var at int64
	err := tx.QueryRowContext(ctx, `SELECT reason, revoked_at FROM revoked_keys WHERE public_key = ?`, key[:]).Scan(&reason, &at)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil
	case err != nil:
		return err
	}
	return fmt.Errorf("%w: key %s (%s at %s)", ErrRevoked, key, reason, time.Unix(0, at).UTC().Format(time.RFC3339))
}

// retireKey records key as refused from now on.
func retireKey(ctx context.Context, tx *sql.Tx, d Device, reason string, now time.Time) error {
	_, err := tx.ExecContext(ctx, `
		INSERT INTO revoked_keys (public_key, zone, device_id, reason, revoked_at) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (public_key) DO NOTHING`,
		d.PublicKey[:], d.Zone, d.ID, reason, now.UnixNano())
	return err
}

// RevokeDevice implements IdentityStore.RevokeDevice.
func (s *SQLite) RevokeDevice(ctx context.Context, id string, now time.Time) error {
	now = s.clock(now)
	return s.write(ctx, fmt.Sprintf("revoke device %q", id), func(tx *sql.Tx) error {
		d, err := loadDevice(ctx, tx, `d.id = ?`, id)
		if err != nil {
			return err
		}
		if err := retireKey(ctx, tx, d, "revoked", now); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM devices WHERE id = ?`, id); err != nil {
			return err
		}
		_, err = s.appendChange(ctx, tx, ChangeRemove, d)
		return err
	})
}

// RevokedKey implements IdentityStore.RevokedKey.
func (s *SQLite) RevokedKey(ctx context.Context, key Key) (bool, error) {
	var revoked bool
	err := s.read(ctx, "revoked key", func(tx *sql.Tx) error {
		err := checkNotRevoked(ctx, tx, key)
		revoked = errors.Is(err, ErrRevoked)
		if revoked {
			return nil
		}
		return err
	})
	return revoked, err
}

// RotateKey implements IdentityStore.RotateKey.
func (s *SQLite) RotateKey(ctx context.Context, id string, newKey Key, now time.Time) (Device, error) {
	now = s.clock(now)
	if newKey.IsZero() {
		return Device{}, fmt.Errorf("store: rotate key of device %q: zero public key", id)
	}
	var d Device
	err := s.write(ctx, fmt.Sprintf("rotate key of device %q", id), func(tx *sql.Tx) error {
		var err error
		if d, err = loadDevice(ctx, tx, `d.id = ?`, id); err != nil {
			return err
		}
		if err := checkNotRevoked(ctx, tx, newKey); err != nil {
			return err
		}
		var other string
		err = tx.QueryRowContext(ctx, `SELECT id FROM devices WHERE zone = ? AND public_key = ?`, d.Zone, newKey[:]).Scan(&other)
		switch {
		case err == nil:
			return fmt.Errorf("key %s belongs to device %q: %w", newKey, other, ErrExists)
		case !errors.Is(err, sql.ErrNoRows):
			return err
		}
		if err := retireKey(ctx, tx, d, "rotated", now); err != nil {
			return err
		}
		d.PublicKey, d.UpdatedAt = newKey, now
		if _, err := tx.ExecContext(ctx, `UPDATE devices SET public_key = ?, updated_at = ? WHERE id = ?`,
			newKey[:], now.UnixNano(), id); err != nil {
			return err
		}
		_, err = s.appendChange(ctx, tx, ChangeUpsert, d)
		return err
	})
	if err != nil {
		return Device{}, err
	}
	return d, nil
}

// RotateDeviceToken implements IdentityStore.RotateDeviceToken.
func (s *SQLite) RotateDeviceToken(ctx context.Context, id string, newHash [32]byte, expires, now time.Time) error {
	now = s.clock(now)
	return s.write(ctx, fmt.Sprintf("rotate token of device %q", id), func(tx *sql.Tx) error {
		if _, err := loadDevice(ctx, tx, `d.id = ?`, id); err != nil {
			return err
		}
		if err := addDeviceToken(ctx, tx, newHash, id, expires, now); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `DELETE FROM device_tokens WHERE device_id = ? AND hash <> ?`, id, newHash[:])
		return err
	})
}

// UpdatePresence implements IdentityStore.UpdatePresence.
func (s *SQLite) UpdatePresence(ctx context.Context, p PresenceUpdate) ([]string, error) {
	now := s.clock(p.Now)
	var zones []string
	err := s.write(ctx, "update presence", func(tx *sql.Tx) error {
		zones = nil
		cands, err := expireLeases(ctx, tx, now)
		if err != nil {
			return err
		}
		for _, id := range p.Offline {
			if _, err := tx.ExecContext(ctx, `DELETE FROM device_streams WHERE device_id = ? AND holder = ?`, id, p.Holder); err != nil {
				return err
			}
		}
		for _, id := range p.Online {
			if _, err := tx.ExecContext(ctx, `
				INSERT INTO device_streams (device_id, holder, until) SELECT id, ?, ? FROM devices WHERE id = ?
				ON CONFLICT (device_id, holder) DO UPDATE SET until = excluded.until`,
				p.Holder, p.Until.UnixNano(), id); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `UPDATE devices SET last_seen = ? WHERE id = ?`, now.UnixNano(), id); err != nil {
				return err
			}
		}
		cands = append(append(cands, p.Offline...), p.Online...)
		slices.Sort(cands)
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
func expireLeases(ctx context.Context, tx *sql.Tx, now time.Time) ([]string, error) {
	rows, err := tx.QueryContext(ctx, `DELETE FROM device_streams WHERE until <= ? RETURNING device_id`, now.UnixNano())
	if err != nil {
		return nil, err
	}
	return collectRows(rows, scanString)
}

// settlePresence makes device id's stored Online agree with its leases,
// appending a ChangePresence when it changes; it returns the zone changed
// ("" when nothing changed or the device is gone).
func (s *SQLite) settlePresence(ctx context.Context, tx *sql.Tx, id string, now time.Time) (string, error) {
	var online, live bool
	err := tx.QueryRowContext(ctx, `
		SELECT online, EXISTS (SELECT 1 FROM device_streams WHERE device_id = ?1)
		FROM devices WHERE id = ?1`, id).Scan(&online, &live)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && online == live) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	if _, err := tx.ExecContext(ctx, `UPDATE devices SET online = ?, last_seen = ? WHERE id = ?`, live, now.UnixNano(), id); err != nil {
		return "", err
	}
	d, err := loadDevice(ctx, tx, `d.id = ?`, id)
	if err != nil {
		return "", err
	}
	if _, err := s.appendChange(ctx, tx, ChangePresence, d); err != nil {
		return "", err
	}
	return d.Zone, nil
}

// DeleteEphemeral implements IdentityStore.DeleteEphemeral.
func (s *SQLite) DeleteEphemeral(ctx context.Context, cutoff, now time.Time) ([]Device, error) {
	now = s.clock(now)
	var gone []Device
	err := s.write(ctx, "delete offline ephemeral devices", func(tx *sql.Tx) error {
		gone = nil
		rows, err := tx.QueryContext(ctx, `
			SELECT id FROM devices d
			WHERE ephemeral = 1 AND online = 0 AND COALESCE(last_seen, updated_at) < ?
			AND NOT EXISTS (SELECT 1 FROM device_streams s WHERE s.device_id = d.id AND s.until > ?)`,
			cutoff.UnixNano(), now.UnixNano())
		if err != nil {
			return err
		}
		ids, err := collectRows(rows, scanString)
		if err != nil {
			return err
		}
		for _, id := range ids {
			d, err := loadDevice(ctx, tx, `d.id = ?`, id)
			if err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `DELETE FROM devices WHERE id = ?`, id); err != nil {
				return err
			}
			if _, err := s.appendChange(ctx, tx, ChangeRemove, d); err != nil {
				return err
			}
			gone = append(gone, d)
		}
		return nil
	})
	return gone, err
}
