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
	refusals      *prometheus.CounterVec
	watchStreams  *prometheus.CounterVec
	watchLag      prometheus.Histogram
	storeLatency  *prometheus.HistogramVec
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
	m.refusals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wiremesh_refusals_total",
		Help: "Requests answered with an API error, by route pattern and error code (unauthorized, prefix_conflict, ...).",
	}, []string{"route", "code"})
	m.watchStreams = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wiremesh_watch_streams_total",
		Help: "Watch streams started, by how they started (snapshot: from scratch; resume: from a revision).",
	}, []string{"start"})
	m.watchLag = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "wiremesh_watch_lag_seconds",
		Help:    "Time from the hub reading a change from the store to a watch stream writing it.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	})
	m.storeLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "wiremesh_store_seconds",
		Help:    "Latency of store calls by operation and result (ok, or error).",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
	}, []string{"op", "result"})
	m.reg.MustRegister(m.requests, m.registrations, m.watchers, m.fanout, m.encoded, m.dropped,
		m.refusals, m.watchStreams, m.watchLag, m.storeLatency)
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
		if sw.errCode != "" {
			m.refusals.WithLabelValues(route, sw.errCode).Inc()
		}
	})
}

// statusWriter records the status code and the API error code (set by
// writeError); Unwrap lets http.ResponseController reach the underlying
// writer (Flush, deadlines).
type statusWriter struct {
	http.ResponseWriter
	status  int
	errCode string
}

// noteErrorCode records the API error code of an answer on w, if w is (or
// wraps) a statusWriter.
func noteErrorCode(w http.ResponseWriter, code string) {
	for w != nil {
		if sw, ok := w.(*statusWriter); ok {
			sw.errCode = code
			return
		}
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return
		}
		w = u.Unwrap()
	}
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
