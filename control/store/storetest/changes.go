package storetest

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/store"
)

func testSnapshotAndChanges(t *testing.T, e *Env) {
	e.Zone("lab", "10.99.0.0/24", false)
	a := e.MustRegister(store.DefaultZone, "a")
	rev0, snap, err := e.S.Snapshot(e.Ctx, store.DefaultZone)
	require.NoError(t, err)
	require.Len(t, snap, 1)
	require.Equal(t, a.ID, snap[0].ID)

	// What a watcher that saw rev0 misses:
	b := e.MustRegister(store.DefaultZone, "b", "172.24.0.0/24")
	e.MustRegister("lab", "elsewhere") // another zone: not in this zone's log
	host := "a2"
	a2, err := e.S.UpdateDevice(e.Ctx, a.ID, store.UpdateParams{Hostname: &host})
	require.NoError(t, err)
	require.NoError(t, e.S.DeleteDevice(e.Ctx, b.ID))
	c := e.MustRegister(store.DefaultZone, "c")

	cs, cur, err := e.S.Changes(e.Ctx, store.DefaultZone, rev0)
	require.NoError(t, err)
	type kv struct {
		kind store.ChangeKind
		id   string
		host string
	}
	var got []kv
	last := rev0
	for _, ch := range cs {
		require.Greater(t, ch.Rev, last, "revisions strictly increase")
		last = ch.Rev
		require.Equal(t, store.DefaultZone, ch.Zone)
		got = append(got, kv{ch.Kind, ch.Device.ID, ch.Device.Hostname})
	}
	require.Equal(t, []kv{
		{store.ChangeUpsert, b.ID, "b"},
		{store.ChangeUpsert, a.ID, "a2"},
		{store.ChangeRemove, b.ID, "b"},
		{store.ChangeUpsert, c.ID, "c"},
	}, got)
	require.Equal(t, last, cur, "the last change is the current revision")
	require.Equal(t, []netip.Prefix{P("172.24.0.0/24")}, cs[0].Device.Prefixes)
	requireSameDevice(t, a2, cs[1].Device)

	// Nothing new since cur.
	none, cur2, err := e.S.Changes(e.Ctx, store.DefaultZone, cur)
	require.NoError(t, err)
	require.Empty(t, none)
	require.Equal(t, cur, cur2)

	// Each suffix of the log is exactly what was missed from there.
	for i := range cs {
		tail, _, err := e.S.Changes(e.Ctx, store.DefaultZone, cs[i].Rev)
		require.NoError(t, err)
		require.Len(t, tail, len(cs)-i-1)
		if len(tail) > 0 {
			require.Equal(t, cs[i+1].Rev, tail[0].Rev)
		}
	}

	// Replaying the missed changes onto the old snapshot gives the new one.
	state := map[string]store.Device{}
	for _, d := range snap {
		state[d.ID] = d
	}
	for _, ch := range cs {
		if ch.Kind == store.ChangeRemove {
			delete(state, ch.Device.ID)
		} else {
			state[ch.Device.ID] = ch.Device
		}
	}
	rev1, snap1, err := e.S.Snapshot(e.Ctx, store.DefaultZone)
	require.NoError(t, err)
	require.Equal(t, cur, rev1)
	require.Len(t, state, len(snap1))
	for _, d := range snap1 {
		requireSameDevice(t, d, state[d.ID])
	}

	// The other zone's log has its own entry only.
	lab, _, err := e.S.Changes(e.Ctx, "lab", 0)
	require.NoError(t, err)
	require.Len(t, lab, 1)
	require.Equal(t, "elsewhere", lab[0].Device.Hostname)

	_, _, err = e.S.Changes(e.Ctx, "nope", 0)
	require.ErrorIs(t, err, store.ErrNotFound)
	_, _, err = e.S.Snapshot(e.Ctx, "nope")
	require.ErrorIs(t, err, store.ErrNotFound)
	_, _, err = e.S.Changes(e.Ctx, store.DefaultZone, cur+1000)
	require.ErrorIs(t, err, store.ErrCompacted, "a revision the store never issued")
}

// requireSameDevice compares devices, times by instant.
func requireSameDevice(t *testing.T, want, got store.Device) {
	t.Helper()
	require.True(t, want.CreatedAt.Equal(got.CreatedAt), "CreatedAt %v != %v", want.CreatedAt, got.CreatedAt)
	require.True(t, want.UpdatedAt.Equal(got.UpdatedAt), "UpdatedAt %v != %v", want.UpdatedAt, got.UpdatedAt)
	want.CreatedAt, want.UpdatedAt = got.CreatedAt, got.UpdatedAt
	require.Equal(t, want, got)
}
