package control

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/control/dashboard"
)

// devicePresence returns the admin view of one device.
func (e *env) adminDevice(id string) api.Device {
	e.t.Helper()
	var d api.Device
	code, ae := e.call("GET", "/v1/devices/"+id, e.admin, nil, &d)
	require.Nil(e.t, ae)
	require.Equal(e.t, http.StatusOK, code)
	return d
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestPresenceOnlineAndLastSeen(t *testing.T) {
	e := newEnv(t)
	_, reg := e.mustRegister(e.joinToken(api.DefaultZone, false), "alpha")

	d := e.adminDevice(reg.DeviceID)
	require.NotNil(t, d.Online)
	require.False(t, *d.Online, "never watched")
	require.True(t, d.LastSeen.IsZero())

	s := e.watch(api.DefaultZone, reg.DeviceToken, 0)
	require.Equal(t, api.EventSnapshot, s.next().Type)
	waitFor(t, "online", func() bool { return *e.adminDevice(reg.DeviceID).Online })
	var list []api.Device
	_, ae := e.call("GET", "/v1/devices", e.admin, nil, &list)
	require.Nil(t, ae)
	require.Len(t, list, 1)
	require.True(t, *list[0].Online)
	require.False(t, list[0].LastSeen.IsZero())

	before := time.Now().Add(-time.Second)
	s.cancel()
	waitFor(t, "offline", func() bool { return !*e.adminDevice(reg.DeviceID).Online })
	d = e.adminDevice(reg.DeviceID)
	require.False(t, d.LastSeen.Before(before.Truncate(time.Second)), "last seen %v, stream ended after %v", d.LastSeen, before)

	// The device's own view carries no presence.
	code, b := e.do("GET", "/v1/devices/self", reg.DeviceToken, nil)
	require.Equal(t, http.StatusOK, code)
	require.NotContains(t, string(b), "online")
	require.NotContains(t, string(b), "last_seen")
}

func TestPresenceForgetsDeletedDevices(t *testing.T) {
	e := newEnv(t)
	_, reg := e.mustRegister(e.joinToken(api.DefaultZone, false), "alpha")
	s := e.watch(api.DefaultZone, reg.DeviceToken, 0)
	s.next()
	waitFor(t, "online", func() bool { on, _ := e.srv.presence.state(reg.DeviceID); return on })
	code, _ := e.do("DELETE", "/v1/devices/"+reg.DeviceID, e.admin, nil)
	require.Equal(t, http.StatusNoContent, code)
	waitFor(t, "forgotten", func() bool {
		e.srv.presence.mu.Lock()
		defer e.srv.presence.mu.Unlock()
		return len(e.srv.presence.devs) == 0
	})
}

func TestDashboardEventsFollowTheHub(t *testing.T) {
	e := newEnv(t)
	e.createZone("lab", false)
	ctx, cancel := context.WithCancel(context.Background())
	evs, err := e.srv.dashboardEvents(ctx)
	require.NoError(t, err)
	next := func() dashboard.Event {
		t.Helper()
		select {
		case ev, ok := <-evs:
			require.True(t, ok, "stream ended")
			return ev
		case <-time.After(10 * time.Second):
			t.Fatal("no dashboard event within 10s")
		}
		return dashboard.Event{}
	}

	_, reg := e.mustRegister(e.joinToken("lab", false), "lab-1", "10.9.0.0/24")
	ev := next()
	require.Equal(t, "change", ev.Type)
	var ch struct {
		Zone  string         `json:"zone"`
		Event api.WatchEvent `json:"event"`
	}
	require.NoError(t, json.Unmarshal(ev.Data, &ch), "%s", ev.Data)
	require.Equal(t, "lab", ch.Zone)
	require.Equal(t, api.EventUpsert, ch.Event.Type)
	require.Equal(t, "lab-1", ch.Event.Peer.Hostname)

	s := e.watch("lab", reg.DeviceToken, 0)
	s.next()
	// The presence change reaches the dashboard twice, in either order: as
	// a presence event, and as a change of the zone's log.
	var sawChange bool
	for ev = next(); ev.Type == "change"; ev = next() {
		require.Contains(t, string(ev.Data), `"type":"presence"`)
		sawChange = true
	}
	require.Equal(t, "presence", ev.Type)
	require.JSONEq(t, `{"zone":"lab","device_id":"`+reg.DeviceID+`","online":true}`, string(ev.Data))
	if !sawChange {
		ev = next()
		require.Equal(t, "change", ev.Type)
		require.Contains(t, string(ev.Data), `"type":"presence"`)
	}

	// Observers are not member watch streams.
	require.Equal(t, 1.0, value(t, e.srv.metrics.watchers))
	_ = s

	cancel()
	waitFor(t, "the stream to end", func() bool {
		select {
		case _, ok := <-evs:
			return !ok
		default:
			return false
		}
	})
}

func TestDashboardMountedWithLogin(t *testing.T) {
	e := newEnv(t)
	hc := e.ts.Client()
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := hc.Get(e.ts.URL + "/ui/")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	require.Equal(t, "/ui/login", resp.Header.Get("Location"))

	// The admin bearer token does not open the dashboard's API: only a session does.
	code, _ := e.do("GET", "/ui/api/v1/zones", e.admin, nil)
	require.Equal(t, http.StatusUnauthorized, code)

	resp, err = hc.PostForm(e.ts.URL+"/ui/login", map[string][]string{"token": {e.admin}})
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	var cookie *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == dashboard.CookieName {
			cookie = c
		}
	}
	require.NotNil(t, cookie)
	req, _ := http.NewRequest("GET", e.ts.URL+"/ui/api/v1/zones", nil)
	req.AddCookie(cookie)
	resp, err = hc.Do(req)
	require.NoError(t, err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", b)
	require.Contains(t, string(b), `"name":"default"`)
}

func TestServiceMetrics(t *testing.T) {
	e := newEnv(t)
	m := e.srv.metrics
	tok := e.joinToken(api.DefaultZone, true)
	_, reg := e.mustRegister(tok, "alpha")

	// Refusals by code.
	_, _, ae := e.register("wmj_"+strings.Repeat("0", 32), e.request("wmj_"+strings.Repeat("0", 32), newDevice(), "x"))
	require.Equal(t, api.CodeUnauthorized, ae.Code)
	_, _, ae = e.register(tok, e.request(tok, newDevice(), "y", "127.0.0.0/8"))
	require.Equal(t, api.CodeInvalidPrefix, ae.Code)
	require.Equal(t, 1.0, value(t, m.refusals.WithLabelValues("POST /v1/devices", api.CodeUnauthorized)))
	require.Equal(t, 1.0, value(t, m.refusals.WithLabelValues("POST /v1/devices", api.CodeInvalidPrefix)))
	require.Equal(t, 1.0, value(t, m.registrations.WithLabelValues("created")))

	// Watch streams and watch lag.
	s := e.watch(api.DefaultZone, reg.DeviceToken, 0)
	s.next()
	waitFor(t, "a watch stream counted", func() bool { return value(t, m.watchStreams.WithLabelValues("snapshot")) == 1 })
	e.mustRegister(tok, "bravo")
	require.Equal(t, api.EventUpsert, s.next().Type)
	waitFor(t, "a watch lag sample", func() bool { return histCount(t, m, "wiremesh_watch_lag_seconds") >= 1 })

	// Store latency, by operation.
	require.Positive(t, histCount(t, m, "wiremesh_store_seconds"))
	code, body := e.do("GET", "/metrics", e.admin, nil)
	require.Equal(t, http.StatusOK, code)
	for _, want := range []string{
		`wiremesh_store_seconds_count{op="register",result="ok"} 2`,
		`wiremesh_refusals_total{code="unauthorized",route="POST /v1/devices"} 1`,
		`wiremesh_watch_streams_total{start="snapshot"} 1`,
	} {
		require.Contains(t, string(body), want)
	}
}

// histCount returns the sample count of a histogram family.
func histCount(t *testing.T, m *metrics, name string) uint64 {
	t.Helper()
	mfs, err := m.reg.Gather()
	require.NoError(t, err)
	var n uint64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, mm := range mf.GetMetric() {
				n += mm.GetHistogram().GetSampleCount()
			}
		}
	}
	return n
}

// value reads a counter or gauge.
func value(t *testing.T, c prometheus.Metric) float64 {
	t.Helper()
	var m dto.Metric
	require.NoError(t, c.Write(&m))
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	return m.Gauge.GetValue()
}
