package control

import (
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
)

func TestRevokeRefusesTheKeyForGood(t *testing.T) {
	e := newEnv(t)
	tok := e.joinToken(api.DefaultZone, true)
	d, reg := e.mustRegister(tok, "stolen", "172.24.0.0/24")

	code, _ := e.do("DELETE", "/v1/devices/"+reg.DeviceID+"?revoke=maybe", e.admin, nil)
	require.Equal(t, http.StatusBadRequest, code)
	code, _ = e.do("DELETE", "/v1/devices/"+reg.DeviceID+"?revoke=true", e.admin, nil)
	require.Equal(t, http.StatusNoContent, code)

	// The reusable token does not bring it back, and nothing changes.
	before := e.state()
	code, _, ae := e.register(tok, e.request(tok, d, "stolen"))
	require.Equal(t, http.StatusUnauthorized, code)
	require.Equal(t, api.CodeRevoked, ae.Code)
	require.Equal(t, before, e.state())
	code, _ = e.do("GET", "/v1/devices/self", reg.DeviceToken, nil)
	require.Equal(t, http.StatusUnauthorized, code)

	// A plain delete lets the key come back.
	d2, reg2 := e.mustRegister(tok, "lost")
	code, _ = e.do("DELETE", "/v1/devices/"+reg2.DeviceID, e.admin, nil)
	require.Equal(t, http.StatusNoContent, code)
	r := e.request(tok, d2, "lost")
	r.Nonce = "again"
	e.sign(tok, d2, &r)
	code, _, ae = e.register(tok, r)
	require.Nil(t, ae)
	require.Equal(t, http.StatusCreated, code)
}

func TestDeleteSelf(t *testing.T) {
	e := newEnv(t)
	tok := e.joinToken(api.DefaultZone, true)
	_, a := e.mustRegister(tok, "a")
	_, b := e.mustRegister(tok, "b", "172.24.0.0/24")
	s := e.watch(api.DefaultZone, a.DeviceToken, 0)
	require.Equal(t, api.EventSnapshot, s.next().Type)

	code, _ := e.do("DELETE", "/v1/devices/self", b.DeviceToken, nil)
	require.Equal(t, http.StatusNoContent, code)
	ev := s.next()
	require.Equal(t, api.EventRemove, ev.Type)
	require.Equal(t, b.DeviceID, ev.Peer.ID)
	code, _ = e.do("DELETE", "/v1/devices/self", b.DeviceToken, nil)
	require.Equal(t, http.StatusUnauthorized, code)
	// Its prefix is free.
	e.mustRegister(tok, "c", "172.24.0.0/24")
}

func TestDeviceTokenLifetimeAndRotation(t *testing.T) {
	var clock atomic.Int64
	clock.Store(time.Now().UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	e := newEnv(t, func(c *serverConfig) { c.DeviceTokenLifetime = time.Hour; c.Now = now })
	tok := e.joinToken(api.DefaultZone, true)
	_, reg := e.mustRegister(tok, "a")
	require.WithinDuration(t, now().Add(time.Hour), reg.DeviceTokenExpiresAt, 2*time.Second)

	var rot api.RotateTokenResponse
	code, ae := e.call("POST", "/v1/devices/self/token", reg.DeviceToken, nil, &rot)
	require.Nil(t, ae)
	require.Equal(t, http.StatusOK, code)
	require.NotEqual(t, reg.DeviceToken, rot.DeviceToken)
	code, _ = e.do("GET", "/v1/devices/self", reg.DeviceToken, nil)
	require.Equal(t, http.StatusUnauthorized, code, "the old token stops working")
	code, _ = e.do("GET", "/v1/devices/self", rot.DeviceToken, nil)
	require.Equal(t, http.StatusOK, code)

	clock.Add(int64(time.Hour + time.Second))
	code, ae = e.call("GET", "/v1/devices/self", rot.DeviceToken, nil, nil)
	require.Equal(t, http.StatusUnauthorized, code)
	require.Equal(t, api.CodeTokenExpired, ae.Code)
}

func TestRotateKeyKeepsAddressesAndPrefixes(t *testing.T) {
	e := newEnv(t)
	tok := e.joinToken(api.DefaultZone, true)
	_, watcher := e.mustRegister(tok, "w")
	old, reg := e.mustRegister(tok, "r", "172.24.0.0/24")
	s := e.watch(api.DefaultZone, watcher.DeviceToken, 0)
	require.Equal(t, api.EventSnapshot, s.next().Type)

	next := newDevice()
	req := api.RotateKeyRequest{Timestamp: time.Now().Unix(), Nonce: "n1"}
	require.NoError(t, req.Sign(reg.DeviceID, old.priv, next.priv, api.PublicKey(e.priv)))

	// Bad input changes nothing: a proof by someone without the new key,
	// a non-canonical key, a stale timestamp.
	waitFor(t, "online", func() bool { return *e.adminDevice(watcher.DeviceID).Online })
	before := e.state()
	forged := req
	forged.NewProof = append([]byte(nil), req.OldProof...)
	code, ae := e.call("POST", "/v1/devices/self/key", reg.DeviceToken, forged, nil)
	require.Equal(t, http.StatusUnauthorized, code)
	require.Equal(t, api.CodeUnauthorized, ae.Code)
	bad := req
	bad.NewPublicKey = api.Key{}
	code, ae = e.call("POST", "/v1/devices/self/key", reg.DeviceToken, bad, nil)
	require.Equal(t, http.StatusBadRequest, code)
	require.Equal(t, api.CodeInvalidKey, ae.Code)
	stale := api.RotateKeyRequest{Timestamp: time.Now().Add(-time.Hour).Unix()}
	require.NoError(t, stale.Sign(reg.DeviceID, old.priv, next.priv, api.PublicKey(e.priv)))
	code, _ = e.call("POST", "/v1/devices/self/key", reg.DeviceToken, stale, nil)
	require.Equal(t, http.StatusUnauthorized, code)
	require.Equal(t, before, e.state())

	var d api.Device
	code, ae = e.call("POST", "/v1/devices/self/key", reg.DeviceToken, req, &d)
	require.Nil(t, ae)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, next.pub, d.PublicKey)
	require.Equal(t, reg.IPv4, d.IPv4)
	require.Equal(t, reg.ChildPrefixes, d.ChildPrefixes)
	ev := s.next()
	require.Equal(t, api.EventUpsert, ev.Type)
	require.Equal(t, reg.DeviceID, ev.Peer.ID)
	require.Equal(t, next.pub, ev.Peer.PublicKey)

	// The same signed request again is a replay; the old key is retired;
	// the new key registers as the same device.
	code, _ = e.call("POST", "/v1/devices/self/key", reg.DeviceToken, req, nil)
	require.Equal(t, http.StatusUnauthorized, code)
	code, _, ae = e.register(tok, e.request(tok, old, "r"))
	require.Equal(t, http.StatusUnauthorized, code)
	require.Equal(t, api.CodeRevoked, ae.Code)
	code, again, ae := e.register(tok, e.request(tok, next, "r"))
	require.Nil(t, ae)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, reg.DeviceID, again.DeviceID)
}

func TestHostnamesUniqueInZone(t *testing.T) {
	e := newEnv(t)
	tok := e.joinToken(api.DefaultZone, true)
	_, a := e.mustRegister(tok, "m1")
	_, b := e.mustRegister(tok, "M1")
	require.Equal(t, "m1", a.Hostname)
	require.Equal(t, "M1-2", b.Hostname)
	name := "m1"
	var d api.Device
	code, ae := e.call("PATCH", "/v1/devices/self", b.DeviceToken, api.UpdateSelfRequest{Hostname: &name}, &d)
	require.Nil(t, ae)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "m1-2", d.Hostname)
}

func TestPresenceReachesPeersAndTheStore(t *testing.T) {
	e := newEnv(t)
	tok := e.joinToken(api.DefaultZone, true)
	_, a := e.mustRegister(tok, "a")
	_, b := e.mustRegister(tok, "b")
	sa := e.watch(api.DefaultZone, a.DeviceToken, 0)
	require.Equal(t, api.EventSnapshot, sa.next().Type)
	nextPresence := func() api.WatchEvent {
		t.Helper()
		select {
		case ev := <-sa.presence:
			return ev
		case <-time.After(10 * time.Second):
			t.Fatal("no presence event within 10s")
		}
		return api.WatchEvent{}
	}

	sb := e.watch(api.DefaultZone, b.DeviceToken, 0)
	snap := sb.next()
	require.Equal(t, api.EventSnapshot, snap.Type)
	ev := nextPresence()
	require.Equal(t, b.DeviceID, ev.Peer.ID)
	require.True(t, *ev.Peer.Online)
	select {
	case own := <-sb.presence:
		require.NotEqual(t, b.DeviceID, own.Peer.ID, "a member is not told of its own presence")
	default:
	}

	// A snapshot taken now shows who is online.
	sc := e.watch(api.DefaultZone, a.DeviceToken, 0)
	for _, p := range sc.next().Peers {
		require.NotNil(t, p.Online)
		require.Equal(t, p.ID == a.DeviceID || p.ID == b.DeviceID, *p.Online, p.Hostname)
	}
	sc.cancel()

	sb.cancel()
	ev = nextPresence()
	require.Equal(t, b.DeviceID, ev.Peer.ID)
	require.False(t, *ev.Peer.Online)
	require.False(t, ev.Peer.LastSeen.IsZero())

	// The store keeps it: a new server process on the same store knows.
	got, err := e.st.Device(t.Context(), b.DeviceID)
	require.NoError(t, err)
	require.False(t, got.Online)
	require.False(t, got.LastSeen.IsZero())
	got, err = e.st.Device(t.Context(), a.DeviceID)
	require.NoError(t, err)
	require.True(t, got.Online)
}

func TestEphemeralDevicesDeletedWhenOffline(t *testing.T) {
	e := newEnv(t, func(c *serverConfig) {
		c.presenceLease = 150 * time.Millisecond
		// Long enough for registering and connecting under -race.
		c.EphemeralTimeout = 2 * time.Second
	})
	tok := e.joinToken(api.DefaultZone, true)
	eph := newDevice()
	r := e.request(tok, eph, "eph", "172.24.0.0/24")
	r.Ephemeral = true
	e.sign(tok, eph, &r)
	code, reg, ae := e.register(tok, r)
	require.Nil(t, ae)
	require.Equal(t, http.StatusCreated, code)
	require.True(t, reg.Ephemeral)
	_, durable := e.mustRegister(tok, "durable")

	s := e.watch(api.DefaultZone, reg.DeviceToken, 0)
	s.next()
	waitFor(t, "online", func() bool { return *e.adminDevice(reg.DeviceID).Online })
	time.Sleep(2500 * time.Millisecond) // an online ephemeral device stays, however long
	require.True(t, e.adminDevice(reg.DeviceID).Ephemeral)

	s.cancel()
	waitFor(t, "the ephemeral device deleted", func() bool {
		code, _ := e.do("GET", "/v1/devices/"+reg.DeviceID, e.admin, nil)
		return code == http.StatusNotFound
	})
	e.adminDevice(durable.DeviceID) // offline as long, and kept
	e.mustRegister(tok, "next", "172.24.0.0/24")
}

func TestPresenceFollowsPolicyViews(t *testing.T) {
	e := newEnv(t)
	plain := e.joinToken(api.DefaultZone, true)
	web := e.taggedToken(api.DefaultZone, "web")
	_, n1 := e.mustRegister(web, "node1")
	_, n2 := e.mustRegister(plain, "node2")
	_, lt := e.mustRegister(plain, "laptop")
	// The laptop sees node1 (the web tier), not node2.
	_, ae := e.setPolicy(api.DefaultZone, `{"tags": {"web": []}, "rules": [
		{"from": ["laptop"], "to": ["tag:web:22"], "proto": "tcp"}]}`)
	require.Nil(t, ae)
	ls := e.watch(api.DefaultZone, lt.DeviceToken, 0)
	require.Equal(t, sortedIDs(n1.DeviceID, lt.DeviceID), peerIDs(ls.next().Peers))

	s2 := e.watch(api.DefaultZone, n2.DeviceToken, 0)
	s2.next()
	waitFor(t, "node2 online", func() bool { return *e.adminDevice(n2.DeviceID).Online })
	s1 := e.watch(api.DefaultZone, n1.DeviceToken, 0)
	s1.next()
	select {
	case ev := <-ls.presence:
		require.Equal(t, n1.DeviceID, ev.Peer.ID, "node2's presence is nobody's business")
		require.True(t, *ev.Peer.Online)
	case <-time.After(10 * time.Second):
		t.Fatal("no presence event for node1")
	}
}
