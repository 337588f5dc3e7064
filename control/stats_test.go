package control

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
)

// adminStats returns the admin API's view of one device, from the list
// and from GET /v1/devices/{id}, checking they agree.
func (e *env) adminStats(id string) api.Device {
	e.t.Helper()
	var list []api.Device
	code, ae := e.call("GET", "/v1/devices", e.admin, nil, &list)
	require.Nil(e.t, ae)
	require.Equal(e.t, http.StatusOK, code)
	var one api.Device
	code, ae = e.call("GET", "/v1/devices/"+id, e.admin, nil, &one)
	require.Nil(e.t, ae)
	require.Equal(e.t, http.StatusOK, code)
	for _, d := range list {
		if d.ID == id {
			require.Equal(e.t, d, one)
			return d
		}
	}
	e.t.Fatalf("device %s not listed", id)
	return api.Device{}
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
		{DeviceID: "dev_00000000deadbeef"},     // deleted meanwhile: ignored when shown
		{DeviceID: other.DeviceID, RxBytes: 9}, // another zone's: ignored when shown
	}}
	code, ae := e.call("POST", api.StatsPath, a.DeviceToken, rep, nil)
	require.Nil(t, ae)
	require.Equal(t, http.StatusNoContent, code)
	require.Equal(t, before, e.state(), "a report changes nothing members see (no change, no revision)")

	st := e.adminStats(a.DeviceID).Stats
	require.NotNil(t, st)
	require.WithinDuration(t, time.Now(), st.ReportedAt, 5*time.Second)
	require.Equal(t, []api.PeerStats{
		{DeviceID: b.DeviceID, Path: api.PathDirect, LastHandshake: st.ReportedAt.Add(-5 * time.Second), RxBytes: 1 << 40, TxBytes: 7},
		{DeviceID: c.DeviceID, Path: api.PathRelay, LastHandshake: st.ReportedAt, RxBytes: 3, TxBytes: 4},
	}, st.Peers)
	require.Nil(t, e.adminStats(b.DeviceID).Stats)

	// The next report replaces the last; no peers is [].
	code, ae = e.call("POST", api.StatsPath, a.DeviceToken, api.StatsReport{}, nil)
	require.Nil(t, ae)
	require.Equal(t, http.StatusNoContent, code)
	require.Equal(t, []api.PeerStats{}, e.adminStats(a.DeviceID).Stats.Peers)
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
