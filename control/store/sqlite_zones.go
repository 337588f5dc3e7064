package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/wiremesh/wiremesh/ipam"
)

// CreateZone creates a zone. A zero IPv4Pool means
// ipam.DefaultIPv4PoolPrefix, a zero IPv6Pool means ipam.ULAPool(z.Name), a
// zero CreatedAt means now. Pools must pass ipam.ValidatePool.
func (s *SQLite) CreateZone(ctx context.Context, z Zone) error {
	op := fmt.Sprintf("create zone %q", z.Name)
	z, err := normalizeZone(z, s.now())
	if err != nil {
		return fmt.Errorf("store: %s: %w", op, err)
	}
	return s.write(ctx, op, func(tx *sql.Tx) error {
		var one int
		err := tx.QueryRowContext(ctx, `SELECT 1 FROM zones WHERE name = ?`, z.Name).Scan(&one)
		if err == nil {
			return ErrExists
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		return insertZone(ctx, tx, z)
	})
}

// ensureDefaultZone creates the zone "default" unless it exists.
func (s *SQLite) ensureDefaultZone(ctx context.Context) error {
	z, err := normalizeZone(Zone{Name: DefaultZone}, s.now())
	if err != nil {
		return err
	}
	return s.write(ctx, "create default zone", func(tx *sql.Tx) error {
		var one int
		err := tx.QueryRowContext(ctx, `SELECT 1 FROM zones WHERE name = ?`, z.Name).Scan(&one)
		if err == nil {
			return nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		s.log.Info("store: created zone", "zone", z.Name, "ipv4", z.IPv4Pool, "ipv6", z.IPv6Pool)
		return insertZone(ctx, tx, z)
	})
}

// normalizeZone fills defaults and validates the pools.
func normalizeZone(z Zone, now time.Time) (Zone, error) {
	if z.Name == "" {
		return z, errors.New("empty zone name")
	}
	if !z.IPv4Pool.IsValid() {
		z.IPv4Pool = ipam.DefaultIPv4PoolPrefix
	}
	if !z.IPv6Pool.IsValid() {
		z.IPv6Pool = ipam.ULAPool(z.Name)
	}
	if !z.IPv4Pool.Addr().Is4() {
		return z, fmt.Errorf("IPv4 pool %q is not an IPv4 prefix", z.IPv4Pool.String())
	}
	if !z.IPv6Pool.Addr().Is6() || z.IPv6Pool.Addr().Is4In6() {
		return z, fmt.Errorf("IPv6 pool %q is not an IPv6 prefix", z.IPv6Pool.String())
	}
	for _, p := range []netip.Prefix{z.IPv4Pool, z.IPv6Pool} {
		if err := ipam.ValidatePool(p); err != nil {
			return z, fmt.Errorf("tunnel pool: %w", err)
		}
	}
	if err := z.Policy().Validate(); err != nil {
		return z, err
	}
	if z.CreatedAt.IsZero() {
		z.CreatedAt = now
	}
	return z, nil
}

func insertZone(ctx context.Context, tx *sql.Tx, z Zone) error {
	_, err := tx.ExecContext(ctx, `
		INSERT INTO zones (name, ipv4_pool, ipv6_pool, allow_exit_nodes,
			min_prefix_bits4, min_prefix_bits6, max_prefixes, created_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		z.Name, z.IPv4Pool.String(), z.IPv6Pool.String(), z.AllowExitNodes,
		z.MinPrefixBits4, z.MinPrefixBits6, z.MaxPrefixes, z.CreatedAt.UnixNano())
	return err
}

// Zone returns one zone or ErrNotFound.
func (s *SQLite) Zone(ctx context.Context, name string) (Zone, error) {
	var z Zone
	err := s.read(ctx, fmt.Sprintf("zone %q", name), func(tx *sql.Tx) error {
		var err error
		z, err = loadZone(ctx, tx, name)
		return err
	})
	return z, err
}

// Zones lists all zones by name.
func (s *SQLite) Zones(ctx context.Context) ([]Zone, error) {
	var zs []Zone
	err := s.read(ctx, "zones", func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT `+zoneCols+` FROM zones ORDER BY name`)
		if err != nil {
			return err
		}
		zs, err = collectRows(rows, scanZone)
		return err
	})
	return zs, err
}

const zoneCols = `name, ipv4_pool, ipv6_pool, allow_exit_nodes,
	min_prefix_bits4, min_prefix_bits6, max_prefixes, created_at`

type scanner interface{ Scan(dest ...any) error }

// collectRows scans each of rows with scan and closes rows: the
// database/sql counterpart of pgx.CollectRows, which the PostgreSQL store
// uses.
func collectRows[T any](rows *sql.Rows, scan func(scanner) (T, error)) ([]T, error) {
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// scanString scans a row of one text column.
func scanString(r scanner) (string, error) {
	var s string
	err := r.Scan(&s)
	return s, err
}

func scanZone(r scanner) (Zone, error) {
	var (
		z          Zone
		v4, v6     string
		created    sql.NullInt64
		allowExits bool
	)
	if err := r.Scan(&z.Name, &v4, &v6, &allowExits,
		&z.MinPrefixBits4, &z.MinPrefixBits6, &z.MaxPrefixes, &created); err != nil {
		return Zone{}, err
	}
	var err error
	if z.IPv4Pool, err = netip.ParsePrefix(v4); err != nil {
		return Zone{}, fmt.Errorf("zone %q: stored IPv4 pool: %w", z.Name, err)
	}
	if z.IPv6Pool, err = netip.ParsePrefix(v6); err != nil {
		return Zone{}, fmt.Errorf("zone %q: stored IPv6 pool: %w", z.Name, err)
	}
	z.AllowExitNodes = allowExits
	z.CreatedAt = fromNanos(created)
	return z, nil
}

// loadZone reads a zone inside a transaction; ErrNotFound if absent.
func loadZone(ctx context.Context, tx *sql.Tx, name string) (Zone, error) {
	z, err := scanZone(tx.QueryRowContext(ctx, `SELECT `+zoneCols+` FROM zones WHERE name = ?`, name))
	if errors.Is(err, sql.ErrNoRows) {
		return Zone{}, fmt.Errorf("zone %q: %w", name, ErrNotFound)
	}
	return z, err
}

func loadZonePools(ctx context.Context, tx *sql.Tx, name string) (ZonePools, error) {
	z, err := loadZone(ctx, tx, name)
	if err != nil {
		return ZonePools{}, err
	}
	return NewZonePools(z)
}
