package control

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

// A start that cannot bind its port leaves no data directory, database or
// admin token behind.
func TestFailedStartLeavesNothing(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer busy.Close()
	busyUDP, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	defer busyUDP.Close()

	for _, tc := range []struct {
		name         string
		listen, stun string
	}{
		{"API port in use", busy.Addr().String(), "off"},
		{"STUN port in use", "127.0.0.1:0", busyUDP.LocalAddr().String()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "state")
			_, err := Start(context.Background(), Options{DataDir: dir, Listen: tc.listen, STUNListen: tc.stun})
			require.True(t, errors.Is(err, syscall.EADDRINUSE), "%v", err)
			_, serr := os.Stat(dir)
			require.ErrorIs(t, serr, os.ErrNotExist, "the failed start created %s", dir)

			// An existing, empty directory stays empty.
			require.NoError(t, os.Mkdir(dir, 0o700))
			_, err = Start(context.Background(), Options{DataDir: dir, Listen: tc.listen, STUNListen: tc.stun})
			require.Error(t, err)
			ents, err := os.ReadDir(dir)
			require.NoError(t, err)
			require.Empty(t, ents)
		})
	}
}

// A start that fails after creating files (here: a certificate file given
// without a readable key) removes what it created and keeps what was there.
func TestFailedStartRemovesOnlyWhatItMade(t *testing.T) {
	dir := t.TempDir()
	s := startService(t, Options{DataDir: dir, InsecureHTTP: true})
	require.NoError(t, s.Close())
	key, err := os.ReadFile(filepath.Join(dir, ServerKeyFile))
	require.NoError(t, err)
	require.NoError(t, os.Remove(filepath.Join(dir, AdminTokenFile)))

	_, err = Start(context.Background(), Options{DataDir: dir, Listen: "127.0.0.1:0", STUNListen: "off",
		TLSCertFile: filepath.Join(dir, "missing.crt"), TLSKeyFile: filepath.Join(dir, "missing.key")})
	require.ErrorContains(t, err, "missing.crt")
	_, err = os.Stat(filepath.Join(dir, AdminTokenFile))
	require.ErrorIs(t, err, os.ErrNotExist, "the admin token this start made is removed")
	after, err := os.ReadFile(filepath.Join(dir, ServerKeyFile))
	require.NoError(t, err)
	require.Equal(t, key, after, "what was there stays")
	_, err = os.Stat(filepath.Join(dir, DBFile))
	require.NoError(t, err, "the database that was there stays")
}
