package control

import (
	"net/http"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
)

func TestSelf(t *testing.T) {
	e := newEnv(t)
	tok := e.joinToken(api.DefaultZone, true)
	_, reg := e.mustRegister(tok, "node1", "172.24.0.0/24")
	_, other := e.mustRegister(tok, "node2", "172.28.0.0/24")

	var d api.Device
	_, ae := e.call("GET", "/v1/devices/self", reg.DeviceToken, nil, &d)
	require.Nil(t, ae)
	require.Equal(t, reg.DeviceID, d.ID)
	require.Equal(t, reg.IPv4, d.IPv4)

	host := "node1 new"
	eps := []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:51820")}
	code, ae := e.call("PATCH", "/v1/devices/self", reg.DeviceToken,
		api.UpdateSelfRequest{Hostname: &host, Endpoints: &eps, AddChildPrefixes: []string{"172.25.0.0/24"}}, &d)
	require.Nil(t, ae)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "node1-new", d.Hostname)
	require.Equal(t, eps, d.Endpoints)
	require.Equal(t, []netip.Prefix{netip.MustParsePrefix("172.24.0.0/24"), netip.MustParsePrefix("172.25.0.0/24")}, d.ChildPrefixes)

	for _, tc := range []struct {
		name string
		body any
		code string
	}{
		{"invalid prefix", api.UpdateSelfRequest{AddChildPrefixes: []string{"10.1.2.3/16"}}, api.CodeInvalidPrefix},
		{"other's prefix", api.UpdateSelfRequest{AddChildPrefixes: []string{"172.28.0.0/25"}}, api.CodePrefixConflict},
		{"pool", api.UpdateSelfRequest{AddChildPrefixes: []string{"100.64.0.0/24"}}, api.CodePrefixConflict},
		{"bad hostname", map[string]any{"hostname": ""}, api.CodeBadRequest},
		{"bad endpoint", map[string]any{"endpoints": []string{"1.2.3.4:0"}}, api.CodeInvalidEndpoint},
		{"broadcast endpoint", map[string]any{"endpoints": []string{"255.255.255.255:51820"}}, api.CodeInvalidEndpoint},
		{"unknown field", map[string]any{"zone": "x"}, api.CodeBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.state()
			_, ae := e.call("PATCH", "/v1/devices/self", reg.DeviceToken, tc.body, nil)
			require.NotNil(t, ae)
			require.Equal(t, tc.code, ae.Code, ae.Message)
			require.Equal(t, before, e.state())
		})
	}
	_, ae = e.call("PATCH", "/v1/devices/self", reg.DeviceToken, api.UpdateSelfRequest{AddChildPrefixes: []string{"172.28.0.0/25"}}, nil)
	require.Equal(t, "node2", ae.Owner)

	// Release: only what you hold, strictly parsed.
	for _, tc := range []struct{ path, code string }{
		{"172.28.0.0/24", api.CodeNotFound}, // node2's
		{"10.0.0.0/8", api.CodeNotFound},
		{"172.24.0.1/24", api.CodeInvalidPrefix},
		{"172.24.0.0", api.CodeInvalidPrefix},
	} {
		before := e.state()
		_, ae := e.call("DELETE", "/v1/devices/self/prefixes/"+tc.path, reg.DeviceToken, nil, nil)
		require.NotNil(t, ae, tc.path)
		require.Equal(t, tc.code, ae.Code, ae.Message)
		require.Equal(t, before, e.state())
	}
	code, ae = e.call("DELETE", "/v1/devices/self/prefixes/172.24.0.0/24", reg.DeviceToken, nil, nil)
	require.Nil(t, ae)
	require.Equal(t, http.StatusNoContent, code)
	_, ae = e.call("GET", "/v1/devices/self", reg.DeviceToken, nil, &d)
	require.Nil(t, ae)
	require.Equal(t, []netip.Prefix{netip.MustParsePrefix("172.25.0.0/24")}, d.ChildPrefixes)

	// The released prefix is free for another member now.
	_, ae = e.call("PATCH", "/v1/devices/self", other.DeviceToken, api.UpdateSelfRequest{AddChildPrefixes: []string{"172.24.0.0/24"}}, nil)
	require.Nil(t, ae)
}
