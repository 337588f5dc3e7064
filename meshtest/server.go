package meshtest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/control"
	"github.com/wiremesh/wiremesh/control/adminclient"
	"github.com/wiremesh/wiremesh/control/api"
)

// Server is an in-process coordination service for tests: control.Start on
// 127.0.0.1 with a port chosen by the system, STUN on 127.0.0.1, and by
// default TLS with a self-signed certificate, so joining exercises the
// certificate pinning path (the fingerprint travels in Token).
type Server struct {
	// URL is the service's base URL, e.g. "https://127.0.0.1:40123". It
	// stays the same across Stop and Start.
	URL string
	// Token is a reusable join token of zone "default" that never expires.
	Token string
	// DataDir is the service's data directory (a t.TempDir).
	DataDir string
	// AdminToken is the admin credential.
	AdminToken string

	cfg serverConfig

	ownDir bool // Open made DataDir: Close removes it

	mu   sync.Mutex // guards svc, listen, stun
	svc  *control.Service
	api  string // API listen address after the first start
	stun string // STUN listen address after the first start
}

type serverConfig struct {
	store     string
	insecure  bool
	logger    *slog.Logger
	heartbeat time.Duration
}

// ServerOption configures NewServer.
type ServerOption func(*serverConfig)

// WithInsecureHTTP serves plain HTTP instead of TLS (the URL is http://).
func WithInsecureHTTP() ServerOption { return func(c *serverConfig) { c.insecure = true } }

// WithStore serves from the PostgreSQL database dsn (control.Options.Store)
// instead of SQLite in the data directory. Servers given one database are
// replicas of one service: same certificate, key, tokens and members.
func WithStore(dsn string) ServerOption { return func(c *serverConfig) { c.store = dsn } }

// WithServerLogger sends the service's logs to l.
func WithServerLogger(l *slog.Logger) ServerOption { return func(c *serverConfig) { c.logger = l } }

// WithHeartbeatInterval sets the watch heartbeat interval (default 15s).
func WithHeartbeatInterval(d time.Duration) ServerOption {
	return func(c *serverConfig) { c.heartbeat = d }
}

// NewServer starts a service and stops it when the test ends.
func NewServer(t testing.TB, opts ...ServerOption) *Server {
	t.Helper()
	s := newServer(t.TempDir(), opts)
	t.Cleanup(s.Stop)
	if err := s.first(); err != nil {
		t.Fatalf("meshtest.NewServer: %v", err)
	}
	return s
}

// Open starts a service outside a test (an Example, a TestMain, a demo),
// in a temporary data directory of its own. Close stops it and removes
// that directory.
func Open(opts ...ServerOption) (*Server, error) {
	dir, err := os.MkdirTemp("", "meshtest-")
	if err != nil {
		return nil, fmt.Errorf("meshtest.Open: %w", err)
	}
	s := newServer(dir, opts)
	s.ownDir = true
	if err := s.first(); err != nil {
		s.Close()
		return nil, fmt.Errorf("meshtest.Open: %w", err)
	}
	return s, nil
}

// Close stops the service and, for a Server from Open, removes its data
// directory. Safe to call more than once.
func (s *Server) Close() {
	s.Stop()
	if s.ownDir {
		os.RemoveAll(s.DataDir)
	}
}

func newServer(dir string, opts []ServerOption) *Server {
	s := &Server{DataDir: dir}
	for _, o := range opts {
		o(&s.cfg)
	}
	s.api, s.stun = "127.0.0.1:0", "127.0.0.1:0"
	return s
}

// first starts the service for the first time and creates Token.
func (s *Server) first() error {
	if err := s.start(); err != nil {
		return err
	}
	tok, err := s.Service().CreateJoinToken(context.Background(), api.DefaultZone, true, 0)
	if err != nil {
		return err
	}
	s.Token = tok
	return nil
}

// Start starts the service again after Stop, on the same data directory
// and the same ports (retrying briefly while a port is still held). It is
// a no-op when the service runs.
func (s *Server) Start(t testing.TB) {
	t.Helper()
	if err := s.start(); err != nil {
		t.Fatalf("meshtest: %v", err)
	}
}

func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.svc != nil {
		return nil
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		svc, err := control.Start(context.Background(), control.Options{
			DataDir:           s.DataDir,
			Store:             s.cfg.store,
			Listen:            s.api,
			STUNListen:        s.stun,
			InsecureHTTP:      s.cfg.insecure,
			Logger:            s.cfg.logger,
			HeartbeatInterval: s.cfg.heartbeat,
			Version:           "meshtest",
		})
		if err == nil {
			s.svc = svc
			break
		}
		if !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			return fmt.Errorf("starting the service: %w", err)
		}
		time.Sleep(50 * time.Millisecond) // the port is still held; retry until the deadline
	}
	s.api = s.svc.Addr().String()
	s.stun = s.svc.STUNAddr().String()
	s.URL = s.svc.URL()
	s.AdminToken = s.svc.AdminToken()
	return nil
}

// Stop stops the service; members keep their data plane with the peers
// they know. Safe to call when stopped.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.svc != nil {
		s.svc.Close()
		s.svc = nil
	}
}

// Service returns the running service (nil while stopped).
func (s *Server) Service() *control.Service {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.svc
}

// AdminClient returns an admin API client that pins the service
// certificate, closed when the test ends.
func (s *Server) AdminClient(t testing.TB) *adminclient.Client {
	t.Helper()
	svc := s.Service()
	if svc == nil {
		t.Fatal("meshtest: the service is stopped")
	}
	c, err := adminclient.New(s.URL, adminclient.Options{AdminToken: s.AdminToken, Fingerprint: svc.Fingerprint()})
	if err != nil {
		t.Fatalf("meshtest: admin client: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// CreateToken returns a new reusable, non-expiring join token of zone.
func (s *Server) CreateToken(t testing.TB, zone string) string {
	t.Helper()
	svc := s.Service()
	if svc == nil {
		t.Fatal("meshtest: the service is stopped")
	}
	tok, err := svc.CreateJoinToken(context.Background(), zone, true, 0)
	if err != nil {
		t.Fatalf("meshtest.CreateToken %q: %v", zone, err)
	}
	return tok
}

// CreateZone creates a zone with default pools through the admin API.
func (s *Server) CreateZone(t testing.TB, name string) {
	t.Helper()
	s.CreateZoneWith(t, api.CreateZoneRequest{Name: name})
}

// CreateZoneWith creates a zone through the admin API.
func (s *Server) CreateZoneWith(t testing.TB, req api.CreateZoneRequest) api.Zone {
	t.Helper()
	z, err := s.AdminClient(t).CreateZone(context.Background(), req)
	if err != nil {
		t.Fatalf("meshtest.CreateZone %q: %v", req.Name, err)
	}
	return z
}
