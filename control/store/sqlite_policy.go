package store

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Policy implements Store.Policy.
func (s *SQLite) Policy(ctx context.Context, zone string) (ZonePolicy, error) {
	p := ZonePolicy{Zone: zone}
	err := s.read(ctx, fmt.Sprintf("policy of zone %q", zone), func(tx *sql.Tx) error {
		if _, err := loadZone(ctx, tx, zone); err != nil {
			return err
		}
		var (
			doc     []byte
			updated int64
		)
		err := tx.QueryRowContext(ctx, `SELECT document, rev, updated_at FROM zone_policies WHERE zone = ?`, zone).
			Scan(&doc, &p.Rev, &updated)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		p.Document = nilIfEmpty(bytes.Clone(doc))
		p.UpdatedAt = time.Unix(0, updated).UTC()
		return nil
	})
	if err != nil {
		return ZonePolicy{}, err
	}
	return p, nil
}

// SetPolicy implements Store.SetPolicy.
func (s *SQLite) SetPolicy(ctx context.Context, zone string, doc []byte, now time.Time) (ZonePolicy, error) {
	p := ZonePolicy{Zone: zone, Document: nilIfEmpty(bytes.Clone(doc)), UpdatedAt: s.clock(now).UTC()}
	err := s.write(ctx, fmt.Sprintf("set policy of zone %q", zone), func(tx *sql.Tx) error {
		if _, err := loadZone(ctx, tx, zone); err != nil {
			return err
		}
		rev, err := s.appendChange(ctx, tx, ChangePolicy, Device{Zone: zone})
		if err != nil {
			return err
		}
		p.Rev = rev
		var stored any // NULL for no policy
		if p.Document != nil {
			stored = p.Document
		}
		_, err = tx.ExecContext(ctx, `
			INSERT INTO zone_policies (zone, document, rev, updated_at) VALUES (?, ?, ?, ?)
			ON CONFLICT (zone) DO UPDATE SET document = excluded.document, rev = excluded.rev, updated_at = excluded.updated_at`,
			zone, stored, rev, p.UpdatedAt.UnixNano())
		return err
	})
	if err != nil {
		return ZonePolicy{}, err
	}
	s.log.Debug("store: policy set", "zone", zone, "rev", p.Rev, "bytes", len(p.Document))
	return p, nil
}
