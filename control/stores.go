package control

import (
	"context"
	"log/slog"
	"net/url"
	"path/filepath"
	"strings"

	"github.com/wiremesh/wiremesh/control/store"
	"github.com/wiremesh/wiremesh/control/store/postgres"
)

// isPostgres reports a PostgreSQL DSN (URL form).
func isPostgres(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

// storeKind names the store for logs, without credentials.
func storeKind(dsn string) string {
	if dsn == "" {
		return "sqlite"
	}
	return redactDSN(dsn)
}

// redactDSN is dsn with its password (user info or query), if any,
// replaced by "xxxxx".
func redactDSN(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		return "(unparsable DSN)"
	}
	if q := u.Query(); q.Has("password") {
		q.Set("password", "xxxxx")
		u.RawQuery = q.Encode()
	}
	return u.Redacted()
}

// openStore opens the store Options name: PostgreSQL for a postgres://
// URL, else SQLite in the data directory.
func openStore(ctx context.Context, o Options, log *slog.Logger) (store.Store, error) {
	// A failed open returns a nil interface, not a typed nil pointer.
	if isPostgres(o.Store) {
		s, err := postgres.Open(ctx, o.Store, postgres.WithLogger(log))
		if err != nil {
			return nil, err
		}
		return s, nil
	}
	s, err := store.OpenSQLite(ctx, filepath.Join(o.DataDir, DBFile), store.WithLogger(log))
	if err != nil {
		return nil, err
	}
	return s, nil
}
