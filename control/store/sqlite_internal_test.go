package store

import (
	"database/sql"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// TestSQLitePragmas checks the connection settings on both pools.
func TestSQLitePragmas(t *testing.T) {
	s, err := OpenSQLite(t.Context(), filepath.Join(t.TempDir(), "p.db"))
	require.NoError(t, err)
	defer s.Close()
	type pragma struct{ name, want string }
	common := []pragma{{"journal_mode", "wal"}, {"foreign_keys", "1"}, {"synchronous", "2"}, {"busy_timeout", "5000"}}
	for _, p := range common {
		var got string
		require.NoError(t, s.w.QueryRowContext(t.Context(), "PRAGMA "+p.name).Scan(&got))
		require.Equal(t, p.want, got, "writer %s", p.name)
		require.NoError(t, s.r.QueryRowContext(t.Context(), "PRAGMA "+p.name).Scan(&got))
		require.Equal(t, p.want, got, "reader %s", p.name)
	}
	var qo string
	require.NoError(t, s.r.QueryRowContext(t.Context(), "PRAGMA query_only").Scan(&qo))
	require.Equal(t, "1", qo, "readers cannot write")
	var v int
	require.NoError(t, s.w.QueryRowContext(t.Context(), "PRAGMA user_version").Scan(&v))
	require.Equal(t, len(migrations), v)
}

// TestSQLiteMigrations checks that pending migrations run in order, in one
// transaction: a failing one leaves the schema as it was.
func TestSQLiteMigrations(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.db")
	s, err := OpenSQLite(t.Context(), path)
	require.NoError(t, err)
	require.NoError(t, s.Close())

	orig := migrations
	t.Cleanup(func() { migrations = orig })

	migrations = append(append([]string{}, orig...),
		`CREATE TABLE extra (x INTEGER) STRICT;`,
		`INSERT INTO extra (x) VALUES (1); CREATE TABLE broken (;`)
	_, err = OpenSQLite(t.Context(), path)
	require.ErrorContains(t, err, "schema migration")
	require.ErrorContains(t, err, path)

	migrations = orig
	s, err = OpenSQLite(t.Context(), path)
	require.NoError(t, err, "the failed migration left the old schema intact")
	var n int
	require.NoError(t, s.r.QueryRowContext(t.Context(),
		`SELECT count(*) FROM sqlite_master WHERE name IN ('extra', 'broken')`).Scan(&n))
	require.Zero(t, n)
	require.NoError(t, s.Close())

	migrations = append(append([]string{}, orig...), `CREATE TABLE extra (x INTEGER) STRICT;`)
	s, err = OpenSQLite(t.Context(), path)
	require.NoError(t, err)
	defer s.Close()
	var v int
	require.NoError(t, s.w.QueryRowContext(t.Context(), "PRAGMA user_version").Scan(&v))
	require.Equal(t, len(orig)+1, v)
}

// TestSQLiteCloseLeaksNothing checks that Close stops every goroutine the
// store started.
func TestSQLiteCloseLeaksNothing(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	s, err := OpenSQLite(t.Context(), filepath.Join(t.TempDir(), "leak.db"))
	require.NoError(t, err)
	_, err = s.Devices(t.Context(), "")
	require.NoError(t, err)
	require.NoError(t, s.Close())
}

// TestSQLiteMigration3KeepsZones checks that a database of schema 2 opens
// with its zones intact and the default prefix limits (stored as 0).
func TestSQLiteMigration3KeepsZones(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v2.db")
	db, err := sql.Open("sqlite", path)
	require.NoError(t, err)
	for _, m := range migrations[:2] {
		_, err = db.Exec(m)
		require.NoError(t, err)
	}
	_, err = db.Exec(`PRAGMA user_version = 2;
		INSERT INTO zones (name, ipv4_pool, ipv6_pool, allow_exit_nodes, created_at)
		VALUES ('old', '10.9.0.0/24', 'fd00:9::/64', 1, 1)`)
	require.NoError(t, err)
	require.NoError(t, db.Close())

	s, err := OpenSQLite(t.Context(), path)
	require.NoError(t, err)
	defer s.Close()
	z, err := s.Zone(t.Context(), "old")
	require.NoError(t, err)
	require.True(t, z.AllowExitNodes)
	require.Zero(t, z.MinPrefixBits4)
	require.Zero(t, z.MinPrefixBits6)
	require.Zero(t, z.MaxPrefixes)
}
