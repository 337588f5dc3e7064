package store_test

import (
	"path/filepath"
	"testing"

	"github.com/wiremesh/wiremesh/control/store"
	"github.com/wiremesh/wiremesh/control/store/storetest"
)

// TestSQLiteStatsGoWithDevice counts device_stats rows directly: the
// store's reads join devices (or read one id), so only a count shows a
// report a deleted or revoked device left behind.
func TestSQLiteStatsGoWithDevice(t *testing.T) {
	s := openAt(t, filepath.Join(t.TempDir(), "s.db"))
	storetest.StatsRowsGoWithDevice(t, &storetest.Env{T: t, S: s, Ctx: t.Context()}, func() (int, error) { return store.StatsRows(s) })
}
