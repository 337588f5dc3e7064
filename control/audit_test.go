package control

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
)

// logBuffer collects JSON log lines from concurrent handlers.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// audits returns the audit lines logged so far and forgets them.
func (l *logBuffer) audits(t *testing.T) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.b.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &m), line)
		if m["msg"] == auditMsg {
			out = append(out, m)
		}
	}
	l.b.Reset()
	return out
}

func TestAuditLog(t *testing.T) {
	var logs logBuffer
	e := newEnv(t, func(c *serverConfig) {
		c.Logger = slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	tok := e.joinToken(api.DefaultZone, true)
	_, reg := e.mustRegister(tok, "a")
	require.Empty(t, logs.audits(t), "a registration is not an admin action")

	// Admin actions, with their outcome.
	code, _ := e.do("POST", "/v1/zones", e.admin, api.CreateZoneRequest{Name: "lab"})
	require.Equal(t, http.StatusCreated, code)
	code, _ = e.do("DELETE", "/v1/devices/nope", e.admin, nil)
	require.Equal(t, http.StatusNotFound, code)
	got := logs.audits(t)
	require.Len(t, got, 2)
	for i, want := range []struct {
		action string
		status float64
	}{{"POST /v1/zones", 201}, {"DELETE /v1/devices/nope", 404}} {
		require.Equal(t, "INFO", got[i]["level"])
		require.Equal(t, "admin", got[i]["event"])
		require.Equal(t, "admin", got[i]["who"])
		require.Equal(t, want.action, got[i]["action"])
		require.Equal(t, want.status, got[i]["status"])
		require.Equal(t, "127.0.0.1", got[i]["from"])
		require.Contains(t, got[i]["remote"], "127.0.0.1:")
	}

	// Refused authentications of every kind; no secret is logged.
	single := e.joinToken(api.DefaultZone, false)
	e.mustRegister(single, "s")
	e.do("GET", "/v1/zones", "wrong-admin", nil)
	e.do("GET", "/v1/devices/self", "wmd_00000000000000000000000000000000", nil)
	e.do("POST", "/v1/devices", "wmj_00000000000000000000000000000000", e.request("wmj_00000000000000000000000000000000", newDevice(), "x"))
	d := newDevice()
	e.do("POST", "/v1/devices", single, e.request(single, d, "spent"))
	got = logs.audits(t)
	require.Len(t, got, 4)
	for i, want := range []struct{ who, action string }{
		{"admin", "GET /v1/zones"},
		{"device", "GET /v1/devices/self"},
		{"join_token", "POST /v1/devices"},
		{"join_token", "POST /v1/devices"},
	} {
		require.Equal(t, "auth_refused", got[i]["event"])
		require.Equal(t, want.who, got[i]["who"])
		require.Equal(t, want.action, got[i]["action"])
		require.Equal(t, float64(401), got[i]["status"])
		require.Equal(t, "127.0.0.1", got[i]["from"])
		require.NotEmpty(t, got[i]["reason"])
	}
	require.Equal(t, d.pub.String(), got[3]["key"], "the key that tried")
	logs.mu.Lock()
	all := logs.b.String()
	logs.mu.Unlock()
	for _, secret := range []string{testAdmin, tok, single, reg.DeviceToken, "wrong-admin"} {
		require.NotContains(t, all, secret)
	}

	// A zone mismatch after the token was found names the token.
	d2 := newDevice()
	r := e.request(tok, d2, "z")
	r.Zone = "lab"
	e.sign(tok, d2, &r)
	code, _ = e.do("POST", "/v1/devices", tok, r)
	require.Equal(t, http.StatusUnauthorized, code)
	got = logs.audits(t)
	require.Len(t, got, 1)
	require.Equal(t, "auth_refused", got[0]["event"])
	require.Regexp(t, `^join_token:jt_[0-9a-f]{12}$`, got[0]["who"])
}
