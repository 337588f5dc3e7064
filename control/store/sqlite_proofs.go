package store

import (
	"context"
	"database/sql"
	"errors"
	"time"
)

// RecordProof implements Store.RecordProof with the table Register uses.
func (s *SQLite) RecordProof(ctx context.Context, proof []byte, expires, now time.Time) error {
	if len(proof) == 0 {
		return errors.New("store: record proof: empty proof")
	}
	now = s.clock(now)
	return s.write(ctx, "record proof", func(tx *sql.Tx) error {
		return recordProof(ctx, tx, proof, expires, now)
	})
}
