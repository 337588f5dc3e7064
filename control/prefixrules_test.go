package control

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/control/store"
)

// requestNonce is e.request with a fresh nonce, so that the same device may
// send the same body twice.
func (e *env) requestNonce(tok string, d testDevice, hostname string, prefixes ...string) api.RegisterRequest {
	e.t.Helper()
	n := make([]byte, 8)
	_, _ = rand.Read(n)
	r := api.RegisterRequest{PublicKey: d.pub, Hostname: hostname, ChildPrefixes: prefixes,
		Timestamp: time.Now().Unix(), Nonce: hex.EncodeToString(n)}
	e.sign(tok, d, &r)
	return r
}

// TestPrefixRulesSameEverywhere checks issue 10's rule: the same prefixes
// get the same answer whether they come at registration or in a PATCH, and
// whether control or the store decides (ipam.CheckPrefixes in both).
func TestPrefixRulesSameEverywhere(t *testing.T) {
	e := newEnv(t)
	var tight api.Zone
	code, ae := e.call("POST", "/v1/zones", e.admin, api.CreateZoneRequest{Name: "tight",
		MinPrefixBits4: 16, MinPrefixBits6: 48, MaxPrefixes: 2}, &tight)
	require.Nil(t, ae)
	require.Equal(t, http.StatusCreated, code)
	other := e.joinToken(api.DefaultZone, true)
	e.mustRegister(other, "other", "172.30.0.0/16")

	many := make([]string, 0, 64)
	for i := range 64 {
		many = append(many, netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 20, byte(i), 0}), 24).String())
	}
	tests := []struct {
		name      string
		zone      string
		held, add []string
		want      string // "" = accepted
	}{
		{"new prefix", api.DefaultZone, []string{"10.78.0.0/16"}, []string{"172.24.0.0/24"}, ""},
		{"held again", api.DefaultZone, []string{"10.78.0.0/16"}, []string{"10.78.0.0/16"}, ""},
		{"own inside (issue 10)", api.DefaultZone, []string{"10.78.0.0/16"}, []string{"10.78.1.0/24"}, api.CodePrefixConflict},
		{"own containing", api.DefaultZone, []string{"10.78.1.0/24"}, []string{"10.78.0.0/16"}, api.CodePrefixConflict},
		{"other device", api.DefaultZone, nil, []string{"172.30.1.0/24"}, api.CodePrefixConflict},
		{"tunnel pool", api.DefaultZone, nil, []string{"100.64.0.0/24"}, api.CodePrefixConflict},
		{"reserved", api.DefaultZone, nil, []string{"127.0.0.0/8"}, api.CodeInvalidPrefix},
		{"host bits", api.DefaultZone, nil, []string{"10.1.2.3/16"}, api.CodeInvalidPrefix},
		{"default route", api.DefaultZone, nil, []string{"0.0.0.0/0"}, api.CodeInvalidPrefix},
		{"near-default v4 (issue 12)", api.DefaultZone, nil, []string{"1.0.0.0/8"}, api.CodePrefixTooWide},
		{"near-default v4 /5", api.DefaultZone, nil, []string{"8.0.0.0/5"}, api.CodePrefixTooWide},
		{"near-default v4 /3", api.DefaultZone, nil, []string{"128.0.0.0/3"}, api.CodePrefixTooWide},
		{"near-default v6", api.DefaultZone, nil, []string{"2000::/3"}, api.CodePrefixTooWide},
		{"zone limit v4", "tight", nil, []string{"172.16.0.0/12"}, api.CodePrefixTooWide},
		{"zone limit v6", "tight", nil, []string{"fd00:1::/40"}, api.CodePrefixTooWide},
		{"zone count", "tight", []string{"172.24.0.0/24"}, []string{"172.25.0.0/24", "172.26.0.0/24"}, api.CodeTooManyPrefixes},
		{"default count", api.DefaultZone, many[:1], many[1:], ""},
		{"over the default count", api.DefaultZone, many[:1], append(many[1:], "172.21.0.0/24"), api.CodeTooManyPrefixes},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok := e.joinToken(tt.zone, true)
			dev, reg := e.mustRegister(tok, "dev", tt.held...)
			d, err := e.st.Device(context.Background(), reg.DeviceID)
			require.NoError(t, err)
			defer func() { require.NoError(t, e.st.DeleteDevice(context.Background(), d.ID)) }()
			answers := map[string]string{}
			check := func(where, code string) {
				t.Helper()
				answers[where] = code
				if code == "" { // accepted: undo what was added
					for _, p := range tt.add {
						if !containsString(tt.held, p) {
							_ = e.st.ReleasePrefix(context.Background(), tt.zone, netip.MustParsePrefix(p), d.ID)
						}
					}
				}
			}
			before := e.state()
			// Control, at registration of the same key.
			_, _, ae := e.register(tok, e.requestNonce(tok, dev, "dev", tt.add...))
			check("control register", codeOf(ae))
			if ae != nil {
				require.Equal(t, before, e.state())
			}
			// Control, in a PATCH.
			_, ae = e.call("PATCH", "/v1/devices/self", reg.DeviceToken, api.UpdateSelfRequest{AddChildPrefixes: tt.add}, nil)
			check("control patch", codeOf(ae))
			if ae != nil {
				require.Equal(t, before, e.state())
			}
			// The store alone, both ways (prefixes that parse only).
			add := make([]netip.Prefix, 0, len(tt.add))
			for _, s := range tt.add {
				add = append(add, netip.MustParsePrefix(s)) // host bits kept
			}
			_, _, err = e.st.Register(context.Background(), store.RegisterParams{Zone: tt.zone,
				JoinTokenHash: tokenHash(t, tok), DeviceTokenHash: sha256.Sum256([]byte(tt.name)),
				PublicKey: store.Key(dev.pub), Hostname: "dev", Prefixes: add, Now: time.Now()})
			check("store register", storeCode(e, err))
			_, err = e.st.UpdateDevice(context.Background(), d.ID, store.UpdateParams{AddPrefixes: add, Now: time.Now()})
			check("store update", storeCode(e, err))
			for where, got := range answers {
				require.Equal(t, tt.want, got, where)
			}
		})
	}
}

func codeOf(ae *api.Error) string {
	if ae == nil {
		return ""
	}
	return ae.Code
}

func storeCode(e *env, err error) string {
	if err == nil {
		return ""
	}
	return e.srv.storeErr(context.Background(), "test", err).Code
}

func containsString(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// tokenHash is the store's hash of a join token's secret.
func tokenHash(t *testing.T, tok string) [32]byte {
	t.Helper()
	secret, _, err := api.ParseJoinToken(tok)
	require.NoError(t, err)
	return sha256.Sum256([]byte(secret))
}

// TestZoneLimitsAPI checks the zone limits on the admin API: defaults are
// reported, settings round-trip, and out-of-range settings are refused.
func TestZoneLimitsAPI(t *testing.T) {
	e := newEnv(t)
	var z api.Zone
	code, ae := e.call("GET", "/v1/zones/"+api.DefaultZone, e.admin, nil, &z)
	require.Nil(t, ae, "status %d", code)
	require.Equal(t, 12, z.MinPrefixBits4)
	require.Equal(t, 32, z.MinPrefixBits6)
	require.Equal(t, 64, z.MaxPrefixes)

	_, ae = e.call("POST", "/v1/zones", e.admin, api.CreateZoneRequest{Name: "wide", MinPrefixBits4: 8, MaxPrefixes: 200}, &z)
	require.Nil(t, ae)
	require.Equal(t, 8, z.MinPrefixBits4)
	require.Equal(t, 32, z.MinPrefixBits6)
	require.Equal(t, 200, z.MaxPrefixes)
	_, reg := e.mustRegister(e.joinToken("wide", false), "lab", "10.0.0.0/8")
	require.Equal(t, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, reg.ChildPrefixes)

	for _, req := range []api.CreateZoneRequest{
		{Name: "b1", MinPrefixBits4: 33},
		{Name: "b2", MinPrefixBits6: 129},
		{Name: "b3", MinPrefixBits4: -1},
		{Name: "b4", MaxPrefixes: 100000},
	} {
		before := e.state()
		_, ae := e.call("POST", "/v1/zones", e.admin, req, nil)
		require.NotNil(t, ae)
		require.Equal(t, api.CodeBadRequest, ae.Code, ae.Message)
		require.Equal(t, before, e.state())
	}
	require.Equal(t, api.DefaultZone, store.DefaultZone)
}

// TestRegisterNonCanonicalKey checks issue 12: the same private key behind
// its public key with bit 255 set does not register as a second device.
func TestRegisterNonCanonicalKey(t *testing.T) {
	e := newEnv(t)
	tok := e.joinToken(api.DefaultZone, true)
	dev, _ := e.mustRegister(tok, "victim")
	alias := dev
	alias.pub[31] |= 0x80
	before := e.state()
	code, _, ae := e.register(tok, e.requestNonce(tok, alias, "twin"))
	require.NotNil(t, ae, "status %d", code)
	require.Equal(t, api.CodeInvalidKey, ae.Code)
	require.Contains(t, ae.Message, "bit 255")
	require.Equal(t, before, e.state())
}

func TestEndpointRules(t *testing.T) {
	for _, tt := range []struct {
		in string
		ok bool
	}{
		{"192.0.2.1:51820", true},
		{"127.0.0.1:51820", true}, // members on one host
		{"[2001:db8::1]:51820", true},
		{"10.1.2.3:1", true},
		{"255.255.255.255:51820", false},
		{"0.1.2.3:51820", false},
		{"0.0.0.0:51820", false},
		{"[::]:51820", false},
		{"224.0.0.1:51820", false},
		{"239.255.255.250:1900", false},
		{"[ff02::1]:51820", false},
		{"240.0.0.1:51820", false},
		{"192.0.2.1:0", false},
		{"[::ffff:192.0.2.1]:51820", false},
		{"[fe80::1%eth0]:51820", false},
	} {
		err := checkEndpoints([]netip.AddrPort{netip.MustParseAddrPort(tt.in)})
		if tt.ok {
			require.Nil(t, err, tt.in)
			continue
		}
		require.NotNil(t, err, tt.in)
		require.Equal(t, api.CodeInvalidEndpoint, err.Code, tt.in)
		require.Contains(t, err.Message, tt.in)
	}
	require.Equal(t, api.CodeInvalidEndpoint, checkEndpoints([]netip.AddrPort{{}}).Code)
}
