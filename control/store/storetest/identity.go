package storetest

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/store"
)

// identityTests are the contract cases of store.IdentityStore and of the
// identity rules of Register and UpdateDevice (issue 13).
var identityTests = []struct {
	name string
	fn   func(t *testing.T, e *Env)
}{
	{"RevokeDevice", testRevokeDevice},
	{"RotateKey", testRotateKey},
	{"DeviceTokenLifetime", testDeviceTokenLifetime},
	{"UniqueHostnames", testUniqueHostnames},
	{"Presence", testPresence},
	{"DeleteEphemeral", testDeleteEphemeral},
}

// lastChange returns the zone's changes after rev.
func (e *Env) changesSince(rev int64) []store.Change {
	e.T.Helper()
	cs, _, err := e.S.Changes(e.Ctx, store.DefaultZone, rev)
	require.NoError(e.T, err)
	return cs
}

func testRevokeDevice(t *testing.T, e *Env) {
	tok := e.Token(store.DefaultZone, true)
	key := Key()
	devTok := RandomHash()
	d, _, err := e.Register(store.RegisterParams{Zone: store.DefaultZone, JoinTokenHash: tok, PublicKey: key,
		DeviceTokenHash: devTok, Hostname: "bad", Prefixes: ps([]string{"172.24.0.0/24"})})
	require.NoError(t, err)
	revoked, err := e.S.RevokedKey(e.Ctx, key)
	require.NoError(t, err)
	require.False(t, revoked)

	rev := e.Rev()
	require.NoError(t, e.S.RevokeDevice(e.Ctx, d.ID, Now))
	require.ErrorIs(t, e.S.RevokeDevice(e.Ctx, d.ID, Now), store.ErrNotFound)
	cs := e.changesSince(rev)
	require.Len(t, cs, 1)
	require.Equal(t, store.ChangeRemove, cs[0].Kind)
	_, err = e.S.DeviceByToken(e.Ctx, devTok)
	require.ErrorIs(t, err, store.ErrNotFound)
	revoked, err = e.S.RevokedKey(e.Ctx, key)
	require.NoError(t, err)
	require.True(t, revoked)

	// The reusable token does not bring the key back; nothing changes.
	rev = e.Rev()
	_, _, err = e.Register(store.RegisterParams{Zone: store.DefaultZone, JoinTokenHash: tok, PublicKey: key, Hostname: "bad"})
	require.ErrorIs(t, err, store.ErrRevoked)
	require.Equal(t, rev, e.Rev())
	// Its prefix is free for others.
	e.MustRegister(store.DefaultZone, "other", "172.24.0.0/24")
}

func testRotateKey(t *testing.T, e *Env) {
	tok := e.Token(store.DefaultZone, true)
	oldKey, newKey := Key(), Key()
	devTok := RandomHash()
	d, _, err := e.Register(store.RegisterParams{Zone: store.DefaultZone, JoinTokenHash: tok, PublicKey: oldKey,
		DeviceTokenHash: devTok, Hostname: "r", Prefixes: ps([]string{"172.24.0.0/24"})})
	require.NoError(t, err)
	rev := e.Rev()
	got, err := e.S.RotateKey(e.Ctx, d.ID, newKey, Now.Add(time.Minute))
	require.NoError(t, err)
	require.Equal(t, newKey, got.PublicKey)
	require.Equal(t, d.ID, got.ID)
	require.Equal(t, d.IPv4, got.IPv4)
	require.Equal(t, d.Prefixes, got.Prefixes)
	cs := e.changesSince(rev)
	require.Len(t, cs, 1)
	require.Equal(t, store.ChangeUpsert, cs[0].Kind)
	require.Equal(t, newKey, cs[0].Device.PublicKey)
	byTok, err := e.S.DeviceByToken(e.Ctx, devTok)
	require.NoError(t, err, "tokens survive a key rotation")
	require.Equal(t, newKey, byTok.PublicKey)

	// The old key is retired; the new one registers as the same device.
	_, _, err = e.Register(store.RegisterParams{Zone: store.DefaultZone, JoinTokenHash: tok, PublicKey: oldKey, Hostname: "r"})
	require.ErrorIs(t, err, store.ErrRevoked)
	again, created, err := e.Register(store.RegisterParams{Zone: store.DefaultZone, JoinTokenHash: tok, PublicKey: newKey, Hostname: "r"})
	require.NoError(t, err)
	require.False(t, created)
	require.Equal(t, d.ID, again.ID)

	other := e.MustRegister(store.DefaultZone, "o")
	_, err = e.S.RotateKey(e.Ctx, d.ID, other.PublicKey, Now)
	require.ErrorIs(t, err, store.ErrExists)
	_, err = e.S.RotateKey(e.Ctx, other.ID, oldKey, Now)
	require.ErrorIs(t, err, store.ErrRevoked)
	_, err = e.S.RotateKey(e.Ctx, "dev_unknown", Key(), Now)
	require.ErrorIs(t, err, store.ErrNotFound)
}

func testDeviceTokenLifetime(t *testing.T, e *Env) {
	tok := e.Token(store.DefaultZone, true)
	key := Key()
	first, exp := RandomHash(), Now.Add(time.Hour)
	d, _, err := e.Register(store.RegisterParams{Zone: store.DefaultZone, JoinTokenHash: tok, PublicKey: key,
		DeviceTokenHash: first, DeviceTokenExpires: exp, Hostname: "t"})
	require.NoError(t, err)
	got, err := e.S.DeviceByToken(e.Ctx, first)
	require.NoError(t, err)
	require.True(t, exp.Equal(got.TokenExpires), "got %v", got.TokenExpires)

	// A registration after the expiry deletes the expired token.
	second := RandomHash()
	_, _, err = e.Register(store.RegisterParams{Zone: store.DefaultZone, JoinTokenHash: tok, PublicKey: key,
		DeviceTokenHash: second, Hostname: "t", Now: exp.Add(time.Second)})
	require.NoError(t, err)
	_, err = e.S.DeviceByToken(e.Ctx, first)
	require.ErrorIs(t, err, store.ErrNotFound)
	got, err = e.S.DeviceByToken(e.Ctx, second)
	require.NoError(t, err)
	require.True(t, got.TokenExpires.IsZero())

	// Rotation: the new token works, every other one is gone.
	third := RandomHash()
	require.NoError(t, e.S.RotateDeviceToken(e.Ctx, d.ID, third, exp.Add(time.Hour), exp))
	_, err = e.S.DeviceByToken(e.Ctx, second)
	require.ErrorIs(t, err, store.ErrNotFound)
	got, err = e.S.DeviceByToken(e.Ctx, third)
	require.NoError(t, err)
	require.Equal(t, d.ID, got.ID)
	require.ErrorIs(t, e.S.RotateDeviceToken(e.Ctx, "dev_unknown", RandomHash(), time.Time{}, Now), store.ErrNotFound)
}

func testUniqueHostnames(t *testing.T, e *Env) {
	a := e.MustRegister(store.DefaultZone, "m1")
	b := e.MustRegister(store.DefaultZone, "M1")
	require.Equal(t, "M1-2", b.Hostname, "case-insensitive: a suffix")
	c := e.MustRegister(store.DefaultZone, "m1")
	require.Equal(t, "m1-3", c.Hostname)
	e.Zone("lab", "10.99.0.0/24", false)
	require.Equal(t, "m1", e.MustRegister("lab", "m1").Hostname, "other zones do not count")

	// A restart asking for the same name keeps the name it was given.
	tok := e.Token(store.DefaultZone, true)
	again, _, err := e.Register(store.RegisterParams{Zone: store.DefaultZone, JoinTokenHash: tok, PublicKey: b.PublicKey, Hostname: "M1"})
	require.NoError(t, err)
	require.Equal(t, "M1-2", again.Hostname)
	again, _, err = e.Register(store.RegisterParams{Zone: store.DefaultZone, JoinTokenHash: tok, PublicKey: a.PublicKey, Hostname: "m1"})
	require.NoError(t, err)
	require.Equal(t, "m1", again.Hostname)

	// A rename follows the same rule.
	want := "M1"
	got, err := e.S.UpdateDevice(e.Ctx, c.ID, store.UpdateParams{Hostname: &want})
	require.NoError(t, err)
	require.Equal(t, "M1-3", got.Hostname)
	want = "free"
	got, err = e.S.UpdateDevice(e.Ctx, c.ID, store.UpdateParams{Hostname: &want})
	require.NoError(t, err)
	require.Equal(t, "free", got.Hostname)

	// The suffix fits 63 bytes, cut at a character boundary.
	long := strings.Repeat("x", 60) + "é"
	require.Equal(t, long, e.MustRegister(store.DefaultZone, long).Hostname)
	require.Equal(t, strings.Repeat("x", 60)+"-2", e.MustRegister(store.DefaultZone, long).Hostname)
}

func testPresence(t *testing.T, e *Env) {
	d := e.MustRegister(store.DefaultZone, "p")
	require.False(t, d.Online)
	require.True(t, d.LastSeen.IsZero())
	t0 := Now.Add(time.Minute)
	up := func(holder string, on, off []string, now time.Time) []string {
		t.Helper()
		zs, err := e.S.UpdatePresence(e.Ctx, store.PresenceUpdate{Holder: holder, Online: on, Offline: off, Until: now.Add(30 * time.Second), Now: now})
		require.NoError(t, err)
		return zs
	}
	state := func() store.Device {
		t.Helper()
		got, err := e.S.Device(e.Ctx, d.ID)
		require.NoError(t, err)
		return got
	}

	rev := e.Rev()
	require.Equal(t, []string{store.DefaultZone}, up("A", []string{d.ID, "dev_unknown"}, nil, t0))
	got := state()
	require.True(t, got.Online)
	require.True(t, t0.Equal(got.LastSeen))
	cs := e.changesSince(rev)
	require.Len(t, cs, 1)
	require.Equal(t, store.ChangePresence, cs[0].Kind)
	require.True(t, cs[0].Device.Online)

	// Renewing, or a second holder, changes nothing members see.
	rev = e.Rev()
	require.Empty(t, up("A", []string{d.ID}, nil, t0.Add(10*time.Second)))
	require.Empty(t, up("B", []string{d.ID}, nil, t0.Add(10*time.Second)))
	require.True(t, t0.Add(10*time.Second).Equal(state().LastSeen), "renewal moves last seen")
	require.Empty(t, up("A", nil, []string{d.ID}, t0.Add(11*time.Second)), "B still holds a stream")
	require.Equal(t, rev, e.Rev())
	require.Equal(t, []string{store.DefaultZone}, up("B", nil, []string{d.ID}, t0.Add(12*time.Second)))
	got = state()
	require.False(t, got.Online)
	require.True(t, t0.Add(12*time.Second).Equal(got.LastSeen))
	cs = e.changesSince(rev)
	require.Len(t, cs, 1)
	require.False(t, cs[0].Device.Online)

	// A holder that dies: its lease runs out, and any holder's next
	// update takes the device offline.
	t1 := t0.Add(time.Minute)
	up("A", []string{d.ID}, nil, t1)
	require.True(t, state().Online)
	require.Empty(t, up("C", nil, nil, t1.Add(29*time.Second)))
	require.Equal(t, []string{store.DefaultZone}, up("C", nil, nil, t1.Add(30*time.Second)))
	require.False(t, state().Online)

	// A deleted device's leases go with it.
	up("A", []string{d.ID}, nil, t1.Add(time.Minute))
	require.NoError(t, e.S.DeleteDevice(e.Ctx, d.ID))
	require.Empty(t, up("A", nil, []string{d.ID}, t1.Add(time.Minute)))
}

func testDeleteEphemeral(t *testing.T, e *Env) {
	tok := e.Token(store.DefaultZone, true)
	reg := func(prefix string, eph bool) store.Device {
		t.Helper()
		d, _, err := e.Register(store.RegisterParams{Zone: store.DefaultZone, JoinTokenHash: tok, Hostname: "e",
			Ephemeral: eph, Prefixes: ps([]string{prefix})})
		require.NoError(t, err)
		require.Equal(t, eph, d.Ephemeral)
		return d
	}
	never := reg("10.1.0.0/24", true)  // registered at Now, never seen
	online := reg("10.2.0.0/24", true) // holds a stream
	left := reg("10.3.0.0/24", true)   // seen until Now+5m
	durable := reg("10.4.0.0/24", false)
	t0 := Now.Add(5 * time.Minute)
	_, err := e.S.UpdatePresence(e.Ctx, store.PresenceUpdate{Holder: "A", Online: []string{online.ID, left.ID, durable.ID}, Until: t0.Add(time.Hour), Now: t0})
	require.NoError(t, err)
	_, err = e.S.UpdatePresence(e.Ctx, store.PresenceUpdate{Holder: "A", Offline: []string{left.ID, durable.ID}, Now: t0})
	require.NoError(t, err)

	gone, err := e.S.DeleteEphemeral(e.Ctx, Now.Add(time.Minute), t0)
	require.NoError(t, err)
	require.Len(t, gone, 1)
	require.Equal(t, never.ID, gone[0].ID)
	rev := e.Rev()
	gone, err = e.S.DeleteEphemeral(e.Ctx, t0.Add(time.Second), t0.Add(time.Second))
	require.NoError(t, err)
	require.Len(t, gone, 1)
	require.Equal(t, left.ID, gone[0].ID, "the online one and the durable one stay")
	cs := e.changesSince(rev)
	require.Len(t, cs, 1)
	require.Equal(t, store.ChangeRemove, cs[0].Kind)
	ps, err := e.S.Prefixes(e.Ctx, store.DefaultZone)
	require.NoError(t, err)
	require.Len(t, ps, 2, "the prefixes of deleted devices are free")
}
