//go:build linux

package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/route"
)

// kernelResync is how often a kernel-mode node re-applies its routes and
// firewall even without peer changes: it repairs routes removed by someone
// else and retries what failed.
const kernelResync = 5 * time.Second

// kernelApplyTimeout bounds one reconcile of routes and rules.
const kernelApplyTimeout = 15 * time.Second

// kernelPlane is the data plane of a kernel-mode node: a WireGuard device
// (wireguard-go) over a TUN device, the TUN device's addresses and routes
// (route.Linux), the router's forwarding and firewall
// (kernel_router_linux.go), and the host network stack that carries
// Node.Dial, Listen and Ping.
type kernelPlane struct {
	dev        *wgDevice
	ifname     string
	log        *slog.Logger
	masquerade bool
	table      *route.Linux

	stop   chan struct{} // closed by close: stops loop
	kick   chan struct{} // buffered 1: reconcile soon (setPrefixes)
	repair chan struct{} // buffered 1: check the device for outside changes soon (after a UAPI connection)
	wg     sync.WaitGroup
	uapi   *uapiServer // nil when the socket could not be opened

	// applyMu serializes reconciles and guards the fields below.
	applyMu  sync.Mutex
	closed   bool
	addrs    []netip.Prefix
	peers    map[api.Key]wgPeer
	fw       *route.Firewall // nil until the node has a child prefix
	fwdOn    map[string]bool // forwarding sysctls this run turned on (see enableForwardingLocked)
	restores []func() error  // undo forwarding changes
	// fwdOrig maps a forwarding sysctl to its value before any run of this
	// node changed it; kept in fwdFile (in the state directory) so that a
	// run after a crash restores it on close.
	fwdOrig map[string]string
	fwdFile string // "" without a state directory

	// mu guards skipped and prefixes; separate from applyMu so that status
	// and setPrefixes never wait for netlink.
	mu       sync.Mutex
	skipped  []SkippedRoute
	prefixes []netip.Prefix // the node's own child prefixes
	// filter is the inbound filter wanted (setFilter; filterSet: ever
	// given), appliedFilter the one in the nftables rules now.
	filter        *api.Filter
	filterSet     bool
	appliedFilter *api.Filter
	// fwRead is fw for status, which must not wait for applyMu.
	fwRead atomic.Pointer[route.Firewall]
}

var _ dataPlane = (*kernelPlane)(nil)

// newKernelPlane removes what a crashed run left behind, creates the TUN
// device, puts the tunnel addresses on it and starts the WireGuard device
// on UDP port c.port.
func newKernelPlane(c planeConfig) (dataPlane, error) {
	k, err := startKernelPlane(c)
	if err != nil {
		return nil, err
	}
	return k, nil
}

func startKernelPlane(c planeConfig) (_ *kernelPlane, err error) {
	log := c.log.With("interface", c.ifname)
	tdev, err := createTUN(c.ifname, c.mtu, log)
	if err != nil {
		return nil, err
	}
	started := false
	defer func() {
		if err != nil && !started {
			tdev.Close()
		}
	}()
	table, err := route.NewLinux(c.ifname, route.WithLogger(log))
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			table.Close()
		}
	}()
	k := &kernelPlane{
		fwdFile:    forwardingFile(c.stateDir, c.ifname),
		ifname:     c.ifname,
		log:        log,
		masquerade: c.masquerade,
		table:      table,
		stop:       make(chan struct{}),
		kick:       make(chan struct{}, 1),
		repair:     make(chan struct{}, 1),
		peers:      map[api.Key]wgPeer{},
		prefixes:   slices.Clone(c.prefixes),
	}
	if k.fwdOrig, err = loadForwarding(k.fwdFile); err != nil {
		return nil, err
	}
	if len(k.fwdOrig) > 0 {
		log.Info("mesh: an earlier run crashed after turning IP forwarding on; the recorded settings are restored on close", "was", k.fwdOrig)
	}
	// Addresses first: this sets the interface up, so the device comes up
	// once and stays up.
	if k.addrs, err = k.configureAddrs(c.addrs); err != nil {
		return nil, err
	}
	started = true // startDevice closes tdev on error
	if k.dev, err = startDevice(tdev, newBind(tdev.BatchSize(), c.bind), c.priv, c.port, c.trimIdle, c.log); err != nil {
		return nil, err
	}
	k.openUAPI()
	k.wg.Add(1)
	go k.loop()
	log.Info("mesh: kernel mode: TUN device up", "addrs", k.addrs, "listen_port", k.dev.port)
	return k, nil
}

// configureAddrs puts addrs on the interface and returns those it holds:
// all, or the IPv4 one alone when the IPv6 one cannot be added (IPv6
// disabled on the host).
func (k *kernelPlane) configureAddrs(addrs []netip.Prefix) ([]netip.Prefix, error) {
	ctx, cancel := context.WithTimeout(context.Background(), kernelApplyTimeout)
	defer cancel()
	_, err := k.table.Apply(ctx, route.Desired{Addrs: addrs})
	if err != nil && len(addrs) > 1 {
		k.log.Warn("mesh: cannot put the IPv6 tunnel address on the interface; continuing with IPv4 only", "err", err)
		addrs = addrs[:1]
		_, err = k.table.Apply(ctx, route.Desired{Addrs: addrs})
	}
	if err != nil {
		return nil, fmt.Errorf("configure %q: %w", k.ifname, err)
	}
	return addrs, nil
}

// setPeers configures the WireGuard device, then routes the peers'
// allowed IPs through the TUN device, except those inside the zone's pools
// (on-link through the device already).
func (k *kernelPlane) setPeers(want map[api.Key]wgPeer) error {
	err := k.dev.applyPeers(want)
	k.applyMu.Lock()
	defer k.applyMu.Unlock()
	if k.closed {
		return fmt.Errorf("configure routes: %w", net.ErrClosed)
	}
	k.peers = want
	k.reconcileLocked()
	return err
}

// setPrefixes records the node's child prefixes and has the background
// loop bring the router's forwarding and firewall in line.
func (k *kernelPlane) setPrefixes(ps []netip.Prefix) {
	k.mu.Lock()
	k.prefixes = slices.Clone(ps)
	k.mu.Unlock()
	select {
	case k.kick <- struct{}{}:
	default:
	}
}

func (k *kernelPlane) ownPrefixes() []netip.Prefix {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.prefixes)
}

// loop re-applies the desired state every kernelResync, and when kicked,
// until close.
func (k *kernelPlane) loop() {
	defer k.wg.Done()
	t := time.NewTicker(kernelResync)
	defer t.Stop()
	for {
		select {
		case <-k.stop:
			return
		case <-k.kick:
		case <-k.repair:
			k.repairDrift()
			continue
		case <-t.C:
			k.repairDrift()
		}
		k.applyMu.Lock()
		if !k.closed {
			k.reconcileLocked()
		}
		k.applyMu.Unlock()
	}
}

// reconcileLocked applies addresses, routes and the router's forwarding
// and firewall. Errors are logged; the next reconcile retries.
func (k *kernelPlane) reconcileLocked() {
	ctx, cancel := context.WithTimeout(context.Background(), kernelApplyTimeout)
	defer cancel()
	res, err := k.table.Apply(ctx, route.Desired{Addrs: k.addrs, Routes: desiredRoutes(k.addrs, k.peers)})
	if err != nil {
		k.log.Warn("mesh: programming routes", "err", err)
	}
	skipped := make([]SkippedRoute, 0, len(res.Skipped))
	for _, s := range res.Skipped {
		skipped = append(skipped, SkippedRoute{Prefix: s.Prefix, Reason: s.Reason})
	}
	k.mu.Lock()
	k.skipped = skipped
	k.mu.Unlock()
	if err := k.syncRouterLocked(); err != nil {
		k.log.Warn("mesh: forwarding child prefixes", "err", err)
	}
}

func (k *kernelPlane) setFilter(f *api.Filter) {
	k.mu.Lock()
	k.filter, k.filterSet = f, true
	k.mu.Unlock()
	select {
	case k.kick <- struct{}{}:
	default:
	}
}

func (k *kernelPlane) status() planeStatus {
	st := planeStatus{peers: k.dev.peerStats(), ifname: k.ifname, reach: k.dev.ms.Self()}
	k.mu.Lock()
	st.skipped = slices.Clone(k.skipped)
	applied := k.appliedFilter
	k.mu.Unlock()
	if fw := k.fwRead.Load(); fw != nil && applied != nil {
		if c, err := fw.InboundCounters(); err == nil {
			st.filter = filterCounters{filter: applied, rules: c.Accepted, dropped: c.Dropped}
		}
	}
	return st
}

// close stops the WireGuard device, which closes the TUN device and so
// removes the interface, then removes the routes, addresses, firewall
// rules and forwarding settings the plane added.
func (k *kernelPlane) close() error {
	k.applyMu.Lock()
	if k.closed {
		k.applyMu.Unlock()
		return nil
	}
	k.closed = true
	k.applyMu.Unlock()
	if k.uapi != nil {
		k.uapi.close()
	}
	k.dev.close()
	close(k.stop)
	k.wg.Wait()

	var errs []error
	for _, r := range slices.Backward(k.restores) {
		errs = append(errs, r())
	}
	errs = append(errs, k.restoreForwarding())
	if k.fw != nil {
		errs = append(errs, k.fw.Close())
	}
	if err := k.table.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		errs = append(errs, err)
	}
	k.log.Debug("mesh: kernel mode: routes and rules removed")
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("removing the interface's routes and rules: %w", err)
	}
	return nil
}

// routed returns nil when the host routes ip through the TUN device (or
// it is the node's own address).
func (k *kernelPlane) routed(ip netip.Addr) error {
	if _, ok := k.table.Lookup(ip); ok {
		return nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, s := range k.skipped {
		if s.Prefix.Contains(ip) {
			return fmt.Errorf("%w: %s is inside %s, which this host does not route into the mesh: %s", ErrNoRoute, ip, s.Prefix, s.Reason)
		}
	}
	return &NoRouteError{Addr: ip}
}

// dial refuses a destination the host does not route through the TUN
// device.
func (k *kernelPlane) dial(ctx context.Context, proto string, ap netip.AddrPort) (net.Conn, error) {
	if err := k.routed(ap.Addr()); err != nil {
		return nil, err
	}
	// Bound to the mesh interface: if the host's routing would send the
	// packet elsewhere (a more specific route, a policy rule, a peer that
	// just left), the dial fails instead of leaving through the host network.
	d := net.Dialer{Control: bindToDevice(k.ifname)}
	return d.DialContext(ctx, proto, ap.String())
}

func (k *kernelPlane) listen(ap netip.AddrPort) (net.Listener, error) {
	if ap.Addr().IsValid() {
		return net.ListenTCP("tcp", net.TCPAddrFromAddrPort(ap))
	}
	return listenAll(k.tunnelAddrs(), ap.Port())
}

func (k *kernelPlane) listenPacket(ap netip.AddrPort) (net.PacketConn, error) {
	return net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
}

// tunnelAddrs returns the tunnel addresses on the interface.
func (k *kernelPlane) tunnelAddrs() []netip.Addr {
	k.applyMu.Lock()
	defer k.applyMu.Unlock()
	return prefixAddrs(k.addrs)
}

// ping refuses a destination the host does not route through the TUN
// device, then pings through the host stack.
func (k *kernelPlane) ping(ctx context.Context, local, dst netip.Addr) (time.Duration, error) {
	if err := k.routed(dst); err != nil {
		return 0, err
	}
	return hostPing(ctx, local, dst)
}

// bindToDevice returns a net.Dialer Control function that pins a socket to
// the interface ifname (SO_BINDTODEVICE).
func bindToDevice(ifname string) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.BindToDevice(int(fd), ifname)
		}); err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("bind to %s: %w", ifname, serr)
		}
		return nil
	}
}
