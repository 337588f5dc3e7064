package storetest

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/store"
)

// testPolicy checks Policy and SetPolicy: per zone, byte for byte, one
// ChangePolicy entry per call (removal included) in the zone's log.
func testPolicy(t *testing.T, e *Env) {
	e.Zone("lab", "10.99.0.0/24", false)
	p, err := e.S.Policy(e.Ctx, store.DefaultZone)
	require.NoError(t, err)
	require.Equal(t, store.ZonePolicy{Zone: store.DefaultZone}, p, "no policy: nil document, revision 0")
	_, err = e.S.Policy(e.Ctx, "nope")
	require.ErrorIs(t, err, store.ErrNotFound)
	_, err = e.S.SetPolicy(e.Ctx, "nope", []byte(`{}`), Now)
	require.ErrorIs(t, err, store.ErrNotFound)

	rev0 := e.Rev()
	doc := []byte("{\n  \"rules\": []\n}\n")
	at := Now.Add(time.Minute)
	set, err := e.S.SetPolicy(e.Ctx, store.DefaultZone, doc, at)
	require.NoError(t, err)
	require.Greater(t, set.Rev, rev0)
	require.Equal(t, doc, set.Document)
	require.True(t, set.UpdatedAt.Equal(at))
	got, err := e.S.Policy(e.Ctx, store.DefaultZone)
	require.NoError(t, err)
	require.Equal(t, doc, got.Document, "kept byte for byte")
	require.Equal(t, set.Rev, got.Rev)
	require.True(t, got.UpdatedAt.Equal(at), "updated %v, want %v", got.UpdatedAt, at)
	other, err := e.S.Policy(e.Ctx, "lab")
	require.NoError(t, err)
	require.Nil(t, other.Document, "policies are per zone")

	// The same document again is still a change; removal is one too and
	// keeps its revision.
	again, err := e.S.SetPolicy(e.Ctx, store.DefaultZone, doc, at)
	require.NoError(t, err)
	require.Greater(t, again.Rev, set.Rev)
	removed, err := e.S.SetPolicy(e.Ctx, store.DefaultZone, nil, at)
	require.NoError(t, err)
	require.Nil(t, removed.Document)
	got, err = e.S.Policy(e.Ctx, store.DefaultZone)
	require.NoError(t, err)
	require.Nil(t, got.Document)
	require.Equal(t, removed.Rev, got.Rev)

	cs, cur, err := e.S.Changes(e.Ctx, store.DefaultZone, rev0)
	require.NoError(t, err)
	require.Len(t, cs, 3)
	for i, want := range []int64{set.Rev, again.Rev, removed.Rev} {
		require.Equal(t, store.Change{Rev: want, Zone: store.DefaultZone, Kind: store.ChangePolicy}, cs[i])
	}
	require.Equal(t, removed.Rev, cur)
	labChanges, _, err := e.S.Changes(e.Ctx, "lab", rev0)
	require.NoError(t, err)
	require.Empty(t, labChanges)
}

// testTags checks that a device carries the tags of the join token it last
// registered with, in its row and in the change log.
func testTags(t *testing.T, e *Env) {
	tagged := RandomHash()
	require.NoError(t, e.S.CreateJoinToken(e.Ctx, store.JoinToken{
		ID: store.NewJoinTokenID(), Hash: tagged, Zone: store.DefaultZone, Reusable: true, Tags: []string{"web", "prod"},
	}))
	ts, err := e.S.JoinTokens(e.Ctx, store.DefaultZone)
	require.NoError(t, err)
	require.Len(t, ts, 1)
	require.Equal(t, []string{"web", "prod"}, ts[0].Tags)
	jt, err := e.S.JoinTokenByHash(e.Ctx, tagged)
	require.NoError(t, err)
	require.Equal(t, []string{"web", "prod"}, jt.Tags)

	rev0 := e.Rev()
	key := Key()
	d, created, err := e.Register(store.RegisterParams{Zone: store.DefaultZone, JoinTokenHash: tagged, PublicKey: key, Hostname: "w1"})
	require.NoError(t, err)
	require.True(t, created)
	require.Equal(t, []string{"web", "prod"}, d.Tags)
	got, err := e.S.Device(e.Ctx, d.ID)
	require.NoError(t, err)
	require.Equal(t, []string{"web", "prod"}, got.Tags)
	ds, err := e.S.Devices(e.Ctx, store.DefaultZone)
	require.NoError(t, err)
	require.Equal(t, []string{"web", "prod"}, ds[0].Tags)
	cs, _, err := e.S.Changes(e.Ctx, store.DefaultZone, rev0)
	require.NoError(t, err)
	require.Equal(t, []string{"web", "prod"}, cs[0].Device.Tags)

	// Updates keep the tags; registering again with an untagged token
	// replaces them.
	host := "w1b"
	up, err := e.S.UpdateDevice(e.Ctx, d.ID, store.UpdateParams{Hostname: &host})
	require.NoError(t, err)
	require.Equal(t, []string{"web", "prod"}, up.Tags)
	d2, created, err := e.Register(store.RegisterParams{Zone: store.DefaultZone, JoinTokenHash: e.Token(store.DefaultZone, false), PublicKey: key, Hostname: "w1"})
	require.NoError(t, err)
	require.False(t, created)
	require.Nil(t, d2.Tags)
	got, err = e.S.Device(e.Ctx, d.ID)
	require.NoError(t, err)
	require.Nil(t, got.Tags)
	plain := e.MustRegister(store.DefaultZone, "plain")
	require.Nil(t, plain.Tags)
}
