package storetest

import (
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/store"
)

// testStats: a device's report is kept whole (times to the nanosecond,
// 64-bit counters), replaced by the next one, listed per zone or for all,
// moves no revision, is refused for an unknown device, and goes with its
// device.
func testStats(t *testing.T, e *Env) {
	e.Zone("lab", "10.9.0.0/16", false)
	a := e.MustRegister(store.DefaultZone, "a")
	b := e.MustRegister(store.DefaultZone, "b")
	c := e.MustRegister("lab", "c")

	st, err := e.S.Stats(e.Ctx, "")
	require.NoError(t, err)
	require.Empty(t, st, "nobody reported yet")

	rev := e.Rev()
	at := Now.Add(1234567 * time.Nanosecond)
	first := store.DeviceStats{DeviceID: a.ID, ReportedAt: at, Peers: []store.PeerStats{
		{DeviceID: b.ID, Path: "direct", LastHandshake: at.Add(-3 * time.Second), RxBytes: math.MaxUint64, TxBytes: 7},
		{DeviceID: "dev_gone", Path: "", RxBytes: 0, TxBytes: 0},
	}}
	require.NoError(t, e.S.PutStats(e.Ctx, first))
	require.Equal(t, rev, e.Rev(), "a report is not a change members see")
	st, err = e.S.Stats(e.Ctx, store.DefaultZone)
	require.NoError(t, err)
	require.Equal(t, []store.DeviceStats{first}, st)

	second := store.DeviceStats{DeviceID: a.ID, ReportedAt: at.Add(time.Minute), Peers: []store.PeerStats{
		{DeviceID: b.ID, Path: "relay", RxBytes: 10, TxBytes: 20},
	}}
	require.NoError(t, e.S.PutStats(e.Ctx, second))
	require.NoError(t, e.S.PutStats(e.Ctx, store.DeviceStats{DeviceID: b.ID, ReportedAt: at}))
	require.NoError(t, e.S.PutStats(e.Ctx, store.DeviceStats{DeviceID: c.ID, ReportedAt: at}))
	st, err = e.S.Stats(e.Ctx, store.DefaultZone)
	require.NoError(t, err)
	want := []store.DeviceStats{second, {DeviceID: b.ID, ReportedAt: at}}
	if a.ID > b.ID {
		want[0], want[1] = want[1], want[0]
	}
	require.Equal(t, want, st, "the latest report per device, by device id; no peers is nil")
	st, err = e.S.Stats(e.Ctx, "lab")
	require.NoError(t, err)
	require.Equal(t, []store.DeviceStats{{DeviceID: c.ID, ReportedAt: at}}, st)
	st, err = e.S.Stats(e.Ctx, "")
	require.NoError(t, err)
	require.Len(t, st, 3)
	st, err = e.S.Stats(e.Ctx, "nozone")
	require.NoError(t, err)
	require.Empty(t, st)

	require.ErrorIs(t, e.S.PutStats(e.Ctx, store.DeviceStats{DeviceID: "dev_unknown", ReportedAt: at}), store.ErrNotFound)

	require.NoError(t, e.S.DeleteDevice(e.Ctx, a.ID))
	st, err = e.S.Stats(e.Ctx, store.DefaultZone)
	require.NoError(t, err)
	require.Equal(t, []store.DeviceStats{{DeviceID: b.ID, ReportedAt: at}}, st, "a report goes with its device")
	require.ErrorIs(t, e.S.PutStats(e.Ctx, second), store.ErrNotFound)
}
