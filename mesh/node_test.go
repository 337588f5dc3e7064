package mesh_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/mesh"
	"github.com/wiremesh/wiremesh/meshtest"
)

// A node restarted with its state directory while the service is up keeps
// its saved peers (on disk and on its device) until the service delivers a
// snapshot: here the registration succeeds but the watch fails.
func TestRestartKeepsSavedPeersUntilSnapshot(t *testing.T) {
	s := meshtest.NewServer(t, meshtest.WithInsecureHTTP())
	target, err := url.Parse(s.URL)
	require.NoError(t, err)
	var failWatch atomic.Bool
	var watchTries atomic.Int64
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.FlushInterval = -1 // the watch stream
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if failWatch.Load() && strings.HasSuffix(r.URL.Path, "/watch") {
			watchTries.Add(1)
			http.Error(w, `{"code":"unavailable","message":"watch blocked by the test"}`, http.StatusServiceUnavailable)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(proxy.Close)

	a := meshtest.Join(t, s, fast)
	dir := t.TempDir()
	join := func(ctx context.Context) (*mesh.Node, error) {
		return mesh.Join(ctx, proxy.URL, mesh.WithToken(s.Token), mesh.WithInsecureHTTP(), fast,
			mesh.WithStateDir(dir), mesh.WithHostname("b"))
	}
	b, err := join(ctxT(t))
	require.NoError(t, err)
	meshtest.WaitPeers(t, b, 1)
	addr := b.Addr()
	require.NoError(t, b.Close())
	saved := readSavedPeers(t, dir)
	require.Len(t, saved.Peers, 1)
	require.Equal(t, a.Addr(), saved.Peers[0].IPv4)
	require.Positive(t, saved.Revision)

	failWatch.Store(true)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type result struct {
		n   *mesh.Node
		err error
	}
	joined := make(chan result, 1)
	go func() {
		n, err := join(ctx)
		joined <- result{n, err}
	}()
	// Join waits for the first snapshot, which does not come. The watch
	// starts after the state is saved and the device configured: from then
	// on the saved peers are on disk and on the device.
	meshtest.WaitFor(t, "a watch attempt", func() bool { return watchTries.Load() > 0 })
	got := readSavedPeers(t, dir)
	require.Equal(t, saved.Revision, got.Revision, "revision kept until a snapshot")
	require.Len(t, got.Peers, 1, "peers kept until a snapshot")
	pctx, pcancel := context.WithTimeout(ctxT(t), 20*time.Second)
	defer pcancel()
	_, err = a.Ping(pctx, addr)
	require.NoError(t, err, "the restarted node's device has the saved peer")

	failWatch.Store(false)
	r := <-joined
	require.NoError(t, r.err)
	t.Cleanup(func() { r.n.Close() })
	meshtest.WaitPeers(t, r.n, 1)
}

// savedPeers is the part of state.json the tests look at.
type savedPeers struct {
	Peers    []api.Peer `json:"peers"`
	Revision int64      `json:"revision"`
}

func readSavedPeers(t *testing.T, dir string) savedPeers {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	require.NoError(t, err)
	var s savedPeers
	require.NoError(t, json.Unmarshal(b, &s))
	return s
}
