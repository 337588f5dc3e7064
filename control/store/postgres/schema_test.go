package postgres_test

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/control/store"
	"github.com/wiremesh/wiremesh/control/store/postgres"
	"github.com/wiremesh/wiremesh/control/store/postgres/pgtest"
	"github.com/wiremesh/wiremesh/control/store/storetest"
)

// sqlConn connects to dsn for checks behind the store's back.
func sqlConn(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(t.Context(), dsn)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// tables lists the database's tables with their row counts.
func tables(t *testing.T, c *pgx.Conn) map[string]int {
	t.Helper()
	rows, err := c.Query(t.Context(), `SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1`)
	require.NoError(t, err)
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	out := map[string]int{}
	for _, n := range names {
		var k int
		require.NoError(t, c.QueryRow(t.Context(), `SELECT count(*) FROM `+pgx.Identifier{n}.Sanitize()).Scan(&k))
		out[n] = k
	}
	return out
}

func TestPostgresRefusesNewerSchema(t *testing.T) {
	dsn := pgtest.DB(t)
	s := open(t, dsn)
	e := &storetest.Env{T: t, S: s, Ctx: t.Context()}
	e.MustRegister(api.DefaultZone, "a")
	require.NoError(t, s.Close())

	c := sqlConn(t, dsn)
	_, err := c.Exec(t.Context(), `UPDATE wiremesh_schema SET version = 999`)
	require.NoError(t, err)
	before := tables(t, c)

	_, err = postgres.Open(t.Context(), dsn)
	require.ErrorContains(t, err, "newer")
	require.ErrorContains(t, err, "999")
	require.Equal(t, before, tables(t, c), "the database was not touched")
	var v int
	require.NoError(t, c.QueryRow(t.Context(), `SELECT version FROM wiremesh_schema`).Scan(&v))
	require.Equal(t, 999, v)
}

// TestPostgresMigrations: pending migrations run in order in one
// transaction; a failing one leaves the schema as it was.
func TestPostgresMigrations(t *testing.T) {
	dsn := pgtest.DB(t)
	s := open(t, dsn)
	require.NoError(t, s.Close())
	c := sqlConn(t, dsn)
	orig := postgres.Migrations()

	restore := postgres.SetMigrations(append(append([]string{}, orig...),
		`CREATE TABLE extra (x integer)`, `INSERT INTO extra VALUES (1); CREATE TABLE broken (;`))
	_, err := postgres.Open(t.Context(), dsn)
	restore()
	require.ErrorContains(t, err, fmt.Sprintf("schema migration %d", len(orig)+2))
	var n int
	require.NoError(t, c.QueryRow(t.Context(),
		`SELECT count(*) FROM pg_tables WHERE tablename IN ('extra', 'broken')`).Scan(&n))
	require.Zero(t, n, "the failed migration rolled back the one before it too")

	restore = postgres.SetMigrations(append(append([]string{}, orig...), `CREATE TABLE extra (x integer)`))
	defer restore()
	open(t, dsn)
	var v int
	require.NoError(t, c.QueryRow(t.Context(), `SELECT version FROM wiremesh_schema`).Scan(&v))
	require.Equal(t, len(orig)+1, v)
}

// TestPostgresConcurrentOpen: replicas starting together on an empty
// database migrate it once.
func TestPostgresConcurrentOpen(t *testing.T) {
	dsn := pgtest.DB(t)
	errs := make(chan error, 4)
	for range cap(errs) {
		go func() {
			s, err := postgres.Open(t.Context(), dsn)
			if err == nil {
				err = s.Close()
			}
			errs <- err
		}()
	}
	for range cap(errs) {
		require.NoError(t, <-errs)
	}
	zs, err := open(t, dsn).Zones(t.Context())
	require.NoError(t, err)
	require.Len(t, zs, 1)
}

func TestPostgresOpenErrors(t *testing.T) {
	srv := pgtest.Shared(t)
	dsn := pgtest.DB(t)
	t.Run("wrong password", func(t *testing.T) {
		if srv.External() {
			t.Skip("the password of an external server's role is not ours to get wrong")
		}
		u, err := url.Parse(dsn)
		require.NoError(t, err)
		u.User = url.UserPassword(pgtest.Role, "not-the-password")
		_, err = postgres.Open(t.Context(), u.String())
		require.ErrorContains(t, err, "authentication refused")
		require.NotErrorIs(t, err, store.ErrUnavailable)
		require.NotContains(t, err.Error(), "not-the-password", "the password is never in a message")
	})
	t.Run("unreachable", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		start := time.Now()
		_, err := postgres.Open(ctx, "postgres://wiremesh:secret@/wiremesh?host="+t.TempDir()+"&connect_timeout=5")
		require.ErrorIs(t, err, store.ErrUnavailable)
		require.ErrorContains(t, err, "cannot reach")
		require.NotContains(t, err.Error(), "secret")
		require.Less(t, time.Since(start), 10*time.Second)
	})
	t.Run("not a DSN", func(t *testing.T) {
		_, err := postgres.Open(t.Context(), "postgres://u:secret@host:notaport/db")
		require.Error(t, err)
		require.NotContains(t, err.Error(), "secret")
	})
	t.Run("retention", func(t *testing.T) {
		_, err := postgres.Open(t.Context(), dsn, postgres.WithChangeRetention(0))
		require.ErrorContains(t, err, "retention")
	})
	t.Run("missing database", func(t *testing.T) {
		_, err := postgres.Open(t.Context(), strings.Replace(dsn, "/wmtest_", "/nope_", 1))
		require.ErrorContains(t, err, "does not exist")
	})
}

// TestPostgresIdentityMigration: migration 2 upgrades a version-1
// database with devices: their hostnames take part in the per-zone
// case-insensitive uniqueness, and they start neither ephemeral nor online.
func TestPostgresIdentityMigration(t *testing.T) {
	dsn := pgtest.DB(t)
	restore := postgres.SetMigrations(postgres.Migrations()[:1])
	s1, err := postgres.Open(t.Context(), dsn)
	require.NoError(t, err)
	require.NoError(t, s1.Close())
	restore()
	// A device as version 1 stored it.
	c := sqlConn(t, dsn)
	_, err = c.Exec(t.Context(), `
		INSERT INTO zones (name, ipv4_pool, ipv6_pool, created_at) VALUES ('default', '100.64.0.0/24', 'fd00:1::/64', 1)
		ON CONFLICT DO NOTHING;
		INSERT INTO devices (id, zone, public_key, hostname, idx, ipv4, ipv6, endpoints, created_at, updated_at)
		VALUES ('dev_old', 'default', decode(repeat('01', 32), 'hex'), 'Laptop', 1, '100.64.0.1', 'fd00:1::1', '[]', 1, 1)`)
	require.NoError(t, err)
	old := store.Device{ID: "dev_old"}

	s := open(t, dsn)
	got, err := s.Device(t.Context(), old.ID)
	require.NoError(t, err)
	require.Equal(t, "Laptop", got.Hostname)
	require.False(t, got.Ephemeral)
	require.False(t, got.Online)
	require.True(t, got.LastSeen.IsZero())
	e := &storetest.Env{T: t, S: s, Ctx: t.Context()}
	d := e.MustRegister(api.DefaultZone, "laptop")
	require.Equal(t, "laptop-2", d.Hostname)
}
