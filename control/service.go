package control

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/wiremesh/wiremesh/control/store"
)

// Options configures a Service. DataDir is required unless Store names a
// PostgreSQL database.
type Options struct {
	// DataDir holds the state: wiremesh.db, server.key (0600), admin.token
	// (0600) and the self-signed tls.crt/tls.key. Created (0700) if missing.
	// With a PostgreSQL Store the state is in the database and DataDir, if
	// set, only receives copies of admin.token and tls.crt for the admin
	// commands run on this machine.
	DataDir string
	// Store names the database. Empty means SQLite, DataDir/wiremesh.db. A
	// postgres:// or postgresql:// URL means PostgreSQL, which several
	// replicas of the service may share: the service's key, admin token
	// and self-signed certificate are then kept in the database too, so
	// every replica serves with the same ones.
	Store string
	// Listen is the TCP address of the API. Empty means ":8443".
	Listen string
	// STUNListen is the UDP address of the STUN responder. Empty means
	// ":3478"; "off" disables STUN.
	STUNListen string
	// STUNAltListen is the UDP address of the second STUN responder, which
	// lets members tell a symmetric NAT from an endpoint-independent one.
	// Empty means the host of STUNListen with the next port (any port when
	// STUNListen has port 0); "off" disables it.
	STUNAltListen string
	// TLSCertFile and TLSKeyFile give a certificate to serve (both or
	// neither). Neither means a self-signed certificate (ECDSA P-256)
	// created on first start (in DataDir, or in a PostgreSQL Store) and
	// reused after. Replicas given files must all serve the same
	// certificate: members pin its fingerprint.
	TLSCertFile, TLSKeyFile string
	// TLSHosts are extra names or addresses for the self-signed
	// certificate, beyond localhost, 127.0.0.1, ::1 and the hostname. They
	// only take effect when the certificate is created.
	TLSHosts []string
	// InsecureHTTP serves plain HTTP (behind a TLS-terminating proxy, or in
	// tests). Join tokens then carry no fingerprint.
	InsecureHTTP bool
	// AdminToken is the admin credential. Empty means the one kept in
	// DataDir/admin.token (or in a PostgreSQL Store), generated on first
	// start.
	AdminToken string
	// Logger receives operational logs. Nil is quiet.
	Logger *slog.Logger
	// HeartbeatInterval is the watch heartbeat interval. Zero means 15s.
	HeartbeatInterval time.Duration
	// Version is reported in /v1/info. Empty means "dev".
	Version string
	// TrustedProxies are reverse proxies in front of the service: only for
	// connections from them is X-Forwarded-For used to find the client
	// address that rate limits and the audit log go by. Nil trusts none.
	TrustedProxies []netip.Prefix
	// DeviceTokenLifetime is how long a device token is valid (members
	// rotate theirs at half of it). Zero means 90 days; negative: never
	// expire.
	DeviceTokenLifetime time.Duration
	// EphemeralTimeout is how long an ephemeral member (mesh.WithEphemeral,
	// `wiremesh join --ephemeral`) may stay offline before it is deleted
	// and its address and prefixes freed. Zero means 10 minutes.
	EphemeralTimeout time.Duration
}

// Service is a running coordination service: API listener, STUN responder
// and store. Create it with Start; stop it with Close.
type Service struct {
	log        *slog.Logger
	store      store.Store
	srv        *server
	http       *http.Server
	addr       netip.AddrPort
	stun       *STUNServer
	stunAlt    *STUNServer
	fp         []byte
	adminToken string
	scheme     string
	storeName  string
	serveDone  chan struct{}

	mu     sync.Mutex // guards closed
	closed bool
}

// Start binds the listeners, opens the state (o.Store, or o.DataDir) and
// serves until Close. It returns once the service accepts connections. A
// start that fails leaves the data directory as it found it: the listeners
// are bound before anything is written, and what a failed start created is
// removed.
func Start(ctx context.Context, o Options) (_ *Service, err error) {
	wrap := func(err error) error { return fmt.Errorf("control.Start: %w", err) }
	if err := checkOptions(&o); err != nil {
		return nil, wrap(err)
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}

	l, err := bind(ctx, o, log)
	if err != nil {
		return nil, wrap(err)
	}
	var undo *dataDirUndo
	if o.DataDir != "" {
		if undo, err = newDataDirUndo(o.DataDir); err != nil {
			l.close()
			return nil, wrap(err)
		}
	}
	var st store.Store
	defer func() {
		if err == nil {
			return
		}
		l.close()
		if st != nil {
			st.Close()
		}
		if undo == nil {
			return
		}
		if uerr := undo.undo(); uerr != nil {
			log.Warn("could not remove what the failed start created", "data_dir", o.DataDir, "err", uerr)
		}
	}()
	if o.DataDir != "" {
		if err := os.MkdirAll(o.DataDir, 0o700); err != nil {
			return nil, wrap(fmt.Errorf("data directory: %w", err))
		}
	}
	if st, err = openStore(ctx, o, log); err != nil {
		return nil, wrap(err)
	}
	creds, err := loadCredentials(ctx, o, st, log)
	if err != nil {
		return nil, wrap(err)
	}
	s := &Service{log: log, store: st, stun: l.stun, stunAlt: l.stunAlt, fp: creds.fp, adminToken: creds.admin, scheme: "http",
		storeName: storeKind(o.Store), serveDone: make(chan struct{})}
	s.addr = l.api.(*net.TCPListener).Addr().(*net.TCPAddr).AddrPort()
	s.srv, err = newServer(serverConfig{
		Store:             st,
		PrivateKey:        creds.key,
		AdminToken:        creds.admin,
		STUNAddr:          l.stunAdvertised,
		STUNAltAddr:       l.stunAltAdvertised,
		Fingerprint:       creds.fp,
		Logger:            log,
		HeartbeatInterval: o.HeartbeatInterval,
		Version:           o.Version,
		TrustedProxies:    o.TrustedProxies,

		DeviceTokenLifetime: o.DeviceTokenLifetime,
		EphemeralTimeout:    o.EphemeralTimeout,
	})
	if err != nil {
		return nil, wrap(err)
	}
	s.serve(l.api, creds.tls)
	log.Info("wiremesh service started", "url", s.URL(), "stun", l.stunAdvertised, "data_dir", o.DataDir,
		"store", s.storeName)
	return s, nil
}

// checkOptions validates o and fills its defaults.
func checkOptions(o *Options) error {
	pg := isPostgres(o.Store)
	switch {
	case o.Store != "" && !pg:
		return fmt.Errorf("store %q: want a postgres:// or postgresql:// URL, or nothing for SQLite in the data directory", redactDSN(o.Store))
	case o.DataDir == "" && !pg:
		return errors.New("Options.DataDir is required")
	case (o.TLSCertFile == "") != (o.TLSKeyFile == ""):
		return errors.New("TLS certificate and key files must be given together")
	case o.InsecureHTTP && o.TLSCertFile != "":
		return errors.New("InsecureHTTP and a TLS certificate are mutually exclusive")
	}
	if o.Listen == "" {
		o.Listen = ":8443"
	}
	if o.STUNListen == "" {
		o.STUNListen = ":3478"
	}
	if pg && o.DataDir != "" {
		// The copies of the admin token and certificate left in DataDir
		// must not replace a SQLite service's own files.
		if ok, err := exists(filepath.Join(o.DataDir, ServerKeyFile)); err != nil || ok {
			return errors.Join(err, fmt.Errorf("data directory %s holds the state of a SQLite service (%s): give the PostgreSQL service a directory of its own",
				o.DataDir, ServerKeyFile))
		}
	}
	return nil
}

// serve serves the API on ln (with TLS when tlsCfg is set) until Close.
func (s *Service) serve(ln net.Listener, tlsCfg *tls.Config) {
	s.http = &http.Server{
		Handler:           s.srv.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	if tlsCfg != nil {
		ln = tls.NewListener(ln, tlsCfg)
		s.scheme = "https"
	}
	go func() {
		defer close(s.serveDone)
		if err := s.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("API listener failed", "err", err)
		}
	}()
}

// URL returns the base URL of the API, e.g. "https://127.0.0.1:8443"; an
// unspecified listen host becomes 127.0.0.1.
func (s *Service) URL() string {
	a := s.addr.Addr().Unmap()
	if a.IsUnspecified() {
		a = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	}
	return s.scheme + "://" + netip.AddrPortFrom(a, s.addr.Port()).String()
}

// Addr returns the address the API listens on.
func (s *Service) Addr() netip.AddrPort { return s.addr }

// STUNAddr returns the address of the STUN responder (zero if disabled).
func (s *Service) STUNAddr() netip.AddrPort {
	if s.stun == nil {
		return netip.AddrPort{}
	}
	return s.stun.Addr()
}

// STUNAltAddr returns the address of the second STUN responder (zero if
// disabled).
func (s *Service) STUNAltAddr() netip.AddrPort {
	if s.stunAlt == nil {
		return netip.AddrPort{}
	}
	return s.stunAlt.Addr()
}

// Fingerprint returns the SHA-256 of the TLS certificate (nil with
// InsecureHTTP).
func (s *Service) Fingerprint() []byte { return s.fp }

// StoreName names the store: "sqlite", or the PostgreSQL URL without its
// password.
func (s *Service) StoreName() string { return s.storeName }

// AdminToken returns the admin token.
func (s *Service) AdminToken() string { return s.adminToken }

// CreateJoinToken creates a join token for zone and returns it in full
// (secret plus the certificate fingerprint, if any). ttl <= 0 means it never
// expires. store.ErrNotFound (wrapped) if the zone does not exist.
func (s *Service) CreateJoinToken(ctx context.Context, zone string, reusable bool, ttl time.Duration) (string, error) {
	return s.srv.CreateJoinToken(ctx, zone, reusable, ttl)
}

// Close stops the service gracefully: watch streams end, the listeners
// close, in-flight requests finish (up to 5s), then the store closes. A
// second Close returns an error wrapping net.ErrClosed.
func (s *Service) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fmt.Errorf("control.Service.Close: %w", net.ErrClosed)
	}
	s.closed = true
	s.mu.Unlock()

	var errs []error
	s.srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.http.Shutdown(ctx); err != nil {
		s.http.Close()
	}
	<-s.serveDone
	for _, st := range []*STUNServer{s.stun, s.stunAlt} {
		if st != nil {
			if err := st.Close(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := s.store.Close(); err != nil {
		errs = append(errs, err)
	}
	s.log.Info("wiremesh service stopped")
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("control.Service.Close: %w", err)
	}
	return nil
}
