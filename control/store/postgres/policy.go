package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/wiremesh/wiremesh/control/store"
)

// Policy implements store.Store.Policy.
func (s *Store) Policy(ctx context.Context, zone string) (store.ZonePolicy, error) {
	p := store.ZonePolicy{Zone: zone}
	err := s.read(ctx, fmt.Sprintf("policy of zone %q", zone), func(tx pgx.Tx) error {
		if _, err := loadZone(ctx, tx, zone); err != nil {
			return err
		}
		var (
			doc     []byte
			updated int64
		)
		err := tx.QueryRow(ctx, `SELECT document, rev, updated_at FROM zone_policies WHERE zone = $1`, zone).
			Scan(&doc, &p.Rev, &updated)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		p.Document = nilIfEmpty(doc)
		p.UpdatedAt = time.Unix(0, updated).UTC()
		return nil
	})
	if err != nil {
		return store.ZonePolicy{}, err
	}
	return p, nil
}

// SetPolicy implements store.Store.SetPolicy. Replicas setting a zone's
// policy at once apply in revision order: the last revision's document is
// the one kept.
func (s *Store) SetPolicy(ctx context.Context, zone string, doc []byte, now time.Time) (store.ZonePolicy, error) {
	p := store.ZonePolicy{Zone: zone, Document: nilIfEmpty(bytes.Clone(doc)), UpdatedAt: s.clock(now).UTC()}
	err := s.write(ctx, fmt.Sprintf("set policy of zone %q", zone), func(tx pgx.Tx) error {
		if _, err := loadZone(ctx, tx, zone); err != nil {
			return err
		}
		rev, err := s.appendChange(ctx, tx, store.ChangePolicy, store.Device{Zone: zone})
		if err != nil {
			return err
		}
		p.Rev = rev
		_, err = tx.Exec(ctx, `
			INSERT INTO zone_policies (zone, document, rev, updated_at) VALUES ($1, $2, $3, $4)
			ON CONFLICT (zone) DO UPDATE SET document = excluded.document, rev = excluded.rev, updated_at = excluded.updated_at`,
			zone, p.Document, rev, p.UpdatedAt.UnixNano())
		return err
	})
	if err != nil {
		return store.ZonePolicy{}, err
	}
	s.log.Debug("store: policy set", "zone", zone, "rev", p.Rev, "bytes", len(p.Document))
	return p, nil
}
