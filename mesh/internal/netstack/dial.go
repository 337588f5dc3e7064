package netstack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// ErrNotIPLiteral is returned (wrapped in a *net.OpError) by DialContext
// for a host that is not an IP literal: the stack does no name resolution.
var ErrNotIPLiteral = errors.New("netstack: host is not an IP literal")

func fullAddr(ap netip.AddrPort) (tcpip.FullAddress, tcpip.NetworkProtocolNumber) {
	// The unspecified (zero) address binds a dual-stack IPv6 endpoint,
	// which also accepts IPv4, as the stock netstack does.
	a := ap.Addr().Unmap()
	proto := ipv4.ProtocolNumber
	if a.Is6() || !a.IsValid() {
		proto = ipv6.ProtocolNumber
	}
	var addr tcpip.Address
	if a.IsValid() {
		addr = tcpip.AddrFromSlice(a.AsSlice())
	}
	return tcpip.FullAddress{NIC: nicID, Addr: addr, Port: ap.Port()}, proto
}

// DialContextTCPAddrPort opens a TCP connection to addr through the tunnel.
func (n *Net) DialContextTCPAddrPort(ctx context.Context, addr netip.AddrPort) (*TCPConn, error) {
	fa, proto := fullAddr(addr)
	return n.dialTCP(ctx, fa, proto)
}

// ListenTCPAddrPort listens for TCP connections on addr (an own address, or
// the unspecified address with an optional port).
func (n *Net) ListenTCPAddrPort(addr netip.AddrPort) (*TCPListener, error) {
	fa, proto := fullAddr(addr)
	return n.listenTCP(fa, proto)
}

// DialUDPAddrPort opens a UDP socket bound to laddr (if valid or with a port)
// and connected to raddr (if valid or with a port).
func (n *Net) DialUDPAddrPort(laddr, raddr netip.AddrPort) (*UDPConn, error) {
	var lfa, rfa *tcpip.FullAddress
	var proto tcpip.NetworkProtocolNumber
	if laddr.IsValid() || laddr.Port() > 0 {
		var a tcpip.FullAddress
		a, proto = fullAddr(laddr)
		lfa = &a
	}
	if raddr.IsValid() || raddr.Port() > 0 {
		var a tcpip.FullAddress
		a, proto = fullAddr(raddr)
		rfa = &a
	}
	return n.dialUDP(lfa, rfa, proto)
}

// dialUDP is gonet.DialUDP returning a UDPConn.
func (n *Net) dialUDP(laddr, raddr *tcpip.FullAddress, proto tcpip.NetworkProtocolNumber) (*UDPConn, error) {
	var wq waiter.Queue
	ep, err := n.stack.NewEndpoint(udp.ProtocolNumber, proto, &wq)
	if err != nil {
		return nil, errors.New(err.String())
	}
	if laddr != nil {
		if err := ep.Bind(*laddr); err != nil {
			ep.Close()
			return nil, &net.OpError{Op: "bind", Net: "udp", Addr: udpAddr(*laddr), Err: errors.New(err.String())}
		}
	}
	if raddr != nil {
		if err := ep.Connect(*raddr); err != nil {
			ep.Close()
			return nil, &net.OpError{Op: "connect", Net: "udp", Addr: udpAddr(*raddr), Err: errors.New(err.String())}
		}
	}
	return newUDPConn(&wq, ep), nil
}

// udpAddr converts a as gonet does.
func udpAddr(a tcpip.FullAddress) *net.UDPAddr {
	return &net.UDPAddr{IP: net.IP(a.Addr.AsSlice()), Port: int(a.Port)}
}

// ListenUDPAddrPort opens an unconnected UDP socket bound to laddr.
func (n *Net) ListenUDPAddrPort(laddr netip.AddrPort) (*UDPConn, error) {
	return n.DialUDPAddrPort(laddr, netip.AddrPort{})
}

// DialContext connects to address on network: "tcp", "tcp4", "tcp6",
// "udp", "udp4", "udp6" (address "ip:port"), "ping", "ping4", "ping6"
// (address "ip"). Hosts must be IP literals. Errors are *net.OpError.
func (n *Net) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	opErr := func(err error) error {
		return &net.OpError{Op: "dial", Net: network, Err: err}
	}
	var kind string
	var want4, want6 bool
	switch network {
	case "tcp", "udp", "ping":
		kind, want4, want6 = network, true, true
	case "tcp4", "udp4", "ping4":
		kind, want4 = network[:len(network)-1], true
	case "tcp6", "udp6", "ping6":
		kind, want6 = network[:len(network)-1], true
	default:
		return nil, opErr(net.UnknownNetworkError(network))
	}
	host, port := address, 0
	if kind != "ping" {
		h, p, err := net.SplitHostPort(address)
		if err != nil {
			return nil, opErr(err)
		}
		pn, err := strconv.ParseUint(p, 10, 16)
		if err != nil {
			return nil, opErr(fmt.Errorf("invalid port %q", p))
		}
		host, port = h, int(pn)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return nil, opErr(fmt.Errorf("%w: %q", ErrNotIPLiteral, host))
	}
	ip = ip.Unmap()
	if (ip.Is4() && !want4) || (ip.Is6() && !want6) {
		return nil, opErr(fmt.Errorf("address %q does not match network %q", host, network))
	}
	if err := ctx.Err(); err != nil {
		return nil, opErr(err)
	}
	ap := netip.AddrPortFrom(ip, uint16(port))
	switch kind {
	case "tcp":
		c, err := n.DialContextTCPAddrPort(ctx, ap)
		if err != nil {
			return nil, err
		}
		return c, nil
	case "udp":
		c, err := n.DialUDPAddrPort(netip.AddrPort{}, ap)
		if err != nil {
			return nil, err
		}
		return c, nil
	default:
		c, err := n.DialPingAddr(netip.Addr{}, ip)
		if err != nil {
			return nil, err
		}
		return c, nil
	}
}
