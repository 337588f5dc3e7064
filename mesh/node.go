package mesh

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/mesh/internal/controlclient"
)

// Timeouts of Join.
const (
	// savedStateRegisterTimeout bounds the registration attempt of a node
	// that has a previous registration to fall back on.
	savedStateRegisterTimeout = 15 * time.Second
	// firstSyncTimeout bounds the wait for the first peer snapshot.
	firstSyncTimeout = 30 * time.Second
	// watchIdleTimeout: the service sends heartbeats every 15s by default.
	watchIdleTimeout = 60 * time.Second
)

// Node is a member of a mesh. It is safe for concurrent use. Create it with
// Join; stop it with Close.
type Node struct {
	cfg *config
	url string
	log *slog.Logger
	// key is the node's WireGuard key pair (RotateKey replaces it).
	key atomic.Pointer[keyPair]
	// rotateMu serializes RotateKey.
	rotateMu sync.Mutex
	client   *controlclient.Client
	state    stateDir
	// stateLock holds the state directory (see stateDir.lock) until Close.
	stateLock io.Closer
	// plane carries the traffic (see dataPlane); port is its UDP port.
	// Set once by Join before the node is shared (under mu, which
	// setPrefixesLocked reads it with); read-only after.
	plane dataPlane
	port  uint16

	ctx    context.Context // done when Close starts
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine the node started

	events    eventHub
	firstSync chan struct{} // closed when the first snapshot is applied

	httpOnce      sync.Once
	httpTransport *http.Transport
	httpClient    *http.Client

	// mu guards the fields below. Never held while calling the device, the
	// netstack, the service or user code.
	mu       sync.Mutex
	closed   bool
	self     selfInfo
	peers    map[api.Key]api.Peer
	revision int64
	synced   bool // a snapshot was applied in this run
	// filter is the node's inbound filter from the service (nil: the
	// zone has no policy, accept everything); see applyFilter.
	filter    *api.Filter
	connected bool
	saved     savedState // what is written to the state directory
	// wantPrefixes are the child prefixes asked for at registration:
	// WithChildPrefix and AdvertisePrefix, minus ReleasePrefix.
	wantPrefixes []netip.Prefix

	prefixMu sync.Mutex // serializes AdvertisePrefix and ReleasePrefix

	// saveMu serializes saveState across its snapshot (under mu) and its
	// write, so that writes from the watch goroutine and from
	// AdvertisePrefix/ReleasePrefix land in the order of their snapshots.
	// Taken before mu, never while holding it.
	saveMu sync.Mutex
}

// selfInfo is what the service told the node about itself.
type selfInfo struct {
	deviceID  string
	hostname  string
	zone      string
	ipv4      netip.Addr
	ipv6      netip.Addr
	zone4     netip.Prefix
	zone6     netip.Prefix
	prefixes  []netip.Prefix
	endpoints []netip.AddrPort
}

// Join registers with the coordination service at serviceURL, brings up
// the node's WireGuard device and netstack, applies the zone's peer list and
// returns once the node can carry traffic.
//
// With WithStateDir and a previous registration, a service that cannot be
// reached (network error, 5xx) is not fatal: the node starts from the saved
// addresses and peers and keeps trying to reach the service in the
// background. A refusal (4xx) is returned: errors.As(err, &apiErr) with
// apiErr *api.Error gives the code; errors.Is matches ErrUnauthorized,
// ErrPrefixConflict and ErrInvalidPrefix.
func Join(ctx context.Context, serviceURL string, opts ...Option) (*Node, error) {
	n, err := join(ctx, serviceURL, opts)
	if err != nil {
		return nil, wrapService("mesh.Join", err)
	}
	return n, nil
}

// join is Join's work, one step per function: configuration, saved
// state, the node, its UDP port, registration (or the saved registration),
// the data plane, the saved peers, the watch loop and the first snapshot.
func join(ctx context.Context, serviceURL string, opts []Option) (_ *Node, err error) {
	cfg, err := joinConfig(opts)
	if err != nil {
		return nil, err
	}
	sd := stateDir(cfg.stateDir)
	lock, err := sd.lock()
	if err != nil {
		return nil, err
	}
	priv, saved, err := loadState(sd, serviceURL, cfg)
	if err != nil {
		lock.Close()
		return nil, err
	}
	n, err := newNode(cfg, serviceURL, sd, priv)
	if err != nil {
		lock.Close()
		return nil, err
	}
	n.stateLock = lock
	defer func() {
		if err != nil {
			n.Close()
		}
	}()
	port, err := n.choosePort(saved)
	if err != nil {
		return nil, err
	}
	needRegister, restorePeers, err := n.registerOrResume(ctx, saved, port)
	if err != nil {
		return nil, err
	}
	if err := n.saveState(); err != nil {
		return nil, err
	}
	if err := n.startPlane(port); err != nil {
		return nil, err
	}
	// The saved filter is enforced until the service sends a new one.
	n.plane.setFilter(n.currentFilter())
	if needRegister || restorePeers {
		// Work right away with the last known peers.
		if err := n.applyPeerSet(peerMap(saved.Peers, n.keys().pub), saved.Revision, false, false); err != nil {
			return nil, err
		}
	}
	n.wg.Add(3)
	go n.run(needRegister)
	go n.tokenLoop()
	go n.statsLoop()
	if !needRegister {
		if err := n.waitFirstSync(ctx); err != nil {
			return nil, err
		}
	}
	n.mu.Lock()
	self := n.self
	n.mu.Unlock()
	n.log.Info("mesh: joined", "addr", self.ipv4, "zone", self.zone, "hostname", self.hostname, "listen_port", port)
	return n, nil
}

// joinConfig applies opts and fills in the defaults that need the host:
// kernel mode's preflight, the hostname.
func joinConfig(opts []Option) (*config, error) {
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	if cfg.mode == Kernel {
		if err := kernelPreflight(cfg); err != nil {
			return nil, err
		}
	}
	if cfg.hostname == "" {
		if cfg.hostname, err = os.Hostname(); err != nil {
			return nil, fmt.Errorf("hostname: %w (set one with WithHostname)", err)
		}
	}
	return cfg, nil
}

// loadState returns the node's private key and its saved registration
// with serviceURL in cfg's zone (nil when there is none, or it is for
// another service or zone). Without a saved registration, a join token is
// required.
func loadState(sd stateDir, serviceURL string, cfg *config) (api.Key, *savedState, error) {
	priv, err := sd.loadKey()
	if err != nil {
		return api.Key{}, nil, err
	}
	saved, err := sd.load()
	if err != nil {
		return api.Key{}, nil, err
	}
	if saved != nil && !saved.registered(serviceURL) {
		cfg.logger.Info("mesh: saved state is for another service; ignoring it", "saved_url", saved.URL)
		saved = nil
	}
	if saved != nil && cfg.zone != "" && saved.Zone != cfg.zone {
		cfg.logger.Info("mesh: saved state is for another zone; ignoring it", "saved_zone", saved.Zone, "zone", cfg.zone)
		saved = nil
	}
	if saved == nil && cfg.token == "" {
		return api.Key{}, nil, errors.New("no join token: use WithToken (or a state directory with a previous registration)")
	}
	return priv, saved, nil
}

// newNode returns a node with its service client, not yet registered and
// without a data plane. Close releases it.
func newNode(cfg *config, serviceURL string, sd stateDir, priv api.Key) (*Node, error) {
	client, err := controlclient.New(controlclient.Config{
		URL:              serviceURL,
		FallbackURLs:     cfg.fallbackURLs,
		Token:            cfg.token,
		InsecureHTTP:     cfg.insecureHTTP,
		Logger:           cfg.logger,
		WatchIdleTimeout: watchIdleTimeout,
	})
	if err != nil {
		return nil, err
	}
	n := &Node{
		cfg:       cfg,
		url:       serviceURL,
		log:       cfg.logger,
		client:    client,
		state:     sd,
		peers:     map[api.Key]api.Peer{},
		firstSync: make(chan struct{}),

		wantPrefixes: canonPrefixes(cfg.childPrefixes),
	}
	n.key.Store(&keyPair{priv: priv, pub: api.PublicKey(priv)})
	n.ctx, n.cancel = context.WithCancel(context.Background())
	return n, nil
}

// choosePort returns the UDP port of the node: WithListenPort, else the
// saved one when still free, else a random free one.
func (n *Node) choosePort(saved *savedState) (uint16, error) {
	port := n.cfg.listenPort
	if port == 0 && saved != nil {
		port = saved.ListenPort
	}
	return reservePort(port, n.cfg.listenPort == 0)
}

// registerOrResume registers the node, or falls back to its saved
// registration: when the service is unreachable (needRegister: the watch
// loop registers later), or when the join token is refused but the saved
// device token still works. restorePeers reports that the node registered
// again and adopted its saved peers (see adoptSavedPeers).
func (n *Node) registerOrResume(ctx context.Context, saved *savedState, port uint16) (needRegister, restorePeers bool, err error) {
	regCtx, cancel := ctx, context.CancelFunc(func() {})
	if saved != nil {
		regCtx, cancel = context.WithTimeout(ctx, savedStateRegisterTimeout)
	}
	resp, rerr := n.register(regCtx, port)
	cancel()
	switch {
	case rerr == nil:
		n.adoptRegistration(resp, port)
		return false, n.adoptSavedPeers(saved), nil
	case ctx.Err() != nil:
		return false, false, fmt.Errorf("register: %w", context.Cause(ctx))
	case saved != nil && isTransient(rerr):
		n.log.Warn("mesh: service unreachable, starting from the saved state", "url", n.url, "err", rerr)
		n.adoptSaved(saved, port)
		return true, false, nil
	case saved != nil && errors.Is(wrapService("", rerr), ErrUnauthorized):
		// The join token may be used up (single use): the device token of
		// the previous registration still identifies this node.
		if err := n.resumeWithDeviceToken(ctx, saved, port); err != nil {
			n.log.Debug("mesh: saved device token refused too", "err", err)
			return false, false, rerr
		}
		return false, false, nil
	}
	return false, false, rerr
}

// startPlane brings up the node's data plane (see dataPlane) on port with
// the node's addresses and child prefixes.
func (n *Node) startPlane(port uint16) error {
	n.mu.Lock()
	c := planeConfig{
		priv:       n.keys().priv,
		port:       port,
		mtu:        n.cfg.mtu,
		log:        n.log,
		addrs:      tunnelPrefixes(n.self),
		prefixes:   slices.Clone(n.self.prefixes),
		handlers:   n.cfg.handlers,
		ifname:     n.cfg.ifname,
		masquerade: n.cfg.masquerade,
		stateDir:   n.cfg.stateDir,
	}
	n.mu.Unlock()
	c.bind = n.bindConfig()
	p, err := newDataPlane(n.cfg.mode, c)
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.plane, n.port = p, port
	n.mu.Unlock()
	return nil
}

// waitFirstSync waits for the first peer snapshot, at most
// firstSyncTimeout: without one the node goes on, and peers are added when
// it arrives.
func (n *Node) waitFirstSync(ctx context.Context) error {
	t := time.NewTimer(firstSyncTimeout)
	defer t.Stop()
	select {
	case <-n.firstSync:
	case <-t.C:
		n.log.Warn("mesh: no peer snapshot from the service yet; continuing, peers will be added when it arrives")
	case <-ctx.Done():
		return fmt.Errorf("waiting for the peer list: %w", context.Cause(ctx))
	}
	return nil
}

// Addr returns the node's IPv4 tunnel address.
func (n *Node) Addr() netip.Addr {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.self.ipv4
}

// Addrs returns the node's tunnel addresses: IPv4, then IPv6 when the zone
// has an IPv6 pool.
func (n *Node) Addrs() []netip.Addr {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := []netip.Addr{n.self.ipv4}
	if n.self.ipv6.IsValid() {
		out = append(out, n.self.ipv6)
	}
	return out
}

// Prefixes returns the child prefixes allocated to the node (see
// WithChildPrefix).
func (n *Node) Prefixes() []netip.Prefix {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.self.prefixes)
}

// HTTPClient returns an HTTP client whose connections go through the mesh
// (Node.Dial); it never uses the host network or a proxy.
func (n *Node) HTTPClient() *http.Client {
	n.httpOnce.Do(func() {
		n.httpTransport = &http.Transport{
			DialContext:           n.Dial,
			MaxIdleConns:          64,
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   10 * time.Second,
			ExpectContinueTimeout: time.Second,
		}
		n.httpClient = &http.Client{Transport: n.httpTransport}
	})
	return n.httpClient
}

// Close stops the node: the connection to the service, the WireGuard
// device, its UDP sockets and the netstack. Connections and listeners made
// through the node stop working. A second Close returns an error wrapping
// net.ErrClosed.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return fmt.Errorf("mesh: close: %w", net.ErrClosed)
	}
	n.closed = true
	n.mu.Unlock()

	n.cancel()
	if n.ephemeral() {
		n.wg.Wait() // no re-registration when the watch hears of the removal
		n.leave()
	}
	n.client.Close()
	n.wg.Wait()
	if n.stateLock != nil {
		n.stateLock.Close()
	}
	n.events.close()
	n.HTTPClient() // creates the transport if needed, so the read below is safe
	n.httpTransport.CloseIdleConnections()
	if n.plane != nil {
		if err := n.plane.close(); err != nil {
			n.log.Warn("mesh: closing the data plane", "err", err)
		}
	}
	n.log.Debug("mesh: closed")
	return nil
}

func (n *Node) isClosed() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.closed
}

func canonPrefixes(ps []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ps))
	for _, p := range ps {
		if p.IsValid() {
			out = append(out, p.Masked())
		}
	}
	slices.SortFunc(out, comparePrefix)
	return slices.Compact(out)
}
