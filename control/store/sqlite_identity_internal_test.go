package store

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestSQLiteMigrationIdentity checks that migration 4 folds the hostnames
// of devices registered before it, so the uniqueness rule sees them.
func TestSQLiteMigrationIdentity(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.db")
	orig := migrations
	t.Cleanup(func() { migrations = orig })
	migrations = orig[:3]
	s, err := OpenSQLite(t.Context(), path)
	require.NoError(t, err)
	_, err = s.w.ExecContext(t.Context(), `
		INSERT INTO devices (id, zone, public_key, hostname, idx, ipv4, ipv6, endpoints, created_at, updated_at)
		VALUES ('dev_old', 'default', randomblob(32), 'Web', 1, x'64400001', x'fd000000000000000000000000000001', '[]', 1, 1)`)
	require.NoError(t, err)
	require.NoError(t, s.Close())

	migrations = orig
	s, err = OpenSQLite(t.Context(), path)
	require.NoError(t, err)
	defer s.Close()
	var fold string
	require.NoError(t, s.r.QueryRowContext(t.Context(), `SELECT hostname_fold FROM devices WHERE id = 'dev_old'`).Scan(&fold))
	require.Equal(t, "web", fold)
	d, err := s.Device(t.Context(), "dev_old")
	require.NoError(t, err)
	require.False(t, d.Ephemeral)
	require.False(t, d.Online)
	require.True(t, d.LastSeen.IsZero())
}
