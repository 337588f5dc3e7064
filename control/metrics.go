package control

import (
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the Prometheus metrics of one server, in a registry of its
// own (no process globals). Served at GET /metrics (admin token).
type metrics struct {
	reg           *prometheus.Registry
	requests      *prometheus.CounterVec
	registrations *prometheus.CounterVec
	watchers      prometheus.Gauge
	fanout        prometheus.Counter
	encoded       prometheus.Counter
	dropped       prometheus.Counter
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wiremesh_http_requests_total",
			Help: "HTTP requests by route pattern and status code.",
		}, []string{"route", "code"}),
		registrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wiremesh_registrations_total",
			Help: "Successful device registrations (created: first time; updated: same key again).",
		}, []string{"result"}),
		watchers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wiremesh_watchers_active",
			Help: "Watch streams currently open.",
		}),
		fanout: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wiremesh_watch_events_fanned_out_total",
			Help: "Change events handed to watch streams (one per change per watcher).",
		}),
		encoded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wiremesh_watch_changes_encoded_total",
			Help: "Changes encoded for the watch streams (once per change).",
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wiremesh_watch_slow_disconnects_total",
			Help: "Watch streams disconnected because they fell behind.",
		}),
	}
	m.reg.MustRegister(m.requests, m.registrations, m.watchers, m.fanout, m.encoded, m.dropped)
	return m
}

// instrument counts requests of one route by status code.
func (m *metrics) instrument(route string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		code := sw.status
		if code == 0 {
			code = http.StatusOK
		}
		m.requests.WithLabelValues(route, strconv.Itoa(code)).Inc()
	})
}

// statusWriter records the status code; Unwrap lets http.ResponseController
// reach the underlying writer (Flush, deadlines).
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
