package mesh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/wiremesh/wiremesh/control/api"
)

// Dial connects to addr ("host:port") through the mesh. network is tcp,
// tcp4, tcp6, udp, udp4 or udp6. host is an IP address or a member's
// hostname (resolved against the peer list, never DNS). Hostnames are not
// unique in a zone: a name that more than one member holds fails with an
// *AmbiguousNameError (errors.Is(err, ErrAmbiguousName)) naming their
// addresses, rather than reaching whichever member took it.
//
// The destination must be the tunnel address of a member or inside a
// member's child prefixes, as the node last heard from the service;
// anything else (a tunnel address of the zone that no member holds
// included) fails at once with a *NoRouteError (errors.Is(err,
// ErrNoRoute)) and nothing is sent. Dial never falls back to the host
// network.
func (n *Node) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	fail := func(a netip.AddrPort, err error) error {
		oe := &net.OpError{Op: "dial", Net: network, Err: err}
		if a.IsValid() {
			oe.Addr = addrOf(network, a)
		}
		return oe
	}
	proto, fam, err := parseNetwork(network, "tcp", "udp")
	if err != nil {
		return nil, fail(netip.AddrPort{}, err)
	}
	if n.isClosed() {
		return nil, fail(netip.AddrPort{}, net.ErrClosed)
	}
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fail(netip.AddrPort{}, err)
	}
	port, err := parsePort(portStr)
	if err != nil {
		return nil, fail(netip.AddrPort{}, fmt.Errorf("address %q: %w", addr, err))
	}
	ips, err := n.resolve(host, fam)
	if err != nil {
		return nil, fail(netip.AddrPort{}, err)
	}
	var firstErr error
	for _, ip := range ips {
		ap := netip.AddrPortFrom(ip, port)
		if err := n.checkRoute(ip); err != nil {
			if firstErr == nil {
				firstErr = fail(ap, err)
			}
			continue
		}
		c, err := n.plane.dial(ctx, proto, ap)
		if err == nil {
			return c, nil
		}
		if firstErr == nil {
			firstErr = fail(ap, err)
		}
	}
	return nil, firstErr
}

// Listen listens for TCP connections on the node's tunnel addresses.
// network is tcp, tcp4 or tcp6; addr is ":port" (every tunnel address of
// the family) or "ip:port" with one of the node's addresses. Port 0 picks
// a free port. Connections to the node's child prefixes never reach the
// listener: they go to the prefix's handler or the host network.
func (n *Node) Listen(network, addr string) (net.Listener, error) {
	ap, err := n.localAddr(network, addr, "tcp")
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	l, err := n.plane.listen(ap)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Addr: addrOf(network, ap), Err: err}
	}
	return l, nil
}

// ListenPacket listens for UDP on one of the node's tunnel addresses.
// network is udp, udp4 or udp6; addr is "ip:port" with one of the node's
// addresses, or ":port": the IPv4 tunnel address with udp and udp4, the
// IPv6 one with udp6 (a packet socket cannot merge several addresses).
// Port 0 picks a free port.
func (n *Node) ListenPacket(network, addr string) (net.PacketConn, error) {
	ap, err := n.localAddr(network, addr, "udp")
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	if !ap.Addr().IsValid() {
		// Never the netstack's wildcard: with forwarding on, it would
		// capture the datagrams to the node's child prefixes too.
		ap = netip.AddrPortFrom(n.Addr(), ap.Port())
	}
	c, err := n.plane.listenPacket(ap)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Addr: addrOf(network, ap), Err: err}
	}
	return c, nil
}

// localAddr parses a listen address. An empty host with network "tcp" or
// "udp" means every address of the node (the zero Addr, which Listen and
// ListenPacket turn into the node's addresses: never bind it in the
// netstack); with tcp4/tcp6 the node's address of that family.
func (n *Node) localAddr(network, addr, want string) (netip.AddrPort, error) {
	_, fam, err := parseNetwork(network, want)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if n.isClosed() {
		return netip.AddrPort{}, net.ErrClosed
	}
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return netip.AddrPort{}, err
	}
	port, err := parsePort(portStr)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("address %q: %w", addr, err)
	}
	mine := n.Addrs()
	if host == "" {
		switch fam {
		case 4:
			return netip.AddrPortFrom(mine[0], port), nil
		case 6:
			if len(mine) < 2 {
				return netip.AddrPort{}, fmt.Errorf("address %q: the node has no IPv6 address", addr)
			}
			return netip.AddrPortFrom(mine[1], port), nil
		}
		return netip.AddrPortFrom(netip.Addr{}, port), nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("address %q: host must be an IP address: %w", addr, err)
	}
	ip = ip.Unmap()
	if ip.IsUnspecified() {
		return n.localAddr(network, net.JoinHostPort("", portStr), want)
	}
	for _, a := range mine {
		if a == ip && (fam == 0 || fam == 4 && ip.Is4() || fam == 6 && ip.Is6()) {
			return netip.AddrPortFrom(ip, port), nil
		}
	}
	return netip.AddrPort{}, fmt.Errorf("address %q: %s is not an address of this node (%v)", addr, ip, mine)
}

// resolve turns a host (IP literal or member hostname) into addresses of
// family fam (0 = both, IPv4 first). A hostname must name exactly one
// member, the node itself included: none is a *net.DNSError (not found),
// several an *AmbiguousNameError.
func (n *Node) resolve(host string, fam int) ([]netip.Addr, error) {
	if ip, err := netip.ParseAddr(host); err == nil {
		ip = ip.Unmap()
		if fam == 4 && !ip.Is4() || fam == 6 && !ip.Is6() {
			return nil, fmt.Errorf("address %s: wrong family for tcp%d/udp%d", ip, fam, fam)
		}
		return []netip.Addr{ip}, nil
	}
	name := strings.TrimSuffix(strings.ToLower(host), ".")
	match := func(h string) bool { return name != "" && strings.ToLower(h) == name }
	var found [][2]netip.Addr // IPv4 and IPv6 of each member with the name
	n.mu.Lock()
	if match(n.self.hostname) {
		found = append(found, [2]netip.Addr{n.self.ipv4, n.self.ipv6})
	}
	for _, p := range n.peers {
		if match(p.Hostname) {
			found = append(found, [2]netip.Addr{p.IPv4, p.IPv6})
		}
	}
	n.mu.Unlock()
	switch len(found) {
	case 0:
		return nil, &net.DNSError{Err: "no member of the zone with this hostname", Name: host, IsNotFound: true}
	case 1:
	default:
		e := &AmbiguousNameError{Name: host}
		for _, f := range found {
			if f[0].IsValid() {
				e.Addrs = append(e.Addrs, f[0])
			} else {
				e.Addrs = append(e.Addrs, f[1])
			}
		}
		slices.SortFunc(e.Addrs, netip.Addr.Compare)
		return nil, e
	}
	var out []netip.Addr
	if v4 := found[0][0]; v4.IsValid() && fam != 6 {
		out = append(out, v4)
	}
	if v6 := found[0][1]; v6.IsValid() && fam != 4 {
		out = append(out, v6)
	}
	if len(out) == 0 {
		return nil, &net.DNSError{Err: fmt.Sprintf("the member with this hostname has no IPv%d address", fam), Name: host, IsNotFound: true}
	}
	return out, nil
}

// checkRoute returns a *NoRouteError unless ip is the node's own address
// or one of some peer's addresses or inside its child prefixes. A tunnel
// address of the zone that no member holds has no route either: nothing
// would answer, and a dial would hang until TCP gave up (minutes).
func (n *Node) checkRoute(ip netip.Addr) error {
	ip = ip.Unmap()
	n.mu.Lock()
	defer n.mu.Unlock()
	if ip == n.self.ipv4 || ip == n.self.ipv6 {
		return nil
	}
	for _, p := range n.peers {
		if routesTo(p, ip) {
			return nil
		}
	}
	inZone := n.self.zone4.IsValid() && n.self.zone4.Contains(ip) || n.self.zone6.IsValid() && n.self.zone6.Contains(ip)
	return &NoRouteError{Addr: ip, InZone: inZone}
}

func routesTo(p api.Peer, ip netip.Addr) bool {
	if p.IPv4 == ip || p.IPv6 == ip {
		return true
	}
	for _, cp := range p.ChildPrefixes {
		if cp.Contains(ip) {
			return true
		}
	}
	return false
}

// parseNetwork accepts proto, proto4 and proto6 for each allowed proto and
// returns the proto and the family (0, 4 or 6).
func parseNetwork(network string, protos ...string) (string, int, error) {
	for _, p := range protos {
		switch network {
		case p:
			return p, 0, nil
		case p + "4":
			return p, 4, nil
		case p + "6":
			return p, 6, nil
		}
	}
	return "", 0, net.UnknownNetworkError(network)
}

func parsePort(s string) (uint16, error) {
	p, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return 0, errors.New("port " + strconv.Quote(s) + " is not a number in 0..65535")
	}
	return uint16(p), nil
}

func addrOf(network string, ap netip.AddrPort) net.Addr {
	if strings.HasPrefix(network, "udp") {
		return net.UDPAddrFromAddrPort(ap)
	}
	return net.TCPAddrFromAddrPort(ap)
}
