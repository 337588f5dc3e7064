package netstack

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// PingAddr is the net.Addr of a PingConn.
type PingAddr struct{ addr netip.Addr }

// Addr returns the IP address.
func (a PingAddr) Addr() netip.Addr { return a.addr }

// Network returns "ping4" or "ping6" ("ping" for the zero value).
func (a PingAddr) Network() string {
	switch {
	case a.addr.Is4():
		return "ping4"
	case a.addr.Is6():
		return "ping6"
	}
	return "ping"
}

func (a PingAddr) String() string { return a.addr.String() }

// PingConn is an ICMP echo socket, like a Linux "ping socket": Write sends an
// ICMP message (echo request header + payload; the stack fills in the
// identifier and checksum) and Read returns the ICMP replies.
type PingConn struct {
	laddr PingAddr
	raddr PingAddr
	wq    waiter.Queue
	ep    tcpip.Endpoint

	dl        deadline // the read deadline
	closeOnce sync.Once
	closed    chan struct{}
}

var _ net.Conn = (*PingConn)(nil)
var _ net.PacketConn = (*PingConn)(nil)

// DialPingAddr opens an ICMP echo socket bound to laddr (if valid) and
// connected to raddr (if valid); at least one must be valid.
func (n *Net) DialPingAddr(laddr, raddr netip.Addr) (*PingConn, error) {
	laddr, raddr = laddr.Unmap(), raddr.Unmap()
	if !laddr.IsValid() && !raddr.IsValid() {
		return nil, errors.New("netstack: ping dial: no address")
	}
	if laddr.IsValid() && raddr.IsValid() && laddr.Is4() != raddr.Is4() {
		return nil, fmt.Errorf("netstack: ping dial: mixed address families %q and %q", laddr, raddr)
	}
	v6 := laddr.Is6() || raddr.Is6()
	tp, np := icmp.ProtocolNumber4, ipv4.ProtocolNumber
	if v6 {
		tp, np = icmp.ProtocolNumber6, ipv6.ProtocolNumber
	}
	pc := &PingConn{laddr: PingAddr{laddr}, raddr: PingAddr{raddr}, closed: make(chan struct{})}
	pc.dl.init()
	ep, terr := n.stack.NewEndpoint(tp, np, &pc.wq)
	if terr != nil {
		return nil, fmt.Errorf("netstack: ping endpoint: %s", terr)
	}
	pc.ep = ep
	if laddr.IsValid() {
		fa, _ := fullAddr(netip.AddrPortFrom(laddr, 0))
		if terr := ep.Bind(fa); terr != nil {
			ep.Close()
			return nil, fmt.Errorf("netstack: ping bind %q: %s", laddr, terr)
		}
	} else if v6 {
		pc.laddr = PingAddr{netip.IPv6Unspecified()}
	} else {
		pc.laddr = PingAddr{netip.IPv4Unspecified()}
	}
	if raddr.IsValid() {
		fa, _ := fullAddr(netip.AddrPortFrom(raddr, 0))
		if terr := ep.Connect(fa); terr != nil {
			ep.Close()
			return nil, fmt.Errorf("netstack: ping connect %q: %s", raddr, terr)
		}
	}
	return pc, nil
}

// LocalAddr returns the bound address (unspecified if none).
func (pc *PingConn) LocalAddr() net.Addr { return pc.laddr }

// RemoteAddr returns the connected address (zero PingAddr if none).
func (pc *PingConn) RemoteAddr() net.Addr { return pc.raddr }

// Close closes the socket; pending reads return net.ErrClosed.
func (pc *PingConn) Close() error {
	pc.closeOnce.Do(func() {
		close(pc.closed)
		pc.ep.Close()
		pc.dl.stop()
	})
	return nil
}

// WriteTo sends one ICMP message to addr (*PingAddr, PingAddr or *net.IPAddr).
func (pc *PingConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	var dst netip.Addr
	switch a := addr.(type) {
	case *PingAddr:
		dst = a.addr
	case PingAddr:
		dst = a.addr
	case *net.IPAddr:
		dst, _ = netip.AddrFromSlice(a.IP)
	default:
		return 0, fmt.Errorf("netstack: ping write: unsupported address type %T", addr)
	}
	dst = dst.Unmap()
	if !dst.IsValid() || dst.Is4() != (pc.laddr.addr.Is4()) {
		return 0, fmt.Errorf("netstack: ping write: address %q does not match socket family", dst)
	}
	fa, _ := fullAddr(netip.AddrPortFrom(dst, 0))
	n, terr := pc.ep.Write(bytes.NewReader(p), tcpip.WriteOptions{To: &fa})
	if terr != nil {
		return int(n), fmt.Errorf("netstack: ping write: %s", terr)
	}
	return int(n), nil
}

// Write sends one ICMP message to the connected address.
func (pc *PingConn) Write(p []byte) (int, error) { return pc.WriteTo(p, pc.raddr) }

// ReadFrom reads one ICMP message and its sender.
func (pc *PingConn) ReadFrom(p []byte) (int, net.Addr, error) {
	e, ch := waiter.NewChannelEntry(waiter.EventIn)
	pc.wq.EventRegister(&e)
	defer pc.wq.EventUnregister(&e)
	for {
		w := tcpip.SliceWriter(p)
		res, terr := pc.ep.Read(&w, tcpip.ReadOptions{NeedRemoteAddr: true})
		if terr == nil {
			from, _ := netip.AddrFromSlice(res.RemoteAddr.Addr.AsSlice())
			return res.Count, &PingAddr{from}, nil
		}
		if _, ok := terr.(*tcpip.ErrWouldBlock); !ok {
			select {
			case <-pc.closed:
				return 0, nil, net.ErrClosed
			default:
			}
			return 0, nil, fmt.Errorf("netstack: ping read: %s", terr)
		}
		select {
		case <-ch:
		case <-pc.dl.done():
			return 0, nil, os.ErrDeadlineExceeded
		case <-pc.closed:
			return 0, nil, net.ErrClosed
		}
	}
}

// Read reads one ICMP message.
func (pc *PingConn) Read(p []byte) (int, error) {
	n, _, err := pc.ReadFrom(p)
	return n, err
}

// SetReadDeadline sets the read deadline; the zero time means none.
func (pc *PingConn) SetReadDeadline(t time.Time) error {
	pc.dl.set(t)
	return nil
}

// SetWriteDeadline is a no-op: writes never block.
func (pc *PingConn) SetWriteDeadline(time.Time) error { return nil }

// SetDeadline sets the read deadline (writes never block).
func (pc *PingConn) SetDeadline(t time.Time) error { return pc.SetReadDeadline(t) }
