package control

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/control/store"
)

// adminStats returns the admin API's view of one device from
// GET /v1/devices/{id}, checking that the lists agree: the summary alone
// by default (no peers), and the same as the device's own with
// ?stats=full.
func (e *env) adminStats(id string) api.Device {
	e.t.Helper()
	var one api.Device
	code, ae := e.call("GET", "/v1/devices/"+id, e.admin, nil, &one)
	require.Nil(e.t, ae)
	require.Equal(e.t, http.StatusOK, code)
	var summary api.Device
	code, ae = e.call("GET", "/v1/devices/"+id+"?stats=summary", e.admin, nil, &summary)
	require.Nil(e.t, ae)
	require.Equal(e.t, http.StatusOK, code)
	for _, q := range []string{"", "?stats=summary", "?stats=full"} {
		var list []api.Device
		code, ae := e.call("GET", "/v1/devices"+q, e.admin, nil, &list)
		require.Nil(e.t, ae)
		require.Equal(e.t, http.StatusOK, code)
		i := slices.IndexFunc(list, func(d api.Device) bool { return d.ID == id })
		require.NotEqual(e.t, -1, i, "device %s not listed", id)
		want := one
		if q != "?stats=full" && one.Stats != nil {
			summary := *one.Stats
			summary.Peers = nil
			want.Stats = &summary
		}
		require.Equal(e.t, want, list[i], "GET /v1/devices%s", q)
		if q == "?stats=summary" {
			require.Equal(e.t, want, summary, "GET /v1/devices/{id}?stats=summary")
		}
	}
	return one
}

func TestStatsReport(t *testing.T) {
	e := newEnv(t, func(c *serverConfig) { c.limits.statsBurst = 1000 })
	tok := e.joinToken(api.DefaultZone, true)
	_, a := e.mustRegister(tok, "a")
	_, b := e.mustRegister(tok, "b")
	_, c := e.mustRegister(tok, "c")
	e.createZone("lab", false)
	_, other := e.mustRegister(e.joinToken("lab", true), "other")

	require.Nil(t, e.adminStats(a.DeviceID).Stats, "no report yet")
	before := e.state()
	rep := api.StatsReport{Peers: []api.PeerStats{
		{DeviceID: b.DeviceID, Path: api.PathDirect, HandshakeAgeSeconds: new(int64(5)), RxBytes: 1 << 40, TxBytes: 7},
		{DeviceID: c.DeviceID, Path: api.PathRelay, HandshakeAgeSeconds: new(int64(0)), RxBytes: 3, TxBytes: 4},
		{DeviceID: "dev_00000000deadbeef"},     // made up, or deleted meanwhile: not kept
		{DeviceID: other.DeviceID, RxBytes: 9}, // another zone's: not kept
	}}
	code, ae := e.call("POST", api.StatsPath, a.DeviceToken, rep, nil)
	require.Nil(t, ae)
	require.Equal(t, http.StatusNoContent, code)
	require.Equal(t, before, e.state(), "a report changes nothing members see (no change, no revision)")

	st := e.adminStats(a.DeviceID).Stats
	require.NotNil(t, st)
	require.WithinDuration(t, time.Now(), st.ReportedAt, 5*time.Second)
	require.Equal(t, &api.DeviceStats{ReportedAt: st.ReportedAt, Direct: 1, Relay: 1, LastHandshake: st.ReportedAt,
		RxBytes: 1<<40 + 3, TxBytes: 11, Peers: []api.PeerStats{
			{DeviceID: b.DeviceID, Path: api.PathDirect, LastHandshake: st.ReportedAt.Add(-5 * time.Second), RxBytes: 1 << 40, TxBytes: 7},
			{DeviceID: c.DeviceID, Path: api.PathRelay, LastHandshake: st.ReportedAt, RxBytes: 3, TxBytes: 4},
		}}, st)
	stored, err := e.st.DeviceStats(t.Context(), a.DeviceID)
	require.NoError(t, err)
	require.Len(t, stored.Peers, 2, "ids that are no device of the zone are not stored")
	require.Nil(t, e.adminStats(b.DeviceID).Stats)

	// The next report replaces the last; no peers is [].
	code, ae = e.call("POST", api.StatsPath, a.DeviceToken, api.StatsReport{}, nil)
	require.Nil(t, ae)
	require.Equal(t, http.StatusNoContent, code)
	require.Equal(t, &api.DeviceStats{ReportedAt: e.adminStats(a.DeviceID).Stats.ReportedAt, Peers: []api.PeerStats{}},
		e.adminStats(a.DeviceID).Stats)
	code, ae = e.call("POST", api.StatsPath, a.DeviceToken, rep, nil)
	require.Nil(t, ae)
	require.Equal(t, http.StatusNoContent, code)
	kept := e.adminStats(a.DeviceID).Stats

	many := make([]string, api.MaxStatsPeers+1)
	for i := range many {
		many[i] = fmt.Sprintf(`{"device_id":"dev_%016x"}`, i)
	}
	for name, tt := range map[string]struct {
		body string
		code string
	}{
		"not JSON":            {`{"peers":`, api.CodeBadRequest},
		"unknown field":       {`{"peers":[],"extra":1}`, api.CodeBadRequest},
		"too many peers":      {`{"peers":[` + strings.Join(many, ",") + `]}`, api.CodeBadRequest},
		"oversized":           {`{"peers":[{"device_id":"` + strings.Repeat("x", api.MaxStatsBodyBytes) + `"}]}`, api.CodeTooLarge},
		"no id":               {`{"peers":[{"path":"direct"}]}`, api.CodeBadRequest},
		"bad id":              {`{"peers":[{"device_id":"dev_1/../x"}]}`, api.CodeBadRequest},
		"itself":              {`{"peers":[{"device_id":"` + a.DeviceID + `"}]}`, api.CodeBadRequest},
		"twice":               {`{"peers":[{"device_id":"` + b.DeviceID + `"},{"device_id":"` + b.DeviceID + `"}]}`, api.CodeBadRequest},
		"bad path":            {`{"peers":[{"device_id":"` + b.DeviceID + `","path":"teleport"}]}`, api.CodeBadRequest},
		"negative age":        {`{"peers":[{"device_id":"` + b.DeviceID + `","handshake_age_seconds":-1}]}`, api.CodeBadRequest},
		"age of centuries":    {`{"peers":[{"device_id":"` + b.DeviceID + `","handshake_age_seconds":99999999999}]}`, api.CodeBadRequest},
		"service's field":     {`{"peers":[{"device_id":"` + b.DeviceID + `","last_handshake":"2026-01-01T00:00:00Z"}]}`, api.CodeBadRequest},
		"negative bytes":      {`{"peers":[{"device_id":"` + b.DeviceID + `","rx_bytes":-1}]}`, api.CodeBadRequest},
		"bytes beyond 64 bit": {`{"peers":[{"device_id":"` + b.DeviceID + `","rx_bytes":18446744073709551616}]}`, api.CodeBadRequest},
	} {
		t.Run(name, func(t *testing.T) {
			code, body := e.do("POST", api.StatsPath, a.DeviceToken, tt.body)
			require.Equal(t, api.StatusForCode(tt.code), code, "%s", body)
			require.Contains(t, string(body), `"code":"`+tt.code+`"`)
		})
	}
	require.Equal(t, kept, e.adminStats(a.DeviceID).Stats, "refused reports change nothing")

	code, _ = e.do("POST", api.StatsPath, "", `{"peers":[]}`)
	require.Equal(t, http.StatusUnauthorized, code)
	code, _ = e.do("POST", api.StatsPath, e.admin, `{"peers":[]}`)
	require.Equal(t, http.StatusUnauthorized, code, "the admin token is no device token")

	// A peer deleted since the report drops out of what is shown.
	code, _ = e.do("DELETE", "/v1/devices/"+c.DeviceID, e.admin, nil)
	require.Equal(t, http.StatusNoContent, code)
	st = e.adminStats(a.DeviceID).Stats
	require.Equal(t, 1, st.Direct)
	require.Zero(t, st.Relay)
	require.Equal(t, uint64(1<<40), st.RxBytes)
	require.Equal(t, []string{b.DeviceID}, statsPeerIDs(st.Peers))

	for _, path := range []string{"/v1/devices?stats=peers", "/v1/devices/" + a.DeviceID + "?stats=1"} {
		code, ae = e.call("GET", path, e.admin, nil, nil)
		require.Equal(t, http.StatusBadRequest, code, path)
		require.Equal(t, api.CodeBadRequest, ae.Code)
	}

	// A report goes with its device.
	code, _ = e.do("DELETE", "/v1/devices/"+a.DeviceID, e.admin, nil)
	require.Equal(t, http.StatusNoContent, code)
	stats, err := e.st.Stats(t.Context(), "")
	require.NoError(t, err)
	require.Empty(t, stats)
}

// TestStatsRateLimit: a device reporting faster than its budget gets 429
// rate_limited with Retry-After, and the last accepted report stays.
func TestStatsRateLimit(t *testing.T) {
	e := newEnv(t, func(c *serverConfig) { c.limits.statsRate, c.limits.statsBurst = 0.001, 2 })
	tok := e.joinToken(api.DefaultZone, true)
	_, a := e.mustRegister(tok, "a")
	_, b := e.mustRegister(tok, "b")
	for range 2 {
		code, ae := e.call("POST", api.StatsPath, a.DeviceToken, api.StatsReport{}, nil)
		require.Nil(t, ae)
		require.Equal(t, http.StatusNoContent, code)
	}
	req, err := http.NewRequest("POST", e.ts.URL+api.StatsPath, strings.NewReader(`{"peers":[{"device_id":"`+b.DeviceID+`"}]}`))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+a.DeviceToken)
	resp, err := e.ts.Client().Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	require.NotEmpty(t, resp.Header.Get("Retry-After"))
	require.Equal(t, []api.PeerStats{}, e.adminStats(a.DeviceID).Stats.Peers)

	code, ae := e.call("POST", api.StatsPath, b.DeviceToken, api.StatsReport{}, nil)
	require.Nil(t, ae, "the budget is per device")
	require.Equal(t, http.StatusNoContent, code)
}

func statsPeerIDs(ps []api.PeerStats) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.DeviceID)
	}
	return out
}

// TestStatsRefusedTakesNoToken: a refused report changes nothing, not
// even the device's budget (docs/HARDENING.md).
func TestStatsRefusedTakesNoToken(t *testing.T) {
	e := newEnv(t, func(c *serverConfig) { c.limits.statsRate, c.limits.statsBurst = 0.001, 2 })
	_, a := e.mustRegister(e.joinToken(api.DefaultZone, true), "a")
	for range 5 {
		code, body := e.do("POST", api.StatsPath, a.DeviceToken, `{"peers":[{"device_id":"bad/id"}]}`)
		require.Equal(t, http.StatusBadRequest, code, "%s", body)
	}
	for range 2 {
		code, ae := e.call("POST", api.StatsPath, a.DeviceToken, api.StatsReport{}, nil)
		require.Nil(t, ae, "refused reports took no token")
		require.Equal(t, http.StatusNoContent, code)
	}
	code, _ := e.do("POST", api.StatsPath, a.DeviceToken, `{"peers":[]}`)
	require.Equal(t, http.StatusTooManyRequests, code)
	code, _ = e.do("POST", api.StatsPath, a.DeviceToken, `{"peers":[{"device_id":"bad/id"}]}`)
	require.Equal(t, http.StatusBadRequest, code, "a bad report is refused as bad, budget or not")
}

// TestStatsListIsLinear: GET /v1/devices carries a summary per device,
// so it grows with the devices, not with their square; each peer only
// with ?stats=full.
func TestStatsListIsLinear(t *testing.T) {
	e := newEnv(t, func(c *serverConfig) { c.limits.noRateLimits = true })
	tok := e.joinToken(api.DefaultZone, true)
	listSize := func(q string) int {
		code, b := e.do("GET", "/v1/devices"+q, e.admin, nil)
		require.Equal(t, http.StatusOK, code, "%s", b)
		return len(b)
	}
	var devs []api.RegisterResponse
	perDevice := map[int]int{}
	for _, n := range []int{8, 32} {
		for len(devs) < n {
			_, d := e.mustRegister(tok, fmt.Sprintf("h%d", len(devs)))
			devs = append(devs, d)
		}
		for _, d := range devs {
			var rep api.StatsReport
			for _, p := range devs {
				if p.DeviceID != d.DeviceID {
					rep.Peers = append(rep.Peers, api.PeerStats{DeviceID: p.DeviceID, Path: api.PathDirect, HandshakeAgeSeconds: new(int64(1)), RxBytes: 1000, TxBytes: 1000})
				}
			}
			code, ae := e.call("POST", api.StatsPath, d.DeviceToken, rep, nil)
			require.Nil(t, ae)
			require.Equal(t, http.StatusNoContent, code)
		}
		perDevice[n] = listSize("") / n
		full := listSize("?stats=full") / n
		t.Logf("%d devices, each reporting the others: %d bytes per listed device, %d with ?stats=full", n, perDevice[n], full)
		require.Greater(t, full, perDevice[n]+(n-1)*80, "with ?stats=full, every peer of every device")
		var list []api.Device
		_, ae := e.call("GET", "/v1/devices", e.admin, nil, &list)
		require.Nil(t, ae)
		require.Len(t, list, n)
		for _, d := range list {
			require.Nil(t, d.Stats.Peers)
			require.Equal(t, n-1, d.Stats.Direct)
			require.Equal(t, uint64(1000*(n-1)), d.Stats.RxBytes)
		}
	}
	require.InDelta(t, perDevice[8], perDevice[32], 40, "bytes per listed device do not grow with the zone")
}

// TestStatsGetDeviceReadsOneReport: GET /v1/devices/{id} reads that
// device's report and resolves only its peers, not the whole zone.
func TestStatsGetDeviceReadsOneReport(t *testing.T) {
	var counting *zoneReadStore
	e := newEnv(t, func(c *serverConfig) {
		counting = &zoneReadStore{Store: c.Store}
		c.Store = counting
	})
	tok := e.joinToken(api.DefaultZone, true)
	_, a := e.mustRegister(tok, "a")
	_, b := e.mustRegister(tok, "b")
	code, ae := e.call("POST", api.StatsPath, a.DeviceToken, api.StatsReport{Peers: []api.PeerStats{{DeviceID: b.DeviceID}}}, nil)
	require.Nil(t, ae)
	require.Equal(t, http.StatusNoContent, code)
	counting.zoneReads.Store(0)
	var d api.Device
	code, ae = e.call("GET", "/v1/devices/"+a.DeviceID, e.admin, nil, &d)
	require.Nil(t, ae)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, []string{b.DeviceID}, statsPeerIDs(d.Stats.Peers))
	require.Zero(t, counting.zoneReads.Load(), "no zone-wide read for one device")
}

// zoneReadStore counts the zone-wide reads (Devices, Stats).
type zoneReadStore struct {
	store.Store
	zoneReads atomic.Int64
}

func (c *zoneReadStore) Devices(ctx context.Context, zone string) ([]store.Device, error) {
	c.zoneReads.Add(1)
	return c.Store.Devices(ctx, zone)
}

func (c *zoneReadStore) Stats(ctx context.Context, zone string) ([]store.DeviceStats, error) {
	c.zoneReads.Add(1)
	return c.Store.Stats(ctx, zone)
}

// TestStatsDeviceGoneIsNoUnknownRoute: a device deleted between its
// authentication and the write gets a not_found that members do not take
// for the unknown route of an older service (which stops their reports
// for good); a route the service does not have is that.
func TestStatsDeviceGoneIsNoUnknownRoute(t *testing.T) {
	e := newEnv(t, func(c *serverConfig) { c.Store = &vanishingStore{Store: c.Store} })
	_, a := e.mustRegister(e.joinToken(api.DefaultZone, true), "a")
	code, ae := e.call("POST", api.StatsPath, a.DeviceToken, api.StatsReport{}, nil)
	require.Equal(t, http.StatusNotFound, code)
	require.Equal(t, api.CodeNotFound, ae.Code)
	require.False(t, api.IsNoSuchEndpoint(ae), "%s", ae.Message)

	code, ae = e.call("POST", api.StatsPath+"/v2", a.DeviceToken, api.StatsReport{}, nil)
	require.Equal(t, http.StatusNotFound, code)
	require.True(t, api.IsNoSuchEndpoint(ae), "%s", ae.Message)
}

// vanishingStore deletes a reporting device just before its report is
// written.
type vanishingStore struct{ store.Store }

func (d *vanishingStore) PutStats(ctx context.Context, st store.DeviceStats) error {
	if err := d.Store.DeleteDevice(ctx, st.DeviceID); err != nil {
		return err
	}
	return d.Store.PutStats(ctx, st)
}

// TestStatsEventNamesDevice: the dashboard's stats event names the zone
// and the device that reported, so that the page refreshes that one
// device; a refused report sends none.
func TestStatsEventNamesDevice(t *testing.T) {
	e := newEnv(t)
	tok := e.joinToken(api.DefaultZone, true)
	_, a := e.mustRegister(tok, "a")
	_, b := e.mustRegister(tok, "b")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	evs, err := e.srv.dashboardEvents(ctx)
	require.NoError(t, err)

	code, _ := e.do("POST", api.StatsPath, b.DeviceToken, `{"peers":[{"device_id":"bad/id"}]}`)
	require.Equal(t, http.StatusBadRequest, code)
	code, ae := e.call("POST", api.StatsPath, a.DeviceToken, api.StatsReport{}, nil)
	require.Nil(t, ae)
	require.Equal(t, http.StatusNoContent, code)
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-evs:
			require.True(t, ok, "stream ended")
			if ev.Type != "stats" {
				continue
			}
			var got statsEvent
			require.NoError(t, json.Unmarshal(ev.Data, &got), "%s", ev.Data)
			require.Equal(t, statsEvent{Zone: api.DefaultZone, DeviceID: a.DeviceID}, got, "a's; none for b's refused report")
			return
		case <-timeout:
			t.Fatal("no stats event within 10s")
		}
	}
}
