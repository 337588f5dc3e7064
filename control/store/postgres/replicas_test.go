package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/control/store"
	"github.com/wiremesh/wiremesh/control/store/postgres"
	"github.com/wiremesh/wiremesh/control/store/postgres/pgtest"
	"github.com/wiremesh/wiremesh/control/store/storetest"
)

// TestPostgresConstraints checks that the database itself refuses what
// must never happen, whatever a replica's code does: overlapping prefixes
// of two devices, a tunnel address twice in a zone.
func TestPostgresConstraints(t *testing.T) {
	dsn := pgtest.DB(t)
	s := open(t, dsn)
	e := &storetest.Env{T: t, S: s, Ctx: t.Context()}
	a := e.MustRegister(api.DefaultZone, "a", "172.24.0.0/24")
	b := e.MustRegister(api.DefaultZone, "b")
	c := sqlConn(t, dsn)
	sqlState := func(err error) string {
		var pe *pgconn.PgError
		if errors.As(err, &pe) {
			return pe.Code
		}
		return fmt.Sprint(err)
	}
	tests := []struct {
		name, sql string
		args      []any
		want      string // SQLSTATE; "" = accepted
	}{
		{"inside another device's", `INSERT INTO prefixes VALUES ($1, $2, $3)`,
			[]any{api.DefaultZone, netip.MustParsePrefix("172.24.0.128/25"), b.ID}, "23P01"},
		{"containing another device's", `INSERT INTO prefixes VALUES ($1, $2, $3)`,
			[]any{api.DefaultZone, netip.MustParsePrefix("172.0.0.0/8"), b.ID}, "23P01"},
		{"inside its own", `INSERT INTO prefixes VALUES ($1, $2, $3)`,
			[]any{api.DefaultZone, netip.MustParsePrefix("172.24.0.0/25"), a.ID}, ""},
		{"same address twice", `UPDATE devices SET ipv4 = $1 WHERE id = $2`,
			[]any{a.IPv4, b.ID}, "23505"},
		{"same index twice", `UPDATE devices SET idx = 1 WHERE id = $1`, []any{b.ID}, "23505"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.Exec(t.Context(), tt.sql, tt.args...)
			if tt.want == "" {
				require.NoError(t, err)
				return
			}
			require.Equal(t, tt.want, sqlState(err), "%v", err)
		})
	}
	t.Run("default routes", func(t *testing.T) {
		e.Zone("exits", "10.50.0.0/24", true)
		x := e.MustRegister("exits", "x", "0.0.0.0/0", "172.24.0.0/24")
		y := e.MustRegister("exits", "y", "::/0", "172.25.0.0/24")
		_, err := c.Exec(t.Context(), `INSERT INTO prefixes VALUES ('exits', '0.0.0.0/0', $1)`, y.ID)
		require.Equal(t, "23505", sqlState(err), "one IPv4 default route per zone")
		_ = x
	})
}

// TestPostgresTwoReplicas registers devices through two stores on one
// database at once, each registration with a token of its own (so that no
// token lock serializes them): addresses stay unique and dense, prefixes
// never overlap, every acknowledged registration is there, and the change
// log has one entry each, in commit order.
func TestPostgresTwoReplicas(t *testing.T) {
	dsn := pgtest.DB(t)
	replicas := []*postgres.Store{open(t, dsn), open(t, dsn)}
	const perReplica = 100
	type result struct {
		d   store.Device
		err error
	}
	results := make(chan result, 2*perReplica)
	var wg sync.WaitGroup
	for r, s := range replicas {
		e := &storetest.Env{T: t, S: s, Ctx: t.Context()}
		toks := make([][32]byte, perReplica)
		for i := range toks {
			toks[i] = e.Token(api.DefaultZone, false)
		}
		for i := range perReplica {
			wg.Go(func() {
				// Every pair of registrations i, i+1 asks for overlapping
				// prefixes: exactly one of each pair can win.
				n := (r*perReplica + i) / 2
				p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(n), 0, 0}), 16+(i%2)*8)
				d, _, err := e.Register(store.RegisterParams{Zone: api.DefaultZone, JoinTokenHash: toks[i],
					Hostname: fmt.Sprintf("r%d-%d", r, i), Prefixes: []netip.Prefix{p}})
				if errors.Is(err, store.ErrPrefixConflict) {
					// Lost the prefix: join without it.
					d, _, err = e.Register(store.RegisterParams{Zone: api.DefaultZone, JoinTokenHash: toks[i],
						Hostname: fmt.Sprintf("r%d-%d", r, i)})
				}
				results <- result{d, err}
			})
		}
	}
	wg.Wait()
	close(results)

	acked := map[string]store.Device{}
	for r := range results {
		require.NoError(t, r.err)
		acked[r.d.ID] = r.d
	}
	require.Len(t, acked, 2*perReplica)
	ds, err := replicas[0].Devices(t.Context(), api.DefaultZone)
	require.NoError(t, err)
	require.Len(t, ds, len(acked), "every acknowledged registration is there")
	seen := map[netip.Addr]bool{}
	var prefixes []netip.Prefix
	for i, d := range ds {
		require.Contains(t, acked, d.ID)
		require.False(t, seen[d.IPv4])
		seen[d.IPv4] = true
		require.Equal(t, netip.AddrFrom4([4]byte{100, 64, byte((i + 1) >> 8), byte(i + 1)}), d.IPv4, "lowest free, no holes")
		prefixes = append(prefixes, d.Prefixes...)
	}
	require.Len(t, prefixes, perReplica, "one prefix of each overlapping pair won")
	for i, p := range prefixes {
		for _, q := range prefixes[i+1:] {
			require.False(t, p.Overlaps(q), "%s overlaps %s", p, q)
		}
	}
	cs, cur, err := replicas[1].Changes(t.Context(), api.DefaultZone, 0)
	require.NoError(t, err)
	require.Len(t, cs, len(acked))
	for i, c := range cs {
		require.Equal(t, int64(i+1), c.Rev, "revisions are dense: aborted attempts leave no gaps")
	}
	require.Equal(t, int64(len(cs)), cur)
}

// TestPostgresSingleUseTokenAcrossReplicas: a single-use token works once,
// however many replicas try it at the same moment.
func TestPostgresSingleUseTokenAcrossReplicas(t *testing.T) {
	dsn := pgtest.DB(t)
	replicas := []*postgres.Store{open(t, dsn), open(t, dsn)}
	tok := (&storetest.Env{T: t, S: replicas[0], Ctx: t.Context()}).Token(api.DefaultZone, false)
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := range cap(errs) {
		wg.Go(func() {
			e := &storetest.Env{T: t, S: replicas[i%2], Ctx: t.Context()}
			_, _, err := e.Register(store.RegisterParams{Zone: api.DefaultZone, JoinTokenHash: tok, Hostname: "h"})
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	ok := 0
	for err := range errs {
		if err == nil {
			ok++
			continue
		}
		require.ErrorIs(t, err, store.ErrTokenInvalid)
	}
	require.Equal(t, 1, ok)
}

func TestPostgresCompaction(t *testing.T) {
	dsn := pgtest.DB(t)
	s := open(t, dsn, postgres.WithChangeRetention(3))
	e := &storetest.Env{T: t, S: s, Ctx: t.Context()}
	e.Zone("lab", "10.99.0.0/24", false)
	lab := e.MustRegister("lab", "lab")
	var revs []int64
	for range 6 {
		e.MustRegister(api.DefaultZone, "d")
		revs = append(revs, e.Rev())
	}
	cs, cur, err := s.Changes(t.Context(), api.DefaultZone, revs[2])
	require.NoError(t, err)
	require.Equal(t, revs[5], cur)
	require.Len(t, cs, 3)
	for _, since := range []int64{0, revs[0], revs[1]} {
		_, _, err = s.Changes(t.Context(), api.DefaultZone, since)
		require.ErrorIs(t, err, store.ErrCompacted, "since %d", since)
	}
	labCs, _, err := s.Changes(t.Context(), "lab", 0)
	require.NoError(t, err)
	require.Len(t, labCs, 1)
	require.Equal(t, lab.ID, labCs[0].Device.ID)

	require.NoError(t, s.Close())
	s2 := open(t, dsn, postgres.WithChangeRetention(100))
	_, _, err = s2.Changes(t.Context(), api.DefaultZone, revs[1])
	require.ErrorIs(t, err, store.ErrCompacted, "compaction survives a reopen")
}

// TestPostgresSecret: replicas creating a secret at the same moment all
// get the one that was stored first.
func TestPostgresSecret(t *testing.T) {
	dsn := pgtest.DB(t)
	replicas := []*postgres.Store{open(t, dsn), open(t, dsn)}
	vals := make(chan string, 10)
	var wg sync.WaitGroup
	for i := range cap(vals) {
		wg.Go(func() {
			v, err := replicas[i%2].Secret(t.Context(), "k", func() ([]byte, error) {
				return []byte(fmt.Sprintf("value-%d", i)), nil
			})
			require.NoError(t, err)
			vals <- string(v)
		})
	}
	wg.Wait()
	close(vals)
	first := <-vals
	for v := range vals {
		require.Equal(t, first, v)
	}
	_, err := replicas[0].Secret(t.Context(), "other", func() ([]byte, error) { return nil, errors.New("no entropy") })
	require.ErrorContains(t, err, "no entropy")
	v, err := replicas[1].Secret(t.Context(), "k", func() ([]byte, error) { panic("not called: it exists") })
	require.NoError(t, err)
	require.Equal(t, first, string(v))
}

// TestPostgresListenChanges: a change committed through one store wakes
// the listener of another; a rolled-back one does not.
func TestPostgresListenChanges(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	dsn := pgtest.DB(t)
	a, b := open(t, dsn), open(t, dsn)
	zones := make(chan string, 100)
	done := make(chan error, 1)
	go func() { done <- a.ListenChanges(context.Background(), func(z string) { zones <- z }) }()
	require.Equal(t, "", recv(t, zones), "connected: catch up on everything")

	e := &storetest.Env{T: t, S: b, Ctx: t.Context()}
	e.Zone("lab", "10.99.0.0/24", false)
	e.MustRegister("lab", "x")
	require.Equal(t, "lab", recv(t, zones))
	_, _, err := e.Register(store.RegisterParams{Zone: "lab", JoinTokenHash: storetest.RandomHash(), Hostname: "bad"})
	require.ErrorIs(t, err, store.ErrTokenInvalid)
	e.MustRegister(api.DefaultZone, "y")
	require.Equal(t, api.DefaultZone, recv(t, zones), "the failed registration sent nothing")

	require.NoError(t, a.Close())
	select {
	case err := <-done:
		require.ErrorIs(t, err, store.ErrClosed)
	case <-time.After(10 * time.Second):
		t.Fatal("ListenChanges did not end at Close")
	}
	require.ErrorIs(t, a.ListenChanges(t.Context(), func(string) {}), store.ErrClosed)
	require.NoError(t, b.Close())
}

func recv(t *testing.T, ch <-chan string) string {
	t.Helper()
	select {
	case z := <-ch:
		return z
	case <-time.After(10 * time.Second):
		t.Fatal("no notification within 10s")
		return ""
	}
}

// TestPostgresConcurrentOverlap: two devices adding overlapping prefixes
// at the same moment (through two stores). Neither check sees the other's
// uncommitted prefix; the exclusion constraint refuses the second insert
// and its retried transaction reports the conflict. Exactly one wins.
func TestPostgresConcurrentOverlap(t *testing.T) {
	dsn := pgtest.DB(t)
	replicas := []*postgres.Store{open(t, dsn), open(t, dsn)}
	e := &storetest.Env{T: t, S: replicas[0], Ctx: t.Context()}
	devs := []store.Device{e.MustRegister(api.DefaultZone, "a"), e.MustRegister(api.DefaultZone, "b")}
	for round := range 20 {
		asks := []netip.Prefix{
			netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(round), 0, 0}), 16),
			netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(round), 1, 0}), 24),
		}
		errs := make([]error, 2)
		var wg sync.WaitGroup
		for i := range 2 {
			wg.Go(func() {
				_, errs[i] = replicas[i].UpdateDevice(t.Context(), devs[i].ID,
					store.UpdateParams{AddPrefixes: []netip.Prefix{asks[i]}})
			})
		}
		wg.Wait()
		won := 0
		for i, err := range errs {
			if err == nil {
				won++
				continue
			}
			var ce *store.ConflictError
			require.ErrorAs(t, err, &ce, "round %d", round)
			require.Equal(t, devs[1-i].ID, ce.OwnerID)
		}
		require.Equal(t, 1, won, "round %d", round)
	}
	ps, err := replicas[0].Prefixes(t.Context(), api.DefaultZone)
	require.NoError(t, err)
	require.Len(t, ps, 20)
}

// TestPostgresServerRestart: the database restarts under a running store.
// Meanwhile calls fail with ErrUnavailable, promptly; afterwards the store
// works again without being reopened, the listener reconnects and says so,
// and nothing acknowledged before is lost.
func TestPostgresServerRestart(t *testing.T) {
	srv := pgtest.Own(t)
	_, dsn, err := srv.NewDatabase(t.Context())
	require.NoError(t, err)
	s := open(t, dsn)
	e := &storetest.Env{T: t, S: s, Ctx: t.Context()}
	before := e.MustRegister(api.DefaultZone, "before")
	zones := make(chan string, 100)
	lctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.ListenChanges(lctx, func(z string) { zones <- z }) }()
	defer func() {
		stop()
		<-done
	}()
	require.Equal(t, "", recv(t, zones))

	require.NoError(t, srv.StopServer(t.Context(), "immediate"))
	start := time.Now()
	_, err = s.Device(t.Context(), before.ID)
	require.ErrorIs(t, err, store.ErrUnavailable)
	_, _, err = e.Register(store.RegisterParams{Zone: api.DefaultZone, JoinTokenHash: storetest.RandomHash(), Hostname: "x"})
	require.ErrorIs(t, err, store.ErrUnavailable)
	require.Less(t, time.Since(start), 5*time.Second, "unavailable is said at once")

	require.NoError(t, srv.StartServer(t.Context()))
	require.Eventually(t, func() bool {
		_, err := s.Device(t.Context(), before.ID)
		return err == nil
	}, 30*time.Second, 50*time.Millisecond)
	require.Equal(t, "", recv(t, zones), "the listener reconnected and asks for a catch-up")
	after := e.MustRegister(api.DefaultZone, "after")
	require.Equal(t, before.IPv4.Next(), after.IPv4)
	require.Equal(t, api.DefaultZone, recv(t, zones), "and listens again")
	ds, err := s.Devices(t.Context(), api.DefaultZone)
	require.NoError(t, err)
	require.Len(t, ds, 2)
}
