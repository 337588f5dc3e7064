package meshmetrics_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/wiremesh/wiremesh/mesh"
	"github.com/wiremesh/wiremesh/mesh/meshmetrics"
	"github.com/wiremesh/wiremesh/meshtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(b)
}

// value returns the value of the sample matching the regular expression
// re (a metric name with labels), or -1 when there is none.
func value(t *testing.T, text, re string) float64 {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + re + ` (\S+)$`).FindStringSubmatch(text)
	if m == nil {
		return -1
	}
	v, err := strconv.ParseFloat(m[1], 64)
	require.NoError(t, err)
	return v
}

func TestScrape(t *testing.T) {
	s := meshtest.NewServer(t)
	a := meshtest.Join(t, s, mesh.WithHostname("alpha"), mesh.WithReconnectBackoff(20*time.Millisecond, 200*time.Millisecond))
	b := meshtest.Join(t, s, mesh.WithHostname("beta"))
	meshtest.WaitPeers(t, a, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := a.Ping(ctx, b.Addr())
	require.NoError(t, err)

	srv := httptest.NewServer(meshmetrics.Handler(a))
	defer srv.Close()
	text := scrape(t, srv.URL)

	key := regexp.QuoteMeta(b.Status().Self.PublicKey.String())
	peer := `\{address="` + regexp.QuoteMeta(b.Addr().String()) + `",peer="beta",public_key="` + key + `"\}`
	require.Equal(t, 1.0, value(t, text, `wiremesh_agent_info\{address="`+regexp.QuoteMeta(a.Addr().String())+`",hostname="alpha",interface="",mode="userspace",zone="default"\}`), text)
	require.Equal(t, 1.0, value(t, text, `wiremesh_agent_control_connected`))
	require.Equal(t, 1.0, value(t, text, `wiremesh_agent_peers`))
	require.Greater(t, value(t, text, `wiremesh_agent_zone_revision`), 0.0)
	require.Greater(t, value(t, text, `wiremesh_agent_peer_receive_bytes_total`+peer), 0.0, text)
	require.Greater(t, value(t, text, `wiremesh_agent_peer_transmit_bytes_total`+peer), 0.0)
	hs := value(t, text, `wiremesh_agent_peer_last_handshake_timestamp_seconds`+peer)
	require.InDelta(t, float64(time.Now().Unix()), hs, 60)
	age := value(t, text, `wiremesh_agent_peer_handshake_age_seconds`+peer)
	require.GreaterOrEqual(t, age, 0.0)
	require.Less(t, age, 60.0)
	require.Equal(t, 1.0, value(t, text, `wiremesh_agent_peer_path\{address="[^"]+",endpoint="127\.0\.0\.1:\d+",path="direct",peer="beta",public_key="`+key+`"\}`), text)
	require.Contains(t, text, "go_goroutines", "the registry has the Go collector")
	require.NotContains(t, text, "wiremesh_agent_interface_", "userspace mode has no interface counters")

	// The service goes away: the node says so.
	s.Stop()
	meshtest.WaitFor(t, "control_connected 0", func() bool {
		return value(t, scrape(t, srv.URL), `wiremesh_agent_control_connected`) == 0
	})
	s.Start(t)
	meshtest.WaitFor(t, "control_connected 1", func() bool {
		return value(t, scrape(t, srv.URL), `wiremesh_agent_control_connected`) == 1
	})
}

// fakeStatus is a StatusSource with a fixed status.
type fakeStatus mesh.Status

func (f fakeStatus) Status() mesh.Status { return mesh.Status(f) }

// TestNoHandshakeYet: a peer without a handshake has timestamp 0 and no
// age sample, and path none without an endpoint.
func TestNoHandshakeYet(t *testing.T) {
	st := fakeStatus{Self: mesh.SelfStatus{Hostname: "me", Mode: mesh.Kernel, Interface: "wm-nonexistent"},
		Peers: []mesh.PeerStatus{{Hostname: "p"}}}
	srv := httptest.NewServer(meshmetrics.Handler(st))
	defer srv.Close()
	text := scrape(t, srv.URL)
	require.Equal(t, 0.0, value(t, text, `wiremesh_agent_peer_last_handshake_timestamp_seconds\{[^}]*peer="p"[^}]*\}`), text)
	require.Equal(t, -1.0, value(t, text, `wiremesh_agent_peer_handshake_age_seconds\{[^}]*\}`))
	require.Equal(t, 1.0, value(t, text, `wiremesh_agent_peer_path\{[^}]*path="none"[^}]*\}`))
	require.Equal(t, 1.0, value(t, text, `wiremesh_agent_info\{[^}]*mode="kernel"[^}]*\}`))
	require.NotContains(t, text, "wiremesh_agent_interface_", "no counters for an interface that does not exist")
}
