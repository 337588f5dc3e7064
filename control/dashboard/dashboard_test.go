package dashboard

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const testToken = "wma_0123456789abcdef0123456789abcdef"

// fakeAPI records the requests forwarded to it.
type fakeAPI struct {
	mu   sync.Mutex
	reqs []*http.Request
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.reqs = append(f.reqs, r)
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.Write([]byte(`[]`))
}

func (f *fakeAPI) last() *http.Request {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.reqs) == 0 {
		return nil
	}
	return f.reqs[len(f.reqs)-1]
}

func (f *fakeAPI) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.reqs)
}

type testEnv struct {
	t      *testing.T
	ts     *httptest.Server
	api    *fakeAPI
	events chan Event
	now    time.Time
	mu     sync.Mutex // guards now
}

func newTestEnv(t *testing.T, token string) *testEnv {
	e := &testEnv{t: t, api: &fakeAPI{}, events: make(chan Event, 4), now: time.Unix(1_800_000_000, 0)}
	d, err := New(Config{
		AdminToken: token,
		API:        e.api,
		Subscribe:  func(ctx context.Context) (<-chan Event, error) { return e.events, nil },
		KeepAlive:  time.Hour,
		Now: func() time.Time {
			e.mu.Lock()
			defer e.mu.Unlock()
			return e.now
		},
	})
	require.NoError(t, err)
	e.ts = httptest.NewTLSServer(d)
	t.Cleanup(e.ts.Close)
	return e
}

func (e *testEnv) advance(d time.Duration) {
	e.mu.Lock()
	e.now = e.now.Add(d)
	e.mu.Unlock()
}

// do sends a request without following redirects.
func (e *testEnv) do(method, path string, body io.Reader, hdr map[string]string, cookie *http.Cookie) *http.Response {
	e.t.Helper()
	req, err := http.NewRequest(method, e.ts.URL+path, body)
	require.NoError(e.t, err)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	if cookie != nil {
		req.AddCookie(cookie)
	}
	c := e.ts.Client()
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := c.Do(req)
	require.NoError(e.t, err)
	e.t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func (e *testEnv) login(token string) *http.Response {
	form := url.Values{"token": {token}}.Encode()
	return e.do("POST", "/ui/login", strings.NewReader(form), map[string]string{
		"Content-Type": "application/x-www-form-urlencoded", "Origin": e.ts.URL, "Sec-Fetch-Site": "same-origin"}, nil)
}

func sessionCookie(t *testing.T, resp *http.Response) *http.Cookie {
	t.Helper()
	for _, c := range resp.Cookies() {
		if c.Name == CookieName {
			return c
		}
	}
	t.Fatalf("no %s cookie in %v", CookieName, resp.Header["Set-Cookie"])
	return nil
}

func TestNothingButLoginWithoutSession(t *testing.T) {
	e := newTestEnv(t, testToken)
	for _, p := range []string{"/ui/", "/ui/static/app.js", "/ui/static/style.css", "/ui/nope"} {
		resp := e.do("GET", p, nil, nil, nil)
		require.Equal(t, http.StatusSeeOther, resp.StatusCode, p)
		require.Equal(t, "/ui/login", resp.Header.Get("Location"), p)
	}
	for _, p := range []string{"/ui/api/v1/zones", "/ui/events"} {
		resp := e.do("GET", p, nil, nil, nil)
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode, p)
	}
	resp := e.do("GET", "/ui/login", nil, nil, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	body, _ := io.ReadAll(resp.Body)
	require.Contains(t, string(body), `name="token"`)
	require.Contains(t, resp.Header.Get("Content-Security-Policy"), "style-src 'sha256-")
	require.Equal(t, "DENY", resp.Header.Get("X-Frame-Options"))
	require.Zero(t, e.api.count())
}

func TestLogin(t *testing.T) {
	e := newTestEnv(t, testToken)
	resp := e.login("wma_wrong")
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	require.Empty(t, resp.Cookies())
	body, _ := io.ReadAll(resp.Body)
	require.Contains(t, string(body), "not this service&#39;s admin token")

	resp = e.login(testToken)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	require.Equal(t, Path, resp.Header.Get("Location"))
	c := sessionCookie(t, resp)
	require.True(t, c.HttpOnly)
	require.True(t, c.Secure)
	require.Equal(t, http.SameSiteStrictMode, c.SameSite)
	require.Equal(t, Path, c.Path)
	require.NotContains(t, c.Value, testToken)
	require.NotContains(t, c.Value, strings.TrimPrefix(testToken, "wma_"))

	resp = e.do("GET", "/ui/", nil, nil, c)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	body, _ = io.ReadAll(resp.Body)
	require.Contains(t, string(body), "/ui/static/app.js")
	require.Contains(t, resp.Header.Get("Content-Security-Policy"), "script-src 'self'")
	resp = e.do("GET", "/ui/static/app.js", nil, nil, c)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, resp.Header.Get("Content-Type"), "javascript")
	resp = e.do("GET", "/ui/login", nil, nil, c)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode, "logged in: the login page sends you on")
}

func TestSessionForgedOrExpired(t *testing.T) {
	e := newTestEnv(t, testToken)
	c := sessionCookie(t, e.login(testToken))

	exp, mac, _ := strings.Cut(c.Value, ".")
	for _, v := range []string{"", "x", exp + ".", exp + "." + mac + "A", "9999999999." + mac, exp} {
		resp := e.do("GET", "/ui/api/v1/zones", nil, nil, &http.Cookie{Name: CookieName, Value: v})
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "cookie %q", v)
	}
	// A session of another admin token is worthless here.
	other := newSessions("wma_other", time.Hour, func() time.Time { return e.now })
	v, _ := other.issue()
	resp := e.do("GET", "/ui/api/v1/zones", nil, nil, &http.Cookie{Name: CookieName, Value: v})
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)

	resp = e.do("GET", "/ui/api/v1/zones", nil, nil, c)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	e.advance(12*time.Hour + time.Second)
	resp = e.do("GET", "/ui/api/v1/zones", nil, nil, c)
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "expired")
	require.Equal(t, 1, e.api.count())
}

func TestAPIForwarding(t *testing.T) {
	e := newTestEnv(t, testToken)
	c := sessionCookie(t, e.login(testToken))

	resp := e.do("GET", "/ui/api/v1/devices?zone=default", nil, nil, c)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	r := e.api.last()
	require.Equal(t, "/v1/devices", r.URL.Path)
	require.Equal(t, "zone=default", r.URL.RawQuery)
	require.Equal(t, "Bearer "+testToken, r.Header.Get("Authorization"))
	require.Empty(t, r.Header.Get("Cookie"), "the session cookie is not forwarded")

	resp = e.do("GET", "/ui/api/v1/devices/dev_0123456789abcdef?stats=summary", nil, nil, c)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "/v1/devices/dev_0123456789abcdef", e.api.last().URL.Path, "one member, for its peers")
	require.Equal(t, "stats=summary", e.api.last().URL.RawQuery)

	same := map[string]string{"Origin": e.ts.URL, "Sec-Fetch-Site": "same-origin", CSRFHeader: "1", "Content-Type": "application/json"}
	resp = e.do("POST", "/ui/api/v1/tokens", strings.NewReader(`{"zone":"default"}`), same, c)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "POST", e.api.last().Method)
	resp = e.do("DELETE", "/ui/api/v1/tokens/jt_0123456789ab", nil, same, c)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "/v1/tokens/jt_0123456789ab", e.api.last().URL.Path)
	n := e.api.count()

	cases := []struct {
		name, method, path string
		hdr                map[string]string
		want               int
	}{
		{"no CSRF header", "POST", "/ui/api/v1/tokens", map[string]string{"Sec-Fetch-Site": "same-origin"}, http.StatusForbidden},
		{"cross-site", "POST", "/ui/api/v1/tokens", map[string]string{"Sec-Fetch-Site": "cross-site", CSRFHeader: "1"}, http.StatusForbidden},
		{"foreign origin", "DELETE", "/ui/api/v1/tokens/jt_x", map[string]string{"Origin": "https://evil.example", CSRFHeader: "1"}, http.StatusForbidden},
		{"not offered: delete device", "DELETE", "/ui/api/v1/devices/dev_1", same, http.StatusNotFound},
		{"not offered: a device's own routes", "GET", "/ui/api/v1/devices/self", nil, http.StatusNotFound},
		{"not offered: metrics", "GET", "/ui/api/metrics", nil, http.StatusNotFound},
		{"not offered: create zone", "POST", "/ui/api/v1/zones", same, http.StatusNotFound},
		{"not offered: encoded traversal", "DELETE", "/ui/api/v1/tokens/a%2F..%2F..%2Fdevices%2Fx", same, http.StatusNotFound},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp := e.do(tc.method, tc.path, strings.NewReader(`{}`), tc.hdr, c)
			require.Equal(t, tc.want, resp.StatusCode)
		})
	}
	require.Equal(t, n, e.api.count(), "refused requests reach nothing")
}

func TestLoginCSRFAndLogout(t *testing.T) {
	e := newTestEnv(t, testToken)
	form := url.Values{"token": {testToken}}.Encode()
	resp := e.do("POST", "/ui/login", strings.NewReader(form), map[string]string{
		"Content-Type": "application/x-www-form-urlencoded", "Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}, nil)
	require.Equal(t, http.StatusForbidden, resp.StatusCode)
	require.Empty(t, resp.Cookies())

	c := sessionCookie(t, e.login(testToken))
	resp = e.do("POST", "/ui/logout", nil, map[string]string{"Sec-Fetch-Site": "same-origin"}, c)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	out := sessionCookie(t, resp)
	require.Empty(t, out.Value)
	require.Negative(t, out.MaxAge)
}

func TestNoAdminTokenNoLogin(t *testing.T) {
	e := newTestEnv(t, "")
	resp := e.login("")
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	require.Empty(t, resp.Cookies())
	// A cookie made with the empty key is refused too.
	v, _ := newSessions("", time.Hour, func() time.Time { return e.now }).issue()
	resp = e.do("GET", "/ui/api/v1/zones", nil, nil, &http.Cookie{Name: CookieName, Value: v})
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	resp = e.do("GET", "/ui/login", nil, nil, nil)
	body, _ := io.ReadAll(resp.Body)
	require.Contains(t, string(body), "no admin token")
}

func TestEvents(t *testing.T) {
	e := newTestEnv(t, testToken)
	c := sessionCookie(t, e.login(testToken))
	resp := e.do("GET", "/ui/events", nil, nil, c)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
	rd := bufio.NewReader(resp.Body)
	next := func() string {
		var ev []string
		for {
			l, err := rd.ReadString('\n')
			require.NoError(t, err)
			l = strings.TrimRight(l, "\n")
			if l == "" {
				return strings.Join(ev, "|")
			}
			ev = append(ev, l)
		}
	}
	require.Equal(t, "retry: 2000|event: hello|data: {}", next())
	e.events <- Event{Type: "change", Data: []byte("{\"zone\":\"default\",\n\"rev\":3}\n")}
	require.Equal(t, `event: change|data: {"zone":"default","rev":3}`, next())
	close(e.events)
	_, err := rd.ReadString('\n')
	require.ErrorIs(t, err, io.EOF, "the stream ends with its source")
}
