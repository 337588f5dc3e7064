// Package control is the wiremesh coordination service: the HTTP API over a
// [store.Store] (registration, self-service, admin), the watch fan-out that
// keeps every member's peer list current, a STUN binding responder, TLS with
// a self-signed certificate kept in the data directory, and [Start], which
// runs all of it as one [Service] (what `wiremesh serve` runs).
//
// # Credentials
//
//   - join token (wmj_…): POST /v1/devices only.
//   - device token (wmd_…): /v1/devices/self…, /v1/zones/{zone}/watch of the
//     device's own zone, and the relay (/v1/relay, see relay.go).
//   - admin token: every admin endpoint and GET /metrics.
//
// A credential of one kind never works where another is expected; wrong or
// missing credentials give 401 unauthorized and change nothing. A client
// refused too often, or registering too often, gets 429 rate_limited with
// Retry-After; every refusal and every admin action is written to the
// audit log. docs/HARDENING.md has the limits and deadlines.
package control

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/control/dashboard"
	"github.com/wiremesh/wiremesh/control/store"
)

// serverConfig configures a server.
type serverConfig struct {
	// Store holds the state. Required. The server does not close it.
	Store store.Store
	// PrivateKey is the service's static X25519 key; registrations prove
	// possession of the device key against its public half. Required.
	PrivateKey api.Key
	// AdminToken authorizes the admin API and /metrics. Empty disables the
	// admin API (every admin call gets 401).
	AdminToken string
	// STUNAddr is advertised in /v1/info ("" = no STUN).
	STUNAddr string
	// STUNAltAddr is the second STUN responder advertised in /v1/info.
	STUNAltAddr string
	// Fingerprint is the SHA-256 of the TLS certificate, embedded in join
	// tokens. Nil for plain HTTP.
	Fingerprint []byte
	// Logger receives operational logs. Nil is quiet.
	Logger *slog.Logger
	// HeartbeatInterval is the idle interval between watch heartbeats.
	// Zero means 15s.
	HeartbeatInterval time.Duration
	// MaxClockSkew bounds how far a registration timestamp may be from Now.
	// Zero means 5m.
	MaxClockSkew time.Duration
	// Now is the clock. Nil means time.Now.
	Now func() time.Time
	// Version is reported in /v1/info. Empty means "dev".
	Version string
	// TrustedProxies are the addresses of reverse proxies in front of the
	// service. Only for a peer inside one of them is X-Forwarded-For used
	// to find the client address (rate limits, audit log); nil trusts no
	// one and uses the connection's peer address.
	TrustedProxies []netip.Prefix
	// DeviceTokenLifetime is how long a device token is valid; members
	// rotate theirs at half of it. Zero means 90 days; negative: never
	// expire.
	DeviceTokenLifetime time.Duration
	// EphemeralTimeout is how long an ephemeral device may stay offline
	// before the service deletes it. Zero means 10 minutes.
	EphemeralTimeout time.Duration

	// presenceLease is how long a report of a watch stream lasts unless
	// renewed (zero: defaultPresenceLease); the renewal and reaping loop
	// runs every third of it.
	presenceLease time.Duration

	// limits are the per-client and per-device limits; zero fields mean
	// the defaults (limits.go).
	limits limits
}

const (
	defaultHeartbeat = 15 * time.Second
	defaultSkew      = 5 * time.Minute
	// hubPollInterval is how often the hub re-reads the change log of the
	// zones being watched, so changes made by another replica sharing the
	// store are seen too.
	hubPollInterval = time.Second
)

// server is the coordination service's HTTP API over a store.Store.
type server struct {
	cfg     serverConfig
	log     *slog.Logger
	pub     api.Key
	hub     *hub
	metrics *metrics
	// presence tracks members' watch streams (online, last seen).
	presence *presence
	replay   *replayCache
	relay    *relay
	handler  http.Handler

	registerLimit *clientLimiter        // registrations per client address
	authFailLimit *clientLimiter        // refused authentications per client address
	statsLimit    *keyedLimiter[string] // stats reports per device id
	statsEvents   *statsEvents          // stats reports received here, for dashboards
	streams       *streamSet            // watch streams per device

	closeOnce sync.Once
}

// newServer checks cfg and returns a server. Close it to end watch streams
// and background goroutines.
func newServer(cfg serverConfig) (*server, error) {
	if cfg.Store == nil {
		return nil, errors.New("control: new server: no store")
	}
	if cfg.PrivateKey.IsZero() {
		return nil, errors.New("control: new server: zero private key")
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = defaultHeartbeat
	}
	if cfg.MaxClockSkew <= 0 {
		cfg.MaxClockSkew = defaultSkew
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Version == "" {
		cfg.Version = "dev"
	}
	cfg.limits = cfg.limits.withDefaults()
	if cfg.DeviceTokenLifetime == 0 {
		cfg.DeviceTokenLifetime = defaultDeviceTokenLifetime
	}
	if cfg.EphemeralTimeout <= 0 {
		cfg.EphemeralTimeout = defaultEphemeralTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l := cfg.limits
	m := newMetrics()
	cfg.Store = newTimedStore(cfg.Store, m.storeLatency)
	s := &server{
		cfg:           cfg,
		log:           log,
		pub:           api.PublicKey(cfg.PrivateKey),
		metrics:       m,
		replay:        newReplayCache(maxReplayEntries),
		registerLimit: newClientLimiter(l.registerRate, l.registerBurst, l.maxClients),
		authFailLimit: newClientLimiter(l.authFailRate, l.authFailBurst, l.maxClients),
		statsLimit:    newKeyedLimiter[string](l.statsRate, l.statsBurst, l.maxClients),
		statsEvents:   newStatsEvents(),
		streams:       newStreamSet(l.streamsPerDevice),
	}
	s.hub = newHub(cfg.Store, log, s.metrics, hubPollInterval)
	s.relay = newRelay(log, s.metrics.reg, relayConfig{now: cfg.Now, follow: s.followZone, check: s.checkRelayDevice})
	s.presence = newPresence(presenceConfig{now: cfg.Now, store: cfg.Store, log: log, lease: cfg.presenceLease,
		ephemeralTimeout: cfg.EphemeralTimeout, changed: s.hub.update})
	dash, err := s.newDashboard()
	if err != nil {
		s.presence.close()
		s.hub.close()
		s.relay.close()
		return nil, fmt.Errorf("control.NewServer: %w", err)
	}
	s.handler = s.routes(dash)
	return s, nil
}

// Handler returns the HTTP handler of the whole API.
func (s *server) Handler() http.Handler { return s.handler }

// Close ends every watch stream and relay connection and stops
// background goroutines. It does not close the store. Later calls return nil.
func (s *server) Close() error {
	s.closeOnce.Do(func() {
		s.presence.close()
		s.hub.close()
		s.relay.close()
	})
	return nil
}

// PublicKey returns the service's static public key.
func (s *server) PublicKey() api.Key { return s.pub }

func (s *server) routes(dash http.Handler) http.Handler {
	mux := http.NewServeMux()
	h := func(pattern string, fn http.HandlerFunc) {
		mux.Handle(pattern, s.metrics.instrument(pattern, s.withReadDeadline(fn)))
	}
	h("GET /v1/info", s.handleInfo)

	// Members.
	h("POST /v1/devices", s.handleRegister)
	h("GET /v1/devices/self", s.device(s.handleGetSelf))
	h("PATCH /v1/devices/self", s.device(s.handlePatchSelf))
	h("DELETE /v1/devices/self/prefixes/{prefix...}", s.device(s.handleReleaseSelf))
	h("DELETE /v1/devices/self", s.device(s.handleDeleteSelf))
	h("POST /v1/devices/self/token", s.device(s.handleRotateToken))
	h("POST /v1/devices/self/key", s.device(s.handleRotateKey))
	h("POST "+api.StatsPath, s.device(s.handleStats))
	h("GET /v1/zones/{zone}/watch", s.device(s.watchRules(s.handleWatch)))
	h("GET "+api.RelayPath, s.device(s.relay.handle))

	// Admin.
	h("POST /v1/zones", s.admin(s.handleCreateZone))
	h("GET /v1/zones", s.admin(s.handleListZones))
	h("GET /v1/zones/{zone}", s.admin(s.handleGetZone))
	h("POST /v1/tokens", s.admin(s.handleCreateToken))
	h("GET /v1/tokens", s.admin(s.handleListTokens))
	h("DELETE /v1/tokens/{id}", s.admin(s.handleDeleteToken))
	h("GET /v1/devices", s.admin(s.handleListDevices))
	h("GET /v1/devices/{id}", s.admin(s.handleGetDevice))
	h("DELETE /v1/devices/{id}", s.admin(s.handleDeleteDevice))
	h("GET /v1/prefixes", s.admin(s.handleListPrefixes))
	h("DELETE /v1/zones/{zone}/prefixes/{prefix...}", s.admin(s.handleReleaseAdmin))
	h("GET /v1/zones/{zone}/policy", s.admin(s.handleGetPolicy))
	h("PUT /v1/zones/{zone}/policy", s.admin(s.handleSetPolicy))
	h("DELETE /v1/zones/{zone}/policy", s.admin(s.handleDeletePolicy))
	h("POST /v1/zones/{zone}/policy/check", s.admin(s.handleCheckPolicy))

	// Metrics: admin token required (they reveal zone activity).
	prom := promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{})
	h("GET /metrics", s.admin(func(w http.ResponseWriter, r *http.Request) { prom.ServeHTTP(w, r) }))

	// The web dashboard (its own login; see package dashboard).
	h(dashboard.Path, dash.ServeHTTP)

	h("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, apiErr(api.CodeNotFound, "no such endpoint: %s %s", r.Method, r.URL.Path))
	})
	return mux
}

func (s *server) handleInfo(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, api.Info{
		Version:             s.cfg.Version,
		PublicKey:           s.pub,
		STUNAddr:            s.cfg.STUNAddr,
		STUNAltAddr:         s.cfg.STUNAltAddr,
		Relay:               true,
		DefaultZone:         api.DefaultZone,
		MaxClockSkewSeconds: int(s.cfg.MaxClockSkew / time.Second),

		EphemeralTimeoutSeconds: int(s.cfg.EphemeralTimeout / time.Second),
	})
}

// CreateJoinToken creates a join token for zone and returns it in full
// (secret plus the certificate fingerprint, if any). ttl <= 0 means it never
// expires. store.ErrNotFound (wrapped) if the zone does not exist.
func (s *server) CreateJoinToken(ctx context.Context, zone string, reusable bool, ttl time.Duration) (string, error) {
	jt, err := s.createJoinToken(ctx, zone, reusable, ttl, nil)
	if err != nil {
		return "", fmt.Errorf("control.CreateJoinToken %q: %w", zone, err)
	}
	return jt.Token, nil
}

func (s *server) createJoinToken(ctx context.Context, zone string, reusable bool, ttl time.Duration, tags []string) (api.JoinToken, error) {
	secret, err := randomToken(api.JoinTokenPrefix)
	if err != nil {
		return api.JoinToken{}, err
	}
	id, err := randomToken("jt_")
	if err != nil {
		return api.JoinToken{}, err
	}
	now := s.cfg.Now().UTC().Truncate(time.Second)
	t := store.JoinToken{
		ID:        id[:3+12],
		Hash:      sha256.Sum256([]byte(secret)),
		Zone:      zone,
		Reusable:  reusable,
		Tags:      tags,
		CreatedAt: now,
	}
	if ttl > 0 {
		t.ExpiresAt = now.Add(ttl)
	}
	if err := s.cfg.Store.CreateJoinToken(ctx, t); err != nil {
		return api.JoinToken{}, err
	}
	out := toAPIToken(t)
	out.Token = api.FormatJoinToken(secret, s.cfg.Fingerprint)
	return out, nil
}
