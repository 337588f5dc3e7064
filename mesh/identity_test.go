package mesh_test

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/mesh"
	"github.com/wiremesh/wiremesh/meshtest"
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// deviceExists asks the service whether device id is registered.
func deviceExists(t *testing.T, s *meshtest.Server, id string) bool {
	t.Helper()
	_, err := s.AdminClient(t).Device(ctxT(t), id)
	if err == nil {
		return true
	}
	var ae *api.Error
	require.ErrorAs(t, err, &ae)
	require.Equal(t, api.CodeNotFound, ae.Code)
	return false
}

func TestEphemeralNodeIsDeletedOnClose(t *testing.T) {
	s := meshtest.NewServer(t)
	eph := meshtest.Join(t, s, mesh.WithHostname("eph"), mesh.WithChildPrefix(pfx("10.61.0.0/24")))
	dur := meshtest.Join(t, s, mesh.WithHostname("dur"), mesh.WithStateDir(t.TempDir()))
	require.True(t, eph.Status().Self.Ephemeral, "no state dir: ephemeral by default")
	require.False(t, dur.Status().Self.Ephemeral)
	id := eph.Status().Self.DeviceID
	require.True(t, deviceExists(t, s, id))

	require.NoError(t, eph.Close())
	require.False(t, deviceExists(t, s, id), "Close deletes an ephemeral device at once")
	meshtest.WaitPeers(t, dur, 0)
	// Its prefix is free again.
	meshtest.Join(t, s, mesh.WithHostname("next"), mesh.WithChildPrefix(pfx("10.61.0.0/24")))

	// A durable node with WithEphemeral is deleted too.
	e2 := meshtest.Join(t, s, mesh.WithStateDir(t.TempDir()), mesh.WithEphemeral())
	id = e2.Status().Self.DeviceID
	require.NoError(t, e2.Close())
	require.False(t, deviceExists(t, s, id))
}

func TestDurableIdentityAcrossRestarts(t *testing.T) {
	s := meshtest.NewServer(t)
	dir := t.TempDir()
	opts := []mesh.Option{mesh.WithHostname("router"), mesh.WithStateDir(dir), mesh.WithChildPrefix(pfx("10.62.0.0/24"))}
	a := meshtest.Join(t, s, opts...)
	first := a.Status().Self

	_, err := meshtest.TryJoin(t, s, opts...)
	require.ErrorIs(t, err, mesh.ErrStateDirInUse, "two nodes never share a state directory")
	require.NoError(t, a.Close())
	require.True(t, deviceExists(t, s, first.DeviceID), "a durable device stays")

	b := meshtest.Join(t, s, opts...)
	again := b.Status().Self
	require.Equal(t, first.DeviceID, again.DeviceID)
	require.Equal(t, first.Addrs, again.Addrs)
	require.Equal(t, first.Prefixes, again.Prefixes)
	require.Equal(t, "router", again.Hostname)
	ds, err := s.AdminClient(t).Devices(ctxT(t), "")
	require.NoError(t, err)
	require.Len(t, ds, 1)
}

func TestLostKeyIsNeverANewIdentity(t *testing.T) {
	s := meshtest.NewServer(t)
	dir := t.TempDir()
	a := meshtest.Join(t, s, mesh.WithStateDir(dir))
	require.NoError(t, a.Close())
	keyFile := filepath.Join(dir, "private.key")
	key, err := os.ReadFile(keyFile)
	require.NoError(t, err)

	require.NoError(t, os.WriteFile(keyFile, []byte("garbage\n"), 0o600))
	_, err = meshtest.TryJoin(t, s, mesh.WithStateDir(dir))
	require.ErrorIs(t, err, mesh.ErrIdentityLost)
	require.NoError(t, os.Remove(keyFile))
	_, err = meshtest.TryJoin(t, s, mesh.WithStateDir(dir))
	require.ErrorIs(t, err, mesh.ErrIdentityLost)
	_, err = os.Stat(keyFile)
	require.ErrorIs(t, err, os.ErrNotExist, "no key was made up")

	require.NoError(t, os.WriteFile(keyFile, key, 0o600))
	b := meshtest.Join(t, s, mesh.WithStateDir(dir))
	require.Equal(t, a.Addr(), b.Addr())
}

func TestPresenceOfPeers(t *testing.T) {
	s := meshtest.NewServer(t)
	a := meshtest.Join(t, s, mesh.WithHostname("a"))
	events := a.Watch(ctxT(t))
	b := meshtest.Join(t, s, mesh.WithHostname("b"), mesh.WithStateDir(t.TempDir()))
	meshtest.WaitPeers(t, a, 1)
	meshtest.WaitFor(t, "b online in a's status", func() bool { return a.Status().Peers[0].Online })

	require.NoError(t, b.Close()) // durable: it stays, offline
	meshtest.WaitFor(t, "b offline in a's status", func() bool {
		p := a.Status().Peers
		return len(p) == 1 && !p[0].Online && !p[0].LastSeen.IsZero()
	})
	var sawOnline, sawOffline bool
	deadline := time.After(10 * time.Second)
	for !sawOffline {
		select {
		case ev := <-events:
			if ev.Peer.Hostname != "b" {
				continue
			}
			sawOnline = sawOnline || ev.Type == mesh.PeerOnline
			sawOffline = ev.Type == mesh.PeerOffline
		case <-deadline:
			t.Fatal("no PeerOffline event")
		}
	}
	require.True(t, sawOnline)
}

func TestRevokedNodeCannotComeBack(t *testing.T) {
	s := meshtest.NewServer(t)
	dir := t.TempDir()
	a := meshtest.Join(t, s, mesh.WithStateDir(dir))
	id := a.Status().Self.DeviceID
	require.NoError(t, a.Close())
	require.NoError(t, s.AdminClient(t).RevokeDevice(ctxT(t), id))
	_, err := meshtest.TryJoin(t, s, mesh.WithStateDir(dir))
	require.ErrorIs(t, err, mesh.ErrRevoked, "the reusable token does not bring it back")
}

func TestLeaveAndForget(t *testing.T) {
	s := meshtest.NewServer(t)
	a := meshtest.Join(t, s, mesh.WithStateDir(t.TempDir()))
	id := a.Status().Self.DeviceID
	require.NoError(t, a.Leave(ctxT(t)))
	require.False(t, deviceExists(t, s, id))

	dir := t.TempDir()
	b := meshtest.Join(t, s, mesh.WithStateDir(dir))
	id = b.Status().Self.DeviceID
	require.ErrorIs(t, mesh.Forget(ctxT(t), dir, mesh.WithToken(s.Token)), mesh.ErrStateDirInUse)
	require.NoError(t, b.Close())
	require.True(t, deviceExists(t, s, id))
	require.NoError(t, mesh.Forget(ctxT(t), dir, mesh.WithToken(s.Token)))
	require.False(t, deviceExists(t, s, id))
	_, err := os.Stat(filepath.Join(dir, "state.json"))
	require.ErrorIs(t, err, os.ErrNotExist)
	require.Error(t, mesh.Forget(ctxT(t), dir), "nothing left to forget")
}

func TestRotateKeyKeepsTheMember(t *testing.T) {
	s := meshtest.NewServer(t)
	dir := t.TempDir()
	opts := []mesh.Option{mesh.WithHostname("a"), mesh.WithStateDir(dir), mesh.WithChildPrefix(pfx("10.63.0.0/24"))}
	a := meshtest.Join(t, s, opts...)
	b := meshtest.Join(t, s, mesh.WithHostname("b"))
	echoServer(t, a)
	meshtest.WaitPeers(t, b, 1)
	tcpEcho(t, b, a.Addr().String())
	before := a.Status().Self

	require.NoError(t, a.RotateKey(ctxT(t)))
	after := a.Status().Self
	require.NotEqual(t, before.PublicKey, after.PublicKey)
	require.Equal(t, before.DeviceID, after.DeviceID)
	require.Equal(t, before.Addrs, after.Addrs)
	require.Equal(t, before.Prefixes, after.Prefixes)
	meshtest.WaitFor(t, "b to learn the new key", func() bool {
		p := b.Status().Peers
		return len(p) == 1 && p[0].PublicKey == after.PublicKey
	})
	require.Len(t, a.Status().Peers, 1, "a does not see itself under either key")
	tcpEcho(t, b, a.Addr().String())

	// The new key is the one kept: a restart is the same member.
	require.NoError(t, a.Close())
	a2 := meshtest.Join(t, s, opts...)
	require.Equal(t, after.PublicKey, a2.Status().Self.PublicKey)
	require.Equal(t, before.Addrs, a2.Status().Self.Addrs)
	_, err := os.Stat(filepath.Join(dir, "private.key.new"))
	require.ErrorIs(t, err, os.ErrNotExist)
}
