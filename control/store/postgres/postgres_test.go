package postgres_test

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/store"
	"github.com/wiremesh/wiremesh/control/store/postgres"
	"github.com/wiremesh/wiremesh/control/store/postgres/pgtest"
	"github.com/wiremesh/wiremesh/control/store/storetest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// open opens a store on dsn, closed when t ends.
func open(t *testing.T, dsn string, opts ...postgres.Option) *postgres.Store {
	t.Helper()
	s, err := postgres.Open(t.Context(), dsn, opts...)
	require.NoError(t, err)
	t.Cleanup(func() {
		if err := s.Close(); err != nil && !errors.Is(err, store.ErrClosed) {
			t.Errorf("close: %v", err)
		}
	})
	return s
}

func TestPostgresConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return open(t, pgtest.DB(t)) })
}

// TestPostgresStatsGoWithDevice counts device_stats rows directly: the
// store's reads join devices (or read one id), so only a count shows a
// report a deleted or revoked device left behind.
func TestPostgresStatsGoWithDevice(t *testing.T) {
	s := open(t, pgtest.DB(t))
	storetest.StatsRowsGoWithDevice(t, &storetest.Env{T: t, S: s, Ctx: t.Context()}, func() (int, error) { return postgres.StatsRows(s) })
}
