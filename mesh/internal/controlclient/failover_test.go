package controlclient

import (
	"context"
	"net/http"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
)

// startReplicas starts n fake services with one identity (key, tokens),
// as replicas of one service on a shared database are.
func startReplicas(t *testing.T, n int) []*fakeService {
	t.Helper()
	fs := []*fakeService{startFake(t, false)}
	for range n - 1 {
		f := startFake(t, false)
		f.priv, f.pub, f.joinSecret, f.devToken = fs[0].priv, fs[0].pub, fs[0].joinSecret, fs[0].devToken
		fs = append(fs, f)
	}
	return fs
}

// replicaClient is a client of fs[0] with the others as fallbacks.
func replicaClient(t *testing.T, fs []*fakeService) *Client {
	t.Helper()
	return fs[0].client(t, func(c *Config) {
		for _, f := range fs[1:] {
			c.FallbackURLs = append(c.FallbackURLs, f.srv.URL)
		}
	})
}

func answer503(w http.ResponseWriter, _ *http.Request) bool {
	w.Header().Set("Retry-After", "0")
	writeErr(w, api.CodeUnavailable, "database away")
	return true
}

func TestFailoverUnaryCalls(t *testing.T) {
	fs := startReplicas(t, 3)
	fs[0].srv.Close() // down
	fs[1].hook = answer503
	c := replicaClient(t, fs)
	c.SetDeviceToken(fs[0].devToken)

	d, err := c.Self(t.Context())
	require.NoError(t, err, "moved past the dead replica and the unavailable one")
	require.Equal(t, "dev1", d.ID)
	require.Equal(t, 1, fs[2].hits("GET /v1/devices/self"))
	_, err = c.Self(t.Context())
	require.NoError(t, err)
	require.Equal(t, 2, fs[2].hits("GET /v1/devices/self"), "and stays on the one that works")
	require.Equal(t, 1, fs[1].totalHits())
}

func TestFailoverRegister(t *testing.T) {
	fs := startReplicas(t, 2)
	fs[0].hook = func(w http.ResponseWriter, r *http.Request) bool {
		return r.URL.Path == "/v1/devices" && answer503(w, r)
	}
	c := replicaClient(t, fs)
	resp, err := c.Register(t.Context(), newKey(t), api.RegisterRequest{Hostname: "h"})
	require.NoError(t, err)
	require.Equal(t, fs[1].devToken, resp.DeviceToken)
	require.Len(t, fs[1].registers(), 1)
	require.Equal(t, 1, fs[0].hits("POST /v1/devices"), "one attempt on the unavailable replica")
}

// TestFailoverWatch: a stream the replica ends (shutting down) or that
// breaks sends the next Watch, with the caller's revision, to the next
// replica.
func TestFailoverWatch(t *testing.T) {
	fs := startReplicas(t, 2)
	fs[0].watch = func(w http.ResponseWriter, r *http.Request) {
		writeLines(w, `{"type":"snapshot","revision":5,"peers":[]}`+"\n")
	}
	var (
		mu    sync.Mutex
		since []string
	)
	fs[1].watch = func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		since = append(since, r.URL.Query().Get("since"))
		mu.Unlock()
		writeLines(w, `{"type":"upsert","revision":6,"peer":{"id":"dev2"}}`+"\n")
		hj, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			hj.Close() // a broken stream, not a clean end
		}
	}
	c := replicaClient(t, fs)
	c.SetDeviceToken(fs[0].devToken)
	fn, got := collect()
	err := c.Watch(t.Context(), api.DefaultZone, 0, fn)
	require.ErrorIs(t, err, ErrStreamEnded)
	require.Equal(t, int64(5), got()[0].Revision)

	err = c.Watch(t.Context(), api.DefaultZone, 5, fn)
	require.Error(t, err)
	require.Equal(t, []string{"5"}, since, "resumed on the other replica from revision 5")
	require.Equal(t, int64(6), got()[1].Revision)

	// That stream broke too: back to the first replica.
	_ = c.Watch(t.Context(), api.DefaultZone, 6, fn)
	require.Equal(t, 2, fs[0].hits("GET /v1/zones/default/watch"))
}

// TestNoFailoverOnAnswers: an answer about the request (401, 404, 409) is
// the same on every replica: the client stays.
func TestNoFailoverOnAnswers(t *testing.T) {
	fs := startReplicas(t, 2)
	c := replicaClient(t, fs)
	c.SetDeviceToken("wmd_wrong")
	_, err := c.Self(t.Context())
	var ae *api.Error
	require.ErrorAs(t, err, &ae)
	require.Equal(t, api.CodeUnauthorized, ae.Code)
	c.SetDeviceToken(fs[0].devToken)
	_, err = c.Self(t.Context())
	require.NoError(t, err)
	require.Equal(t, 2, fs[0].hits("GET /v1/devices/self"))
	require.Zero(t, fs[1].totalHits())

	// A cancelled call is not the replica's fault either.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err = c.Self(ctx)
	require.ErrorIs(t, err, context.Canceled)
	_, err = c.Self(t.Context())
	require.NoError(t, err)
	require.Zero(t, fs[1].totalHits())
}

func TestFallbackURLChecks(t *testing.T) {
	tests := []struct {
		name, url, fallback, want string
	}{
		{"token fragment", "http://127.0.0.1:1", "http://127.0.0.1:2#wmj_x", "carries a token"},
		{"other scheme", "http://127.0.0.1:1", "https://127.0.0.1:2", "differs"},
		{"not a URL", "http://127.0.0.1:1", "ftp://x", "fallback service URL"},
		{"plain http off loopback", "http://127.0.0.1:1", "http://192.0.2.1:2", "plain http://"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(Config{URL: tt.url, FallbackURLs: []string{tt.fallback}})
			require.ErrorContains(t, err, tt.want)
		})
	}
}
