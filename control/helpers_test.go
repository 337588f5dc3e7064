package control

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/control/store"
)

const testAdmin = "wma_testadmintoken"

// env is a server over a real SQLite store behind httptest (plain HTTP).
type env struct {
	t     testing.TB
	srv   *server
	st    *store.SQLite
	ts    *httptest.Server
	admin string
	priv  api.Key
}

func newEnv(t testing.TB, mods ...func(*serverConfig)) *env {
	t.Helper()
	st, err := store.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), DBFile))
	require.NoError(t, err)
	var priv api.Key
	_, _ = rand.Read(priv[:])
	cfg := serverConfig{Store: st, PrivateKey: priv, AdminToken: testAdmin, HeartbeatInterval: time.Hour}
	for _, m := range mods {
		m(&cfg)
	}
	srv, err := newServer(cfg)
	require.NoError(t, err)
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		srv.Close()
		ts.Close()
		st.Close()
	})
	return &env{t: t, srv: srv, st: st, ts: ts, admin: testAdmin, priv: priv}
}

// do sends a request; body may be nil, []byte, string or a value to encode.
func (e *env) do(method, path, token string, body any) (int, []byte) {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	case string:
		rd = strings.NewReader(b)
	default:
		j, err := json.Marshal(b)
		require.NoError(e.t, err)
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, e.ts.URL+path, rd)
	require.NoError(e.t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := e.ts.Client().Do(req)
	require.NoError(e.t, err)
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	require.NoError(e.t, err)
	return resp.StatusCode, out
}

// call is do plus decoding: out on 2xx, the *api.Error otherwise.
func (e *env) call(method, path, token string, body, out any) (int, *api.Error) {
	e.t.Helper()
	code, b := e.do(method, path, token, body)
	return decodeAnswer(e.t, code, b, out)
}

func decodeAnswer(t testing.TB, code int, b []byte, out any) (int, *api.Error) {
	t.Helper()
	if code >= 300 {
		var ae api.Error
		require.NoError(t, json.Unmarshal(b, &ae), "error body %q", b)
		require.Equal(t, api.StatusForCode(ae.Code), code, "status/code mismatch: %s", b)
		return code, &ae
	}
	if out != nil && len(b) > 0 {
		require.NoError(t, json.Unmarshal(b, out), "body %q", b)
	}
	return code, nil
}

// callURL is call against any URL with any client.
func callURL(t testing.TB, hc *http.Client, method, url, token string, body, out any) (int, *api.Error) {
	t.Helper()
	j, err := json.Marshal(body)
	require.NoError(t, err)
	req, err := http.NewRequest(method, url, bytes.NewReader(j))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := hc.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return decodeAnswer(t, resp.StatusCode, b, out)
}

func (e *env) createZone(name string, allowExit bool) api.Zone {
	e.t.Helper()
	var z api.Zone
	code, ae := e.call("POST", "/v1/zones", e.admin, api.CreateZoneRequest{Name: name, AllowExitNodes: allowExit}, &z)
	require.Nil(e.t, ae)
	require.Equal(e.t, http.StatusCreated, code)
	return z
}

func (e *env) joinToken(zone string, reusable bool) string {
	e.t.Helper()
	tok, err := e.srv.CreateJoinToken(context.Background(), zone, reusable, 0)
	require.NoError(e.t, err)
	return tok
}

type testDevice struct{ priv, pub api.Key }

func newDevice() testDevice {
	var d testDevice
	_, _ = rand.Read(d.priv[:])
	d.pub = api.PublicKey(d.priv)
	return d
}

// request builds a registration signed for the join token tok.
func (e *env) request(tok string, d testDevice, hostname string, prefixes ...string) api.RegisterRequest {
	e.t.Helper()
	r := api.RegisterRequest{
		PublicKey:     d.pub,
		Hostname:      hostname,
		ChildPrefixes: prefixes,
		Timestamp:     time.Now().Unix(),
	}
	e.sign(tok, d, &r)
	return r
}

// sign (re-)signs r with d's key for the join token tok.
func (e *env) sign(tok string, d testDevice, r *api.RegisterRequest) {
	e.t.Helper()
	secret, _, err := api.ParseJoinToken(tok)
	if err != nil {
		secret = tok // a malformed token in a refusal test: sign for it as is
	}
	require.NoError(e.t, r.Sign(d.priv, api.PublicKey(e.priv), api.JoinTokenHash(secret)))
}

func (e *env) register(tok string, r api.RegisterRequest) (int, api.RegisterResponse, *api.Error) {
	e.t.Helper()
	var resp api.RegisterResponse
	code, ae := e.call("POST", "/v1/devices", tok, r, &resp)
	return code, resp, ae
}

// mustRegister registers a fresh device and returns its key and response.
func (e *env) mustRegister(tok, hostname string, prefixes ...string) (testDevice, api.RegisterResponse) {
	e.t.Helper()
	d := newDevice()
	code, resp, ae := e.register(tok, e.request(tok, d, hostname, prefixes...))
	require.Nil(e.t, ae)
	require.Equal(e.t, http.StatusCreated, code)
	return d, resp
}

// state dumps everything the store holds, to prove a refused request
// changed nothing.
func (e *env) state() string {
	e.t.Helper()
	ctx := context.Background()
	var b strings.Builder
	zs, err := e.st.Zones(ctx)
	require.NoError(e.t, err)
	for _, z := range zs {
		rev, devs, err := e.st.Snapshot(ctx, z.Name)
		require.NoError(e.t, err)
		fmt.Fprintf(&b, "zone %+v rev %d\n", z, rev)
		for _, d := range devs {
			fmt.Fprintf(&b, "  device %+v\n", d)
		}
	}
	ts, err := e.st.JoinTokens(ctx, "")
	require.NoError(e.t, err)
	for _, t := range ts {
		fmt.Fprintf(&b, "token %+v\n", t)
	}
	ps, err := e.st.Prefixes(ctx, "")
	require.NoError(e.t, err)
	for _, p := range ps {
		fmt.Fprintf(&b, "prefix %+v\n", p)
	}
	return b.String()
}
