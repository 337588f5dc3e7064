package control

import (
	"net/http"
	"time"

	"golang.org/x/time/rate"
)

// limits are the service's defences against one client or one device
// using more than its share. docs/HARDENING.md explains each value.
type limits struct {
	// registerRate and registerBurst bound POST /v1/devices per client
	// address (every attempt counts, good or bad).
	registerRate  rate.Limit
	registerBurst int
	// authFailRate and authFailBurst bound refused authentications per
	// client address (wrong or missing admin, device or join credential,
	// bad or replayed proof). A client with no budget left gets 429 on
	// every authenticated route until it refills.
	authFailRate  rate.Limit
	authFailBurst int
	// statsRate and statsBurst bound POST /v1/devices/self/stats per
	// device (a member reports every 30 s, and sooner when a path
	// changes).
	statsRate  rate.Limit
	statsBurst int
	// maxClients bounds each per-client table (bounded memory).
	maxClients int
	// streamsPerDevice bounds the watch streams one device holds; a new
	// stream beyond it ends the device's oldest.
	streamsPerDevice int
	// bodyTimeout bounds reading a request (its body) once the handler
	// runs; the headers have the http.Server's ReadHeaderTimeout.
	bodyTimeout time.Duration
	// noRateLimits turns the per-client rate limits off (fuzzing).
	noRateLimits bool
}

// Default limits.
const (
	defaultRegisterPerSecond = 1
	defaultRegisterBurst     = 60
	defaultAuthFailPerSecond = 0.5
	defaultAuthFailBurst     = 30
	defaultStatsPerSecond    = 0.2
	defaultStatsBurst        = 12
	defaultMaxClients        = 1 << 16
	defaultStreamsPerDevice  = 4
	defaultBodyTimeout       = 20 * time.Second
)

// withDefaults fills the zero fields.
func (l limits) withDefaults() limits {
	if l.registerRate <= 0 {
		l.registerRate = defaultRegisterPerSecond
	}
	if l.registerBurst <= 0 {
		l.registerBurst = defaultRegisterBurst
	}
	if l.authFailRate <= 0 {
		l.authFailRate = defaultAuthFailPerSecond
	}
	if l.authFailBurst <= 0 {
		l.authFailBurst = defaultAuthFailBurst
	}
	if l.statsRate <= 0 {
		l.statsRate = defaultStatsPerSecond
	}
	if l.statsBurst <= 0 {
		l.statsBurst = defaultStatsBurst
	}
	if l.maxClients <= 0 {
		l.maxClients = defaultMaxClients
	}
	if l.streamsPerDevice <= 0 {
		l.streamsPerDevice = defaultStreamsPerDevice
	}
	if l.bodyTimeout <= 0 {
		l.bodyTimeout = defaultBodyTimeout
	}
	return l
}

// withReadDeadline gives every request a deadline for reading its body:
// a client that announces a body and stalls is cut off after bodyTimeout
// (the connection closes) instead of holding it forever. The watch stream
// lifts the deadline once authenticated (it has no body; see watchRules).
// The deadline stays in force while the server discards an unread body
// after the handler, so that cannot stall either.
func (s *server) withReadDeadline(next http.Handler) http.Handler {
	d := s.cfg.limits.bodyTimeout
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Not supported by every ResponseWriter (httptest.ResponseRecorder):
		// then there is no connection to protect.
		_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(d))
		next.ServeHTTP(w, r)
	})
}
