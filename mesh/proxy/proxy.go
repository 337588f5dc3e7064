// Package proxy serves a SOCKS5 proxy (CONNECT and UDP ASSOCIATE) and an
// HTTP proxy (CONNECT, and plain http:// requests in absolute form) whose
// connections go through a mesh node, so that any program on the machine
// reaches the mesh, and the members' child prefixes, from an unprivileged
// userspace agent, as tailscaled's --socks5-server and
// --outbound-http-proxy-listen do.
//
// Every connection is made with Config.Dial, normally [mesh.Node.Dial]:
// the proxies never reach the host network. A destination outside the
// mesh is refused the way each protocol expects: SOCKS5 reply 3 ("network
// unreachable"), HTTP 502 Bad Gateway with the reason in the body. Host
// names are resolved by Dial, against the zone's member names.
//
// The proxies have no authentication: listen on a loopback address (the
// wiremesh command refuses any other without an explicit flag).
package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/wiremesh/wiremesh/mesh"
)

// DialFunc connects to addr ("host:port") over network ("tcp"). It is
// normally (*mesh.Node).Dial.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Config configures a proxy server.
type Config struct {
	// Dial makes the proxied connections. Required.
	Dial DialFunc
	// Logger receives one debug line per refused or failed request; nil
	// means quiet.
	Logger *slog.Logger
	// DialTimeout bounds one Dial; zero means DefaultDialTimeout.
	DialTimeout time.Duration
}

// Timeouts of the proxies.
const (
	// DefaultDialTimeout bounds a dial when Config.DialTimeout is zero.
	DefaultDialTimeout = 30 * time.Second
	// handshakeTimeout bounds a client's request (SOCKS5 negotiation, HTTP
	// request header).
	handshakeTimeout = 10 * time.Second
)

// ErrNoDial is returned by NewSOCKS5 and NewHTTP without Config.Dial.
var ErrNoDial = errors.New("proxy: Config.Dial is required")

// conns tracks the listeners and connections of a server so that Close
// can stop them, and the goroutines serving them.
type conns struct {
	cfg Config
	log *slog.Logger
	wg  sync.WaitGroup

	// mu guards the fields below.
	mu     sync.Mutex
	closed bool
	lns    map[net.Listener]struct{}
	open   map[net.Conn]struct{}
}

func newConns(cfg Config) (*conns, error) {
	if cfg.Dial == nil {
		return nil, ErrNoDial
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &conns{cfg: cfg, log: log, lns: map[net.Listener]struct{}{}, open: map[net.Conn]struct{}{}}, nil
}

// track adds c to the set closed by close; false when closed already.
func (s *conns) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.open[c] = struct{}{}
	return true
}

func (s *conns) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.open, c)
	s.mu.Unlock()
}

// addListener adds ln to the set closed by close and counts its serving
// goroutine in wg (call s.wg.Done when it ends); false when closed.
func (s *conns) addListener(ln net.Listener) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.lns[ln] = struct{}{}
	s.wg.Add(1)
	return true
}

// enter counts a request served outside serve (an HTTP handler) in wg;
// false when closed. Call s.wg.Done when it ends.
func (s *conns) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Add(1)
	return true
}

// close closes every listener and connection and waits for the
// goroutines serving them. It reports whether this call closed.
func (s *conns) close() bool {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return false
	}
	s.closed = true
	for ln := range s.lns {
		ln.Close()
	}
	for c := range s.open {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return true
}

// dial dials addr with the configured timeout.
func (s *conns) dial(ctx context.Context, addr string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.DialTimeout)
	defer cancel()
	c, err := s.cfg.Dial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if !s.track(c) {
		c.Close()
		return nil, net.ErrClosed
	}
	return c, nil
}

// splice copies between a and b in both directions until both are done,
// passing on half-closes, then closes both.
func splice(a, b net.Conn) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		copyHalf(b, a)
	}()
	copyHalf(a, b)
	<-done
	a.Close()
	b.Close()
}

// copyHalf copies src to dst, then closes dst's write side (or all of dst
// when it cannot half-close).
func copyHalf(dst, src net.Conn) {
	_, err := io.Copy(dst, src)
	if cw, ok := dst.(interface{ CloseWrite() error }); ok && err == nil {
		cw.CloseWrite()
		return
	}
	dst.Close()
	src.Close()
}

// failure classifies a dial error for the protocols' replies.
type failure int

const (
	failGeneral     failure = iota
	failNoRoute             // outside the mesh, or the network is unreachable
	failHost                // unknown or ambiguous name, host unreachable
	failRefused             // connection refused
	failTimeout             // no answer in time
	failUnsupported         // a request the proxy does not serve
)

func classify(err error) failure {
	var dnsErr *net.DNSError
	switch {
	case errors.Is(err, mesh.ErrNoRoute), errors.Is(err, syscall.ENETUNREACH):
		return failNoRoute
	case errors.As(err, &dnsErr), errors.Is(err, mesh.ErrAmbiguousName), errors.Is(err, syscall.EHOSTUNREACH):
		return failHost
	case errors.Is(err, syscall.ECONNREFUSED), strings.Contains(err.Error(), "connection was refused"):
		// The netstack reports a refusal as text only.
		return failRefused
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, syscall.ETIMEDOUT), isTimeout(err):
		return failTimeout
	}
	return failGeneral
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
