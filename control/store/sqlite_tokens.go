package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// NewJoinTokenID returns a random join token id, "tok_" and 16 hex digits.
func NewJoinTokenID() string { return randomID("tok_") }

// newDeviceID returns a random device id, "dev_" and 16 hex digits.
func newDeviceID() string { return randomID("dev_") }

func randomID(prefix string) string {
	var b [8]byte
	rand.Read(b[:]) // never fails (crypto/rand, Go 1.24+)
	return prefix + hex.EncodeToString(b[:])
}

// CreateJoinToken stores a token. t.ID and t.Hash must be set (see
// NewJoinTokenID); a zero CreatedAt means now. ErrNotFound if the zone does
// not exist, ErrExists if the id or hash is taken.
func (s *SQLite) CreateJoinToken(ctx context.Context, t JoinToken) error {
	op := fmt.Sprintf("create join token %q", t.ID)
	switch {
	case t.ID == "":
		return fmt.Errorf("store: %s: empty token id", op)
	case t.Hash == [32]byte{}:
		return fmt.Errorf("store: %s: zero token hash", op)
	}
	t.CreatedAt = s.clock(t.CreatedAt)
	return s.write(ctx, op, func(tx *sql.Tx) error {
		if _, err := loadZone(ctx, tx, t.Zone); err != nil {
			return err
		}
		var n int
		err := tx.QueryRowContext(ctx,
			`SELECT count(*) FROM join_tokens WHERE id = ? OR hash = ?`, t.ID, t.Hash[:]).Scan(&n)
		if err != nil {
			return err
		}
		if n > 0 {
			return ErrExists
		}
		tags, err := encodeTags(t.Tags)
		if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `
			INSERT INTO join_tokens (id, hash, zone, reusable, expires_at, used_at, created_at, tags)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
			t.ID, t.Hash[:], t.Zone, t.Reusable, nanos(t.ExpiresAt), nanos(t.UsedAt), t.CreatedAt.UnixNano(), tags)
		return err
	})
}

const joinTokenCols = `id, hash, zone, reusable, expires_at, used_at, created_at, tags`

func scanJoinToken(r scanner) (JoinToken, error) {
	var (
		t                      JoinToken
		hash                   []byte
		expires, used, created sql.NullInt64
		tags                   string
	)
	if err := r.Scan(&t.ID, &hash, &t.Zone, &t.Reusable, &expires, &used, &created, &tags); err != nil {
		return JoinToken{}, err
	}
	var err error
	if t.Tags, err = decodeTags(tags); err != nil {
		return JoinToken{}, fmt.Errorf("join token %q: %w", t.ID, err)
	}
	if len(hash) != len(t.Hash) {
		return JoinToken{}, fmt.Errorf("join token %q: stored hash of %d bytes", t.ID, len(hash))
	}
	copy(t.Hash[:], hash)
	t.ExpiresAt, t.UsedAt, t.CreatedAt = fromNanos(expires), fromNanos(used), fromNanos(created)
	return t, nil
}

// JoinTokens lists the tokens of a zone ("" = all zones) by creation time.
// ErrNotFound if a named zone does not exist.
func (s *SQLite) JoinTokens(ctx context.Context, zone string) ([]JoinToken, error) {
	var ts []JoinToken
	err := s.read(ctx, fmt.Sprintf("join tokens of zone %q", zone), func(tx *sql.Tx) error {
		q := `SELECT ` + joinTokenCols + ` FROM join_tokens ORDER BY created_at, id`
		var args []any
		if zone != "" {
			if _, err := loadZone(ctx, tx, zone); err != nil {
				return err
			}
			q = `SELECT ` + joinTokenCols + ` FROM join_tokens WHERE zone = ? ORDER BY created_at, id`
			args = append(args, zone)
		}
		rows, err := tx.QueryContext(ctx, q, args...)
		if err != nil {
			return err
		}
		ts, err = collectRows(rows, scanJoinToken)
		return err
	})
	return ts, err
}

// JoinTokenByHash returns the token whose secret hashes to h (an index
// lookup), or ErrNotFound.
func (s *SQLite) JoinTokenByHash(ctx context.Context, h [32]byte) (JoinToken, error) {
	var t JoinToken
	err := s.read(ctx, "join token by hash", func(tx *sql.Tx) error {
		row := tx.QueryRowContext(ctx, `SELECT `+joinTokenCols+` FROM join_tokens WHERE hash = ?`, h[:])
		var err error
		t, err = scanJoinToken(row)
		if errors.Is(err, sql.ErrNoRows) {
			return ErrNotFound
		}
		return err
	})
	return t, err
}

// DeleteJoinToken deletes a token by id or returns ErrNotFound. Devices
// that joined with it stay.
func (s *SQLite) DeleteJoinToken(ctx context.Context, id string) error {
	return s.write(ctx, fmt.Sprintf("delete join token %q", id), func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM join_tokens WHERE id = ?`, id)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			return errors.Join(ErrNotFound, err)
		}
		return nil
	})
}

// useJoinToken checks a join token for a registration in zone at now and
// sets its UsedAt (single-use: consumed; reusable: last use), returning it.
// Every failure is ErrTokenInvalid with the reason; the secret is never in
// the message.
func useJoinToken(ctx context.Context, tx *sql.Tx, hash [32]byte, zone string, now time.Time) (JoinToken, error) {
	t, err := scanJoinToken(tx.QueryRowContext(ctx,
		`SELECT `+joinTokenCols+` FROM join_tokens WHERE hash = ?`, hash[:]))
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return t, fmt.Errorf("%w: unknown token", ErrTokenInvalid)
	case err != nil:
		return t, err
	}
	if err := checkJoinToken(t, zone, now); err != nil {
		return t, err
	}
	// A single-use token is consumed; a reusable one records its last use.
	_, err = tx.ExecContext(ctx, `UPDATE join_tokens SET used_at = ? WHERE id = ?`, now.UnixNano(), t.ID)
	return t, err
}

// checkJoinToken checks that t may register a device in zone at now.
func checkJoinToken(t JoinToken, zone string, now time.Time) error {
	switch {
	case t.Zone != zone:
		return fmt.Errorf("%w: token %s is for zone %q, not %q", ErrTokenInvalid, t.ID, t.Zone, zone)
	case !t.ExpiresAt.IsZero() && !now.Before(t.ExpiresAt):
		return fmt.Errorf("%w: token %s expired at %s", ErrTokenInvalid, t.ID, t.ExpiresAt.Format(time.RFC3339))
	case !t.Reusable && !t.UsedAt.IsZero():
		return fmt.Errorf("%w: single-use token %s was used at %s", ErrTokenInvalid, t.ID, t.UsedAt.Format(time.RFC3339))
	}
	return nil
}

// encodeTags is the stored form of tags: a JSON array.
func encodeTags(tags []string) (string, error) {
	if len(tags) == 0 {
		return "[]", nil
	}
	b, err := json.Marshal(tags)
	return string(b), err
}

func decodeTags(s string) ([]string, error) {
	var tags []string
	if err := json.Unmarshal([]byte(s), &tags); err != nil {
		return nil, fmt.Errorf("stored tags: %w", err)
	}
	return nilIfEmpty(tags), nil
}

// addDeviceToken adds a device token hash to a device.
// Expired tokens of the device are deleted.
func addDeviceToken(ctx context.Context, tx *sql.Tx, hash [32]byte, deviceID string, expires, now time.Time) error {
	if hash == [32]byte{} {
		return errors.New("zero device token hash")
	}
	var owner string
	err := tx.QueryRowContext(ctx, `SELECT device_id FROM device_tokens WHERE hash = ?`, hash[:]).Scan(&owner)
	switch {
	case err == nil:
		return fmt.Errorf("device token: %w", ErrExists)
	case !errors.Is(err, sql.ErrNoRows):
		return err
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM device_tokens WHERE device_id = ? AND expires_at <= ?`,
		deviceID, now.UnixNano()); err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx,
		`INSERT INTO device_tokens (hash, device_id, created_at, expires_at) VALUES (?, ?, ?, ?)`,
		hash[:], deviceID, now.UnixNano(), nanos(expires))
	return err
}
