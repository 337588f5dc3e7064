package control

import (
	"net/http"
	"net/netip"
	"net/url"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/ipam"
)

func TestAdminZones(t *testing.T) {
	e := newEnv(t)
	z := e.createZone("lab-1", false)
	require.Equal(t, "lab-1", z.Name)
	require.Equal(t, netip.MustParsePrefix("100.64.0.0/16"), z.IPv4Pool)
	require.Equal(t, ipam.ULAPool("lab-1"), z.IPv6Pool)

	var custom api.Zone
	code, ae := e.call("POST", "/v1/zones", e.admin, api.CreateZoneRequest{Name: "custom", IPv4Pool: "10.77.0.0/20", AllowExitNodes: true}, &custom)
	require.Nil(t, ae)
	require.Equal(t, http.StatusCreated, code)
	require.Equal(t, netip.MustParsePrefix("10.77.0.0/20"), custom.IPv4Pool)
	require.True(t, custom.AllowExitNodes)

	for _, tc := range []struct {
		name string
		req  any
		code string
	}{
		{"exists", api.CreateZoneRequest{Name: "lab-1"}, api.CodeConflict},
		{"default exists", api.CreateZoneRequest{Name: "default"}, api.CodeConflict},
		{"upper case", api.CreateZoneRequest{Name: "Lab"}, api.CodeBadRequest},
		{"leading dash", api.CreateZoneRequest{Name: "-lab"}, api.CodeBadRequest},
		{"empty", api.CreateZoneRequest{Name: ""}, api.CodeBadRequest},
		{"too long", api.CreateZoneRequest{Name: "a123456789012345678901234567890123456789012345678901234567890123"}, api.CodeBadRequest},
		{"pool host bits", api.CreateZoneRequest{Name: "p1", IPv4Pool: "10.0.0.1/16"}, api.CodeInvalidPrefix},
		{"pool wrong family", api.CreateZoneRequest{Name: "p2", IPv4Pool: "fd00::/64"}, api.CodeInvalidPrefix},
		{"v6 pool wrong family", api.CreateZoneRequest{Name: "p3", IPv6Pool: "10.0.0.0/8"}, api.CodeInvalidPrefix},
		{"pool garbage", api.CreateZoneRequest{Name: "p4", IPv4Pool: "nope"}, api.CodeInvalidPrefix},
		{"unknown field", map[string]any{"name": "p5", "color": "red"}, api.CodeBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.state()
			_, ae := e.call("POST", "/v1/zones", e.admin, tc.req, nil)
			require.NotNil(t, ae)
			require.Equal(t, tc.code, ae.Code, ae.Message)
			require.Equal(t, before, e.state())
		})
	}
	_, ae = e.call("POST", "/v1/zones", e.admin, api.CreateZoneRequest{Name: "lab-1"}, nil)
	require.Equal(t, `zone "lab-1" exists`, ae.Message)

	var zs []api.Zone
	_, ae = e.call("GET", "/v1/zones", e.admin, nil, &zs)
	require.Nil(t, ae)
	var names []string
	for _, z := range zs {
		names = append(names, z.Name)
	}
	require.ElementsMatch(t, []string{"default", "lab-1", "custom"}, names)

	var got api.Zone
	_, ae = e.call("GET", "/v1/zones/custom", e.admin, nil, &got)
	require.Nil(t, ae)
	require.Equal(t, custom.IPv4Pool, got.IPv4Pool)
	code, ae = e.call("GET", "/v1/zones/nope", e.admin, nil, nil)
	require.Equal(t, http.StatusNotFound, code, ae)
}

func TestAdminTokens(t *testing.T) {
	e := newEnv(t)
	e.createZone("lab", false)
	var jt api.JoinToken
	code, ae := e.call("POST", "/v1/tokens", e.admin, api.CreateTokenRequest{Zone: "lab", Reusable: true, ExpiresInSeconds: 3600}, &jt)
	require.Nil(t, ae)
	require.Equal(t, http.StatusCreated, code)
	require.NotEmpty(t, jt.Token)
	require.NotEmpty(t, jt.ID)
	require.False(t, jt.ExpiresAt.IsZero())
	secret, fp, err := api.ParseJoinToken(jt.Token)
	require.NoError(t, err)
	require.Nil(t, fp) // plain HTTP: no fingerprint
	require.NotEmpty(t, secret)

	_, ae = e.call("POST", "/v1/tokens", e.admin, api.CreateTokenRequest{Zone: "nope"}, nil)
	require.Equal(t, api.CodeNotFound, ae.Code)
	_, ae = e.call("POST", "/v1/tokens", e.admin, api.CreateTokenRequest{Zone: "lab", ExpiresInSeconds: -1}, nil)
	require.Equal(t, api.CodeBadRequest, ae.Code)

	e.joinToken(api.DefaultZone, false)
	var all, lab []api.JoinToken
	_, ae = e.call("GET", "/v1/tokens", e.admin, nil, &all)
	require.Nil(t, ae)
	require.Len(t, all, 2)
	_, ae = e.call("GET", "/v1/tokens?zone=lab", e.admin, nil, &lab)
	require.Nil(t, ae)
	require.Len(t, lab, 1)
	require.Equal(t, jt.ID, lab[0].ID)
	require.Empty(t, lab[0].Token) // the secret is only shown once
	_, ae = e.call("GET", "/v1/tokens?zone=nope", e.admin, nil, nil)
	require.Equal(t, api.CodeNotFound, ae.Code)

	code, ae = e.call("DELETE", "/v1/tokens/"+jt.ID, e.admin, nil, nil)
	require.Nil(t, ae)
	require.Equal(t, http.StatusNoContent, code)
	_, ae = e.call("DELETE", "/v1/tokens/"+jt.ID, e.admin, nil, nil)
	require.Equal(t, api.CodeNotFound, ae.Code)
	// A deleted token no longer registers.
	code, _, _ = e.register(jt.Token, e.request(jt.Token, newDevice(), "x"))
	require.Equal(t, http.StatusUnauthorized, code)
}

func TestAdminDevicesAndPrefixes(t *testing.T) {
	e := newEnv(t)
	e.createZone("lab", false)
	_, a := e.mustRegister(e.joinToken(api.DefaultZone, false), "a", "172.24.0.0/24")
	_, b := e.mustRegister(e.joinToken("lab", false), "b", "172.24.0.0/24") // zones may overlap

	var devs []api.Device
	_, ae := e.call("GET", "/v1/devices", e.admin, nil, &devs)
	require.Nil(t, ae)
	require.Len(t, devs, 2)
	_, ae = e.call("GET", "/v1/devices?zone=lab", e.admin, nil, &devs)
	require.Nil(t, ae)
	require.Len(t, devs, 1)
	require.Equal(t, b.DeviceID, devs[0].ID)
	_, ae = e.call("GET", "/v1/devices?zone=nope", e.admin, nil, nil)
	require.Equal(t, api.CodeNotFound, ae.Code)

	var d api.Device
	_, ae = e.call("GET", "/v1/devices/"+a.DeviceID, e.admin, nil, &d)
	require.Nil(t, ae)
	require.Equal(t, "a", d.Hostname)
	_, ae = e.call("GET", "/v1/devices/nope", e.admin, nil, nil)
	require.Equal(t, api.CodeNotFound, ae.Code)

	var ps []api.PrefixEntry
	_, ae = e.call("GET", "/v1/prefixes?zone=default", e.admin, nil, &ps)
	require.Nil(t, ae)
	require.Equal(t, []api.PrefixEntry{{Zone: "default", Prefix: netip.MustParsePrefix("172.24.0.0/24"), DeviceID: a.DeviceID, Hostname: "a"}}, ps)

	for _, tc := range []struct{ path, code string }{
		{"/v1/zones/default/prefixes/172.24.0.1/24", api.CodeInvalidPrefix},
		{"/v1/zones/default/prefixes/172.24.0.0/024", api.CodeInvalidPrefix},
		{"/v1/zones/default/prefixes/" + url.PathEscape("172.24.0.0/24 "), api.CodeInvalidPrefix},
		{"/v1/zones/default/prefixes/10.0.0.0/8", api.CodeNotFound},
		{"/v1/zones/nope/prefixes/172.24.0.0/24", api.CodeNotFound},
		{"/v1/zones/BAD/prefixes/172.24.0.0/24", api.CodeBadRequest},
	} {
		before := e.state()
		_, ae := e.call("DELETE", tc.path, e.admin, nil, nil)
		require.NotNil(t, ae, tc.path)
		require.Equal(t, tc.code, ae.Code, "%s: %s", tc.path, ae.Message)
		require.Equal(t, before, e.state())
	}
	code, ae := e.call("DELETE", "/v1/zones/default/prefixes/172.24.0.0/24", e.admin, nil, nil)
	require.Nil(t, ae)
	require.Equal(t, http.StatusNoContent, code)
	_, ae = e.call("GET", "/v1/prefixes", e.admin, nil, &ps)
	require.Nil(t, ae)
	require.Len(t, ps, 1)
	require.Equal(t, "lab", ps[0].Zone)

	code, ae = e.call("DELETE", "/v1/devices/"+a.DeviceID, e.admin, nil, nil)
	require.Nil(t, ae)
	require.Equal(t, http.StatusNoContent, code)
	_, ae = e.call("DELETE", "/v1/devices/"+a.DeviceID, e.admin, nil, nil)
	require.Equal(t, api.CodeNotFound, ae.Code)
	// Its device token is gone with it.
	code, _ = e.call("GET", "/v1/devices/self", a.DeviceToken, nil, nil)
	require.Equal(t, http.StatusUnauthorized, code)
}

func TestCredentialsSeparated(t *testing.T) {
	// 76 refused calls from one client: lift the failed-authentication
	// limit, which TestAuthFailureLimit covers.
	e := newEnv(t, func(c *serverConfig) { c.limits.authFailBurst = 1000 })
	tok := e.joinToken(api.DefaultZone, true)
	_, reg := e.mustRegister(tok, "a", "192.168.50.0/24")
	adminCalls := []struct{ method, path string }{
		{"GET", "/v1/zones"}, {"POST", "/v1/zones"}, {"GET", "/v1/zones/default"},
		{"POST", "/v1/tokens"}, {"GET", "/v1/tokens"}, {"DELETE", "/v1/tokens/x"},
		{"GET", "/v1/devices"}, {"GET", "/v1/devices/" + reg.DeviceID}, {"DELETE", "/v1/devices/" + reg.DeviceID},
		{"GET", "/v1/prefixes"}, {"DELETE", "/v1/zones/default/prefixes/192.168.50.0/24"}, {"GET", "/metrics"},
	}
	for _, c := range adminCalls {
		for _, cred := range []string{"", reg.DeviceToken, tok, "wrong", testAdmin + "x"} {
			before := e.state()
			code, body := e.do(c.method, c.path, cred, `{"name":"zz","zone":"default"}`)
			require.Equal(t, http.StatusUnauthorized, code, "%s %s with %q: %s", c.method, c.path, cred, body)
			require.Equal(t, before, e.state())
		}
	}
	selfCalls := []struct{ method, path string }{
		{"GET", "/v1/devices/self"}, {"PATCH", "/v1/devices/self"},
		{"DELETE", "/v1/devices/self/prefixes/192.168.50.0/24"}, {"GET", "/v1/zones/default/watch"},
	}
	for _, c := range selfCalls {
		for _, cred := range []string{"", testAdmin, tok, "wmd_00000000000000000000000000000000"} {
			before := e.state()
			code, body := e.do(c.method, c.path, cred, `{"hostname":"evil"}`)
			require.Equal(t, http.StatusUnauthorized, code, "%s %s with %q: %s", c.method, c.path, cred, body)
			require.Equal(t, before, e.state())
		}
	}
	code, body := e.do("GET", "/metrics", testAdmin, nil)
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, string(body), "wiremesh_registrations_total")
	code, _ = e.do("GET", "/v1/nothing", "", nil)
	require.Equal(t, http.StatusNotFound, code)
}

func TestNoAdminTokenDisablesAdmin(t *testing.T) {
	e := newEnv(t, func(c *serverConfig) { c.AdminToken = "" })
	code, _ := e.do("GET", "/v1/zones", "", nil)
	require.Equal(t, http.StatusUnauthorized, code)
	code, _ = e.do("GET", "/v1/zones", "Bearer", nil)
	require.Equal(t, http.StatusUnauthorized, code)
}
