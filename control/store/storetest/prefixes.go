package storetest

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/store"
	"github.com/wiremesh/wiremesh/ipam"
)

func testPrefixConflicts(t *testing.T, e *Env) {
	holder := e.MustRegister(store.DefaultZone, "node1", "172.24.0.0/24", "fd42:1::/48")
	v6pool := ipam.ULAPool(store.DefaultZone)
	tests := []struct {
		name     string
		prefix   string
		existing string // "" = no conflict
		owner    string
	}{
		{"equal", "172.24.0.0/24", "172.24.0.0/24", "node1"},
		{"inside", "172.24.0.128/25", "172.24.0.0/24", "node1"},
		{"single address inside", "172.24.0.7/32", "172.24.0.0/24", "node1"},
		{"containing", "172.16.0.0/12", "172.24.0.0/24", "node1"},
		{"adjacent below", "172.23.255.0/24", "", ""},
		{"adjacent above", "172.24.1.0/24", "", ""},
		{"IPv6 inside", "fd42:1:0:2::/64", "fd42:1::/48", "node1"},
		{"IPv6 just outside", "fd42:1:2::/64", "", ""},
		{"IPv6 containing", "fd42:1::/32", "fd42:1::/48", "node1"},
		{"IPv6 disjoint", "fd42:2::/48", "", ""},
		{"IPv4 pool inside", "100.64.3.0/24", "100.64.0.0/16", ipam.TunnelPoolOwner},
		{"IPv4 pool containing", "100.64.0.0/12", "100.64.0.0/16", ipam.TunnelPoolOwner},
		{"IPv6 pool", v6pool.String(), v6pool.String(), ipam.TunnelPoolOwner},
		{"IPv6 inside pool", netip.PrefixFrom(v6pool.Addr(), 96).String(), v6pool.String(), ipam.TunnelPoolOwner},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := e.Rev()
			d, _, err := e.Register(store.RegisterParams{Zone: store.DefaultZone,
				JoinTokenHash: e.Token(store.DefaultZone, true), Hostname: "node2",
				Prefixes: []netip.Prefix{P(tt.prefix)}})
			if tt.existing == "" {
				require.NoError(t, err)
				require.Equal(t, []netip.Prefix{P(tt.prefix)}, d.Prefixes)
				// Free it again for the other cases.
				require.NoError(t, e.S.DeleteDevice(e.Ctx, d.ID))
				return
			}
			require.ErrorIs(t, err, store.ErrPrefixConflict)
			var ce *store.ConflictError
			require.ErrorAs(t, err, &ce)
			require.Equal(t, P(tt.prefix), ce.Prefix)
			require.Equal(t, P(tt.existing), ce.Existing)
			require.Equal(t, tt.owner, ce.Owner)
			if tt.owner == ipam.TunnelPoolOwner || tt.owner == ipam.SameDeviceOwner {
				require.Empty(t, ce.OwnerID)
			} else {
				require.Equal(t, holder.ID, ce.OwnerID)
			}
			require.Equal(t, before, e.Rev())
		})
	}

	// The holder itself re-adding its prefix is fine.
	again, err := e.S.UpdateDevice(e.Ctx, holder.ID, store.UpdateParams{
		AddPrefixes: []netip.Prefix{P("172.24.0.0/24")}})
	require.NoError(t, err)
	require.Equal(t, []netip.Prefix{P("172.24.0.0/24"), P("fd42:1::/48")}, again.Prefixes)
}

// testPrefixRules checks that the store applies ipam.CheckPrefixes under
// the zone's policy, at registration and at update alike, and changes
// nothing when it refuses.
func testPrefixRules(t *testing.T, e *Env) {
	require.NoError(t, e.S.CreateZone(e.Ctx, store.Zone{Name: "tight", IPv4Pool: P("192.168.50.0/24"),
		IPv6Pool: ipam.ULAPool("tight"), MinPrefixBits4: 8, MinPrefixBits6: 48, MaxPrefixes: 2}))
	d := e.MustRegister("tight", "a", "10.0.0.0/8")
	tests := []struct {
		name  string
		zone  string
		held  []string // registered first, in its own device
		add   []string
		want  error
		owner string // for a conflict
	}{
		{"too wide by default", store.DefaultZone, nil, []string{"1.0.0.0/8"}, ipam.ErrPrefixTooWide, ""},
		{"too wide v6 by default", store.DefaultZone, nil, []string{"2000::/3"}, ipam.ErrPrefixTooWide, ""},
		{"too wide for the zone", "tight", nil, []string{"fd00:1::/32"}, ipam.ErrPrefixTooWide, ""},
		{"invalid", store.DefaultZone, nil, []string{"127.0.0.0/8"}, ipam.ErrInvalidPrefix, ""},
		{"own overlap at once", store.DefaultZone, nil, []string{"10.77.0.0/16", "10.77.1.0/24"}, store.ErrPrefixConflict, ipam.SameDeviceOwner},
		{"own overlap later", store.DefaultZone, []string{"10.78.0.0/16"}, []string{"10.78.1.0/24"}, store.ErrPrefixConflict, ipam.SameDeviceOwner},
		{"over the zone's count", "tight", []string{"172.24.0.0/24"}, []string{"172.25.0.0/24", "172.26.0.0/24"}, ipam.ErrTooManyPrefixes, ""},
		{"another device", "tight", nil, []string{"10.1.0.0/16"}, store.ErrPrefixConflict, "a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			add := make([]netip.Prefix, 0, len(tt.add))
			for _, s := range tt.add {
				add = append(add, P(s))
			}
			// At registration.
			before := e.Rev()
			_, _, err := e.Register(store.RegisterParams{Zone: tt.zone, JoinTokenHash: e.Token(tt.zone, true),
				Hostname: "r", Prefixes: append(ps(tt.held), add...)})
			if len(tt.held) == 0 {
				requireRule(t, err, tt.want, tt.owner)
				require.Equal(t, before, e.Rev())
			}
			// At update, of a device holding tt.held.
			u := e.MustRegister(tt.zone, "u", tt.held...)
			before = e.Rev()
			_, err = e.S.UpdateDevice(e.Ctx, u.ID, store.UpdateParams{AddPrefixes: add})
			requireRule(t, err, tt.want, tt.owner)
			require.Equal(t, before, e.Rev())
			got, err := e.S.Device(e.Ctx, u.ID)
			require.NoError(t, err)
			require.Equal(t, u.Prefixes, got.Prefixes)
			require.NoError(t, e.S.DeleteDevice(e.Ctx, u.ID))
		})
	}
	// Within the limits all is well, and the count counts what is held.
	more, err := e.S.UpdateDevice(e.Ctx, d.ID, store.UpdateParams{AddPrefixes: []netip.Prefix{P("fd00:1::/48")}})
	require.NoError(t, err)
	require.Len(t, more.Prefixes, 2)
	_, err = e.S.UpdateDevice(e.Ctx, d.ID, store.UpdateParams{AddPrefixes: []netip.Prefix{P("172.24.0.0/24")}})
	require.ErrorIs(t, err, ipam.ErrTooManyPrefixes)
}

func ps(ss []string) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ss))
	for _, s := range ss {
		out = append(out, P(s))
	}
	return out
}

func requireRule(t *testing.T, err, want error, owner string) {
	t.Helper()
	require.ErrorIs(t, err, want)
	if owner != "" {
		var ce *store.ConflictError
		require.ErrorAs(t, err, &ce)
		require.Equal(t, owner, ce.Owner)
	}
}

func testPrefixesAcrossZones(t *testing.T, e *Env) {
	e.Zone("lab", "100.64.0.0/16", false) // zones may even share pools
	a := e.MustRegister(store.DefaultZone, "a", "172.24.0.0/24")
	b := e.MustRegister("lab", "b", "172.24.0.0/24")
	require.Equal(t, a.IPv4, b.IPv4, "zones allocate independently")
	ps, err := e.S.Prefixes(e.Ctx, "")
	require.NoError(t, err)
	require.Len(t, ps, 2)
	ps, err = e.S.Prefixes(e.Ctx, "lab")
	require.NoError(t, err)
	require.Equal(t, []store.PrefixEntry{{Zone: "lab", Prefix: P("172.24.0.0/24"), DeviceID: b.ID, Hostname: "b"}}, ps)
	_, err = e.S.Prefixes(e.Ctx, "nope")
	require.ErrorIs(t, err, store.ErrNotFound)
	// Releasing in one zone leaves the other alone.
	require.NoError(t, e.S.ReleasePrefix(e.Ctx, "lab", P("172.24.0.0/24"), ""))
	ps, err = e.S.Prefixes(e.Ctx, "")
	require.NoError(t, err)
	require.Equal(t, []store.PrefixEntry{{Zone: store.DefaultZone, Prefix: P("172.24.0.0/24"), DeviceID: a.ID, Hostname: "a"}}, ps)
}

func testExitNodes(t *testing.T, e *Env) {
	e.Zone("exits", "10.50.0.0/24", true)
	lab := e.MustRegister("exits", "lab", "172.24.0.0/24")
	exit := e.MustRegister("exits", "exit", "0.0.0.0/0", "::/0")
	require.Equal(t, []netip.Prefix{P("0.0.0.0/0"), P("::/0")}, exit.Prefixes)
	// Child prefixes may still be added under an exit route.
	more, err := e.S.UpdateDevice(e.Ctx, lab.ID, store.UpdateParams{AddPrefixes: []netip.Prefix{P("172.25.0.0/24")}})
	require.NoError(t, err)
	require.Len(t, more.Prefixes, 2)
	// A second exit route of the same family conflicts.
	_, _, err = e.Register(store.RegisterParams{Zone: "exits", JoinTokenHash: e.Token("exits", true),
		Hostname: "exit2", Prefixes: []netip.Prefix{P("0.0.0.0/0")}})
	var ce *store.ConflictError
	require.ErrorAs(t, err, &ce)
	require.Equal(t, exit.ID, ce.OwnerID)

	// A zone without exit nodes refuses a default route.
	_, _, err = e.Register(store.RegisterParams{Zone: store.DefaultZone, JoinTokenHash: e.Token(store.DefaultZone, true),
		Hostname: "exit", Prefixes: []netip.Prefix{P("0.0.0.0/0")}})
	require.Error(t, err)
	ds, err := e.S.Devices(e.Ctx, store.DefaultZone)
	require.NoError(t, err)
	require.Empty(t, ds)
}

func testReleasePrefix(t *testing.T, e *Env) {
	a := e.MustRegister(store.DefaultZone, "a", "172.24.0.0/24", "10.1.0.0/16")
	b := e.MustRegister(store.DefaultZone, "b", "172.28.0.0/24")
	tests := []struct {
		name     string
		zone     string
		prefix   string
		deviceID string
	}{
		{"unknown prefix", store.DefaultZone, "172.30.0.0/24", ""},
		{"inside a held prefix", store.DefaultZone, "172.24.0.0/25", ""},
		{"other device", store.DefaultZone, "172.24.0.0/24", b.ID},
		{"other zone", "nope", "172.24.0.0/24", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := e.Rev()
			err := e.S.ReleasePrefix(e.Ctx, tt.zone, P(tt.prefix), tt.deviceID)
			require.ErrorIs(t, err, store.ErrNotFound)
			require.Equal(t, before, e.Rev())
		})
	}

	rev := e.Rev()
	require.NoError(t, e.S.ReleasePrefix(e.Ctx, store.DefaultZone, P("172.24.0.0/24"), a.ID))
	require.NoError(t, e.S.ReleasePrefix(e.Ctx, store.DefaultZone, P("10.1.0.0/16"), ""))
	got, err := e.S.Device(e.Ctx, a.ID)
	require.NoError(t, err)
	require.Empty(t, got.Prefixes)
	cs, _, err := e.S.Changes(e.Ctx, store.DefaultZone, rev)
	require.NoError(t, err)
	require.Len(t, cs, 2)
	require.Equal(t, store.ChangeUpsert, cs[0].Kind)
	require.Equal(t, []netip.Prefix{P("10.1.0.0/16")}, cs[0].Device.Prefixes)
	require.Empty(t, cs[1].Device.Prefixes)
	// Another device can take the released prefix now.
	took, err := e.S.UpdateDevice(e.Ctx, b.ID, store.UpdateParams{AddPrefixes: []netip.Prefix{P("172.24.0.0/16")}})
	require.NoError(t, err)
	require.Contains(t, took.Prefixes, P("172.24.0.0/16"))
}

func testListings(t *testing.T, e *Env) {
	e.Zone("lab", "10.99.0.0/24", false)
	tok := e.Token(store.DefaultZone, true)
	var ids []string
	for _, req := range []string{"100.64.0.30", "100.64.0.4", "100.64.1.2"} {
		d, _, err := e.Register(store.RegisterParams{Zone: store.DefaultZone, JoinTokenHash: tok,
			Hostname: req, RequestedIPv4: A(req), Prefixes: prefixFor(req)})
		require.NoError(t, err)
		ids = append(ids, d.ID)
	}
	lab := e.MustRegister("lab", "lab")
	ds, err := e.S.Devices(e.Ctx, store.DefaultZone)
	require.NoError(t, err)
	var got, gotIDs []string
	for _, d := range ds {
		got = append(got, d.IPv4.String())
		gotIDs = append(gotIDs, d.ID)
		require.Equal(t, prefixFor(d.Hostname)[0], d.Prefixes[len(d.Prefixes)-1])
	}
	require.Equal(t, []string{"100.64.0.4", "100.64.0.30", "100.64.1.2"}, got, "ordered by IPv4")
	require.Equal(t, []string{ids[1], ids[0], ids[2]}, gotIDs, "the devices registered, no others")

	all, err := e.S.Devices(e.Ctx, "")
	require.NoError(t, err)
	require.Len(t, all, 4)
	require.Equal(t, lab.ID, all[0].ID, "10.99.0.1 sorts first")
	_, err = e.S.Devices(e.Ctx, "nope")
	require.ErrorIs(t, err, store.ErrNotFound)

	ps, err := e.S.Prefixes(e.Ctx, store.DefaultZone)
	require.NoError(t, err)
	var pp []string
	for _, p := range ps {
		pp = append(pp, p.Prefix.String())
		require.Equal(t, store.DefaultZone, p.Zone)
		require.NotEmpty(t, p.DeviceID)
	}
	require.Equal(t, []string{"10.0.0.0/24", "10.0.4.0/24", "10.1.2.0/24", "fd30::/64"}, pp, "address order")
	byID := map[string]string{}
	for _, p := range ps {
		byID[p.Prefix.String()] = p.Hostname
	}
	require.Equal(t, "100.64.0.30", byID["fd30::/64"])
	require.Equal(t, "100.64.0.4", byID["10.0.4.0/24"])
}

// prefixFor gives each listing device distinct prefixes.
func prefixFor(req string) []netip.Prefix {
	switch req {
	case "100.64.0.30":
		return []netip.Prefix{P("fd30::/64")}
	case "100.64.0.4":
		return []netip.Prefix{P("10.0.4.0/24")}
	}
	return []netip.Prefix{P("10.1.2.0/24"), P("10.0.0.0/24")}
}
