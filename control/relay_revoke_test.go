package control

import (
	"context"
	"log/slog"
	"net/http"
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

func TestRelayRefusesDeviceDeletedDuringAuthentication(t *testing.T) {
	var ds *deletingStore
	e := newEnv(t, func(c *serverConfig) {
		ds = &deletingStore{Store: c.Store}
		c.Store = ds
	})
	_, ra := e.mustRegister(e.joinToken(api.DefaultZone, true), "a")
	ds.armed.Store(true)
	ws, resp, err := e.dialRelay(t.Context(), ra.DeviceToken)
	if err == nil {
		requireRelayEnds(t, ws, "the device was deleted while it connected")
		return
	}
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
