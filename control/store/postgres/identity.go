package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/wiremesh/wiremesh/control/store"
)

// lockZoneHostnames locks zone's row until the transaction ends, so that
// transactions choosing hostnames in one zone (on any replica) do so in
// turn. FOR NO KEY UPDATE is the lock appendChange takes anyway, and it
// leaves foreign-key checks of new rows referencing the zone unblocked.
func lockZoneHostnames(ctx context.Context, tx pgx.Tx, zone string) error {
	var one int
	err := tx.QueryRow(ctx, `SELECT 1 FROM zones WHERE name = $1 FOR NO KEY UPDATE`, zone).Scan(&one)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("zone %q: %w", zone, store.ErrNotFound)
	}
	return err
}

// uniqueHostname returns want, or its first free suffixed form, among the
// hostnames of zone's devices other than selfID (compared folded). The
// caller holds lockZoneHostnames.
func uniqueHostname(ctx context.Context, tx pgx.Tx, zone, want, selfID string) (string, error) {
	h := want
	for n := 2; ; n++ {
		var taken bool
		if err := tx.QueryRow(ctx,
			`SELECT EXISTS (SELECT 1 FROM devices WHERE zone = $1 AND hostname_fold = $2 AND id <> $3)`,
			zone, store.FoldHostname(h), selfID).Scan(&taken); err != nil {
			return "", err
		}
		if !taken {
			return h, nil
		}
		if n > store.MaxHostnameSuffix {
			return "", fmt.Errorf("%w: %q and its suffixed forms up to %q", store.ErrHostnameTaken, want, h)
		}
		h = store.SuffixedHostname(want, n)
	}
}

// checkNotRevoked gives ErrRevoked for a revoked or retired key.
func checkNotRevoked(ctx context.Context, tx pgx.Tx, key store.Key) error {
	var reason string
	var at int64
	err := tx.QueryRow(ctx, `SELECT reason, revoked_at FROM revoked_keys WHERE public_key = $1`, key[:]).Scan(&reason, &at)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil
	case err != nil:
		return err
	}
	return fmt.Errorf("%w: key %s (%s at %s)", store.ErrRevoked, key, reason, time.Unix(0, at).UTC().Format(time.RFC3339))
}

// retireKey records d's key as refused from now on.
func retireKey(ctx context.Context, tx pgx.Tx, d store.Device, reason string, now time.Time) error {
	_, err := tx.Exec(ctx, `
		INSERT INTO revoked_keys (public_key, zone, device_id, reason, revoked_at) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (public_key) DO NOTHING`,
		d.PublicKey[:], d.Zone, d.ID, reason, now.UnixNano())
	return err
}

// RevokeDevice implements store.IdentityStore.RevokeDevice.
func (s *Store) RevokeDevice(ctx context.Context, id string, now time.Time) error {
	now = s.clock(now)
	return s.write(ctx, fmt.Sprintf("revoke device %q", id), func(tx pgx.Tx) error {
		d, err := lockDevice(ctx, tx, `id = $1`, id)
		if err != nil {
			return err
		}
		if err := retireKey(ctx, tx, d, "revoked", now); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM devices WHERE id = $1`, id); err != nil {
			return err
		}
		_, err = s.appendChange(ctx, tx, store.ChangeRemove, d)
		return err
	})
}

// RevokedKey implements store.IdentityStore.RevokedKey.
func (s *Store) RevokedKey(ctx context.Context, key store.Key) (bool, error) {
	var revoked bool
	err := s.read(ctx, "revoked key", func(tx pgx.Tx) error {
		err := checkNotRevoked(ctx, tx, key)
		revoked = errors.Is(err, store.ErrRevoked)
		if revoked {
			return nil
		}
		return err
	})
	return revoked, err
}

// RotateKey implements store.IdentityStore.RotateKey.
func (s *Store) RotateKey(ctx context.Context, id string, newKey store.Key, now time.Time) (store.Device, error) {
	now = s.clock(now)
	if newKey.IsZero() {
		return store.Device{}, fmt.Errorf("postgres: rotate key of device %q: zero public key", id)
	}
	var d store.Device
	err := s.write(ctx, fmt.Sprintf("rotate key of device %q", id), func(tx pgx.Tx) error {
		var err error
		if d, err = lockDevice(ctx, tx, `id = $1`, id); err != nil {
			return err
		}
		if err := checkNotRevoked(ctx, tx, newKey); err != nil {
			return err
		}
		var other string
		err = tx.QueryRow(ctx, `SELECT id FROM devices WHERE zone = $1 AND public_key = $2`, d.Zone, newKey[:]).Scan(&other)
		switch {
		case err == nil:
			return fmt.Errorf("key %s belongs to device %q: %w", newKey, other, store.ErrExists)
		case !errors.Is(err, pgx.ErrNoRows):
			return err
		}
		if err := retireKey(ctx, tx, d, "rotated", now); err != nil {
			return err
		}
		d.PublicKey, d.UpdatedAt = newKey, now
		if _, err := tx.Exec(ctx, `UPDATE devices SET public_key = $1, updated_at = $2 WHERE id = $3`,
			newKey[:], now.UnixNano(), id); err != nil {
			return err
		}
		_, err = s.appendChange(ctx, tx, store.ChangeUpsert, d)
		return err
	})
	if err != nil {
		return store.Device{}, err
	}
	return d, nil
}

// RotateDeviceToken implements store.IdentityStore.RotateDeviceToken.
func (s *Store) RotateDeviceToken(ctx context.Context, id string, newHash [32]byte, expires, now time.Time) error {
	now = s.clock(now)
	return s.write(ctx, fmt.Sprintf("rotate token of device %q", id), func(tx pgx.Tx) error {
		if _, err := lockDevice(ctx, tx, `id = $1`, id); err != nil {
			return err
		}
		if err := addDeviceToken(ctx, tx, newHash, id, expires, now); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `DELETE FROM device_tokens WHERE device_id = $1 AND hash <> $2`, id, newHash[:])
		return err
	})
}
