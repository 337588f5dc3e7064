package control

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
)

func TestRegisterInvalidPrefixes(t *testing.T) {
	e := newEnv(t)
	tok := e.joinToken(api.DefaultZone, true)
	for _, in := range []string{
		"10.1.2.3/16", "::ffff:10.0.0.0/104", "0.0.0.0/0", "::/0", "127.0.0.0/8",
		"169.254.0.0/16", "224.0.0.0/4", "fe80::/64", "0.0.0.0/8", "10.0.0.0/33",
		"10.0.0.0/024", " 10.0.0.0/8", "10.0.0.0 /8", "10.0.0.0/ 8", "fe80::1%eth0/128",
		"fd00::%zone/64", "", "10.0.0.0", "banana",
	} {
		t.Run(in, func(t *testing.T) {
			before := e.state()
			code, _, ae := e.register(tok, e.request(tok, newDevice(), "host", in))
			require.Equal(t, http.StatusBadRequest, code)
			require.Equal(t, api.CodeInvalidPrefix, ae.Code)
			require.Contains(t, ae.Message, `"`+in) // quotes the input
			require.Equal(t, before, e.state())
		})
	}
}

func TestRegisterExitNodes(t *testing.T) {
	e := newEnv(t)
	e.createZone("exits", true)
	tok := e.joinToken("exits", false)
	_, resp := e.mustRegister(tok, "exit", "0.0.0.0/0", "::/0")
	require.Equal(t, []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}, sortPrefixes(resp.ChildPrefixes))
}

func sortPrefixes(ps []netip.Prefix) []netip.Prefix {
	out := append([]netip.Prefix(nil), ps...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j].Addr().Is4() && !out[i].Addr().Is4() {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

func TestRegisterConflicts(t *testing.T) {
	e := newEnv(t)
	tok := e.joinToken(api.DefaultZone, true)
	_, owner := e.mustRegister(tok, "node1", "10.10.0.0/16")
	tests := []struct {
		name, prefix, wantPrefix, wantOwner string
	}{
		{"equal", "10.10.0.0/16", "10.10.0.0/16", "node1"},
		{"inside", "10.10.5.0/24", "10.10.0.0/16", "node1"},
		{"containing", "10.0.0.0/12", "10.10.0.0/16", "node1"},
		{"ipv4 pool", "100.64.1.0/24", "100.64.0.0/16", "tunnel pool"},
		{"ipv4 pool containing", "100.64.0.0/12", "100.64.0.0/16", "tunnel pool"},
		{"ipv6 pool", owner.ZoneIPv6.String(), owner.ZoneIPv6.String(), "tunnel pool"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := e.state()
			code, _, ae := e.register(tok, e.request(tok, newDevice(), "node2", "192.168.7.0/24", tc.prefix))
			require.Equal(t, http.StatusConflict, code)
			require.Equal(t, api.CodePrefixConflict, ae.Code)
			require.Equal(t, tc.wantPrefix, ae.Prefix)
			require.Equal(t, tc.wantOwner, ae.Owner)
			require.Contains(t, ae.Message, tc.wantOwner)
			require.Equal(t, before, e.state())
		})
	}
	// Duplicates within one request are fine.
	_, resp := e.mustRegister(tok, "node3", "192.168.9.0/24", "192.168.9.0/24")
	require.Equal(t, []netip.Prefix{netip.MustParsePrefix("192.168.9.0/24")}, resp.ChildPrefixes)
}

func TestRegisterRefused(t *testing.T) {
	e := newEnv(t)
	tok := e.joinToken(api.DefaultZone, true)
	dev := newDevice()
	valid := func() api.RegisterRequest { return e.request(tok, dev, "host", "192.168.1.0/24") }
	resign := func(r *api.RegisterRequest) { e.sign(tok, dev, r) }
	raw := func(r api.RegisterRequest) map[string]any {
		b, _ := json.Marshal(r)
		var m map[string]any
		require.NoError(t, json.Unmarshal(b, &m))
		return m
	}
	tests := []struct {
		name     string
		token    string
		body     func() any
		wantCode string
		wantMsg  string
	}{
		{"short key", tok, func() any {
			m := raw(valid())
			m["public_key"] = base64.StdEncoding.EncodeToString(make([]byte, 31))
			return m
		}, api.CodeInvalidKey, "31 bytes"},
		{"key not base64", tok, func() any { m := raw(valid()); m["public_key"] = "not*base64"; return m }, api.CodeInvalidKey, "not base64"},
		{"zero key", tok, func() any {
			m := raw(valid())
			m["public_key"] = api.Key{}.String()
			return m
		}, api.CodeInvalidKey, "zero"},
		{"missing key", tok, func() any { m := raw(valid()); delete(m, "public_key"); return m }, api.CodeInvalidKey, "missing"},
		{"bad proof", tok, func() any { r := valid(); r.Proof[3] ^= 1; return r }, api.CodeUnauthorized, "proof"},
		{"proof for other body", tok, func() any { r := valid(); r.Hostname = "other"; return r }, api.CodeUnauthorized, "proof"},
		{"short proof", tok, func() any { r := valid(); r.Proof = r.Proof[:16]; return r }, api.CodeUnauthorized, "proof"},
		{"stale timestamp", tok, func() any {
			r := valid()
			r.Timestamp = time.Now().Add(-10 * time.Minute).Unix()
			resign(&r)
			return r
		}, api.CodeUnauthorized, "stale timestamp"},
		{"future timestamp", tok, func() any {
			r := valid()
			r.Timestamp = time.Now().Add(10 * time.Minute).Unix()
			resign(&r)
			return r
		}, api.CodeUnauthorized, "stale timestamp"},
		{"unknown zone", tok, func() any { r := valid(); r.Zone = "nope"; resign(&r); return r }, api.CodeNotFound, `"nope"`},
		{"unknown field", tok, func() any { m := raw(valid()); m["admin"] = true; return m }, api.CodeBadRequest, "unknown field"},
		{"not json", tok, func() any { return "{" }, api.CodeBadRequest, "invalid JSON"},
		{"trailing data", tok, func() any { b, _ := json.Marshal(valid()); return string(b) + "{}" }, api.CodeBadRequest, "invalid JSON"},
		{"too large", tok, func() any {
			return `{"hostname":"` + strings.Repeat("a", api.MaxBodyBytes) + `"}`
		}, api.CodeTooLarge, "bytes"},
		{"empty hostname", tok, func() any { r := valid(); r.Hostname = " "; resign(&r); return r }, api.CodeBadRequest, "hostname"},
		{"long hostname", tok, func() any { r := valid(); r.Hostname = strings.Repeat("h", 64); resign(&r); return r }, api.CodeBadRequest, "hostname"},
		{"control char hostname", tok, func() any { r := valid(); r.Hostname = "a\x00b"; resign(&r); return r }, api.CodeBadRequest, "hostname"},
		{"bad endpoint", tok, func() any {
			r := valid()
			r.Endpoints = []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:51820")}
			resign(&r)
			return r
		}, api.CodeInvalidEndpoint, "endpoint"},
		{"missing token", "", func() any { return valid() }, api.CodeUnauthorized, "join token"},
		{"malformed token", "wmj_nothex", func() any { return valid() }, api.CodeUnauthorized, "join token"},
		{"unknown token", "wmj_00000000000000000000000000000000", func() any { return valid() }, api.CodeUnauthorized, "join token"},
		{"unknown token, bad body", "wmj_00000000000000000000000000000000", func() any { return "{" }, api.CodeUnauthorized, "join token"},
		{"admin token", testAdmin, func() any { return valid() }, api.CodeUnauthorized, "join token"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := e.state()
			code, ae := e.call("POST", "/v1/devices", tc.token, tc.body(), nil)
			require.NotNil(t, ae, "status %d", code)
			require.Equal(t, tc.wantCode, ae.Code, ae.Message)
			require.Contains(t, ae.Message, tc.wantMsg)
			require.Equal(t, before, e.state())
		})
	}
}

func TestRegisterReplayAndReRegister(t *testing.T) {
	e := newEnv(t)
	tok := e.joinToken(api.DefaultZone, true)
	dev := newDevice()
	req := e.request(tok, dev, "node1", "172.24.0.0/24")
	req.Endpoints = []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:51820")}
	e.sign(tok, dev, &req)
	code, first, ae := e.register(tok, req)
	require.Nil(t, ae)
	require.Equal(t, http.StatusCreated, code)
	require.True(t, first.IPv4.IsValid())
	require.True(t, strings.HasPrefix(first.DeviceToken, api.DeviceTokenPrefix))
	require.Equal(t, netip.MustParsePrefix("100.64.0.0/16"), first.ZoneIPv4)

	// The same signed body again is a replay.
	before := e.state()
	code, _, ae = e.register(tok, req)
	require.Equal(t, http.StatusUnauthorized, code)
	require.Contains(t, ae.Message, "replayed")
	require.Equal(t, before, e.state())

	// A fresh registration of the same key (a restart) keeps everything and
	// adds the new prefix.
	req2 := e.request(tok, dev, "node1-renamed", "172.25.0.0/24")
	req2.Timestamp++ // a different proof even within the same second
	e.sign(tok, dev, &req2)
	code, second, ae := e.register(tok, req2)
	require.Nil(t, ae)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, first.DeviceID, second.DeviceID)
	require.Equal(t, first.IPv4, second.IPv4)
	require.Equal(t, first.IPv6, second.IPv6)
	require.Equal(t, "node1-renamed", second.Hostname)
	require.Equal(t, []netip.Prefix{netip.MustParsePrefix("172.24.0.0/24"), netip.MustParsePrefix("172.25.0.0/24")}, second.ChildPrefixes)
	require.NotEqual(t, first.DeviceToken, second.DeviceToken)

	// Both device tokens work.
	for _, dt := range []string{first.DeviceToken, second.DeviceToken} {
		var d api.Device
		code, ae := e.call("GET", "/v1/devices/self", dt, nil, &d)
		require.Nil(t, ae)
		require.Equal(t, http.StatusOK, code)
		require.Equal(t, first.DeviceID, d.ID)
	}
}

func TestRegisterSingleUseToken(t *testing.T) {
	e := newEnv(t)
	tok := e.joinToken(api.DefaultZone, false)
	e.mustRegister(tok, "a")
	before := e.state()
	code, _, ae := e.register(tok, e.request(tok, newDevice(), "b"))
	require.Equal(t, http.StatusUnauthorized, code, ae)
	require.Equal(t, before, e.state())
}

func TestRegisterZoneMismatchAndExpiry(t *testing.T) {
	now := time.Now()
	clock := func() time.Time { return now }
	e := newEnv(t, func(c *serverConfig) { c.Now = func() time.Time { return clock() } })
	e.createZone("lab", false)
	tok := e.joinToken(api.DefaultZone, true)

	d := newDevice()
	r := e.request(tok, d, "x")
	r.Zone = "lab"
	e.sign(tok, d, &r)
	before := e.state()
	code, _, ae := e.register(tok, r)
	require.Equal(t, http.StatusUnauthorized, code)
	require.Contains(t, ae.Message, `"lab"`)
	require.Equal(t, before, e.state())

	// An expired token is refused.
	short, err := e.srv.CreateJoinToken(t.Context(), "lab", true, time.Minute)
	require.NoError(t, err)
	now = now.Add(2 * time.Minute)
	clock = func() time.Time { return now }
	r = e.request(tok, newDevice(), "y")
	r.Timestamp = now.Unix()
	dd := newDevice()
	r.PublicKey = dd.pub
	e.sign(short, dd, &r)
	code, _, ae = e.register(short, r)
	require.Equal(t, http.StatusUnauthorized, code, ae)
}

func TestRegisterRequestedAddress(t *testing.T) {
	e := newEnv(t)
	tok := e.joinToken(api.DefaultZone, true)
	d := newDevice()
	r := e.request(tok, d, "a")
	r.RequestedIPv4 = netip.MustParseAddr("100.64.0.77")
	e.sign(tok, d, &r)
	_, resp, ae := e.register(tok, r)
	require.Nil(t, ae)
	require.Equal(t, r.RequestedIPv4, resp.IPv4)

	for _, tc := range []struct {
		addr, code string
	}{
		{"100.64.0.77", api.CodeAddrInUse},
		{"10.0.0.1", api.CodeBadRequest},
	} {
		d := newDevice()
		r := e.request(tok, d, "b")
		r.RequestedIPv4 = netip.MustParseAddr(tc.addr)
		e.sign(tok, d, &r)
		before := e.state()
		_, _, ae := e.register(tok, r)
		require.NotNil(t, ae)
		require.Equal(t, tc.code, ae.Code, ae.Message)
		require.Equal(t, before, e.state())
	}
}

func TestRegisterPoolExhausted(t *testing.T) {
	e := newEnv(t)
	code, ae := e.call("POST", "/v1/zones", e.admin, api.CreateZoneRequest{Name: "tiny", IPv4Pool: "10.99.0.0/30"}, nil)
	if ae != nil {
		t.Skipf("a /30 pool is refused by ipam.ValidatePool: %s", ae.Message)
	}
	require.Equal(t, http.StatusCreated, code)
	tok := e.joinToken("tiny", true)
	var err *api.Error
	for i := range 8 {
		_, _, err = e.register(tok, e.request(tok, newDevice(), "n"))
		if err != nil {
			require.Greater(t, i, 0)
			break
		}
	}
	require.NotNil(t, err)
	require.Equal(t, api.CodePoolExhausted, err.Code)
}

// A signed registration replayed after the service restarted (a new
// server on the same store, empty in-memory cache) is still refused: the
// store remembers proofs.
func TestRegisterReplayAfterRestart(t *testing.T) {
	e := newEnv(t)
	tok := e.joinToken(api.DefaultZone, true)
	dev := newDevice()
	req := e.request(tok, dev, "node1")
	e.sign(tok, dev, &req)
	code, _, ae := e.register(tok, req)
	require.Nil(t, ae)
	require.Equal(t, http.StatusCreated, code)

	srv2, err := newServer(serverConfig{Store: e.st, PrivateKey: e.priv, AdminToken: testAdmin, HeartbeatInterval: time.Hour})
	require.NoError(t, err)
	ts2 := httptest.NewServer(srv2.Handler())
	t.Cleanup(func() { srv2.Close(); ts2.Close() })
	e2 := *e
	e2.srv, e2.ts = srv2, ts2
	before := e.state()
	code, _, ae = e2.register(tok, req)
	require.Equal(t, http.StatusUnauthorized, code)
	require.NotNil(t, ae)
	require.Contains(t, ae.Message, "replayed")
	require.Equal(t, before, e.state())
}
