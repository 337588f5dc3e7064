package control

import (
	"context"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/control/store"
)

// requireRelayEnds waits for ws to be closed by the service.
func requireRelayEnds(t *testing.T, ws *websocket.Conn, why string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for {
		_, _, err := ws.Read(ctx)
		if err != nil {
			require.NoError(t, ctx.Err(), "the relay connection did not end: %s", why)
			return
		}
	}
}

// requireRelayWorks sends a message from→to through the relay.
func requireRelayWorks(t *testing.T, from, to *websocket.Conn, toKey api.Key, what string) {
	t.Helper()
	require.NoError(t, from.Write(t.Context(), websocket.MessageBinary, relayMsg(t, toKey, what)))
	_, ds := readRelay(t, to)
	require.Equal(t, []string{what}, ds)
}

// TestRelayEndsForChangesMadeElsewhere: a device deleted, revoked or
// re-keyed through another replica sharing the store (here: the store
// written behind this server's back) loses its relay connection at this
// one, though no watch stream of the zone is open here; other members'
// connections go on.
func TestRelayEndsForChangesMadeElsewhere(t *testing.T) {
	for _, tt := range []struct {
		name   string
		change func(e *env, id string) error
	}{
		{"deleted", func(e *env, id string) error { return e.st.DeleteDevice(t.Context(), id) }},
		{"revoked", func(e *env, id string) error { return e.st.RevokeDevice(t.Context(), id, time.Now()) }},
		{"new key", func(e *env, id string) error {
			_, err := e.st.RotateKey(t.Context(), id, store.Key(newDevice().pub), time.Now())
			return err
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			tok := e.joinToken(api.DefaultZone, true)
			_, ra := e.mustRegister(tok, "a")
			b, rb := e.mustRegister(tok, "b")
			c, rc := e.mustRegister(tok, "c")
			wa, wb, wc := e.mustDialRelay(ra.DeviceToken), e.mustDialRelay(rb.DeviceToken), e.mustDialRelay(rc.DeviceToken)
			requireRelayWorks(t, wa, wb, b.pub, "before")

			require.NoError(t, tt.change(e, ra.DeviceID))
			requireRelayEnds(t, wa, tt.name)
			requireRelayWorks(t, wb, wc, c.pub, "others go on")
		})
	}
}

// TestRelayEndsWhenTokenExpires: a relay connection lasts no longer than
// the device token it was opened with.
func TestRelayEndsWhenTokenExpires(t *testing.T) {
	e := newEnv(t, func(c *serverConfig) { c.DeviceTokenLifetime = 3 * time.Second })
	tok := e.joinToken(api.DefaultZone, true)
	_, ra := e.mustRegister(tok, "a")
	require.False(t, ra.DeviceTokenExpiresAt.IsZero())
	wa := e.mustDialRelay(ra.DeviceToken)
	requireRelayEnds(t, wa, "the device token expired")
	require.False(t, time.Now().Before(ra.DeviceTokenExpiresAt), "not before the token expired")
	_, resp, err := e.dialRelay(t.Context(), ra.DeviceToken)
	require.Error(t, err)
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
}

// deletingStore deletes a device right after authenticating it, as
// another replica might between the authentication and the upgrade.
type deletingStore struct {
	store.Store
	armed atomic.Bool
}

func (s *deletingStore) DeviceByToken(ctx context.Context, h [32]byte) (store.Device, error) {
	d, err := s.Store.DeviceByToken(ctx, h)
	if err == nil && s.armed.CompareAndSwap(true, false) {
		err = s.DeleteDevice(ctx, d.ID)
	}
	return d, err
}

// TestRelayRefusesDeviceDeletedDuringAuthentication: a device deleted
// after its token was checked but before the relay follows the zone is
// refused by the check that follows: 401, no WebSocket.
func TestRelayRefusesDeviceDeletedDuringAuthentication(t *testing.T) {
	var ds *deletingStore
	e := newEnv(t, func(c *serverConfig) {
		ds = &deletingStore{Store: c.Store}
		c.Store = ds
	})
	_, ra := e.mustRegister(e.joinToken(api.DefaultZone, true), "a")
	ds.armed.Store(true)
	_, resp, err := e.dialRelay(t.Context(), ra.DeviceToken)
	require.Error(t, err, "the check after follow sees the deletion")
	require.NotNil(t, resp)
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
}

// TestRelayRevokedDuringHandshake: a connection revoked after it was
// reserved but before its WebSocket was recorded does not start.
func TestRelayRevokedDuringHandshake(t *testing.T) {
	rl := newRelay(slog.New(slog.DiscardHandler), prometheus.NewRegistry(), relayConfig{})
	t.Cleanup(rl.close)
	c := &relayConn{rk: relayKey{"z", newDevice().pub}, deviceID: "d1", out: make(chan *[]byte, 1), done: make(chan struct{})}
	require.Nil(t, rl.reserve(c))
	rl.dropDevice("d1", "deleted")
	why := rl.activate(c, nil)
	rl.remove(c) // before asserting: rl.close waits for it
	require.Equal(t, "deleted", why)
}

// TestRelayRevokeDoesNotStallFanOut: ending a relay connection for a
// change read from the change log never blocks the hub's worker on the
// network (closing a WebSocket writes to it): here the close blocks, and
// the next change still reaches the zone's watchers.
func TestRelayRevokeDoesNotStallFanOut(t *testing.T) {
	e := newEnv(t)
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	hook := func() {
		once.Do(func() { close(entered) })
		<-release
	}
	e.srv.relay.closeHook.Store(&hook)
	tok := e.joinToken(api.DefaultZone, true)
	_, ra := e.mustRegister(tok, "a")
	e.mustDialRelay(ra.DeviceToken)
	sub, err := e.srv.hub.observe(t.Context(), api.DefaultZone)
	require.NoError(t, err)
	t.Cleanup(func() { e.srv.hub.unsubscribe(sub) })
	t.Cleanup(func() { close(release) }) // first: the rest may wait for it

	// Deleted behind the server's back, as by another replica: the relay
	// learns it from the change log, on the hub's worker.
	require.NoError(t, e.st.DeleteDevice(t.Context(), ra.DeviceID))
	e.srv.hub.update(api.DefaultZone)
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the relay connection was not closed")
	}
	_, rc := e.mustRegister(tok, "c")
	deadline := time.After(10 * time.Second)
	for {
		evs, ok := sub.take()
		require.True(t, ok)
		for _, ev := range evs {
			if strings.Contains(string(ev.line), rc.DeviceID) {
				return
			}
		}
		select {
		case <-sub.wake:
		case <-deadline:
			t.Fatal("a blocked relay close stalled the watch fan-out")
		}
	}
}

// TestRelayEndsWhenHistoryCompacted: when changes of the zone the relay
// was owed are compacted away before the hub reads them (here: a store
// keeping one change, a device re-keyed several times behind the
// server's back), the relay cannot know whom they concerned, so every
// connection in the zone ends; members reconnect and relaying works (the
// re-keyed device under its new key), and the reconnected connections
// again end for changes read afterwards.
func TestRelayEndsWhenHistoryCompacted(t *testing.T) {
	var st *store.SQLite
	e := newEnv(t, func(c *serverConfig) {
		var err error
		st, err = store.OpenSQLite(t.Context(), filepath.Join(t.TempDir(), DBFile), store.WithChangeRetention(1))
		require.NoError(t, err)
		t.Cleanup(func() { st.Close() })
		c.Store = st
	})
	tok := e.joinToken(api.DefaultZone, true)
	a, ra := e.mustRegister(tok, "a")
	b, rb := e.mustRegister(tok, "b")
	_, rc := e.mustRegister(tok, "c")
	wa, wb, wc := e.mustDialRelay(ra.DeviceToken), e.mustDialRelay(rb.DeviceToken), e.mustDialRelay(rc.DeviceToken)
	requireRelayWorks(t, wa, wb, b.pub, "before")
	e.srv.hub.updateNow(api.DefaultZone) // the relay has read everything so far

	var cKey api.Key
	for range 3 {
		cKey = newDevice().pub
		_, err := st.RotateKey(t.Context(), rc.DeviceID, store.Key(cKey), time.Now())
		require.NoError(t, err)
	}
	_, _, err := st.Changes(t.Context(), api.DefaultZone, 0)
	require.ErrorIs(t, err, store.ErrCompacted, "the test needs the history compacted")
	e.srv.hub.update(api.DefaultZone)
	for name, ws := range map[string]*websocket.Conn{"a": wa, "b": wb, "c": wc} {
		requireRelayEnds(t, ws, name+": the zone's history was compacted")
	}

	wa, wb = e.mustDialRelay(ra.DeviceToken), e.mustDialRelay(rb.DeviceToken)
	requireRelayWorks(t, wa, wb, b.pub, "after reconnecting")
	requireRelayWorks(t, wb, wa, a.pub, "and back")
	wc = e.mustDialRelay(rc.DeviceToken) // its token stays, under the new key
	requireRelayWorks(t, wa, wc, cKey, "to c's new key")

	require.NoError(t, st.DeleteDevice(t.Context(), rb.DeviceID))
	e.srv.hub.update(api.DefaultZone)
	requireRelayEnds(t, wb, "b deleted after the compaction")
}
