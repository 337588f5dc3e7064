package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/wiremesh/wiremesh/ipam"
)

// addPrefixes gives d the prefixes of add it does not hold yet and returns
// d's new sorted prefix list. The rules of one device's prefixes (form,
// width, pools, own overlaps, count) are ipam.CheckPrefixes'; this adds
// the one that needs the zone: no overlap with another device's prefix.
// With AllowExitNodes, a /0 only conflicts with another device's /0 of the
// same family, and nothing conflicts with a /0.
func addPrefixes(ctx context.Context, tx *sql.Tx, z ZonePools, d Device, add []netip.Prefix) ([]netip.Prefix, error) {
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
		k := keyOf(p)
		if _, err := tx.ExecContext(ctx, `INSERT INTO prefixes (zone, family, start, bits, device_id)
			VALUES (?, ?, ?, ?, ?)`, z.Name, k.family, k.start, k.bits, d.ID); err != nil {
			return nil, fmt.Errorf("add prefix %s: %w", p, err)
		}
	}
	return held, nil
}

// checkConflict returns a *ConflictError if p overlaps a prefix another
// device of z holds. Both index lookups are logarithmic in the number of
// prefixes of the zone.
func checkConflict(ctx context.Context, tx *sql.Tx, z ZonePools, deviceID string, p netip.Prefix) error {
	exit := z.AllowExitNodes && p.Bits() == 0
	minBits := 0
	if z.AllowExitNodes && p.Bits() > 0 {
		minBits = 1 // another device's exit route does not conflict
	}
	k := keyOf(p)
	sup := supernets(p, minBits)
	args := []any{z.Name, k.family, deviceID}
	var in strings.Builder
	for i, s := range sup {
		if i > 0 {
			in.WriteString(",")
		}
		in.WriteString("(?,?)")
		args = append(args, s.start, s.bits)
	}
	// q contains p (or equals it): q is one of p's supernets.
	err := conflictRow(ctx, tx, p, supernetQuery(in.String()), args...)
	if err != nil || exit {
		return err
	}
	// q lies inside p: its start is within p and it is at least as long.
	return conflictRow(ctx, tx, p, insideQuery, z.Name, k.family, k.start, lastAddrBytes(p), k.bits, deviceID)
}

// supernetQuery finds another device's prefix among p's supernets, given
// as VALUES rows "(?,?),(?,?),…" of (start, bits): one primary key lookup
// per row (a row-value IN; an OR of terms would make SQLite scan the
// zone's prefixes instead). Arguments: zone, family, device id, then start
// and bits of each row.
func supernetQuery(rows string) string {
	return `SELECT p.family, p.start, p.bits, p.device_id, d.hostname
		FROM prefixes p JOIN devices d ON d.id = p.device_id
		WHERE p.zone = ? AND p.family = ? AND p.device_id <> ?
		AND (p.start, p.bits) IN (VALUES ` + rows + `)
		LIMIT 1`
}

// insideQuery finds another device's prefix inside p: a primary key range
// scan. Arguments: zone, family, p's first and last address, p's bits,
// device id.
const insideQuery = `SELECT p.family, p.start, p.bits, p.device_id, d.hostname
	FROM prefixes p JOIN devices d ON d.id = p.device_id
	WHERE p.zone = ? AND p.family = ? AND p.start BETWEEN ? AND ? AND p.bits >= ?
	AND p.device_id <> ?
	LIMIT 1`

// conflictRow runs a query for at most one overlapping prefix and turns a
// hit into a *ConflictError for p.
func conflictRow(ctx context.Context, tx *sql.Tx, p netip.Prefix, query string, args ...any) error {
	var (
		fam, bits      int
		start          []byte
		holder, hostNm string
	)
	err := tx.QueryRowContext(ctx, query, args...).Scan(&fam, &start, &bits, &holder, &hostNm)
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("check prefix %s: %w", p, err)
	}
	existing, err := prefixFromRow(fam, start, bits)
	if err != nil {
		return err
	}
	return &ConflictError{Prefix: p, Existing: existing, OwnerID: holder, Owner: hostNm}
}

// ReleasePrefix implements Store.ReleasePrefix.
func (s *SQLite) ReleasePrefix(ctx context.Context, zone string, prefix netip.Prefix, deviceID string) error {
	op := fmt.Sprintf("release prefix %s in zone %q", prefix, zone)
	if err := checkChildPrefix(prefix); err != nil {
		return fmt.Errorf("store: %s: %w", op, err)
	}
	now := s.now()
	return s.write(ctx, op, func(tx *sql.Tx) error {
		if _, err := loadZone(ctx, tx, zone); err != nil {
			return err
		}
		k := keyOf(prefix)
		var holder string
		err := tx.QueryRowContext(ctx, `SELECT device_id FROM prefixes
			WHERE zone = ? AND family = ? AND start = ? AND bits = ?`,
			zone, k.family, k.start, k.bits).Scan(&holder)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			return fmt.Errorf("prefix %s: %w", prefix, ErrNotFound)
		case err != nil:
			return err
		case deviceID != "" && holder != deviceID:
			return fmt.Errorf("prefix %s is not held by device %q: %w", prefix, deviceID, ErrNotFound)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM prefixes
			WHERE zone = ? AND family = ? AND start = ? AND bits = ?`,
			zone, k.family, k.start, k.bits); err != nil {
			return err
		}
		d, err := loadDevice(ctx, tx, `d.id = ?`, holder)
		if err != nil {
			return err
		}
		d.UpdatedAt = now
		if err := updateDeviceRow(ctx, tx, d); err != nil {
			return err
		}
		_, err = s.appendChange(ctx, tx, ChangeUpsert, d)
		return err
	})
}

// Prefixes lists a zone's child prefixes ("" = all zones) in address order.
// ErrNotFound if a named zone does not exist.
func (s *SQLite) Prefixes(ctx context.Context, zone string) ([]PrefixEntry, error) {
	var es []PrefixEntry
	err := s.read(ctx, fmt.Sprintf("prefixes of zone %q", zone), func(tx *sql.Tx) error {
		if zone != "" {
			if _, err := loadZone(ctx, tx, zone); err != nil {
				return err
			}
		}
		where := `p.zone = ?1`
		if zone == "" {
			where = `?1 = ''`
		}
		rows, err := tx.QueryContext(ctx, `SELECT p.zone, p.family, p.start, p.bits, p.device_id, d.hostname
			FROM prefixes p JOIN devices d ON d.id = p.device_id
			WHERE `+where+` ORDER BY p.family, p.start, p.bits, p.zone`, zone)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var (
				e         PrefixEntry
				fam, bits int
				start     []byte
			)
			if err := rows.Scan(&e.Zone, &fam, &start, &bits, &e.DeviceID, &e.Hostname); err != nil {
				return err
			}
			if e.Prefix, err = prefixFromRow(fam, start, bits); err != nil {
				return err
			}
			es = append(es, e)
		}
		return rows.Err()
	})
	return es, err
}
