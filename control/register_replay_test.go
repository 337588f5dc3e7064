package control

import (
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
)

// TestRegisterRefusedBodyNotReplayable is issue 12's reproduction: an agent
// restarting with a spent single-use token sends a body signed by the
// victim's key; it is refused for its token. The same body with any other
// join token must not register (it would hand out the victim's device
// token, with which PATCH /v1/devices/self rewrites the victim).
func TestRegisterRefusedBodyNotReplayable(t *testing.T) {
	e := newEnv(t)
	single := e.joinToken(api.DefaultZone, false)
	victim := newDevice()
	code, first, ae := e.register(single, e.request(single, victim, "victim", "172.24.0.0/24"))
	require.Nil(t, ae)
	require.Equal(t, http.StatusCreated, code)

	// The victim restarts with its spent token: a fresh body (new nonce).
	b := e.request(single, victim, "victim")
	b.Nonce = "restart-1"
	b.Endpoints = []netip.AddrPort{netip.MustParseAddrPort("192.0.2.10:51820")}
	e.sign(single, victim, &b)
	code, _, ae = e.register(single, b)
	require.Equal(t, http.StatusUnauthorized, code, ae)

	// An attacker who saw B presents it with a token of their own.
	other := e.joinToken(api.DefaultZone, true)
	before := e.state()
	code, stolen, ae := e.register(other, b)
	require.Equal(t, http.StatusUnauthorized, code, "replayed body registered: %+v", stolen)
	require.NotNil(t, ae)
	require.Equal(t, api.CodeUnauthorized, ae.Code)
	require.Equal(t, before, e.state())

	// A body signed for one token never verifies with another, even unseen.
	fresh := e.request(single, victim, "victim")
	fresh.Nonce = "restart-2"
	e.sign(single, victim, &fresh)
	code, _, ae = e.register(other, fresh)
	require.Equal(t, http.StatusUnauthorized, code, ae)
	require.Contains(t, ae.Message, "proof")
	require.Equal(t, before, e.state())

	// The victim itself, signing for a valid token, still re-registers.
	own := e.request(other, victim, "victim")
	own.Timestamp = time.Now().Unix() + 1
	e.sign(other, victim, &own)
	code, again, ae := e.register(other, own)
	require.Nil(t, ae)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, first.DeviceID, again.DeviceID)
}

// A proof is remembered even when its registration fails in the store
// (here: a prefix conflict), so the same body cannot succeed later, when
// the conflict is gone.
func TestRegisterFailedProofStaysSpent(t *testing.T) {
	e := newEnv(t)
	tok := e.joinToken(api.DefaultZone, true)
	holder, held := e.mustRegister(tok, "holder", "10.9.0.0/24")
	_ = holder
	dev := newDevice()
	r := e.request(tok, dev, "late", "10.9.0.0/24")
	_, _, ae := e.register(tok, r)
	require.NotNil(t, ae)
	require.Equal(t, api.CodePrefixConflict, ae.Code)

	code, ae := e.call("DELETE", "/v1/devices/"+held.DeviceID, e.admin, nil, nil)
	require.Nil(t, ae)
	require.Equal(t, http.StatusNoContent, code)
	before := e.state()
	code, _, ae = e.register(tok, r)
	require.Equal(t, http.StatusUnauthorized, code, ae)
	require.Contains(t, ae.Message, "replayed")
	require.Equal(t, before, e.state())
}
