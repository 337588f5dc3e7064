package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/conn"

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
	cfg    *config
	url    string
	log    *slog.Logger
	priv   api.Key
	pub    api.Key
	client *controlclient.Client
	dev    *wgDevice
	state  stateDir

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
	mu        sync.Mutex
	closed    bool
	self      selfInfo
	peers     map[api.Key]api.Peer
	revision  int64
	synced    bool // a snapshot was applied in this run
	connected bool
	saved     savedState // what is written to the state directory
	// wantPrefixes are the child prefixes asked for at registration:
	// WithChildPrefix and AdvertisePrefix, minus ReleasePrefix.
	wantPrefixes []netip.Prefix

	fwd      *forwarder // userspace mode: serves the child prefixes (forward.go)
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

func join(ctx context.Context, serviceURL string, opts []Option) (_ *Node, err error) {
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
	sd := stateDir(cfg.stateDir)
	priv, err := sd.loadKey()
	if err != nil {
		return nil, err
	}
	saved, err := sd.load()
	if err != nil {
		return nil, err
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
		return nil, errors.New("no join token: use WithToken (or a state directory with a previous registration)")
	}
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
		priv:      priv,
		pub:       api.PublicKey(priv),
		client:    client,
		state:     sd,
		peers:     map[api.Key]api.Peer{},
		firstSync: make(chan struct{}),

		wantPrefixes: canonPrefixes(cfg.childPrefixes),
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	defer func() {
		if err != nil {
			n.cancel()
			client.Close()
			if n.fwd != nil {
				n.fwd.close()
			}
			if n.dev != nil {
				n.dev.close()
			}
		}
	}()

	port := cfg.listenPort
	if port == 0 && saved != nil {
		port = saved.ListenPort
	}
	if port, err = reservePort(port, cfg.listenPort == 0); err != nil {
		return nil, err
	}

	// Register, or fall back to the saved registration.
	needRegister := false
	restorePeers := false // start from saved.Peers until the first snapshot
	regCtx, cancel := ctx, context.CancelFunc(func() {})
	if saved != nil {
		regCtx, cancel = context.WithTimeout(ctx, savedStateRegisterTimeout)
	}
	resp, rerr := n.register(regCtx, port)
	cancel()
	switch {
	case rerr == nil:
		n.adoptRegistration(resp, port)
		restorePeers = n.adoptSavedPeers(saved)
	case ctx.Err() != nil:
		return nil, fmt.Errorf("register: %w", context.Cause(ctx))
	case saved != nil && isTransient(rerr):
		n.log.Warn("mesh: service unreachable, starting from the saved state", "url", serviceURL, "err", rerr)
		n.adoptSaved(saved, port)
		needRegister = true
	case saved != nil && errors.Is(wrapService("", rerr), ErrUnauthorized):
		// The join token may be used up (single use): the device token of
		// the previous registration still identifies this node.
		if err := n.resumeWithDeviceToken(ctx, saved, port); err != nil {
			n.log.Debug("mesh: saved device token refused too", "err", err)
			return nil, rerr
		}
	default:
		return nil, rerr
	}
	if err := n.saveState(); err != nil {
		return nil, err
	}

	addrs := []netip.Addr{n.self.ipv4}
	if n.self.ipv6.IsValid() {
		addrs = append(addrs, n.self.ipv6)
	}
	if cfg.mode == Kernel {
		n.dev, err = n.newKernelDevice(port)
	} else {
		n.dev, err = newWGDevice(priv, addrs, port, cfg.mtu, n.log)
	}
	if err != nil {
		return nil, err
	}
	if n.dev.tnet != nil {
		if err := n.startForwarding(); err != nil {
			return nil, err
		}
	}
	if needRegister || restorePeers {
		// Work right away with the last known peers.
		if err := n.applyPeerSet(peerMap(saved.Peers, n.pub), saved.Revision, false, false); err != nil {
			return nil, err
		}
	}
	n.wg.Add(1)
	go n.run(needRegister)

	if !needRegister {
		t := time.NewTimer(firstSyncTimeout)
		defer t.Stop()
		select {
		case <-n.firstSync:
		case <-t.C:
			n.log.Warn("mesh: no peer snapshot from the service yet; continuing, peers will be added when it arrives")
		case <-ctx.Done():
			n.Close()
			return nil, fmt.Errorf("waiting for the peer list: %w", context.Cause(ctx))
		}
	}
	n.mu.Lock()
	self := n.self
	n.mu.Unlock()
	n.log.Info("mesh: joined", "addr", self.ipv4, "zone", self.zone, "hostname", self.hostname, "listen_port", port)
	return n, nil
}

// reservePort returns a UDP port free on IPv4 and IPv6: port itself when
// it can be bound, else (when fallback) a random free one.
func reservePort(port uint16, fallback bool) (uint16, error) {
	b := conn.NewStdNetBind()
	_, got, err := b.Open(port)
	if err != nil && port != 0 && fallback {
		_, got, err = b.Open(0)
	}
	if err != nil {
		return 0, fmt.Errorf("listen on UDP port %d: %w", port, err)
	}
	b.Close()
	return got, nil
}

// register sends a registration with the node's key, hostname, zone, child
// prefixes and endpoints.
func (n *Node) register(ctx context.Context, port uint16) (api.RegisterResponse, error) {
	req := api.RegisterRequest{
		PublicKey: n.pub,
		Hostname:  n.cfg.hostname,
		Zone:      n.cfg.zone,
		Endpoints: n.endpointsFor(ctx, port),
	}
	for _, p := range n.wantedPrefixes() {
		req.ChildPrefixes = append(req.ChildPrefixes, p.String())
	}
	resp, err := n.client.Register(ctx, n.priv, req)
	if err == nil {
		n.mu.Lock()
		n.self.endpoints = req.Endpoints
		n.mu.Unlock()
	}
	return resp, err
}

// endpointsFor returns the endpoints to advertise: WithEndpoints, or the
// local address used to reach the service with the listen port.
func (n *Node) endpointsFor(ctx context.Context, port uint16) []netip.AddrPort {
	if len(n.cfg.endpoints) > 0 {
		return slices.Clone(n.cfg.endpoints)
	}
	a, err := n.client.LocalAddrFor(ctx)
	if err != nil {
		n.log.Warn("mesh: no local address towards the service; advertising no endpoint", "err", err)
		return nil
	}
	return []netip.AddrPort{netip.AddrPortFrom(a, port)}
}

func (n *Node) adoptRegistration(r api.RegisterResponse, port uint16) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.self.ipv4.IsValid() && (n.self.ipv4 != r.IPv4 || n.self.ipv6 != r.IPv6) {
		n.log.Error("mesh: the service assigned different addresses than the running ones; restart the node to use them",
			"running", n.self.ipv4, "assigned", r.IPv4)
	} else {
		n.self.ipv4, n.self.ipv6 = r.IPv4, r.IPv6
	}
	n.self.deviceID = r.DeviceID
	n.self.zone = r.Zone
	n.self.hostname = r.Hostname
	if n.self.hostname == "" {
		n.self.hostname = n.cfg.hostname
	}
	n.self.zone4, n.self.zone6 = r.ZoneIPv4, r.ZoneIPv6
	n.setPrefixesLocked(canonPrefixes(r.ChildPrefixes))
	n.saved.URL = n.url
	n.saved.DeviceToken = n.client.DeviceToken()
	n.saved.ListenPort = port
}

// adoptSavedPeers starts a node that registered again from the peers and
// revision saved by its previous run, when s is for the same device in the
// same zone, so that they stay on disk and on the device until the watch
// delivers a snapshot. It reports whether it did.
func (n *Node) adoptSavedPeers(s *savedState) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if s == nil || s.Zone != n.self.zone || s.DeviceID != n.self.deviceID || s.IPv4 != n.self.ipv4 {
		return false
	}
	n.peers = peerMap(s.Peers, n.pub)
	n.revision = s.Revision
	return true
}

func (n *Node) adoptSaved(s *savedState, port uint16) {
	n.client.SetDeviceToken(s.DeviceToken)
	n.mu.Lock()
	defer n.mu.Unlock()
	n.self = selfInfo{
		deviceID:  s.DeviceID,
		hostname:  s.Hostname,
		zone:      s.Zone,
		ipv4:      s.IPv4,
		ipv6:      s.IPv6,
		zone4:     s.ZoneIPv4,
		zone6:     s.ZoneIPv6,
		prefixes:  canonPrefixes(append(slices.Clone(s.ChildPrefixes), n.wantPrefixes...)),
		endpoints: s.Endpoints,
	}
	n.peers = peerMap(s.Peers, n.pub)
	n.revision = s.Revision
	n.saved = *s
	n.saved.ListenPort = port
}

// resumeWithDeviceToken restarts from the saved registration when the
// join token is refused but the saved device token is still valid, and
// updates the node's endpoints and hostname at the service.
func (n *Node) resumeWithDeviceToken(ctx context.Context, s *savedState, port uint16) error {
	n.client.SetDeviceToken(s.DeviceToken)
	d, err := n.client.Self(ctx)
	if err != nil {
		return err
	}
	eps := n.endpointsFor(ctx, port)
	req := api.UpdateSelfRequest{Hostname: &n.cfg.hostname, Endpoints: &eps}
	for _, p := range n.wantedPrefixes() {
		req.AddChildPrefixes = append(req.AddChildPrefixes, p.String())
	}
	if d, err = n.client.UpdateSelf(ctx, req); err != nil {
		return err
	}
	n.adoptSaved(s, port)
	n.mu.Lock()
	n.self.deviceID, n.self.hostname = d.ID, d.Hostname
	n.self.ipv4, n.self.ipv6 = d.IPv4, d.IPv6
	n.setPrefixesLocked(canonPrefixes(d.ChildPrefixes))
	n.self.endpoints = d.Endpoints
	n.mu.Unlock()
	return nil
}

// saveState writes the node's registration, peers and revision to the
// state directory (no-op without one). Concurrent calls write in order:
// the file ends with the latest snapshot.
func (n *Node) saveState() error {
	n.saveMu.Lock()
	defer n.saveMu.Unlock()
	n.mu.Lock()
	s := n.saved
	s.URL = n.url
	s.DeviceID = n.self.deviceID
	s.Zone = n.self.zone
	s.Hostname = n.self.hostname
	s.IPv4, s.IPv6 = n.self.ipv4, n.self.ipv6
	s.ZoneIPv4, s.ZoneIPv6 = n.self.zone4, n.self.zone6
	s.ChildPrefixes = slices.Clone(n.self.prefixes)
	s.Endpoints = slices.Clone(n.self.endpoints)
	if tok := n.client.DeviceToken(); tok != "" {
		s.DeviceToken = tok
	}
	s.Peers = make([]api.Peer, 0, len(n.peers))
	for _, k := range sortedPeerKeys(n.peers) {
		s.Peers = append(s.Peers, n.peers[k])
	}
	s.Revision = n.revision
	n.mu.Unlock()
	return n.state.save(&s)
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
	n.client.Close()
	n.wg.Wait()
	n.events.close()
	n.HTTPClient() // creates the transport if needed, so the read below is safe
	n.httpTransport.CloseIdleConnections()
	if n.fwd != nil {
		n.fwd.close()
	}
	n.dev.close()
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
