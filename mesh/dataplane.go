package mesh

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/mesh/internal/magicsock"
)

// dataPlane is where a node's traffic goes: a WireGuard device and the
// network stack behind it. The Node keeps the membership (who the peers
// are, which destinations the mesh routes) and decides what is allowed;
// the data plane carries it. There are two:
//
//   - userspacePlane (userspace.go): a gVisor netstack bound to the tunnel
//     addresses, which also serves the node's child prefixes (forwarder).
//   - kernelPlane (kernel_linux.go): a TUN device whose addresses, routes,
//     forwarding and firewall are programmed on the host through route/;
//     the host network stack carries the traffic.
//
// newDataPlane makes the one the node's Mode asks for. The Node never
// calls back from a data plane: what a plane needs (keys, addresses,
// prefixes) is passed in planeConfig and through its methods.
//
// All methods are safe for concurrent use. After close, setPeers fails
// with an error wrapping net.ErrClosed and dial, listen, listenPacket and
// ping fail (the Node refuses them with net.ErrClosed before reaching the
// plane).
type dataPlane interface {
	// dial connects with proto ("tcp" or "udp") to ap, a destination the
	// Node's route check accepted. A plane may refuse a destination it
	// cannot carry into the mesh (kernel mode: one the host does not route
	// through the TUN device) with a *NoRouteError or an error matching
	// ErrNoRoute; it never lets traffic leave through another network.
	dial(ctx context.Context, proto string, ap netip.AddrPort) (net.Conn, error)

	// listen listens for TCP at ap, whose address is one of the node's
	// tunnel addresses or the zero Addr: then at every tunnel address the
	// plane carries, merged into one listener, never on a wildcard socket
	// (a wildcard would capture the traffic to the node's child prefixes).
	// Port 0 picks one free port for all addresses.
	listen(ap netip.AddrPort) (net.Listener, error)

	// listenPacket listens for UDP at ap, which always has one of the
	// node's tunnel addresses (a packet socket cannot merge several).
	listenPacket(ap netip.AddrPort) (net.PacketConn, error)

	// ping sends ICMP echo requests from local (the node's tunnel address
	// of dst's family) to dst until the matching reply arrives, and
	// returns its round-trip time. It repeats unanswered requests (the
	// first ones may be lost while the tunnel handshakes) and gives up
	// when ctx ends, which always has a deadline.
	ping(ctx context.Context, local, dst netip.Addr) (time.Duration, error)

	// setPeers makes the WireGuard device's peers equal to want with the
	// fewest changes: an unchanged peer keeps its session (see
	// wgDevice.applyPeers). In kernel mode it then routes the peers'
	// allowed IPs through the TUN device and returns once the host's
	// routes are reconciled (route failures are logged and retried, not
	// returned). An error means the device may not match want; the next
	// call starts over.
	setPeers(want map[api.Key]wgPeer) error

	// setPrefixes gives the node's own child prefixes: a userspace plane
	// serves traffic to them (forwarder), a kernel plane forwards it
	// through the host (forwarding and firewall). It never blocks: the
	// Node calls it under its lock. The change takes effect at once
	// (userspace) or within moments (kernel, in the background).
	setPrefixes(ps []netip.Prefix)

	// setFilter puts the node's inbound filter in force (see api.Filter;
	// nil accepts everything, a filter without rules no new inbound flow)
	// for traffic from the mesh to the node's tunnel addresses and child
	// prefixes. Flows already accepted, and the node's own flows, keep
	// flowing; the change applies to new flows. It never blocks on the
	// host (the Node calls it from the watch loop): a userspace plane
	// switches at once, a kernel plane replaces its nftables rules in one
	// transaction, in the background, within moments. The plane keeps f
	// (the caller must not modify it).
	setFilter(f *api.Filter)

	// status returns the WireGuard device's view of the peers and, in
	// kernel mode, the interface and the routes not installed. After close
	// it returns no peer stats.
	status() planeStatus

	// close stops the device, its UDP sockets and its network stack and
	// removes everything the plane added to the host (routes, addresses,
	// firewall rules, forwarding settings). Connections and listeners made
	// through the plane stop working. Idempotent; the error reports what
	// could not be undone.
	close() error
}

// planeConfig is what a data plane is made from. It carries no reference
// to the Node.
type planeConfig struct {
	priv api.Key
	port uint16 // UDP listen port; reserved by Join, 0 = random
	mtu  int
	log  *slog.Logger // never nil
	// trimIdle trims peers idle this long from the device (trim.go); 0
	// never does.
	trimIdle time.Duration
	// addrs are the node's tunnel addresses with the lengths of the zone's
	// pools (see tunnelPrefixes): IPv4, then IPv6 if any.
	addrs []netip.Prefix
	// prefixes are the node's own child prefixes at start (see
	// dataPlane.setPrefixes).
	prefixes []netip.Prefix

	// bind configures the WireGuard transport (see newBind); its hooks
	// tell the node's service what the bind learns.
	bind magicsock.Config

	// Userspace mode.
	handlers []prefixRoute // WithPrefixHandler

	// Kernel mode.
	ifname     string // the TUN device
	masquerade bool   // WithMasquerade
	stateDir   string // "" = none: where forwarding changes are recorded
}

// planeStatus is a data plane's runtime state (see dataPlane.status).
type planeStatus struct {
	peers   map[api.Key]peerStats // nil when the device cannot be read
	ifname  string                // kernel mode: the TUN device
	skipped []SkippedRoute        // kernel mode: peers' prefixes not routed
	reach   magicsock.SelfInfo    // what the bind learned about the node
	filter  filterCounters        // counters of the filter in force
}

// filterCounters are a plane's counts for the filter in force (see
// dataPlane.setFilter) since it was set: rules has one count per
// api.FilterRule (new flows accepted) when the plane could read them.
type filterCounters struct {
	filter  *api.Filter // the filter the counts belong to (nil: none)
	rules   []uint64
	dropped uint64 // packets of new flows no rule accepted
}

// newDataPlane makes the data plane of mode with c, listening on c.port.
// This is where a node's WireGuard device comes to life (through
// startDevice); on error nothing is left behind.
func newDataPlane(mode Mode, c planeConfig) (dataPlane, error) {
	if mode == Kernel {
		return newKernelPlane(c)
	}
	p, err := newUserspacePlane(c)
	if err != nil {
		return nil, err
	}
	return p, nil
}

// tunnelPrefixes returns the node's tunnel addresses with the lengths of
// the zone's pools (so that a kernel routes each pool on-link through the
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

// prefixAddrs returns the addresses of ps.
func prefixAddrs(ps []netip.Prefix) []netip.Addr {
	out := make([]netip.Addr, len(ps))
	for i, p := range ps {
		out[i] = p.Addr()
	}
	return out
}
