//go:build linux

package mesh

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/route"
)

// kernelResync is how often a kernel-mode node re-applies its routes and
// firewall even without peer changes: it repairs routes removed by someone
// else and picks up changes to the node's own child prefixes.
const kernelResync = 5 * time.Second

// kernelApplyTimeout bounds one reconcile of routes and rules.
const kernelApplyTimeout = 15 * time.Second

// kernelPreflight fails early, before registering, when kernel mode cannot
// work here: no TUN support, or no CAP_NET_ADMIN.
func kernelPreflight(c *config) error {
	if len(c.handlers) > 0 {
		return fmt.Errorf("WithPrefixHandler serves child-prefix traffic inside a userspace node: it does not work in kernel mode, where the host kernel forwards it")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return fmt.Errorf("kernel mode needs /dev/net/tun to create TUN device %q: %w (use userspace mode instead)", c.ifname, err)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err == nil && data[0].Effective&(1<<unix.CAP_NET_ADMIN) == 0 {
		return fmt.Errorf("kernel mode needs root (CAP_NET_ADMIN) to create TUN device %q and program routes: run as root, or use userspace mode", c.ifname)
	}
	return nil
}

// newKernelDevice removes what a crashed run left behind, creates the TUN
// device, puts the tunnel addresses on it and starts the WireGuard device
// on UDP port.
func (n *Node) newKernelDevice(port uint16) (_ *wgDevice, err error) {
	ifname := n.cfg.ifname
	log := n.log.With("interface", ifname)
	if err := removeStaleTUN(ifname, log); err != nil {
		return nil, err
	}
	if err := route.CleanupLeftovers(ifname, "", route.WithLogger(log)); err != nil {
		log.Warn("mesh: removing leftovers of an earlier run", "err", err)
	}
	// DOCKER-USER rules a crashed router (wiremesh router --docker) left
	// for this interface; a live router puts its own back after Join.
	if n, err := route.CleanupDockerUser(ifname, route.WithLogger(log)); err != nil {
		log.Warn("mesh: removing leftover DOCKER-USER rules", "err", err)
	} else if n > 0 {
		log.Info("mesh: removed leftover DOCKER-USER rules", "rules", n)
	}
	tdev, err := tun.CreateTUN(ifname, n.cfg.mtu)
	if err != nil {
		switch {
		case errors.Is(err, unix.EPERM):
			return nil, fmt.Errorf("create TUN device %q: %w (kernel mode needs root)", ifname, err)
		case errors.Is(err, unix.EBUSY):
			return nil, fmt.Errorf("create TUN device %q: %w (another process holds it: choose another name with WithInterfaceName)", ifname, err)
		}
		return nil, fmt.Errorf("create TUN device %q: %w", ifname, err)
	}
	started := false
	defer func() {
		if err != nil && !started {
			tdev.Close()
		}
	}()
	table, err := route.NewLinux(ifname, route.WithLogger(log))
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			table.Close()
		}
	}()

	n.mu.Lock()
	self := n.self
	n.mu.Unlock()
	addrs := tunnelPrefixes(self)
	k := &kernelNet{
		fwdFile:      forwardingFile(n.cfg.stateDir, ifname),
		ifname:       ifname,
		log:          log,
		masquerade:   n.cfg.masquerade,
		table:        table,
		addrs:        addrs,
		selfPrefixes: n.Prefixes,
		stop:         make(chan struct{}),
		kick:         make(chan struct{}, 1),
		peers:        map[api.Key]wgPeer{},
	}
	if k.fwdOrig, err = loadForwarding(k.fwdFile); err != nil {
		return nil, err
	}
	if len(k.fwdOrig) > 0 {
		log.Info("mesh: an earlier run crashed after turning IP forwarding on; the recorded settings are restored on close", "was", k.fwdOrig)
	}
	// Addresses first: this sets the interface up, so the device comes up
	// once and stays up.
	ctx, cancel := context.WithTimeout(context.Background(), kernelApplyTimeout)
	_, err = table.Apply(ctx, route.Desired{Addrs: addrs})
	if err != nil && len(addrs) > 1 {
		log.Warn("mesh: cannot put the IPv6 tunnel address on the interface; continuing with IPv4 only", "err", err)
		k.addrs = addrs[:1]
		_, err = table.Apply(ctx, route.Desired{Addrs: k.addrs})
	}
	cancel()
	if err != nil {
		return nil, fmt.Errorf("configure %q: %w", ifname, err)
	}

	started = true // startDevice closes tdev on error
	d, err := startDevice(tdev, n.newBind(tdev.BatchSize()), n.priv, port, n.log)
	if err != nil {
		return nil, err
	}
	d.kern = k
	k.wg.Add(1)
	go k.loop()
	log.Info("mesh: kernel mode: TUN device up", "addrs", k.addrs, "listen_port", d.port)
	return d, nil
}

// tunnelPrefixes returns the node's tunnel addresses with the lengths of
// the zone's pools (so the kernel routes each pool on-link through the
// device): IPv4, then IPv6 if any.
func tunnelPrefixes(s selfInfo) []netip.Prefix {
	bits := func(a netip.Addr, pool netip.Prefix) int {
		if pool.IsValid() && pool.Contains(a) {
			return pool.Bits()
		}
		return a.BitLen()
	}
	out := []netip.Prefix{netip.PrefixFrom(s.ipv4, bits(s.ipv4, s.zone4))}
	if s.ipv6.IsValid() {
		out = append(out, netip.PrefixFrom(s.ipv6, bits(s.ipv6, s.zone6)))
	}
	return out
}

// removeStaleTUN deletes a TUN device named ifname that no process holds
// (a persistent leftover). A device of another kind, or one in use, is an
// error: it is someone else's.
func removeStaleTUN(ifname string, log *slog.Logger) error {
	link, err := netlink.LinkByName(ifname)
	if errors.As(err, new(netlink.LinkNotFoundError)) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up interface %q: %w", ifname, err)
	}
	tt, ok := link.(*netlink.Tuntap)
	if !ok || tt.Mode != netlink.TUNTAP_MODE_TUN {
		return fmt.Errorf("interface %q already exists and is not a TUN device (type %s): choose another name with WithInterfaceName (--interface)", ifname, link.Type())
	}
	if tt.Queues > 0 {
		return fmt.Errorf("TUN device %q is in use by another process (another agent?): stop it or choose another name with WithInterfaceName (--interface)", ifname)
	}
	log.Info("mesh: removing leftover TUN device of an earlier run")
	if err := netlink.LinkDel(link); err != nil && !errors.As(err, new(netlink.LinkNotFoundError)) {
		return fmt.Errorf("remove leftover TUN device %q: %w", ifname, err)
	}
	return nil
}

// kernelNet is the Linux kernelPlane.
type kernelNet struct {
	ifname       string
	log          *slog.Logger
	masquerade   bool
	table        *route.Linux
	selfPrefixes func() []netip.Prefix // the node's own child prefixes (Node.Prefixes)

	stop chan struct{} // closed by close: stops loop
	kick chan struct{} // buffered 1: reconcile soon (prefixesChanged)
	wg   sync.WaitGroup

	// applyMu serializes reconciles and guards the fields below.
	applyMu  sync.Mutex
	closed   bool
	addrs    []netip.Prefix
	peers    map[api.Key]wgPeer
	fw       *route.Firewall // nil until the node has a child prefix
	fwd4     bool            // IPv4 forwarding enabled by us
	fwd6     bool
	restores []func() error // undo forwarding changes
	// fwdOrig maps a forwarding sysctl to its value before any run of this
	// node changed it; kept in fwdFile (in the state directory) so that a
	// run after a crash restores it on close.
	fwdOrig map[string]string
	fwdFile string // "" without a state directory

	// mu guards skipped; separate so status never waits for netlink.
	mu      sync.Mutex
	skipped []SkippedRoute
}

var _ kernelPlane = (*kernelNet)(nil)

func (k *kernelNet) setPeers(want map[api.Key]wgPeer) {
	k.applyMu.Lock()
	defer k.applyMu.Unlock()
	if k.closed {
		return
	}
	k.peers = want
	k.reconcileLocked()
}

func (k *kernelNet) prefixesChanged() {
	select {
	case k.kick <- struct{}{}:
	default:
	}
}

// loop re-applies the desired state every kernelResync, and when kicked,
// until close.
func (k *kernelNet) loop() {
	defer k.wg.Done()
	t := time.NewTicker(kernelResync)
	defer t.Stop()
	for {
		select {
		case <-k.stop:
			return
		case <-k.kick:
		case <-t.C:
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
func (k *kernelNet) reconcileLocked() {
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

// syncRouterLocked enables forwarding and installs or updates the firewall
// once the node has child prefixes. Both stay until close, also when the
// prefixes are released: turning forwarding off under running traffic
// would be worse than an accept rule too many, and the table is updated.
func (k *kernelNet) syncRouterLocked() error {
	prefixes := k.selfPrefixes()
	if len(prefixes) == 0 && k.fw == nil {
		return nil
	}
	var v4, v6 bool
	for _, p := range prefixes {
		v4 = v4 || p.Addr().Is4()
		v6 = v6 || p.Addr().Is6()
	}
	// The firewall comes first: forwarding without its rules would let a
	// peer relay packets through this host to anywhere it can reach.
	if k.fw == nil {
		fw, err := route.NewFirewall(route.FirewallConfig{
			Interface:     k.ifname,
			ChildPrefixes: prefixes,
			Masquerade:    k.masquerade,
		}, route.WithLogger(k.log))
		if err != nil {
			return err
		}
		k.fw = fw
		k.log.Info("mesh: forwarding between the mesh and the child prefixes", "prefixes", prefixes, "masquerade", k.masquerade)
	}
	if v4 && !k.fwd4 || v6 && !k.fwd6 {
		if err := k.recordForwarding(v4 && !k.fwd4, v6 && !k.fwd6); err != nil {
			return err
		}
		restore, err := route.EnableForwarding(v4 && !k.fwd4, v6 && !k.fwd6, route.WithLogger(k.log))
		if err != nil {
			return err
		}
		k.restores = append(k.restores, restore)
		k.fwd4, k.fwd6 = k.fwd4 || v4, k.fwd6 || v6
	}
	if !slices.Equal(k.fw.Prefixes(), prefixes) {
		if err := k.fw.Update(prefixes); err != nil {
			return err
		}
		k.log.Info("mesh: child prefixes changed", "prefixes", prefixes)
	}
	return nil
}

func (k *kernelNet) status() (string, []SkippedRoute) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.ifname, slices.Clone(k.skipped)
}

func (k *kernelNet) close() error {
	k.applyMu.Lock()
	if k.closed {
		k.applyMu.Unlock()
		return nil
	}
	k.closed = true
	k.applyMu.Unlock()
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
	return errors.Join(errs...)
}

// routed returns nil when the host routes ip through the TUN device (or
// it is the node's own address).
func (k *kernelNet) routed(ip netip.Addr) error {
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

func (k *kernelNet) dial(ctx context.Context, proto string, ap netip.AddrPort) (net.Conn, error) {
	if err := k.routed(ap.Addr()); err != nil {
		return nil, err
	}
	// Bound to the mesh interface: if the host's routing would send the
	// packet elsewhere (a more specific route, a policy rule, a peer that
	// just left), the dial fails instead of leaving through the host network.
	d := net.Dialer{Control: bindToDevice(k.ifname)}
	return d.DialContext(ctx, proto, ap.String())
}

func (k *kernelNet) listen(ap netip.AddrPort) (net.Listener, error) {
	if ap.Addr().IsValid() {
		return net.ListenTCP("tcp", net.TCPAddrFromAddrPort(ap))
	}
	return listenAll(k.tunnelAddrs(), ap.Port())
}

// listenPacket with the zero Addr listens on the IPv4 tunnel address.
func (k *kernelNet) listenPacket(ap netip.AddrPort) (net.PacketConn, error) {
	if !ap.Addr().IsValid() {
		ap = netip.AddrPortFrom(k.tunnelAddrs()[0], ap.Port())
	}
	return net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
}

func (k *kernelNet) tunnelAddrs() []netip.Addr {
	k.applyMu.Lock()
	defer k.applyMu.Unlock()
	out := make([]netip.Addr, len(k.addrs))
	for i, p := range k.addrs {
		out[i] = p.Addr()
	}
	return out
}

func (k *kernelNet) ping(ctx context.Context, local, dst netip.Addr) (time.Duration, error) {
	if err := k.routed(dst); err != nil {
		return 0, err
	}
	return hostPing(ctx, local, dst)
}

// Forwarding sysctls as route.EnableForwarding writes them.
const (
	sysctlForward4 = "/proc/sys/net/ipv4/ip_forward"
	sysctlForward6 = "/proc/sys/net/ipv6/conf/all/forwarding"
)

// forwardingFile is where a node with a state directory records the
// forwarding settings it changed.
func forwardingFile(stateDir, ifname string) string {
	if stateDir == "" {
		return ""
	}
	return filepath.Join(stateDir, "forwarding-"+ifname+".json")
}

// loadForwarding reads the record of an earlier run; none is no error.
func loadForwarding(path string) (map[string]string, error) {
	m := map[string]string{}
	if path == "" {
		return m, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return m, nil
	}
	if err == nil {
		err = json.Unmarshal(b, &m)
	}
	if err != nil {
		return nil, fmt.Errorf("forwarding record %s: %w", path, err)
	}
	for p := range m {
		if p != sysctlForward4 && p != sysctlForward6 {
			delete(m, p)
		}
	}
	return m, nil
}

// recordForwarding notes the current values of the sysctls about to be
// turned on, unless an earlier run recorded them already, and saves the
// record before anything changes.
func (k *kernelNet) recordForwarding(v4, v6 bool) error {
	var paths []string
	if v4 {
		paths = append(paths, sysctlForward4)
	}
	if v6 {
		paths = append(paths, sysctlForward6)
	}
	changed := false
	for _, p := range paths {
		if _, ok := k.fwdOrig[p]; ok {
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("read %s: %w", p, err)
		}
		if v := strings.TrimSpace(string(b)); v != "1" {
			k.fwdOrig[p] = v
			changed = true
		}
	}
	if !changed || k.fwdFile == "" {
		return nil
	}
	b, err := json.Marshal(k.fwdOrig)
	if err != nil {
		return err
	}
	if err := os.WriteFile(k.fwdFile, b, 0o600); err != nil {
		return fmt.Errorf("forwarding record: %w", err)
	}
	return nil
}

// restoreForwarding puts back every recorded original value (this run's,
// already restored by route's restore functions, and an earlier crashed
// run's) and removes the record.
func (k *kernelNet) restoreForwarding() error {
	var errs []error
	for p, v := range k.fwdOrig {
		if err := os.WriteFile(p, []byte(v+"\n"), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("restore %s: %w", p, err))
		}
	}
	if k.fwdFile != "" && len(errs) == 0 {
		if err := os.Remove(k.fwdFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
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
