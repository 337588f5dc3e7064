package control

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
)

// serveFrom sends a request to the handler as if from remote ("ip:port").
func serveFrom(t *testing.T, e *env, remote, method, path, token string, body any, hdr ...string) *httptest.ResponseRecorder {
	t.Helper()
	var b []byte
	switch v := body.(type) {
	case nil:
	case string:
		b = []byte(v)
	default:
		var err error
		b, err = json.Marshal(v)
		require.NoError(t, err)
	}
	req := httptest.NewRequest(method, path, bytes.NewReader(b))
	req.RemoteAddr = remote
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	rec := httptest.NewRecorder()
	e.srv.Handler().ServeHTTP(rec, req)
	return rec
}

// requireRateLimited checks a 429 answer: code rate_limited, Retry-After
// in whole seconds.
func requireRateLimited(t *testing.T, rec *httptest.ResponseRecorder) {
	t.Helper()
	require.Equal(t, http.StatusTooManyRequests, rec.Code, rec.Body.String())
	var ae api.Error
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &ae))
	require.Equal(t, api.CodeRateLimited, ae.Code)
	secs, err := strconv.Atoi(rec.Header().Get("Retry-After"))
	require.NoError(t, err, "Retry-After %q", rec.Header().Get("Retry-After"))
	require.GreaterOrEqual(t, secs, 1)
}

func TestRegistrationRateLimit(t *testing.T) {
	e := newEnv(t, func(c *serverConfig) {
		c.limits.registerBurst = 3
		c.limits.registerRate = 0.001 // no refill within the test
	})
	tok := e.joinToken(api.DefaultZone, true)
	for i := range 3 {
		rec := serveFrom(t, e, "192.0.2.1:1000", "POST", "/v1/devices", tok, e.request(tok, newDevice(), "a"))
		require.Equal(t, http.StatusCreated, rec.Code, "registration %d: %s", i, rec.Body)
	}
	before := e.state()
	requireRateLimited(t, serveFrom(t, e, "192.0.2.1:1001", "POST", "/v1/devices", tok, e.request(tok, newDevice(), "a")))
	require.Equal(t, before, e.state())
	// Another client is not affected; one IPv6 /64 is one client.
	rec := serveFrom(t, e, "192.0.2.2:1000", "POST", "/v1/devices", tok, e.request(tok, newDevice(), "b"))
	require.Equal(t, http.StatusCreated, rec.Code, rec.Body.String())
	for i := range 3 {
		rec := serveFrom(t, e, "[2001:db8::"+strconv.Itoa(i+1)+"]:1000", "POST", "/v1/devices", tok, e.request(tok, newDevice(), "c"))
		require.Equal(t, http.StatusCreated, rec.Code, rec.Body.String())
	}
	requireRateLimited(t, serveFrom(t, e, "[2001:db8::ffff]:1000", "POST", "/v1/devices", tok, e.request(tok, newDevice(), "c")))
	rec = serveFrom(t, e, "[2001:db8:0:1::1]:1000", "POST", "/v1/devices", tok, e.request(tok, newDevice(), "d"))
	require.Equal(t, http.StatusCreated, rec.Code, rec.Body.String())
}

func TestAuthFailureLimit(t *testing.T) {
	e := newEnv(t, func(c *serverConfig) {
		c.limits.authFailBurst = 3
		c.limits.authFailRate = 0.001
	})
	tok := e.joinToken(api.DefaultZone, true)
	_, reg := e.mustRegister(tok, "a")
	const bad = "198.51.100.7:4000"
	// Three refused authentications of any kind use up the budget.
	require.Equal(t, http.StatusUnauthorized, serveFrom(t, e, bad, "GET", "/v1/zones", "wrong", nil).Code)
	require.Equal(t, http.StatusUnauthorized, serveFrom(t, e, bad, "GET", "/v1/devices/self", "wmd_00000000000000000000000000000000", nil).Code)
	require.Equal(t, http.StatusUnauthorized, serveFrom(t, e, bad, "POST", "/v1/devices", "wmj_00000000000000000000000000000000",
		e.request("wmj_00000000000000000000000000000000", newDevice(), "x")).Code)
	// Then every authenticated route refuses that client, even with good
	// credentials, before looking at them.
	requireRateLimited(t, serveFrom(t, e, bad, "GET", "/v1/zones", testAdmin, nil))
	requireRateLimited(t, serveFrom(t, e, bad, "GET", "/v1/devices/self", reg.DeviceToken, nil))
	requireRateLimited(t, serveFrom(t, e, bad, "POST", "/v1/devices", tok, e.request(tok, newDevice(), "y")))
	// Unauthenticated routes still answer; other clients are not affected.
	require.Equal(t, http.StatusOK, serveFrom(t, e, bad, "GET", "/v1/info", "", nil).Code)
	require.Equal(t, http.StatusOK, serveFrom(t, e, "198.51.100.8:4000", "GET", "/v1/zones", testAdmin, nil).Code)
	require.Equal(t, http.StatusOK, serveFrom(t, e, "198.51.100.8:4000", "GET", "/v1/devices/self", reg.DeviceToken, nil).Code)
	// Successful authentications cost nothing.
	for range 10 {
		require.Equal(t, http.StatusOK, serveFrom(t, e, "198.51.100.9:4000", "GET", "/v1/zones", testAdmin, nil).Code)
	}
}

// X-Forwarded-For counts only from a configured proxy.
func TestClientAddrTrustedProxies(t *testing.T) {
	e := newEnv(t, func(c *serverConfig) {
		c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	})
	for _, tc := range []struct {
		remote string
		xff    []string
		want   string
	}{
		{"192.0.2.1:1", nil, "192.0.2.1"},
		{"192.0.2.1:1", []string{"203.0.113.5"}, "192.0.2.1"}, // not a proxy: header ignored
		{"10.1.1.1:1", nil, "10.1.1.1"},
		{"10.1.1.1:1", []string{"203.0.113.5"}, "203.0.113.5"},
		{"10.1.1.1:1", []string{"1.1.1.1, 203.0.113.5, 10.2.2.2"}, "203.0.113.5"}, // right-most untrusted
		{"10.1.1.1:1", []string{"1.1.1.1", "203.0.113.5"}, "203.0.113.5"},
		{"10.1.1.1:1", []string{"garbage, 203.0.113.5"}, "203.0.113.5"},
		{"10.1.1.1:1", []string{"203.0.113.5, garbage"}, "10.1.1.1"},
		{"10.1.1.1:1", []string{"10.3.3.3"}, "10.3.3.3"},
		{"[::1]:1", []string{"2001:db8::7"}, "2001:db8::7"},
		{"[::ffff:192.0.2.9]:1", nil, "192.0.2.9"},
		{"bogus", nil, "invalid IP"},
	} {
		req := httptest.NewRequest("GET", "/", nil)
		req.RemoteAddr = tc.remote
		for _, h := range tc.xff {
			req.Header.Add("X-Forwarded-For", h)
		}
		require.Equal(t, tc.want, e.srv.clientAddr(req).String(), "%s %q", tc.remote, tc.xff)
	}
}

// The limiter table stays bounded: idle buckets go, and a table full of
// busy ones drops one to make room.
func TestClientLimiterBounded(t *testing.T) {
	now := time.Unix(1000, 0)
	l := newClientLimiter(1, 2, 4)
	l.now = func() time.Time { return now }
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}) }
	for i := range 10 {
		ok, _ := l.take(addr(i))
		require.True(t, ok)
		require.LessOrEqual(t, l.len(), 4)
	}
	// Client 9 is in the table with one token left; two takes exhaust it.
	ok, _ := l.take(addr(9))
	require.True(t, ok)
	ok, wait := l.take(addr(9))
	require.False(t, ok)
	require.Equal(t, time.Second, wait)
	blocked, _ := l.check(addr(9))
	require.False(t, blocked)

	// Once every bucket has refilled they are idle and swept.
	now = now.Add(limiterSweepEvery + time.Second)
	ok, _ = l.take(addr(100))
	require.True(t, ok)
	require.Equal(t, 1, l.len())
}

// Options.TrustedProxies reaches the API: a request through the trusted
// proxy is limited by its X-Forwarded-For client.
func TestServiceTrustedProxies(t *testing.T) {
	s := startService(t, Options{DataDir: t.TempDir(), InsecureHTTP: true, STUNListen: "off",
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	defer s.Close()
	req := httptest.NewRequest("GET", "/", nil)
	req.RemoteAddr = "127.0.0.1:5000"
	req.Header.Set("X-Forwarded-For", "203.0.113.9")
	require.Equal(t, netip.MustParseAddr("203.0.113.9"), s.srv.clientAddr(req))
}
