package control

import (
	"context"
	"log/slog"
	"net/http"

	"github.com/wiremesh/wiremesh/control/api"
)

// The audit trail is one log line with the message "audit" (level Info,
// through serverConfig.Logger) per admin action and per refused authentication:
//
//	msg=audit event=admin|auth_refused who=KIND[:ID] action="METHOD PATH"
//	from=CLIENT_ADDR remote=PEER_ADDR status=CODE [reason=...] [...]
//
// who is "admin", "device:ID", "join_token:ID", or the bare kind when
// the credential is unknown. from is the client address the rate limits
// use (the proxy's client with serverConfig.TrustedProxies), remote the
// connection's peer. Secrets are never logged.
const auditMsg = "audit"

// Audit event kinds.
const (
	auditAdmin       = "admin"
	auditAuthRefused = "auth_refused"
)

func (s *server) audit(ctx context.Context, level slog.Level, event, who string, r *http.Request, status int, attrs ...any) {
	base := []any{
		"event", event,
		"who", who,
		"action", r.Method + " " + r.URL.Path,
		"from", s.clientAddr(r).String(),
		"remote", r.RemoteAddr,
		"status", status,
	}
	s.log.Log(ctx, level, auditMsg, append(base, attrs...)...)
}

// refuse answers a refused authentication: it spends one of the client's
// failed-authentication budget, writes the audit line, and answers e.
// kind is the credential kind (admin, device, join_token); id the
// credential's id when known. attrs are extra audit attributes.
func (s *server) refuse(w http.ResponseWriter, r *http.Request, kind, id string, e *api.Error, attrs ...any) {
	s.authFailed(r)
	who := kind
	if id != "" {
		who += ":" + id
	}
	s.audit(r.Context(), slog.LevelInfo, auditAuthRefused, who, r, api.StatusForCode(e.Code), append([]any{"reason", e.Message}, attrs...)...)
	writeError(w, e)
}

// auditAdminAction runs an admin handler and writes its audit line with
// the status it answered. Reading the metrics (scraped every few seconds)
// is audited at Debug so it does not drown the rest.
func (s *server) auditAdminAction(next http.HandlerFunc, w http.ResponseWriter, r *http.Request) {
	sw := &statusWriter{ResponseWriter: w}
	next(sw, r)
	status := sw.status
	if status == 0 {
		status = http.StatusOK
	}
	level := slog.LevelInfo
	if r.Method == http.MethodGet && r.URL.Path == "/metrics" {
		level = slog.LevelDebug
	}
	s.audit(r.Context(), level, auditAdmin, "admin", r, status)
}
