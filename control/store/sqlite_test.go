package store_test

import (
	"context"
	"database/sql"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/store"
	"github.com/wiremesh/wiremesh/control/store/storetest"
	"github.com/wiremesh/wiremesh/ipam"
)

func openAt(t *testing.T, path string, opts ...store.SQLiteOption) *store.SQLite {
	t.Helper()
	s, err := store.OpenSQLite(t.Context(), path, opts...)
	require.NoError(t, err)
	t.Cleanup(func() {
		if err := s.Close(); err != nil && !errors.Is(err, store.ErrClosed) {
			t.Errorf("close: %v", err)
		}
	})
	return s
}

func TestSQLiteConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		return openAt(t, filepath.Join(t.TempDir(), "wiremesh.db"))
	})
}

func TestSQLiteReopenKeepsState(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s := openAt(t, path)
	e := &storetest.Env{T: t, S: s, Ctx: t.Context()}
	e.Zone("lab", "10.99.0.0/24", true)
	tok := e.Token("lab", false)
	devTok := storetest.RandomHash()
	key := storetest.Key()
	d, _, err := e.Register(store.RegisterParams{Zone: "lab", JoinTokenHash: tok, DeviceTokenHash: devTok,
		PublicKey: key, Hostname: "node1", RequestedIPv4: storetest.A("10.99.0.7"),
		Prefixes:  []netip.Prefix{storetest.P("172.24.0.0/24"), storetest.P("fd99::/64")},
		Endpoints: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:51820")}})
	require.NoError(t, err)
	e.MustRegister(store.DefaultZone, "spoke")
	before, _, err := s.Changes(t.Context(), "lab", 0)
	require.NoError(t, err)
	zonesBefore, err := s.Zones(t.Context())
	require.NoError(t, err)
	tokensBefore, err := s.JoinTokens(t.Context(), "")
	require.NoError(t, err)
	devsBefore, err := s.Devices(t.Context(), "")
	require.NoError(t, err)
	prefixesBefore, err := s.Prefixes(t.Context(), "")
	require.NoError(t, err)
	revBefore := e.Rev()
	require.NoError(t, s.Close())

	s2 := openAt(t, path)
	e2 := &storetest.Env{T: t, S: s2, Ctx: t.Context()}
	zones, err := s2.Zones(t.Context())
	require.NoError(t, err)
	require.Equal(t, zonesBefore, zones)
	tokens, err := s2.JoinTokens(t.Context(), "")
	require.NoError(t, err)
	require.Equal(t, tokensBefore, tokens)
	devs, err := s2.Devices(t.Context(), "")
	require.NoError(t, err)
	require.Equal(t, devsBefore, devs)
	prefixes, err := s2.Prefixes(t.Context(), "")
	require.NoError(t, err)
	require.Equal(t, prefixesBefore, prefixes)
	byTok, err := s2.DeviceByToken(t.Context(), devTok)
	require.NoError(t, err)
	require.Equal(t, d.ID, byTok.ID)
	require.Equal(t, storetest.A("10.99.0.7"), byTok.IPv4)

	// The single-use token stays used; the key keeps its device.
	_, _, err = e2.Register(store.RegisterParams{Zone: "lab", JoinTokenHash: tok, Hostname: "x"})
	require.ErrorIs(t, err, store.ErrTokenInvalid)
	again, created, err := e2.Register(store.RegisterParams{Zone: "lab", JoinTokenHash: e2.Token("lab", true),
		PublicKey: key, Hostname: "node1"})
	require.NoError(t, err)
	require.False(t, created)
	require.Equal(t, d.ID, again.ID)
	require.Equal(t, d.IPv4, again.IPv4)
	require.Equal(t, d.IPv6, again.IPv6)
	require.Equal(t, d.Prefixes, again.Prefixes)

	after, cur, err := s2.Changes(t.Context(), "lab", 0)
	require.NoError(t, err)
	require.Equal(t, before, after[:len(before)], "history survives")
	require.Len(t, after, len(before)+1)
	require.Greater(t, after[len(after)-1].Rev, revBefore, "revisions continue after reopen")
	require.Equal(t, after[len(after)-1].Rev, cur)
}

func TestSQLiteCompaction(t *testing.T) {
	path := filepath.Join(t.TempDir(), "compact.db")
	s := openAt(t, path, store.WithChangeRetention(3))
	e := &storetest.Env{T: t, S: s, Ctx: t.Context()}
	e.Zone("lab", "10.99.0.0/24", false)
	lab := e.MustRegister("lab", "lab") // one change in another zone
	var revs []int64
	for range 6 {
		e.MustRegister(store.DefaultZone, "d")
		_, rev, err := s.Changes(t.Context(), "lab", 0)
		require.NoError(t, err)
		revs = append(revs, rev)
	}
	// Kept: the last three. since = revs[2] asks for revs[3..5]: all kept.
	cs, cur, err := s.Changes(t.Context(), store.DefaultZone, revs[2])
	require.NoError(t, err)
	require.Equal(t, revs[5], cur)
	require.Len(t, cs, 3)
	for i, c := range cs {
		require.Equal(t, revs[3+i], c.Rev)
	}
	for _, since := range []int64{0, revs[0], revs[1]} {
		_, _, err = s.Changes(t.Context(), store.DefaultZone, since)
		require.ErrorIs(t, err, store.ErrCompacted, "since %d", since)
	}
	// Other zones keep their own history.
	labCs, _, err := s.Changes(t.Context(), "lab", 0)
	require.NoError(t, err)
	require.Len(t, labCs, 1)
	require.Equal(t, lab.ID, labCs[0].Device.ID)
	// A snapshot still works, and the log continues after it.
	rev, ds, err := s.Snapshot(t.Context(), store.DefaultZone)
	require.NoError(t, err)
	require.Len(t, ds, 6)
	require.Equal(t, cur, rev)

	// Compaction survives a reopen with a larger retention, and revisions
	// are never reused.
	require.NoError(t, s.Close())
	s2 := openAt(t, path, store.WithChangeRetention(100))
	_, _, err = s2.Changes(t.Context(), store.DefaultZone, revs[1])
	require.ErrorIs(t, err, store.ErrCompacted)
	e2 := &storetest.Env{T: t, S: s2, Ctx: t.Context()}
	e2.MustRegister(store.DefaultZone, "later")
	cs, cur2, err := s2.Changes(t.Context(), store.DefaultZone, revs[2])
	require.NoError(t, err)
	require.Len(t, cs, 4)
	require.Greater(t, cur2, cur)
}

func TestSQLiteRefusesNonDatabase(t *testing.T) {
	tests := []struct {
		name    string
		content []byte
	}{
		{"garbage", []byte("this is not a database, it is a shopping list\n")},
		{"short", []byte("SQLite")},
		{"header then garbage", append([]byte("SQLite format 3\x00"), make([]byte, 4096)...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "wiremesh.db")
			require.NoError(t, os.WriteFile(path, tt.content, 0o600))
			s, err := store.OpenSQLite(t.Context(), path)
			if err == nil {
				s.Close()
			}
			require.Error(t, err)
			t.Log(err)
			require.Contains(t, err.Error(), path)
			got, rerr := os.ReadFile(path)
			require.NoError(t, rerr)
			require.Equal(t, tt.content, got, "the file was not modified")
		})
	}
	t.Run("directory", func(t *testing.T) {
		_, err := store.OpenSQLite(t.Context(), t.TempDir())
		require.Error(t, err)
	})
	t.Run("empty path", func(t *testing.T) {
		_, err := store.OpenSQLite(t.Context(), "")
		require.Error(t, err)
	})
}

func TestSQLiteRefusesNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "wiremesh.db")
	s := openAt(t, path)
	require.NoError(t, s.Close())

	db, err := sql.Open("sqlite", path)
	require.NoError(t, err)
	_, err = db.Exec(`PRAGMA user_version = 999`)
	require.NoError(t, err)
	require.NoError(t, db.Close())

	_, err = store.OpenSQLite(t.Context(), path)
	require.ErrorContains(t, err, "newer")
	require.ErrorContains(t, err, path)
}

func TestSQLiteOptions(t *testing.T) {
	_, err := store.OpenSQLite(t.Context(), filepath.Join(t.TempDir(), "x.db"), store.WithChangeRetention(0))
	require.ErrorContains(t, err, "retention")

	fixed := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	s := openAt(t, filepath.Join(t.TempDir(), "clock.db"), store.WithClock(func() time.Time { return fixed }),
		store.WithLogger(nil))
	z, err := s.Zone(t.Context(), store.DefaultZone)
	require.NoError(t, err)
	require.True(t, z.CreatedAt.Equal(fixed))
	// Zero pools take the defaults.
	require.NoError(t, s.CreateZone(t.Context(), store.Zone{Name: "lab"}))
	lab, err := s.Zone(t.Context(), "lab")
	require.NoError(t, err)
	require.Equal(t, ipam.DefaultIPv4PoolPrefix, lab.IPv4Pool)
	require.Equal(t, ipam.ULAPool("lab"), lab.IPv6Pool)
}

func TestSQLiteRegisterBadInput(t *testing.T) {
	s := openAt(t, filepath.Join(t.TempDir(), "bad.db"))
	e := &storetest.Env{T: t, S: s, Ctx: t.Context()}
	tok := e.Token(store.DefaultZone, true)
	tests := []struct {
		name string
		p    store.RegisterParams
	}{
		{"host bits", store.RegisterParams{Prefixes: []netip.Prefix{netip.MustParsePrefix("10.0.0.1/24")}}},
		{"invalid prefix", store.RegisterParams{Prefixes: []netip.Prefix{{}}}},
		{"loopback prefix", store.RegisterParams{Prefixes: []netip.Prefix{storetest.P("127.0.0.0/8")}}},
		{"invalid endpoint", store.RegisterParams{Endpoints: []netip.AddrPort{{}}}},
		{"zero device token", store.RegisterParams{DeviceTokenHash: [32]byte{}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := tt.p
			p.Zone, p.JoinTokenHash, p.Hostname, p.PublicKey, p.Now = store.DefaultZone, tok, "h", storetest.Key(), storetest.Now
			if tt.name != "zero device token" {
				p.DeviceTokenHash = storetest.RandomHash()
			}
			_, _, err := s.Register(t.Context(), p)
			require.Error(t, err)
			ds, err := s.Devices(t.Context(), store.DefaultZone)
			require.NoError(t, err)
			require.Empty(t, ds)
		})
	}
	_, _, err := s.Register(t.Context(), store.RegisterParams{Zone: store.DefaultZone, JoinTokenHash: tok,
		DeviceTokenHash: storetest.RandomHash(), Hostname: "nokey"})
	require.ErrorContains(t, err, "public key")
}

func TestSQLiteContextCanceledMidWait(t *testing.T) {
	s := openAt(t, filepath.Join(t.TempDir(), "ctx.db"))
	e := &storetest.Env{T: t, S: s, Ctx: t.Context()}
	tok := e.Token(store.DefaultZone, true)
	// Occupy the single write connection from another goroutine's call.
	release := holdWriter(t, s)
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, _, err := s.Register(ctx, store.RegisterParams{Zone: store.DefaultZone, JoinTokenHash: tok,
		DeviceTokenHash: storetest.RandomHash(), PublicKey: storetest.Key(), Hostname: "late"})
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Less(t, time.Since(start), 5*time.Second)
	// Reads are not blocked by the writer.
	_, err = s.Devices(t.Context(), store.DefaultZone)
	require.NoError(t, err)
	release()
	e.MustRegister(store.DefaultZone, "after")
}

func holdWriter(t *testing.T, s *store.SQLite) (release func()) {
	t.Helper()
	release, err := store.HoldWriter(s)
	require.NoError(t, err)
	t.Cleanup(release)
	return release
}

func TestSQLiteUpdateNoopRecordsNothing(t *testing.T) {
	s := openAt(t, filepath.Join(t.TempDir(), "noop.db"))
	e := &storetest.Env{T: t, S: s, Ctx: t.Context()}
	d := e.MustRegister(store.DefaultZone, "a", "172.24.0.0/24")
	rev := e.Rev()
	host := "a"
	got, err := s.UpdateDevice(t.Context(), d.ID, store.UpdateParams{Hostname: &host,
		AddPrefixes: []netip.Prefix{storetest.P("172.24.0.0/24")}, Now: storetest.Now.Add(time.Hour)})
	require.NoError(t, err)
	require.Equal(t, rev, e.Rev())
	require.True(t, got.UpdatedAt.Equal(d.UpdatedAt), "nothing changed, not even UpdatedAt")
}
