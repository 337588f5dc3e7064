package postgres

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/wiremesh/wiremesh/control/store"
	"github.com/wiremesh/wiremesh/ipam"
)

// addPrefixes gives d the prefixes of add it does not hold yet and returns
// d's new sorted prefix list. The rules of one device's prefixes (form,
// width, pools, own overlaps, count) are ipam.CheckPrefixes'; this adds the
// one that needs the zone: no overlap with another device's prefix.
//
// The check gives a precise *store.ConflictError; the exclusion constraint
// on the table is what holds under concurrency: a prefix inserted by a
// concurrent transaction makes this insert fail, the transaction is retried
// and the check then reports the conflict.
func addPrefixes(ctx context.Context, tx pgx.Tx, z store.ZonePools, d store.Device, add []netip.Prefix) ([]netip.Prefix, error) {
	held, err := ipam.CheckPrefixes(z.Policy(), d.Prefixes, add)
	if err != nil {
		return nil, err
	}
	for _, p := range held {
		if slices.Contains(d.Prefixes, p) {
			continue
		}
		if err := checkConflict(ctx, tx, z, d.ID, p); err != nil {
			return nil, err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO prefixes (zone, prefix, device_id) VALUES ($1, $2, $3)`,
			z.Name, p, d.ID); err != nil {
			return nil, fmt.Errorf("add prefix %s: %w", p, err)
		}
	}
	return held, nil
}

// checkConflict returns a *store.ConflictError if p overlaps a prefix
// another device of z holds (a GiST index probe). With AllowExitNodes a
// default route only conflicts with another device's default route of the
// same family, and other devices' default routes conflict with nothing.
func checkConflict(ctx context.Context, tx pgx.Tx, z store.ZonePools, deviceID string, p netip.Prefix) error {
	exit := z.AllowExitNodes && p.Bits() == 0
	var (
		existing        netip.Prefix
		holder, holderN string
	)
	err := tx.QueryRow(ctx, `
		SELECT p.prefix, p.device_id, d.hostname
		FROM prefixes p JOIN devices d ON d.id = p.device_id
		WHERE p.zone = $1 AND p.device_id <> $2 AND p.prefix && $3::cidr
		AND CASE
			WHEN $4 THEN masklen(p.prefix) = 0 AND family(p.prefix) = family($3::cidr)
			WHEN $5 THEN masklen(p.prefix) > 0
			ELSE true END
		ORDER BY p.prefix LIMIT 1`,
		z.Name, deviceID, p, exit, z.AllowExitNodes).Scan(&existing, &holder, &holderN)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil
	case err != nil:
		return fmt.Errorf("check prefix %s: %w", p, err)
	}
	return &store.ConflictError{Prefix: p, Existing: existing, OwnerID: holder, Owner: holderN}
}

// ReleasePrefix implements store.Store.ReleasePrefix.
func (s *Store) ReleasePrefix(ctx context.Context, zone string, prefix netip.Prefix, deviceID string) error {
	op := fmt.Sprintf("release prefix %s in zone %q", prefix, zone)
	if err := store.CheckHeldPrefix(prefix); err != nil {
		return fmt.Errorf("postgres: %s: %w", op, err)
	}
	now := s.now()
	return s.write(ctx, op, func(tx pgx.Tx) error {
		if _, err := loadZone(ctx, tx, zone); err != nil {
			return err
		}
		var holder string
		err := tx.QueryRow(ctx, `SELECT device_id FROM prefixes WHERE zone = $1 AND prefix = $2`,
			zone, prefix).Scan(&holder)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			return fmt.Errorf("prefix %s: %w", prefix, store.ErrNotFound)
		case err != nil:
			return err
		case deviceID != "" && holder != deviceID:
			return fmt.Errorf("prefix %s is not held by device %q: %w", prefix, deviceID, store.ErrNotFound)
		}
		if _, err := lockDevice(ctx, tx, `id = $1`, holder); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `DELETE FROM prefixes WHERE zone = $1 AND prefix = $2 AND device_id = $3`,
			zone, prefix, holder)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			// Released concurrently while this waited for the device.
			return fmt.Errorf("prefix %s: %w", prefix, store.ErrNotFound)
		}
		d, err := loadDevice(ctx, tx, `d.id = $1`, holder)
		if err != nil {
			return err
		}
		d.UpdatedAt = now
		if err := updateDeviceRow(ctx, tx, d); err != nil {
			return err
		}
		_, err = s.appendChange(ctx, tx, store.ChangeUpsert, d)
		return err
	})
}

// Prefixes lists a zone's child prefixes ("" = all zones) in address order.
// ErrNotFound if a named zone does not exist.
func (s *Store) Prefixes(ctx context.Context, zone string) ([]store.PrefixEntry, error) {
	var es []store.PrefixEntry
	err := s.read(ctx, fmt.Sprintf("prefixes of zone %q", zone), func(tx pgx.Tx) error {
		if zone != "" {
			if _, err := loadZone(ctx, tx, zone); err != nil {
				return err
			}
		}
		rows, err := tx.Query(ctx, `SELECT p.zone, p.prefix, p.device_id, d.hostname
			FROM prefixes p JOIN devices d ON d.id = p.device_id
			WHERE $1 = '' OR p.zone = $1 ORDER BY p.prefix, p.zone COLLATE "C"`, zone)
		if err != nil {
			return err
		}
		es, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (store.PrefixEntry, error) {
			var e store.PrefixEntry
			err := r.Scan(&e.Zone, &e.Prefix, &e.DeviceID, &e.Hostname)
			return e, err
		})
		return err
	})
	return es, err
}
