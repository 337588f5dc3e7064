package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/wiremesh/wiremesh/control/store"
)

// CreateJoinToken stores a token. t.ID and t.Hash must be set (see
// store.NewJoinTokenID); a zero CreatedAt means now. ErrNotFound if the
// zone does not exist, ErrExists if the id or hash is taken.
func (s *Store) CreateJoinToken(ctx context.Context, t store.JoinToken) error {
	op := fmt.Sprintf("create join token %q", t.ID)
	switch {
	case t.ID == "":
		return fmt.Errorf("postgres: %s: empty token id", op)
	case t.Hash == [32]byte{}:
		return fmt.Errorf("postgres: %s: zero token hash", op)
	}
	t.CreatedAt = s.clock(t.CreatedAt)
	return s.write(ctx, op, func(tx pgx.Tx) error {
		if _, err := loadZone(ctx, tx, t.Zone); err != nil {
			return err
		}
		var taken bool
		err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM join_tokens WHERE id = $1 OR hash = $2)`,
			t.ID, t.Hash[:]).Scan(&taken)
		if err != nil {
			return err
		}
		if taken {
			return store.ErrExists
		}
		_, err = tx.Exec(ctx, `
			INSERT INTO join_tokens (id, hash, zone, reusable, expires_at, used_at, created_at, tags)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
			t.ID, t.Hash[:], t.Zone, t.Reusable, nanos(t.ExpiresAt), nanos(t.UsedAt), t.CreatedAt.UnixNano(),
			tagsOrEmpty(t.Tags))
		return err
	})
}

const joinTokenCols = `id, hash, zone, reusable, expires_at, used_at, created_at, tags`

func scanJoinToken(r pgx.Row) (store.JoinToken, error) {
	var (
		t             store.JoinToken
		hash          []byte
		expires, used *int64
		created       int64
	)
	if err := r.Scan(&t.ID, &hash, &t.Zone, &t.Reusable, &expires, &used, &created, &t.Tags); err != nil {
		return store.JoinToken{}, err
	}
	t.Tags = nilIfEmpty(t.Tags)
	if len(hash) != len(t.Hash) {
		return store.JoinToken{}, fmt.Errorf("join token %q: stored hash of %d bytes", t.ID, len(hash))
	}
	copy(t.Hash[:], hash)
	t.ExpiresAt, t.UsedAt, t.CreatedAt = fromNanos(expires), fromNanos(used), fromNanos(&created)
	return t, nil
}

// JoinTokens lists the tokens of a zone ("" = all zones) by creation time.
// ErrNotFound if a named zone does not exist.
func (s *Store) JoinTokens(ctx context.Context, zone string) ([]store.JoinToken, error) {
	var ts []store.JoinToken
	err := s.read(ctx, fmt.Sprintf("join tokens of zone %q", zone), func(tx pgx.Tx) error {
		if zone != "" {
			if _, err := loadZone(ctx, tx, zone); err != nil {
				return err
			}
		}
		rows, err := tx.Query(ctx, `SELECT `+joinTokenCols+` FROM join_tokens
			WHERE $1 = '' OR zone = $1 ORDER BY created_at, id COLLATE "C"`, zone)
		if err != nil {
			return err
		}
		ts, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (store.JoinToken, error) { return scanJoinToken(r) })
		return err
	})
	return ts, err
}

// JoinTokenByHash returns the token whose secret hashes to h, or
// ErrNotFound.
func (s *Store) JoinTokenByHash(ctx context.Context, h [32]byte) (store.JoinToken, error) {
	var t store.JoinToken
	err := s.read(ctx, "join token by hash", func(tx pgx.Tx) error {
		var err error
		t, err = scanJoinToken(tx.QueryRow(ctx, `SELECT `+joinTokenCols+` FROM join_tokens WHERE hash = $1`, h[:]))
		if errors.Is(err, pgx.ErrNoRows) {
			return store.ErrNotFound
		}
		return err
	})
	return t, err
}

// DeleteJoinToken deletes a token by id or returns ErrNotFound. Devices
// that joined with it stay.
func (s *Store) DeleteJoinToken(ctx context.Context, id string) error {
	return s.write(ctx, fmt.Sprintf("delete join token %q", id), func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM join_tokens WHERE id = $1`, id)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return store.ErrNotFound
		}
		return nil
	})
}

// useJoinToken checks a join token for a registration in zone at now, sets
// its UsedAt and returns it. The row stays locked until the transaction
// ends, so a single-use token cannot be used by two registrations at once,
// on any replica.
func useJoinToken(ctx context.Context, tx pgx.Tx, hash [32]byte, zone string, now time.Time) (store.JoinToken, error) {
	t, err := scanJoinToken(tx.QueryRow(ctx,
		`SELECT `+joinTokenCols+` FROM join_tokens WHERE hash = $1 FOR UPDATE`, hash[:]))
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return t, fmt.Errorf("%w: unknown token", store.ErrTokenInvalid)
	case err != nil:
		return t, err
	}
	if err := store.CheckJoinToken(t, zone, now); err != nil {
		return t, err
	}
	_, err = tx.Exec(ctx, `UPDATE join_tokens SET used_at = $1 WHERE id = $2`, now.UnixNano(), t.ID)
	return t, err
}

// tagsOrEmpty is tags for a NOT NULL text[] column.
func tagsOrEmpty(tags []string) []string {
	if tags == nil {
		return []string{}
	}
	return tags
}

// RecordProof implements store.Store.RecordProof, with the table Register
// uses.
func (s *Store) RecordProof(ctx context.Context, proof []byte, expires, now time.Time) error {
	if len(proof) == 0 {
		return errors.New("postgres: record proof: empty proof")
	}
	now = s.clock(now)
	return s.write(ctx, "record proof", func(tx pgx.Tx) error {
		return recordProof(ctx, tx, proof, expires, now)
	})
}

// addDeviceToken adds a device token hash to a device.
func addDeviceToken(ctx context.Context, tx pgx.Tx, hash [32]byte, deviceID string, expires, now time.Time) error {
	if hash == [32]byte{} {
		return errors.New("zero device token hash")
	}
	if _, err := tx.Exec(ctx, `DELETE FROM device_tokens WHERE device_id = $1 AND expires_at <= $2`,
		deviceID, now.UnixNano()); err != nil {
		return err
	}
	tag, err := tx.Exec(ctx, `INSERT INTO device_tokens (hash, device_id, created_at, expires_at) VALUES ($1, $2, $3, $4)
		ON CONFLICT (hash) DO NOTHING`, hash[:], deviceID, now.UnixNano(), nanos(expires))
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("device token: %w", store.ErrExists)
	}
	return nil
}

// recordProof remembers a registration proof until expires, after pruning
// expired ones, and returns ErrReplayed for a proof that is still
// remembered. A concurrent transaction recording the same proof makes this
// one wait for its outcome. No proof: nothing to do.
func recordProof(ctx context.Context, tx pgx.Tx, proof []byte, expires, now time.Time) error {
	if len(proof) == 0 {
		return nil
	}
	// Prune without waiting for, or deadlocking with, another replica
	// pruning the same rows.
	if _, err := tx.Exec(ctx, `DELETE FROM register_proofs WHERE proof IN (
		SELECT proof FROM register_proofs WHERE expires_at <= $1 LIMIT 100 FOR UPDATE SKIP LOCKED)`,
		now.UnixNano()); err != nil {
		return err
	}
	// An expired proof left by the pruning counts as forgotten.
	tag, err := tx.Exec(ctx, `INSERT INTO register_proofs AS r (proof, expires_at) VALUES ($1, $2)
		ON CONFLICT (proof) DO UPDATE SET expires_at = excluded.expires_at WHERE r.expires_at <= $3`,
		proof, expires.UnixNano(), now.UnixNano())
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return store.ErrReplayed
	}
	return nil
}
