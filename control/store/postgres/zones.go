package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/wiremesh/wiremesh/control/store"
)

// CreateZone creates a zone. A zero IPv4Pool means
// ipam.DefaultIPv4PoolPrefix, a zero IPv6Pool means ipam.ULAPool(z.Name), a
// zero CreatedAt means now (see store.NormalizeZone).
func (s *Store) CreateZone(ctx context.Context, z store.Zone) error {
	op := fmt.Sprintf("create zone %q", z.Name)
	z, err := store.NormalizeZone(z, s.now())
	if err != nil {
		return fmt.Errorf("postgres: %s: %w", op, err)
	}
	return s.write(ctx, op, func(tx pgx.Tx) error {
		created, err := insertZone(ctx, tx, z)
		if err == nil && !created {
			return store.ErrExists
		}
		return err
	})
}

// ensureDefaultZone creates the zone "default" unless it exists.
func (s *Store) ensureDefaultZone(ctx context.Context) error {
	z, err := store.NormalizeZone(store.Zone{Name: store.DefaultZone}, s.now())
	if err != nil {
		return err
	}
	return s.write(ctx, "create default zone", func(tx pgx.Tx) error {
		created, err := insertZone(ctx, tx, z)
		if created {
			s.log.Info("store: created zone", "zone", z.Name, "ipv4", z.IPv4Pool, "ipv6", z.IPv6Pool)
		}
		return err
	})
}

// insertZone inserts z unless a zone of that name exists; created reports
// which.
func insertZone(ctx context.Context, tx pgx.Tx, z store.Zone) (created bool, err error) {
	tag, err := tx.Exec(ctx, `
		INSERT INTO zones (name, ipv4_pool, ipv6_pool, allow_exit_nodes,
			min_prefix_bits4, min_prefix_bits6, max_prefixes, created_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (name) DO NOTHING`,
		z.Name, z.IPv4Pool, z.IPv6Pool, z.AllowExitNodes,
		z.MinPrefixBits4, z.MinPrefixBits6, z.MaxPrefixes, z.CreatedAt.UnixNano())
	return tag.RowsAffected() == 1, err
}

// Zone returns one zone or ErrNotFound.
func (s *Store) Zone(ctx context.Context, name string) (store.Zone, error) {
	var z store.Zone
	err := s.read(ctx, fmt.Sprintf("zone %q", name), func(tx pgx.Tx) error {
		var err error
		z, err = loadZone(ctx, tx, name)
		return err
	})
	return z, err
}

// Zones lists all zones by name.
func (s *Store) Zones(ctx context.Context) ([]store.Zone, error) {
	var zs []store.Zone
	err := s.read(ctx, "zones", func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT `+zoneCols+` FROM zones ORDER BY name COLLATE "C"`)
		if err != nil {
			return err
		}
		zs, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (store.Zone, error) { return scanZone(r) })
		return err
	})
	return zs, err
}

const zoneCols = `name, ipv4_pool, ipv6_pool, allow_exit_nodes,
	min_prefix_bits4, min_prefix_bits6, max_prefixes, created_at`

func scanZone(r pgx.Row) (store.Zone, error) {
	var (
		z       store.Zone
		created int64
	)
	if err := r.Scan(&z.Name, &z.IPv4Pool, &z.IPv6Pool, &z.AllowExitNodes,
		&z.MinPrefixBits4, &z.MinPrefixBits6, &z.MaxPrefixes, &created); err != nil {
		return store.Zone{}, err
	}
	z.CreatedAt = fromNanos(&created)
	return z, nil
}

// loadZone reads a zone inside a transaction; ErrNotFound if absent.
func loadZone(ctx context.Context, tx pgx.Tx, name string) (store.Zone, error) {
	z, err := scanZone(tx.QueryRow(ctx, `SELECT `+zoneCols+` FROM zones WHERE name = $1`, name))
	if errors.Is(err, pgx.ErrNoRows) {
		return store.Zone{}, fmt.Errorf("zone %q: %w", name, store.ErrNotFound)
	}
	return z, err
}

func loadZonePools(ctx context.Context, tx pgx.Tx, name string) (store.ZonePools, error) {
	z, err := loadZone(ctx, tx, name)
	if err != nil {
		return store.ZonePools{}, err
	}
	return store.NewZonePools(z)
}
