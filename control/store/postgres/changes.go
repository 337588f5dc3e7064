package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/wiremesh/wiremesh/control/store"
)

// appendChange records a change of d in d's zone, compacts the zone's log
// down to the retention limit and queues a NOTIFY, which PostgreSQL sends
// when (and only if) the transaction commits.
//
// The revision comes from the single counter row. Its row lock is held
// until commit, so transactions append in revision order: when revision R
// is visible, so is every revision below it.
//
// A ChangePolicy entry carries no device: only d.Zone is used.
func (s *Store) appendChange(ctx context.Context, tx pgx.Tx, kind store.ChangeKind, d store.Device) (int64, error) {
	js := "{}" // a policy change has no device
	if kind != store.ChangePolicy {
		var err error
		if js, err = store.EncodeChangeDevice(d); err != nil {
			return 0, fmt.Errorf("encode change: %w", err)
		}
	}
	var rev int64
	if err := tx.QueryRow(ctx, `UPDATE revision SET rev = rev + 1 WHERE id = 1 RETURNING rev`).Scan(&rev); err != nil {
		return 0, fmt.Errorf("next revision: %w", err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO changes (rev, zone, kind, device) VALUES ($1, $2, $3, $4)`,
		rev, d.Zone, int16(kind), js); err != nil {
		return 0, fmt.Errorf("append change: %w", err)
	}
	var count int64
	if err := tx.QueryRow(ctx,
		`UPDATE zones SET change_count = change_count + 1 WHERE name = $1 RETURNING change_count`,
		d.Zone).Scan(&count); err != nil {
		return 0, fmt.Errorf("count changes: %w", err)
	}
	if excess := count - int64(s.retention); excess > 0 {
		if err := compact(ctx, tx, d.Zone, excess); err != nil {
			return 0, err
		}
	}
	if _, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, Channel, d.Zone); err != nil {
		return 0, fmt.Errorf("notify: %w", err)
	}
	return rev, nil
}

// compact deletes the zone's oldest excess changes and moves its
// compaction point to the newest deleted revision.
func compact(ctx context.Context, tx pgx.Tx, zone string, excess int64) error {
	var cut int64
	err := tx.QueryRow(ctx, `SELECT rev FROM changes WHERE zone = $1 ORDER BY rev LIMIT 1 OFFSET $2`,
		zone, excess-1).Scan(&cut)
	if err != nil {
		return fmt.Errorf("compact zone %q: %w", zone, err)
	}
	tag, err := tx.Exec(ctx, `DELETE FROM changes WHERE zone = $1 AND rev <= $2`, zone, cut)
	if err != nil {
		return fmt.Errorf("compact zone %q: %w", zone, err)
	}
	_, err = tx.Exec(ctx, `UPDATE zones SET compacted_rev = $1, change_count = change_count - $2 WHERE name = $3`,
		cut, tag.RowsAffected(), zone)
	if err != nil {
		return fmt.Errorf("compact zone %q: %w", zone, err)
	}
	return nil
}

// Snapshot implements store.Store.Snapshot: the zone's devices and the
// store's revision, read in one snapshot.
func (s *Store) Snapshot(ctx context.Context, zone string) (int64, []store.Device, error) {
	var (
		rev int64
		ds  []store.Device
	)
	err := s.read(ctx, fmt.Sprintf("snapshot of zone %q", zone), func(tx pgx.Tx) error {
		if _, err := loadZone(ctx, tx, zone); err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, `SELECT rev FROM revision WHERE id = 1`).Scan(&rev); err != nil {
			return err
		}
		var err error
		ds, err = loadDevices(ctx, tx, zone)
		return err
	})
	if err != nil {
		return 0, nil, err
	}
	return rev, ds, nil
}

// Changes implements store.Store.Changes. ErrCompacted also when since is
// ahead of the store's revision (a revision this store never issued). A
// negative since is treated as 0.
func (s *Store) Changes(ctx context.Context, zone string, since int64) ([]store.Change, int64, error) {
	since = max(since, 0)
	var (
		cur int64
		cs  []store.Change
	)
	err := s.read(ctx, fmt.Sprintf("changes of zone %q since %d", zone, since), func(tx pgx.Tx) error {
		cs = nil
		var compacted int64
		err := tx.QueryRow(ctx, `SELECT z.compacted_rev, r.rev FROM zones z, revision r
			WHERE z.name = $1 AND r.id = 1`, zone).Scan(&compacted, &cur)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("zone %q: %w", zone, store.ErrNotFound)
		}
		if err != nil {
			return err
		}
		if since < compacted {
			return fmt.Errorf("%w: zone %q kept changes after revision %d", store.ErrCompacted, zone, compacted)
		}
		if since > cur {
			return fmt.Errorf("%w: revision %d is ahead of the store (%d)", store.ErrCompacted, since, cur)
		}
		rows, err := tx.Query(ctx, `SELECT rev, kind, device FROM changes WHERE zone = $1 AND rev > $2 ORDER BY rev`,
			zone, since)
		if err != nil {
			return err
		}
		cs, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (store.Change, error) {
			var (
				c    = store.Change{Zone: zone}
				kind int16
				js   string
			)
			if err := r.Scan(&c.Rev, &kind, &js); err != nil {
				return c, err
			}
			c.Kind = store.ChangeKind(kind)
			if c.Kind == store.ChangePolicy {
				return c, nil // no device
			}
			var err error
			if c.Device, err = store.DecodeChangeDevice(js); err != nil {
				return c, fmt.Errorf("change %d: %w", c.Rev, err)
			}
			return c, nil
		})
		return err
	})
	if err != nil {
		return nil, 0, err
	}
	return cs, cur, nil
}
