package control

import (
	"context"
	"crypto/sha256"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/wiremesh/wiremesh/control/adminclient"
	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/internal/tlspin"
)

func startService(t *testing.T, o Options) *Service {
	t.Helper()
	if o.Listen == "" {
		o.Listen = "127.0.0.1:0"
	}
	if o.STUNListen == "" {
		o.STUNListen = "127.0.0.1:0"
	}
	s, err := Start(context.Background(), o)
	require.NoError(t, err)
	return s
}

func TestServiceTLSPinnedAndRestart(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ctx := context.Background()
	dir := t.TempDir()
	s := startService(t, Options{DataDir: dir})
	require.True(t, strings.HasPrefix(s.URL(), "https://127.0.0.1:"), s.URL())
	require.Len(t, s.Fingerprint(), 32)
	require.True(t, s.STUNAddr().IsValid())
	for _, f := range []string{ServerKeyFile, AdminTokenFile, TLSKeyFile} {
		fi, err := os.Stat(filepath.Join(dir, f))
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), f)
	}
	fp, err := tlspin.FromCertFile(filepath.Join(dir, TLSCertFile))
	require.NoError(t, err)
	require.Equal(t, s.Fingerprint(), fp)

	// A pinned client works; a wrong pin and the system roots do not.
	c, err := adminclient.New(s.URL(), adminclient.Options{AdminToken: s.AdminToken(), Fingerprint: s.Fingerprint()})
	require.NoError(t, err)
	info, err := c.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, s.STUNAddr().String(), info.STUNAddr)
	bad, err := adminclient.New(s.URL(), adminclient.Options{Fingerprint: make([]byte, 32)})
	require.NoError(t, err)
	_, err = bad.Info(ctx)
	require.ErrorContains(t, err, "does not match the pinned")
	sys, err := adminclient.New(s.URL(), adminclient.Options{})
	require.NoError(t, err)
	_, err = sys.Info(ctx)
	require.Error(t, err)

	// Join tokens carry the fingerprint.
	tok, err := s.CreateJoinToken(ctx, api.DefaultZone, true, time.Hour)
	require.NoError(t, err)
	_, tfp, err := api.ParseJoinToken(tok)
	require.NoError(t, err)
	require.Equal(t, s.Fingerprint(), tfp)

	// State: a zone, a device with a prefix.
	_, err = c.CreateZone(ctx, api.CreateZoneRequest{Name: "lab"})
	require.NoError(t, err)
	e := &env{t: t, srv: s.srv, admin: s.AdminToken(), priv: mustReadKey(t, dir)}
	dev := newDevice()
	req := e.request(tok, dev, "node1", "172.24.0.0/24")
	regBefore := registerTLS(t, s, tok, req)
	ds, err := c.Devices(ctx, "")
	require.NoError(t, err)
	require.Len(t, ds, 1)
	_, rev1, err := s.store.Changes(ctx, api.DefaultZone, 0)
	require.NoError(t, err)

	addr, admin := s.Addr(), s.AdminToken()
	require.NoError(t, s.Close())
	require.ErrorIs(t, s.Close(), net.ErrClosed)

	// Same data dir, same port: everything is kept, revisions continue.
	s2 := startService(t, Options{DataDir: dir, Listen: addr.String()})
	defer s2.Close()
	require.Equal(t, addr, s2.Addr())
	require.Equal(t, admin, s2.AdminToken())
	require.Equal(t, fp, s2.Fingerprint())
	c2, err := adminclient.New(s2.URL(), adminclient.Options{AdminToken: admin, Fingerprint: fp})
	require.NoError(t, err)
	z, err := c2.Zone(ctx, "lab")
	require.NoError(t, err)
	require.Equal(t, "lab", z.Name)
	ps, err := c2.Prefixes(ctx, "")
	require.NoError(t, err)
	require.Len(t, ps, 1)
	req2 := e.request(tok, dev, "node1", "172.25.0.0/24")
	req2.Timestamp++
	e.sign(tok, dev, &req2)
	regAfter := registerTLS(t, s2, tok, req2) // the old token still works: server key unchanged
	require.Equal(t, regBefore.DeviceID, regAfter.DeviceID)
	require.Equal(t, regBefore.IPv4, regAfter.IPv4)
	require.Equal(t, regBefore.IPv6, regAfter.IPv6)
	require.Len(t, regAfter.ChildPrefixes, 2)
	_, rev2, err := s2.store.Changes(ctx, api.DefaultZone, 0)
	require.NoError(t, err)
	require.Greater(t, rev2, rev1)
}

func mustReadKey(t *testing.T, dir string) api.Key {
	k, err := loadOrCreateServerKey(dir)
	require.NoError(t, err)
	return k
}

func registerTLS(t *testing.T, s *Service, tok string, req api.RegisterRequest) api.RegisterResponse {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tlspin.ClientConfig(s.Fingerprint(), nil)}}
	defer hc.CloseIdleConnections()
	var resp api.RegisterResponse
	code, ae := callURL(t, hc, "POST", s.URL()+"/v1/devices", tok, req, &resp)
	require.Nil(t, ae)
	require.Contains(t, []int{200, 201}, code)
	return resp
}

func TestServiceInsecureAndOptions(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	dir := t.TempDir()
	s := startService(t, Options{DataDir: dir, InsecureHTTP: true, STUNListen: "off", AdminToken: "wma_given"})
	require.True(t, strings.HasPrefix(s.URL(), "http://127.0.0.1:"))
	require.Nil(t, s.Fingerprint())
	require.False(t, s.STUNAddr().IsValid())
	require.Equal(t, "wma_given", s.AdminToken())
	_, err := os.Stat(filepath.Join(dir, AdminTokenFile))
	require.ErrorIs(t, err, os.ErrNotExist)
	_, err = os.Stat(filepath.Join(dir, TLSCertFile))
	require.ErrorIs(t, err, os.ErrNotExist)
	tok, err := s.CreateJoinToken(context.Background(), api.DefaultZone, false, 0)
	require.NoError(t, err)
	require.NotContains(t, tok, ".")

	// An open watch stream ends when the service closes.
	e := &env{t: t, priv: mustReadKey(t, dir)}
	hc := &http.Client{}
	defer hc.CloseIdleConnections()
	var reg api.RegisterResponse
	_, ae := callURL(t, hc, "POST", s.URL()+"/v1/devices", tok, e.request(tok, newDevice(), "w"), &reg)
	require.Nil(t, ae)
	req, err := http.NewRequest("GET", s.URL()+"/v1/zones/default/watch", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+reg.DeviceToken)
	resp, err := hc.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	ended := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, resp.Body); ended <- err }()
	require.NoError(t, s.Close())
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("watch stream still open after Close")
	}

	for _, o := range []Options{
		{},
		{DataDir: dir, TLSCertFile: "x"},
		{DataDir: dir, InsecureHTTP: true, TLSCertFile: "x", TLSKeyFile: "y"},
		{DataDir: dir, TLSCertFile: "/nonexistent.crt", TLSKeyFile: "/nonexistent.key", Listen: "127.0.0.1:0"},
		{DataDir: dir, Listen: "127.0.0.1:notaport"},
	} {
		_, err := Start(context.Background(), o)
		require.Error(t, err, "%+v", o)
	}
}

func TestServiceCorruptFiles(t *testing.T) {
	for _, f := range []string{ServerKeyFile, TLSCertFile, TLSKeyFile, AdminTokenFile} {
		t.Run(f, func(t *testing.T) {
			dir := t.TempDir()
			s := startService(t, Options{DataDir: dir})
			require.NoError(t, s.Close())
			path := filepath.Join(dir, f)
			before, err := os.ReadFile(path)
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(path, []byte("garbage garbage\n"), 0o600))
			_, err = Start(context.Background(), Options{DataDir: dir, Listen: "127.0.0.1:0", STUNListen: "off"})
			require.ErrorContains(t, err, path)
			after, err := os.ReadFile(path)
			require.NoError(t, err)
			require.Equal(t, "garbage garbage\n", string(after), "never silently regenerated")
			require.NotEqual(t, before, after)
		})
	}
	// Only one of the pair present.
	dir := t.TempDir()
	s := startService(t, Options{DataDir: dir})
	require.NoError(t, s.Close())
	require.NoError(t, os.Remove(filepath.Join(dir, TLSKeyFile)))
	_, err := Start(context.Background(), Options{DataDir: dir, Listen: "127.0.0.1:0", STUNListen: "off"})
	require.ErrorContains(t, err, "both")
}

func TestCertSANs(t *testing.T) {
	dir := t.TempDir()
	cert, fp, missing, err := loadOrCreateSelfSigned(dir, []string{"mesh.example", "192.0.2.7"})
	require.NoError(t, err)
	require.Empty(t, missing)
	sum := sha256.Sum256(cert.Certificate[0])
	require.Equal(t, sum[:], fp)
	leaf := cert.Leaf
	require.NotNil(t, leaf)
	for _, h := range []string{"localhost", "127.0.0.1", "::1", "mesh.example", "192.0.2.7"} {
		require.NoError(t, leaf.VerifyHostname(h), h)
	}
	// Reused as is; a name it lacks is reported, not regenerated.
	_, fp2, missing, err := loadOrCreateSelfSigned(dir, []string{"new.example"})
	require.NoError(t, err)
	require.Equal(t, fp, fp2)
	require.Equal(t, []string{"new.example"}, missing)
}
