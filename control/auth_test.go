package control

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
)

func TestReplayCacheBoundedAndPruned(t *testing.T) {
	c := newReplayCache(3)
	now := time.Unix(1000, 0)
	exp := now.Add(time.Minute)
	require.NoError(t, c.add([]byte("a"), exp, now))
	require.ErrorIs(t, c.add([]byte("a"), exp, now), errReplayed)
	require.NoError(t, c.add([]byte("b"), exp, now))
	require.NoError(t, c.add([]byte("c"), exp.Add(time.Hour), now))
	require.ErrorIs(t, c.add([]byte("d"), exp, now), errReplayFull)
	// Once a and b age out they are pruned and room is made.
	later := exp.Add(time.Second)
	require.NoError(t, c.add([]byte("d"), later.Add(time.Minute), later))
	require.Equal(t, 2, c.len())
	// An expired proof may be seen again (its timestamp is stale by then,
	// which the handler refuses before it gets here).
	require.NoError(t, c.add([]byte("a"), later.Add(time.Minute), later))
	require.Equal(t, 3, c.len())
	// Periodic pruning without reaching the bound.
	c2 := newReplayCache(100)
	for _, p := range []string{"x", "y"} {
		require.NoError(t, c2.add([]byte(p), now.Add(time.Second), now))
	}
	require.NoError(t, c2.add([]byte("z"), now.Add(time.Hour), now.Add(2*replayPruneEvery)))
	require.Equal(t, 1, c2.len())
}

func TestMetrics(t *testing.T) {
	e := newEnv(t)
	tok := e.joinToken(api.DefaultZone, true)
	_, a := e.mustRegister(tok, "a")
	s := e.watch(api.DefaultZone, a.DeviceToken, 0)
	s.next()
	// a going online is a change too (its own stream skips it).
	waitFor(t, "online", func() bool { return *e.adminDevice(a.DeviceID).Online })
	e.mustRegister(tok, "b")
	s.next()
	code, body := e.do("GET", "/metrics", testAdmin, nil)
	require.Equal(t, http.StatusOK, code)
	m := string(body)
	for _, want := range []string{
		`wiremesh_registrations_total{result="created"} 2`,
		`wiremesh_watchers_active 1`,
		`wiremesh_watch_changes_encoded_total 2`,
		`wiremesh_watch_events_fanned_out_total 2`,
		`wiremesh_http_requests_total{code="201",route="POST /v1/devices"} 2`,
	} {
		require.True(t, strings.Contains(m, want), "missing %q in\n%s", want, m)
	}
}
