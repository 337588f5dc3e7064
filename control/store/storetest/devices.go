package storetest

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/store"
	"github.com/wiremesh/wiremesh/ipam"
)

// ConcurrentRegistrations is how many registrations testRegisterConcurrent
// runs at once.
const ConcurrentRegistrations = 200

func testAllocLowestFree(t *testing.T, e *Env) {
	v6 := ipam.ULAPool(store.DefaultZone).Addr()
	var ds []store.Device
	for i := range 3 {
		d := e.MustRegister(store.DefaultZone, fmt.Sprintf("h%d", i))
		require.Equal(t, A(fmt.Sprintf("100.64.0.%d", i+1)), d.IPv4)
		require.Equal(t, nthAddr(v6, i+1), d.IPv6, "IPv6 pairs with IPv4")
		require.Regexp(t, `^dev_[0-9a-f]{16}$`, d.ID)
		ds = append(ds, d)
	}
	require.NoError(t, e.S.DeleteDevice(e.Ctx, ds[1].ID))
	d := e.MustRegister(store.DefaultZone, "again")
	require.Equal(t, ds[1].IPv4, d.IPv4, "freed address is the lowest free")
	require.Equal(t, ds[1].IPv6, d.IPv6)
	d = e.MustRegister(store.DefaultZone, "next")
	require.Equal(t, A("100.64.0.4"), d.IPv4)
}

// nthAddr returns base + n (n small).
func nthAddr(base netip.Addr, n int) netip.Addr {
	for range n {
		base = base.Next()
	}
	return base
}

func testRegisterSameKey(t *testing.T, e *Env) {
	key := Key()
	tok := e.Token(store.DefaultZone, true)
	dt1, dt2 := RandomHash(), RandomHash()
	ep1 := []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:51820")}
	ep2 := []netip.AddrPort{netip.MustParseAddrPort("192.0.2.2:51821")}
	e.MustRegister(store.DefaultZone, "other") // takes .1
	first, created, err := e.Register(store.RegisterParams{Zone: store.DefaultZone, JoinTokenHash: tok,
		DeviceTokenHash: dt1, PublicKey: key, Hostname: "one", Endpoints: ep1,
		Prefixes: []netip.Prefix{P("172.24.0.0/24")}})
	require.NoError(t, err)
	require.True(t, created)
	require.Equal(t, A("100.64.0.2"), first.IPv4)
	require.Equal(t, key, first.PublicKey)
	require.Equal(t, ep1, first.Endpoints)
	require.Equal(t, uint64(1), first.Generation)

	again, created, err := e.Register(store.RegisterParams{Zone: store.DefaultZone, JoinTokenHash: tok,
		DeviceTokenHash: dt2, PublicKey: key, Hostname: "two", Endpoints: ep2,
		Prefixes:      []netip.Prefix{P("172.28.0.0/24"), P("172.24.0.0/24")},
		RequestedIPv4: A("100.64.0.9"), Now: Now.Add(time.Minute)})
	require.NoError(t, err)
	require.False(t, created)
	require.Equal(t, first.ID, again.ID)
	require.Equal(t, first.IPv4, again.IPv4, "requested address ignored on re-registration")
	require.Equal(t, first.IPv6, again.IPv6)
	require.Equal(t, []netip.Prefix{P("172.24.0.0/24"), P("172.28.0.0/24")}, again.Prefixes)
	require.Equal(t, "two", again.Hostname)
	require.Equal(t, ep2, again.Endpoints)
	require.True(t, again.CreatedAt.Equal(first.CreatedAt))
	require.True(t, again.UpdatedAt.Equal(Now.Add(time.Minute)))
	require.Equal(t, uint64(2), again.Generation, "each registration is a new generation")

	// Prefixes are never dropped by a registration that omits them.
	third, _, err := e.Register(store.RegisterParams{Zone: store.DefaultZone, JoinTokenHash: tok,
		PublicKey: key, Hostname: "two"})
	require.NoError(t, err)
	require.Equal(t, again.Prefixes, third.Prefixes)
	require.Equal(t, uint64(3), third.Generation)
	stored, err := e.S.Device(e.Ctx, first.ID)
	require.NoError(t, err)
	require.Equal(t, uint64(3), stored.Generation)

	for _, h := range [][32]byte{dt1, dt2} {
		d, err := e.S.DeviceByToken(e.Ctx, h)
		require.NoError(t, err)
		require.Equal(t, first.ID, d.ID)
	}
	_, err = e.S.DeviceByToken(e.Ctx, RandomHash())
	require.ErrorIs(t, err, store.ErrNotFound)

	// The same key in another zone is another device.
	e.Zone("lab", "10.99.0.0/24", false)
	labDev, created, err := e.Register(store.RegisterParams{Zone: "lab", JoinTokenHash: e.Token("lab", false),
		PublicKey: key, Hostname: "lab"})
	require.NoError(t, err)
	require.True(t, created)
	require.NotEqual(t, first.ID, labDev.ID)
	require.Equal(t, A("10.99.0.1"), labDev.IPv4)
}

func testRequestedIPv4(t *testing.T, e *Env) {
	e.Zone("small", "10.9.0.0/29", false) // hosts .1 to .6
	tok := e.Token("small", true)
	tests := []struct {
		name    string
		req     string
		want    string
		wantErr error
	}{
		{"free", "10.9.0.5", "10.9.0.5", nil},
		{"in use", "10.9.0.5", "", store.ErrAddrInUse},
		{"lowest free skips nothing", "", "10.9.0.1", nil},
		{"network address", "10.9.0.0", "", store.ErrAddrOutside},
		{"broadcast address", "10.9.0.7", "", store.ErrAddrOutside},
		{"outside", "10.9.1.1", "", store.ErrAddrOutside},
		{"IPv6", "fd00::1", "", store.ErrAddrOutside},
		{"last host", "10.9.0.6", "10.9.0.6", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := store.RegisterParams{Zone: "small", JoinTokenHash: tok, Hostname: tt.name}
			if tt.req != "" {
				p.RequestedIPv4 = A(tt.req)
			}
			before := e.Rev()
			d, _, err := e.Register(p)
			if tt.wantErr != nil {
				require.ErrorIs(t, err, tt.wantErr)
				require.Equal(t, before, e.Rev())
				return
			}
			require.NoError(t, err)
			require.Equal(t, A(tt.want), d.IPv4)
		})
	}
}

func testPoolExhausted(t *testing.T, e *Env) {
	e.Zone("tiny", "10.8.0.0/30", false) // two hosts
	single := e.Token("tiny", false)
	a := e.MustRegister("tiny", "a")
	e.MustRegister("tiny", "b")
	start := time.Now()
	_, _, err := e.Register(store.RegisterParams{Zone: "tiny", JoinTokenHash: single, Hostname: "c"})
	require.ErrorIs(t, err, store.ErrPoolExhausted)
	require.Less(t, time.Since(start), 5*time.Second, "exhaustion must be prompt")
	ds, err := e.S.Devices(e.Ctx, "tiny")
	require.NoError(t, err)
	require.Len(t, ds, 2)

	// The single-use token was not consumed by the failed registration.
	require.NoError(t, e.S.DeleteDevice(e.Ctx, a.ID))
	d, _, err := e.Register(store.RegisterParams{Zone: "tiny", JoinTokenHash: single, Hostname: "c"})
	require.NoError(t, err)
	require.Equal(t, A("10.8.0.1"), d.IPv4)
}

func testRegisterAtomic(t *testing.T, e *Env) {
	e.MustRegister(store.DefaultZone, "holder", "172.24.0.0/24")
	single := e.Token(store.DefaultZone, false)
	devTok := RandomHash()
	before := e.Rev()
	_, _, err := e.Register(store.RegisterParams{Zone: store.DefaultZone, JoinTokenHash: single,
		DeviceTokenHash: devTok, Hostname: "bad",
		Prefixes: []netip.Prefix{P("10.20.0.0/16"), P("172.24.0.128/25")}})
	require.ErrorIs(t, err, store.ErrPrefixConflict)

	ds, err := e.S.Devices(e.Ctx, store.DefaultZone)
	require.NoError(t, err)
	require.Len(t, ds, 1, "no device was created")
	ps, err := e.S.Prefixes(e.Ctx, store.DefaultZone)
	require.NoError(t, err)
	require.Len(t, ps, 1, "the good prefix was not kept")
	_, err = e.S.DeviceByToken(e.Ctx, devTok)
	require.ErrorIs(t, err, store.ErrNotFound, "no device token was stored")
	cs, rev, err := e.S.Changes(e.Ctx, store.DefaultZone, before)
	require.NoError(t, err)
	require.Empty(t, cs, "no change entry")
	require.Equal(t, before, rev)
	ts, err := e.S.JoinTokens(e.Ctx, store.DefaultZone)
	require.NoError(t, err)
	for _, tk := range ts {
		if tk.Hash == single {
			require.True(t, tk.UsedAt.IsZero(), "single-use token was not consumed")
		}
	}
	// The token still works, and so does the good prefix.
	d, _, err := e.Register(store.RegisterParams{Zone: store.DefaultZone, JoinTokenHash: single,
		Hostname: "good", Prefixes: []netip.Prefix{P("10.20.0.0/16")}})
	require.NoError(t, err)
	require.Equal(t, []netip.Prefix{P("10.20.0.0/16")}, d.Prefixes)
}

func testRegisterConcurrent(t *testing.T, e *Env) {
	tok := e.Token(store.DefaultZone, true)
	n := ConcurrentRegistrations
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		devs []store.Device
		errs []error
	)
	start := time.Now()
	for i := range n {
		wg.Go(func() {
			d, created, err := e.Register(store.RegisterParams{Zone: store.DefaultZone, JoinTokenHash: tok,
				Hostname: fmt.Sprintf("c%03d", i)})
			mu.Lock()
			defer mu.Unlock()
			if err == nil && !created {
				err = fmt.Errorf("c%03d: not created", i)
			}
			if err != nil {
				errs = append(errs, err)
				return
			}
			devs = append(devs, d)
		})
	}
	wg.Wait()
	t.Logf("%d concurrent registrations took %v", n, time.Since(start))
	require.Empty(t, errs)
	v4 := map[netip.Addr]bool{}
	v6 := map[netip.Addr]bool{}
	ids := map[string]bool{}
	for _, d := range devs {
		v4[d.IPv4], v6[d.IPv6], ids[d.ID] = true, true, true
		i4, ok := mustPool(t, P("100.64.0.0/16")).Index(d.IPv4)
		require.True(t, ok)
		i6, ok := mustPool(t, ipam.ULAPool(store.DefaultZone)).Index(d.IPv6)
		require.True(t, ok)
		require.Equal(t, i4, i6, "IPv4 and IPv6 share the host index")
		require.LessOrEqual(t, i4, uint64(n), "lowest free: no holes")
	}
	require.Len(t, v4, n)
	require.Len(t, v6, n)
	require.Len(t, ids, n)
	cs, _, err := e.S.Changes(e.Ctx, store.DefaultZone, 0)
	require.NoError(t, err)
	require.Len(t, cs, n)
}

func mustPool(t *testing.T, p netip.Prefix) *ipam.Pool {
	pool, err := ipam.NewPool(p)
	require.NoError(t, err)
	return pool
}

func testUpdateDevice(t *testing.T, e *Env) {
	d := e.MustRegister(store.DefaultZone, "a", "172.24.0.0/24")
	e.MustRegister(store.DefaultZone, "b", "172.28.0.0/24")
	rev := e.Rev()
	host := "renamed"
	eps := []netip.AddrPort{netip.MustParseAddrPort("[2001:db8::1]:51820")}
	later := Now.Add(time.Hour)
	got, err := e.S.UpdateDevice(e.Ctx, d.ID, store.UpdateParams{Hostname: &host, Endpoints: &eps,
		AddPrefixes: []netip.Prefix{P("10.30.0.0/16")}, Now: later})
	require.NoError(t, err)
	require.Equal(t, "renamed", got.Hostname)
	require.Equal(t, eps, got.Endpoints)
	require.Equal(t, []netip.Prefix{P("10.30.0.0/16"), P("172.24.0.0/24")}, got.Prefixes)
	require.True(t, got.UpdatedAt.Equal(later))
	require.Equal(t, d.IPv4, got.IPv4)
	stored, err := e.S.Device(e.Ctx, d.ID)
	require.NoError(t, err)
	require.Equal(t, got.Prefixes, stored.Prefixes)
	require.Equal(t, "renamed", stored.Hostname)
	require.Equal(t, d.Generation, stored.Generation, "an update is not a registration")

	cs, _, err := e.S.Changes(e.Ctx, store.DefaultZone, rev)
	require.NoError(t, err)
	require.Len(t, cs, 1)
	require.Equal(t, store.ChangeUpsert, cs[0].Kind)
	require.Equal(t, "renamed", cs[0].Device.Hostname)
	require.Equal(t, got.Prefixes, cs[0].Device.Prefixes)

	// A conflicting prefix changes nothing, not even the hostname.
	rev = e.Rev()
	other := "other"
	_, err = e.S.UpdateDevice(e.Ctx, d.ID, store.UpdateParams{Hostname: &other,
		AddPrefixes: []netip.Prefix{P("10.40.0.0/16"), P("172.28.0.0/16")}})
	var ce *store.ConflictError
	require.ErrorAs(t, err, &ce)
	require.Equal(t, "b", ce.Owner)
	stored, err = e.S.Device(e.Ctx, d.ID)
	require.NoError(t, err)
	require.Equal(t, "renamed", stored.Hostname)
	require.Equal(t, got.Prefixes, stored.Prefixes)
	require.Equal(t, rev, e.Rev())

	_, err = e.S.UpdateDevice(e.Ctx, "dev_unknown", store.UpdateParams{Hostname: &host})
	require.ErrorIs(t, err, store.ErrNotFound)
}

func testDeleteDevice(t *testing.T, e *Env) {
	devTok := RandomHash()
	d, _, err := e.Register(store.RegisterParams{Zone: store.DefaultZone, JoinTokenHash: e.Token(store.DefaultZone, true),
		DeviceTokenHash: devTok, Hostname: "gone", Prefixes: []netip.Prefix{P("172.24.0.0/24")}})
	require.NoError(t, err)
	rev := e.Rev()
	require.NoError(t, e.S.DeleteDevice(e.Ctx, d.ID))
	require.ErrorIs(t, e.S.DeleteDevice(e.Ctx, d.ID), store.ErrNotFound)
	_, err = e.S.Device(e.Ctx, d.ID)
	require.ErrorIs(t, err, store.ErrNotFound)
	_, err = e.S.DeviceByToken(e.Ctx, devTok)
	require.ErrorIs(t, err, store.ErrNotFound)
	ps, err := e.S.Prefixes(e.Ctx, "")
	require.NoError(t, err)
	require.Empty(t, ps)

	cs, _, err := e.S.Changes(e.Ctx, store.DefaultZone, rev)
	require.NoError(t, err)
	require.Len(t, cs, 1)
	require.Equal(t, store.ChangeRemove, cs[0].Kind)
	require.Equal(t, d.ID, cs[0].Device.ID)
	require.Equal(t, d.Prefixes, cs[0].Device.Prefixes, "remove carries the last state")

	// The prefix is free again.
	e.MustRegister(store.DefaultZone, "new", "172.24.0.0/24")
}

func testContextCanceled(t *testing.T, e *Env) {
	tok := e.Token(store.DefaultZone, false)
	ctx, cancel := context.WithCancel(e.Ctx)
	cancel()
	before := e.Rev()
	_, _, err := e.S.Register(ctx, store.RegisterParams{Zone: store.DefaultZone, JoinTokenHash: tok,
		DeviceTokenHash: RandomHash(), PublicKey: Key(), Hostname: "x", Now: Now})
	require.ErrorIs(t, err, context.Canceled)
	_, err = e.S.Zone(ctx, store.DefaultZone)
	require.ErrorIs(t, err, context.Canceled)
	_, err = e.S.Devices(ctx, store.DefaultZone)
	require.ErrorIs(t, err, context.Canceled)
	_, _, err = e.S.Snapshot(ctx, store.DefaultZone)
	require.ErrorIs(t, err, context.Canceled)
	require.ErrorIs(t, e.S.CreateZone(ctx, store.Zone{Name: "c", IPv4Pool: P("10.0.0.0/24"),
		IPv6Pool: ipam.ULAPool("c")}), context.Canceled)
	require.Equal(t, before, e.Rev())
	// Nothing was consumed: the single-use token still works.
	e.MustRegister(store.DefaultZone, "after") // uses its own token
	_, _, err = e.Register(store.RegisterParams{Zone: store.DefaultZone, JoinTokenHash: tok, Hostname: "y"})
	require.NoError(t, err)
}

func testClosed(t *testing.T, e *Env) {
	require.NoError(t, e.S.Close())
	require.ErrorIs(t, e.S.Close(), store.ErrClosed)
	_, err := e.S.Zone(e.Ctx, store.DefaultZone)
	require.ErrorIs(t, err, store.ErrClosed)
	_, _, err = e.Register(store.RegisterParams{Zone: store.DefaultZone, JoinTokenHash: RandomHash(), Hostname: "x"})
	require.ErrorIs(t, err, store.ErrClosed)
	_, _, err = e.S.Changes(e.Ctx, store.DefaultZone, 0)
	require.ErrorIs(t, err, store.ErrClosed)
	require.ErrorIs(t, e.S.CreateZone(e.Ctx, store.Zone{Name: "c"}), store.ErrClosed)
}

// testRegisterProofReplay: a proof is accepted once while it is
// remembered, a failed registration does not record it, and an expired
// one is forgotten.
func testRegisterProofReplay(t *testing.T, e *Env) {
	tok := e.Token(store.DefaultZone, true)
	key := Key()
	proof := []byte("proof-1")
	p := store.RegisterParams{Zone: store.DefaultZone, JoinTokenHash: tok, PublicKey: key, Hostname: "h",
		Proof: proof, ProofExpires: Now.Add(5 * time.Minute), Now: Now}
	_, _, err := e.Register(p)
	require.NoError(t, err)
	_, _, err = e.Register(p)
	require.ErrorIs(t, err, store.ErrReplayed)

	// A registration that fails (prefix conflict with the pool) records nothing.
	failing := p
	failing.Proof = []byte("proof-2")
	failing.Prefixes = []netip.Prefix{P("100.64.1.0/24")}
	_, _, err = e.Register(failing)
	require.ErrorIs(t, err, store.ErrPrefixConflict)
	failing.Prefixes = nil
	_, _, err = e.Register(failing)
	require.NoError(t, err, "the failed attempt must not have recorded its proof")

	// After expiry the proof is forgotten.
	later := p
	later.Now = Now.Add(6 * time.Minute)
	later.ProofExpires = later.Now.Add(5 * time.Minute)
	_, _, err = e.Register(later)
	require.NoError(t, err)
}
