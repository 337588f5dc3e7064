// Package storetest is a conformance suite for store.Store
// implementations. Every implementation (SQLite, PostgreSQL, …) runs it:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) store.Store { return openFresh(t) })
//	}
package storetest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/store"
	"github.com/wiremesh/wiremesh/ipam"
)

// Open returns a new, empty store (holding only the zone "default") for one
// test. It should register its own cleanup with t.Cleanup and ignore the
// ErrClosed of closing a store the test closed already.
type Open func(t *testing.T) store.Store

// Run runs the whole conformance suite, one subtest per part of the
// Store contract, each against a fresh store from open.
func Run(t *testing.T, open Open) {
	tests := []struct {
		name string
		fn   func(t *testing.T, e *Env)
	}{
		{"DefaultZone", testDefaultZone},
		{"Zones", testZones},
		{"ZoneValidation", testZoneValidation},
		{"JoinTokens", testJoinTokens},
		{"RegisterTokenRules", testRegisterTokenRules},
		{"RegisterAllocatesLowestFree", testAllocLowestFree},
		{"RegisterSameKey", testRegisterSameKey},
		{"RegisterRequestedIPv4", testRequestedIPv4},
		{"RegisterPoolExhausted", testPoolExhausted},
		{"RegisterAtomic", testRegisterAtomic},
		{"RegisterProofReplay", testRegisterProofReplay},
		{"RecordProof", testRecordProof},
		{"RegisterConcurrent", testRegisterConcurrent},
		{"PrefixConflicts", testPrefixConflicts},
		{"PrefixRules", testPrefixRules},
		{"PrefixesAcrossZones", testPrefixesAcrossZones},
		{"ExitNodes", testExitNodes},
		{"UpdateDevice", testUpdateDevice},
		{"Candidates", testCandidates},
		{"DeleteDevice", testDeleteDevice},
		{"ReleasePrefix", testReleasePrefix},
		{"Listings", testListings},
		{"SnapshotAndChanges", testSnapshotAndChanges},
		{"Policy", testPolicy},
		{"Tags", testTags},
		{"Stats", testStats},
		{"ContextCanceled", testContextCanceled},
		{"Closed", testClosed},
	}
	tests = append(tests, identityTests...)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.fn(t, &Env{T: t, S: open(t), Ctx: t.Context()})
		})
	}
}

// Env is one subtest's store with helpers.
type Env struct {
	T   *testing.T
	S   store.Store
	Ctx context.Context
}

// Now is the registration time the helpers use.
var Now = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// Key returns a random public key.
func Key() store.Key {
	var k store.Key
	rand.Read(k[:])
	return k
}

// Hash returns the SHA-256 of s, as token hashes are stored.
func Hash(s string) [32]byte { return sha256.Sum256([]byte(s)) }

// RandomHash returns a random 32-byte hash.
func RandomHash() [32]byte {
	var h [32]byte
	rand.Read(h[:])
	return h
}

// P parses a prefix or panics.
func P(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// A parses an address or panics.
func A(s string) netip.Addr { return netip.MustParseAddr(s) }

// Zone creates a zone with the given IPv4 pool ("" = default) and returns it.
func (e *Env) Zone(name, v4 string, allowExit bool) store.Zone {
	e.T.Helper()
	z := store.Zone{Name: name, AllowExitNodes: allowExit, IPv6Pool: ipam.ULAPool(name)}
	if v4 != "" {
		z.IPv4Pool = P(v4)
	} else {
		z.IPv4Pool = ipam.DefaultIPv4PoolPrefix
	}
	require.NoError(e.T, e.S.CreateZone(e.Ctx, z))
	got, err := e.S.Zone(e.Ctx, name)
	require.NoError(e.T, err)
	return got
}

// Token creates a join token for zone and returns its hash.
func (e *Env) Token(zone string, reusable bool) [32]byte {
	e.T.Helper()
	return e.TokenExpiring(zone, reusable, time.Time{})
}

// TokenExpiring creates a join token with an expiry and returns its hash.
func (e *Env) TokenExpiring(zone string, reusable bool, expires time.Time) [32]byte {
	e.T.Helper()
	h := RandomHash()
	require.NoError(e.T, e.S.CreateJoinToken(e.Ctx, store.JoinToken{
		ID: store.NewJoinTokenID(), Hash: h, Zone: zone, Reusable: reusable, ExpiresAt: expires,
	}))
	return h
}

// Register registers with p, filling a random public key and device token
// hash and Now when they are zero.
func (e *Env) Register(p store.RegisterParams) (store.Device, bool, error) {
	if p.PublicKey.IsZero() {
		p.PublicKey = Key()
	}
	if p.DeviceTokenHash == ([32]byte{}) {
		p.DeviceTokenHash = RandomHash()
	}
	if p.Now.IsZero() {
		p.Now = Now
	}
	return e.S.Register(e.Ctx, p)
}

// MustRegister registers a new device in zone with a fresh reusable token
// and the given prefixes.
func (e *Env) MustRegister(zone, host string, prefixes ...string) store.Device {
	e.T.Helper()
	p := store.RegisterParams{Zone: zone, JoinTokenHash: e.Token(zone, true), Hostname: host}
	for _, s := range prefixes {
		p.Prefixes = append(p.Prefixes, P(s))
	}
	d, created, err := e.Register(p)
	require.NoError(e.T, err)
	require.True(e.T, created)
	return d
}

// Rev returns the store's current revision.
func (e *Env) Rev() int64 {
	e.T.Helper()
	_, rev, err := e.S.Changes(e.Ctx, store.DefaultZone, 0)
	if errors.Is(err, store.ErrCompacted) {
		rev, _, err = e.S.Snapshot(e.Ctx, store.DefaultZone)
	}
	require.NoError(e.T, err)
	return rev
}

func testDefaultZone(t *testing.T, e *Env) {
	z, err := e.S.Zone(e.Ctx, store.DefaultZone)
	require.NoError(t, err)
	require.Equal(t, store.DefaultZone, z.Name)
	require.Equal(t, P("100.64.0.0/16"), z.IPv4Pool)
	require.Equal(t, ipam.ULAPool(store.DefaultZone), z.IPv6Pool)
	require.False(t, z.AllowExitNodes)
	require.False(t, z.CreatedAt.IsZero())
}

func testZones(t *testing.T, e *Env) {
	created := time.Date(2026, 2, 3, 4, 5, 6, 7, time.UTC)
	want := store.Zone{Name: "lab", IPv4Pool: P("10.99.0.0/24"), IPv6Pool: ipam.ULAPool("lab"),
		AllowExitNodes: true, MinPrefixBits4: 8, MinPrefixBits6: 16, MaxPrefixes: 500, CreatedAt: created}
	require.NoError(t, e.S.CreateZone(e.Ctx, want))
	got, err := e.S.Zone(e.Ctx, "lab")
	require.NoError(t, err)
	require.True(t, got.CreatedAt.Equal(created), "created %v, want %v", got.CreatedAt, created)
	got.CreatedAt = created
	require.Equal(t, want, got)

	err = e.S.CreateZone(e.Ctx, store.Zone{Name: "lab", IPv4Pool: P("10.98.0.0/24"), IPv6Pool: ipam.ULAPool("x")})
	require.ErrorIs(t, err, store.ErrExists)

	_, err = e.S.Zone(e.Ctx, "nope")
	require.ErrorIs(t, err, store.ErrNotFound)

	e.Zone("alpha", "10.1.0.0/16", false)
	zs, err := e.S.Zones(e.Ctx)
	require.NoError(t, err)
	var names []string
	for _, z := range zs {
		names = append(names, z.Name)
	}
	require.Equal(t, []string{"alpha", store.DefaultZone, "lab"}, names)
}

func testZoneValidation(t *testing.T, e *Env) {
	tests := []struct {
		name string
		z    store.Zone
	}{
		{"empty name", store.Zone{IPv4Pool: P("10.0.0.0/24"), IPv6Pool: ipam.ULAPool("a")}},
		{"IPv6 as IPv4 pool", store.Zone{Name: "a", IPv4Pool: P("fd00::/64"), IPv6Pool: ipam.ULAPool("a")}},
		{"IPv4 as IPv6 pool", store.Zone{Name: "a", IPv4Pool: P("10.0.0.0/24"), IPv6Pool: P("10.1.0.0/24")}},
		{"host bits", store.Zone{Name: "a", IPv4Pool: P("10.0.0.1/24"), IPv6Pool: ipam.ULAPool("a")}},
		{"IPv4 pool too small", store.Zone{Name: "a", IPv4Pool: P("10.0.0.0/31"), IPv6Pool: ipam.ULAPool("a")}},
		{"loopback pool", store.Zone{Name: "a", IPv4Pool: P("127.0.0.0/16"), IPv6Pool: ipam.ULAPool("a")}},
		{"IPv4 limit", store.Zone{Name: "a", IPv4Pool: P("10.0.0.0/24"), IPv6Pool: ipam.ULAPool("a"), MinPrefixBits4: 33}},
		{"IPv6 limit", store.Zone{Name: "a", IPv4Pool: P("10.0.0.0/24"), IPv6Pool: ipam.ULAPool("a"), MinPrefixBits6: -1}},
		{"prefix count", store.Zone{Name: "a", IPv4Pool: P("10.0.0.0/24"), IPv6Pool: ipam.ULAPool("a"), MaxPrefixes: ipam.MaxMaxPrefixes + 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Error(t, e.S.CreateZone(e.Ctx, tt.z))
			_, err := e.S.Zone(e.Ctx, tt.z.Name)
			require.ErrorIs(t, err, store.ErrNotFound)
		})
	}
}

func testJoinTokens(t *testing.T, e *Env) {
	e.Zone("lab", "10.99.0.0/24", false)
	exp := Now.Add(time.Hour)
	a := store.JoinToken{ID: store.NewJoinTokenID(), Hash: Hash("a"), Zone: store.DefaultZone,
		Reusable: true, ExpiresAt: exp, CreatedAt: Now}
	b := store.JoinToken{ID: store.NewJoinTokenID(), Hash: Hash("b"), Zone: "lab", CreatedAt: Now.Add(time.Second)}
	require.NoError(t, e.S.CreateJoinToken(e.Ctx, a))
	require.NoError(t, e.S.CreateJoinToken(e.Ctx, b))

	require.ErrorIs(t, e.S.CreateJoinToken(e.Ctx, store.JoinToken{ID: a.ID, Hash: Hash("c"), Zone: "lab"}),
		store.ErrExists, "duplicate id")
	require.ErrorIs(t, e.S.CreateJoinToken(e.Ctx, store.JoinToken{ID: "tok_other", Hash: Hash("a"), Zone: "lab"}),
		store.ErrExists, "duplicate hash")
	require.ErrorIs(t, e.S.CreateJoinToken(e.Ctx, store.JoinToken{ID: "tok_x", Hash: Hash("x"), Zone: "nope"}),
		store.ErrNotFound, "unknown zone")

	all, err := e.S.JoinTokens(e.Ctx, "")
	require.NoError(t, err)
	require.Len(t, all, 2)
	got, err := e.S.JoinTokens(e.Ctx, store.DefaultZone)
	require.NoError(t, err)
	require.Len(t, got, 1)
	require.Equal(t, a.ID, got[0].ID)
	require.Equal(t, a.Hash, got[0].Hash)
	require.True(t, got[0].Reusable)
	require.True(t, got[0].ExpiresAt.Equal(exp))
	require.True(t, got[0].UsedAt.IsZero())
	require.True(t, got[0].CreatedAt.Equal(Now))
	_, err = e.S.JoinTokens(e.Ctx, "nope")
	require.ErrorIs(t, err, store.ErrNotFound)
	byHash, err := e.S.JoinTokenByHash(e.Ctx, Hash("b"))
	require.NoError(t, err)
	require.Equal(t, b.ID, byHash.ID)
	require.Equal(t, "lab", byHash.Zone)
	_, err = e.S.JoinTokenByHash(e.Ctx, Hash("unknown"))
	require.ErrorIs(t, err, store.ErrNotFound)

	require.NoError(t, e.S.DeleteJoinToken(e.Ctx, a.ID))
	require.ErrorIs(t, e.S.DeleteJoinToken(e.Ctx, a.ID), store.ErrNotFound)
	got, err = e.S.JoinTokens(e.Ctx, store.DefaultZone)
	require.NoError(t, err)
	require.Empty(t, got)
	_, _, err = e.Register(store.RegisterParams{Zone: store.DefaultZone, JoinTokenHash: a.Hash, Hostname: "h"})
	require.ErrorIs(t, err, store.ErrTokenInvalid, "deleted token")
}

func testRegisterTokenRules(t *testing.T, e *Env) {
	e.Zone("lab", "10.99.0.0/24", false)
	single := e.Token(store.DefaultZone, false)
	reusable := e.Token(store.DefaultZone, true)
	expired := e.TokenExpiring(store.DefaultZone, true, Now)
	later := e.TokenExpiring(store.DefaultZone, false, Now.Add(time.Minute))
	lab := e.Token("lab", true)

	tests := []struct {
		name    string
		zone    string
		tok     [32]byte
		wantErr error
	}{
		{"unknown token", store.DefaultZone, Hash("unknown"), store.ErrTokenInvalid},
		{"other zone", store.DefaultZone, lab, store.ErrTokenInvalid},
		{"expired at Now", store.DefaultZone, expired, store.ErrTokenInvalid},
		{"not yet expired", store.DefaultZone, later, nil},
		{"single use", store.DefaultZone, single, nil},
		{"single use again", store.DefaultZone, single, store.ErrTokenInvalid},
		{"reusable", store.DefaultZone, reusable, nil},
		{"reusable again", store.DefaultZone, reusable, nil},
		{"unknown zone", "nope", lab, store.ErrTokenInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := e.Rev()
			d, created, err := e.Register(store.RegisterParams{Zone: tt.zone, JoinTokenHash: tt.tok, Hostname: tt.name})
			if tt.wantErr != nil {
				require.ErrorIs(t, err, tt.wantErr)
				require.Equal(t, before, e.Rev(), "a failed registration appended a change")
				return
			}
			require.NoError(t, err)
			require.True(t, created)
			require.Equal(t, tt.name, d.Hostname)
		})
	}
	ts, err := e.S.JoinTokens(e.Ctx, store.DefaultZone)
	require.NoError(t, err)
	for _, tk := range ts {
		if tk.Hash == single {
			require.True(t, tk.UsedAt.Equal(Now), "single-use token UsedAt %v", tk.UsedAt)
		}
	}
}
