package storetest

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/control/store"
)

// testCandidates: typed candidates and the NAT kind are kept, appear in
// the change log, an update repeating them records nothing, a bad one is
// refused (no address or no type), and registering again clears them.
func testCandidates(t *testing.T, e *Env) {
	d := e.MustRegister(api.DefaultZone, "a")
	cands := []store.Candidate{
		{Addr: netip.MustParseAddrPort("10.0.0.2:51820"), Type: "local"},
		{Addr: netip.MustParseAddrPort("198.51.100.7:40000"), Type: "reflexive"},
	}
	nat := "endpoint-independent"
	rev := e.Rev()
	got, err := e.S.UpdateDevice(e.Ctx, d.ID, store.UpdateParams{Candidates: &cands, NAT: &nat})
	require.NoError(t, err)
	require.Equal(t, cands, got.Candidates)
	require.Equal(t, nat, got.NAT)
	stored, err := e.S.Device(e.Ctx, d.ID)
	require.NoError(t, err)
	require.Equal(t, cands, stored.Candidates)
	require.Equal(t, nat, stored.NAT)
	cs, _, err := e.S.Changes(e.Ctx, api.DefaultZone, rev)
	require.NoError(t, err)
	require.Len(t, cs, 1)
	require.Equal(t, cands, cs[0].Device.Candidates)
	require.Equal(t, nat, cs[0].Device.NAT)
	_, ds, err := e.S.Snapshot(e.Ctx, api.DefaultZone)
	require.NoError(t, err)
	require.Equal(t, cands, ds[0].Candidates)

	rev = e.Rev()
	_, err = e.S.UpdateDevice(e.Ctx, d.ID, store.UpdateParams{Candidates: &cands, NAT: &nat})
	require.NoError(t, err)
	require.Equal(t, rev, e.Rev(), "the same candidates again record no change")

	for _, bad := range [][]store.Candidate{{{Type: "local"}}, {{Addr: netip.MustParseAddrPort("10.0.0.2:1")}}} {
		_, err = e.S.UpdateDevice(e.Ctx, d.ID, store.UpdateParams{Candidates: &bad})
		require.Error(t, err, "%v", bad)
	}
	stored, err = e.S.Device(e.Ctx, d.ID)
	require.NoError(t, err)
	require.Equal(t, cands, stored.Candidates, "a refused update changes nothing")
	require.Equal(t, rev, e.Rev())

	again, _, err := e.Register(store.RegisterParams{Zone: api.DefaultZone, JoinTokenHash: e.Token(api.DefaultZone, false),
		DeviceTokenHash: RandomHash(), PublicKey: d.PublicKey, Hostname: "a"})
	require.NoError(t, err)
	require.Empty(t, again.Candidates, "a registration reports afresh")
	require.Empty(t, again.NAT)
}
