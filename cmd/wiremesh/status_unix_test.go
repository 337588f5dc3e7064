//go:build unix

package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestCheckSocketDir(t *testing.T) {
	base := t.TempDir()
	mk := func(name string, mode os.FileMode) string {
		d := filepath.Join(base, name)
		require.NoError(t, os.Mkdir(d, 0o700))
		require.NoError(t, os.Chmod(d, mode))
		return d
	}
	require.NoError(t, checkSocketDir(mk("private", 0o700)))
	require.NoError(t, checkSocketDir(mk("readable", 0o755)))
	require.NoError(t, checkSocketDir(mk("sticky", 0o777|os.ModeSticky)), "a sticky world-writable dir like /tmp is fine")
	err := checkSocketDir(mk("open", 0o777))
	require.ErrorContains(t, err, "writable by other users")

	if os.Getuid() == 0 {
		other := mk("other", 0o700)
		require.NoError(t, os.Chown(other, 4242, 4242))
		require.ErrorContains(t, checkSocketDir(other), "belongs to uid 4242")
	}
	f := filepath.Join(base, "file")
	require.NoError(t, os.WriteFile(f, nil, 0o600))
	require.ErrorContains(t, checkSocketDir(f), "not a directory")
}
