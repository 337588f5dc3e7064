package storetest

import (
	"fmt"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/store"
)

// testStats: a device's report is kept whole (times to the nanosecond,
// 64-bit counters), replaced by the next one, listed per zone or for all
// and read alone, moves no revision, is refused for an unknown device, and
// goes with its device (read alone, which joins nothing, so that a report
// left behind would show; each backend's own tests also count the rows).
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
	one, err := e.S.DeviceStats(e.Ctx, a.ID)
	require.NoError(t, err)
	require.Equal(t, first, one)
	_, err = e.S.DeviceStats(e.Ctx, b.ID)
	require.ErrorIs(t, err, store.ErrNotFound, "b did not report yet")
	_, err = e.S.DeviceStats(e.Ctx, "dev_unknown")
	require.ErrorIs(t, err, store.ErrNotFound)

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

	one, err = e.S.DeviceStats(e.Ctx, a.ID)
	require.NoError(t, err)
	require.Equal(t, second, one, "replaced")
	one, err = e.S.DeviceStats(e.Ctx, b.ID)
	require.NoError(t, err)
	require.Equal(t, store.DeviceStats{DeviceID: b.ID, ReportedAt: at}, one, "no peers is nil")

	require.NoError(t, e.S.DeleteDevice(e.Ctx, a.ID))
	st, err = e.S.Stats(e.Ctx, store.DefaultZone)
	require.NoError(t, err)
	require.Equal(t, []store.DeviceStats{{DeviceID: b.ID, ReportedAt: at}}, st, "a report goes with its device")
	_, err = e.S.DeviceStats(e.Ctx, a.ID)
	require.ErrorIs(t, err, store.ErrNotFound, "a report goes with its device")
	require.ErrorIs(t, e.S.PutStats(e.Ctx, second), store.ErrNotFound)
}

// testZoneDeviceIDs: of the ids asked about, those that are devices of
// the zone, sorted, each once; none asked, none given.
func testZoneDeviceIDs(t *testing.T, e *Env) {
	e.Zone("lab", "10.9.0.0/16", false)
	a := e.MustRegister(store.DefaultZone, "a")
	b := e.MustRegister(store.DefaultZone, "b")
	c := e.MustRegister("lab", "c")
	d := e.MustRegister(store.DefaultZone, "d")
	require.NoError(t, e.S.DeleteDevice(e.Ctx, d.ID))

	want := []string{a.ID, b.ID}
	slices.Sort(want)
	got, err := e.S.ZoneDeviceIDs(e.Ctx, store.DefaultZone, []string{b.ID, "dev_unknown", c.ID, a.ID, d.ID, b.ID, "", "x'); DROP TABLE devices; --"})
	require.NoError(t, err)
	require.Equal(t, want, got)
	got, err = e.S.ZoneDeviceIDs(e.Ctx, "lab", []string{a.ID, c.ID})
	require.NoError(t, err)
	require.Equal(t, []string{c.ID}, got)
	got, err = e.S.ZoneDeviceIDs(e.Ctx, "nozone", []string{a.ID})
	require.NoError(t, err)
	require.Empty(t, got)
	got, err = e.S.ZoneDeviceIDs(e.Ctx, store.DefaultZone, nil)
	require.NoError(t, err)
	require.Empty(t, got)

	many := make([]string, store.MaxZoneDeviceIDs)
	for i := range many {
		many[i] = fmt.Sprintf("dev_%016x", i)
	}
	many[len(many)-1] = a.ID
	got, err = e.S.ZoneDeviceIDs(e.Ctx, store.DefaultZone, many)
	require.NoError(t, err)
	require.Equal(t, []string{a.ID}, got)
	_, err = e.S.ZoneDeviceIDs(e.Ctx, store.DefaultZone, append(many, b.ID))
	require.Error(t, err, "more ids than a call takes")
}

// StatsRowsGoWithDevice checks, for a backend's own tests, that deleting
// or revoking a device deletes its report: rows counts the backend's
// stored reports directly (the store's reads cannot show one left behind).
func StatsRowsGoWithDevice(t *testing.T, e *Env, rows func() (int, error)) {
	a := e.MustRegister(store.DefaultZone, "a")
	b := e.MustRegister(store.DefaultZone, "b")
	c := e.MustRegister(store.DefaultZone, "c")
	for _, d := range []store.Device{a, b, c} {
		require.NoError(t, e.S.PutStats(e.Ctx, store.DeviceStats{DeviceID: d.ID, ReportedAt: Now}))
	}
	n, err := rows()
	require.NoError(t, err)
	require.Equal(t, 3, n)
	require.NoError(t, e.S.DeleteDevice(e.Ctx, a.ID))
	n, err = rows()
	require.NoError(t, err)
	require.Equal(t, 2, n, "a deleted device's report is deleted")
	require.NoError(t, e.S.RevokeDevice(e.Ctx, b.ID, Now))
	n, err = rows()
	require.NoError(t, err)
	require.Equal(t, 1, n, "a revoked device's report is deleted")
}
