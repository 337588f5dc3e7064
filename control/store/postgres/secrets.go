package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Secret implements store.SecretStore: the value kept under name in the
// service_secrets table, created by the first caller. When two replicas
// create a value at once, the insert of the second does nothing and both
// read the first one's.
func (s *Store) Secret(ctx context.Context, name string, create func() ([]byte, error)) ([]byte, error) {
	op := fmt.Sprintf("secret %q", name)
	var v []byte
	err := s.read(ctx, op, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `SELECT value FROM service_secrets WHERE name = $1`, name).Scan(&v)
		if errors.Is(err, pgx.ErrNoRows) {
			v = nil
			return nil
		}
		return err
	})
	if err != nil || v != nil {
		return v, err
	}
	nv, err := create()
	if err != nil {
		return nil, fmt.Errorf("postgres: %s: create: %w", op, err)
	}
	err = s.write(ctx, op, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO service_secrets (name, value, created_at) VALUES ($1, $2, $3)
			ON CONFLICT (name) DO NOTHING`, name, nv, s.now().UnixNano()); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `SELECT value FROM service_secrets WHERE name = $1`, name).Scan(&v)
	})
	if err == nil {
		s.log.Info("store: created service secret", "name", name)
	}
	return v, err
}
