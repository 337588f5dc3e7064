package controlclient

import (
	"context"
	"crypto/rand"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control"
	"github.com/wiremesh/wiremesh/control/api"
)

// TestRelayAndSTUNServers: against a real service with its self-signed
// certificate, the relay WebSocket goes through the pinned transport with
// the device token, and the STUN responders come from /v1/info.
func TestRelayAndSTUNServers(t *testing.T) {
	ctx := context.Background()
	svc, err := control.Start(ctx, control.Options{DataDir: t.TempDir(), Listen: "127.0.0.1:0", STUNListen: "127.0.0.1:0"})
	require.NoError(t, err)
	defer svc.Close()
	tok, err := svc.CreateJoinToken(ctx, api.DefaultZone, true, 0)
	require.NoError(t, err)

	clients := make([]*Client, 2)
	keys := make([]api.Key, 2)
	for i := range clients {
		c, err := New(Config{URL: svc.URL(), Token: tok})
		require.NoError(t, err)
		defer c.Close()
		_, err = c.DialRelay(ctx)
		require.ErrorContains(t, err, "no device token")
		_, _ = rand.Read(keys[i][:])
		_, err = c.Register(ctx, keys[i], api.RegisterRequest{Hostname: "h"})
		require.NoError(t, err)
		clients[i] = c
	}

	servers, err := clients[0].STUNServers(ctx)
	require.NoError(t, err)
	require.Equal(t, []netip.AddrPort{svc.STUNAddr(), svc.STUNAltAddr()}, servers)

	wa, err := clients[0].DialRelay(ctx)
	require.NoError(t, err)
	defer wa.CloseNow()
	wb, err := clients[1].DialRelay(ctx)
	require.NoError(t, err)
	defer wb.CloseNow()
	b := api.PublicKey(keys[1])
	msg, err := api.AppendRelayDatagram(append([]byte(nil), b[:]...), []byte("hi"))
	require.NoError(t, err)
	require.NoError(t, wa.Write(ctx, websocket.MessageBinary, msg))
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, got, err := wb.Read(rctx)
	require.NoError(t, err)
	from, err := api.ParseRelayMessage(got, func(d []byte) { require.Equal(t, "hi", string(d)) })
	require.NoError(t, err)
	require.Equal(t, api.PublicKey(keys[0]), from)

	// A client pinning another certificate cannot reach the relay.
	bad, err := New(Config{URL: svc.URL(), Token: strings.Split(tok, ".")[0] + "." + strings.Repeat("00", 32)})
	require.NoError(t, err)
	defer bad.Close()
	bad.SetDeviceToken(clients[0].DeviceToken())
	_, err = bad.DialRelay(ctx)
	require.ErrorContains(t, err, "fingerprint")
}
