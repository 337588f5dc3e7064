package netstack

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// Forwarding makes a Net accept traffic for destinations that are not its
// own addresses (a child prefix served from userspace) and hand it to user
// handlers with the original destination. Each nil field disables its part.
type Forwarding struct {
	// Match reports whether packets for dst, which is not one of the Net's
	// own addresses, are accepted. It is called for every such inbound
	// packet, so it must be fast and must not block. nil disables
	// forwarding altogether.
	Match func(dst netip.Addr) bool

	// TCP is called in a goroutine of its own for each new TCP connection
	// to a matched destination, before the handshake completes. It decides
	// with req.Accept (typically after dialing the real destination, so an
	// unreachable one is refused rather than accepted then dropped) or
	// req.Reject; returning without either rejects. nil resets connections.
	TCP func(req *TCPRequest)

	// UDP is called in a goroutine of its own for each new UDP flow
	// (src, dst) to a matched destination; conn is connected to src and
	// sends from dst, and the first datagram is already queued on it. The
	// handler owns conn and must close it (e.g. after an idle timeout);
	// later datagrams of the flow go to conn until then. nil drops
	// datagrams to matched destinations.
	UDP func(conn *UDPConn, src, dst netip.AddrPort)

	// Ping decides whether an ICMP echo request to a matched destination
	// gets a reply (from dst). It runs in a goroutine of its own, at most
	// maxPingHooks at a time (further requests are dropped); ctx ends on
	// Close. nil means no replies.
	Ping func(ctx context.Context, dst netip.Addr) bool
}

// maxPingHooks bounds concurrent Forwarding.Ping calls.
const maxPingHooks = 16

// forwardTCPMaxInFlight bounds TCP handshakes waiting for the TCP handler.
const forwardTCPMaxInFlight = 256

// forwarding is the Net's forwarding state.
type forwarding struct {
	cfg     atomic.Pointer[Forwarding] // nil when off
	pingSem chan struct{}
	once    sync.Once // installs the stack's transport handlers
}

// TCPRequest is a forwarded TCP connection attempt waiting for a decision.
type TCPRequest struct {
	// Src is the connecting peer, Dst the original destination.
	Src, Dst netip.AddrPort

	fr   *tcp.ForwarderRequest
	mu   sync.Mutex // guards done
	done bool
}

// ErrRequestDone is returned by TCPRequest.Accept after Accept or Reject.
var ErrRequestDone = errors.New("netstack: TCP request already accepted or rejected")

// Accept completes the handshake and returns the connection, which sends from
// Dst. It may be called once, and not after Reject.
func (r *TCPRequest) Accept() (*TCPConn, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done {
		return nil, ErrRequestDone
	}
	r.done = true
	var wq waiter.Queue
	ep, terr := r.fr.CreateEndpoint(&wq)
	if terr != nil {
		r.fr.Complete(true)
		return nil, fmt.Errorf("netstack: accept forwarded %s -> %s: %s", r.Src, r.Dst, terr)
	}
	r.fr.Complete(false)
	return newTCPConn(&wq, unpinnedEndpoint{ep}), nil
}

// Reject refuses the connection with a reset. It is a no-op after Accept or
// Reject.
func (r *TCPRequest) Reject() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done {
		return
	}
	r.done = true
	r.fr.Complete(true)
}

// SetForwarding replaces the forwarding configuration; a zero Forwarding
// (nil Match) turns forwarding off. New handlers apply to new connections and
// flows; packets of flows already handed out keep flowing only while Match
// still accepts their destination (turning forwarding off stalls them).
func (n *Net) SetForwarding(f Forwarding) error {
	n.life.Lock()
	closed := n.life.closed
	n.life.Unlock()
	if closed {
		return fmt.Errorf("netstack: set forwarding: %w", errNetClosed)
	}
	if f.Match == nil {
		n.fwd.cfg.Store(nil)
		n.stack.SetPromiscuousMode(nicID, false)
		n.stack.SetSpoofing(nicID, false)
		return nil
	}
	n.fwd.once.Do(func() {
		n.fwd.pingSem = make(chan struct{}, maxPingHooks)
		tcpFwd := tcp.NewForwarder(n.stack, 0, forwardTCPMaxInFlight, n.handleTCP)
		n.stack.SetTransportProtocolHandler(tcp.ProtocolNumber, func(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
			if cfg := n.fwd.cfg.Load(); cfg == nil || cfg.TCP == nil || !n.forwarded(cfg, id.LocalAddress) {
				return false
			}
			return tcpFwd.HandlePacket(id, pkt)
		})
		udpFwd := udp.NewForwarder(n.stack, n.handleUDP)
		n.stack.SetTransportProtocolHandler(udp.ProtocolNumber, func(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
			if cfg := n.fwd.cfg.Load(); cfg == nil || cfg.UDP == nil || !n.forwarded(cfg, id.LocalAddress) {
				return false
			}
			return udpFwd.HandlePacket(id, pkt)
		})
	})
	cp := f
	n.fwd.cfg.Store(&cp)
	if err := n.stack.SetPromiscuousMode(nicID, true); err != nil {
		return fmt.Errorf("netstack: set forwarding: promiscuous mode: %s", err)
	}
	if err := n.stack.SetSpoofing(nicID, true); err != nil {
		return fmt.Errorf("netstack: set forwarding: spoofing: %s", err)
	}
	return nil
}

var errNetClosed = errors.New("net closed")

func toAddr(a tcpip.Address) netip.Addr {
	ip, _ := netip.AddrFromSlice(a.AsSlice())
	return ip
}

// forwarded reports whether dst is a forwarded (not own, matched) address.
func (n *Net) forwarded(cfg *Forwarding, dst tcpip.Address) bool {
	a := toAddr(dst)
	return !n.isLocal(a) && cfg.Match(a)
}

// handleTCP runs in a goroutine started by the gVisor TCP forwarder.
func (n *Net) handleTCP(fr *tcp.ForwarderRequest) {
	cfg := n.fwd.cfg.Load()
	if cfg == nil || cfg.TCP == nil || !n.enterHandler() {
		fr.Complete(true)
		return
	}
	defer n.exitHandler()
	id := fr.ID()
	req := &TCPRequest{
		Src: netip.AddrPortFrom(toAddr(id.RemoteAddress), id.RemotePort),
		Dst: netip.AddrPortFrom(toAddr(id.LocalAddress), id.LocalPort),
		fr:  fr,
	}
	defer req.Reject()
	cfg.TCP(req)
}

// handleUDP runs synchronously in the stack's receive path for the first
// datagram of a flow.
func (n *Net) handleUDP(fr *udp.ForwarderRequest) {
	cfg := n.fwd.cfg.Load()
	if cfg == nil || cfg.UDP == nil {
		return
	}
	id := fr.ID()
	src := netip.AddrPortFrom(toAddr(id.RemoteAddress), id.RemotePort)
	dst := netip.AddrPortFrom(toAddr(id.LocalAddress), id.LocalPort)
	var wq waiter.Queue
	ep, terr := fr.CreateEndpoint(&wq)
	if terr != nil {
		n.log.Debug("forward UDP: create endpoint", "src", src, "dst", dst, "err", terr.String())
		return
	}
	conn := newUDPConn(&wq, ep)
	if !n.goHandler(func() { cfg.UDP(conn, src, dst) }) {
		conn.Close()
	}
}

// filterInbound decides, before the stack sees it, whether an inbound packet
// is delivered. Without forwarding everything is (the stack drops what is
// not its own). With forwarding, packets for foreign destinations are
// delivered only when Match accepts them, and echo requests to them only
// after the Ping hook approves (asynchronously, via inject).
func (n *Net) filterInbound(p []byte) bool {
	cfg := n.fwd.cfg.Load()
	if cfg == nil {
		return true
	}
	var dst netip.Addr
	var echo bool
	switch p[0] >> 4 {
	case 4:
		if len(p) < 20 {
			return false
		}
		dst = netip.AddrFrom4([4]byte(p[16:20]))
		ihl := int(p[0]&0x0f) * 4
		echo = p[9] == 1 && len(p) > ihl && p[ihl] == 8
	case 6:
		if len(p) < 40 {
			return false
		}
		dst = netip.AddrFrom16([16]byte(p[24:40]))
		echo = p[6] == 58 && len(p) > 40 && p[40] == 128
	default:
		return false
	}
	if n.isLocal(dst) {
		return true
	}
	if !cfg.Match(dst) {
		return false
	}
	if !echo {
		return true
	}
	if cfg.Ping == nil {
		return false
	}
	select {
	case n.fwd.pingSem <- struct{}{}:
	default:
		return false // too many hooks running: drop, the sender retries
	}
	pkt := append([]byte(nil), p...)
	if !n.goHandler(func() {
		defer func() { <-n.fwd.pingSem }()
		if cfg.Ping(n.ctx, dst) && n.ctx.Err() == nil {
			if reply := echoReply(pkt); reply != nil {
				n.ep.enqueueRaw(reply)
			}
		}
	}) {
		<-n.fwd.pingSem
	}
	return false
}

// echoReply turns an ICMP echo request (IPv4 without fragmentation, or IPv6
// without extension headers) into the reply, in place. gVisor does not answer
// echo requests for promiscuously accepted addresses, so we do.
func echoReply(p []byte) []byte {
	switch p[0] >> 4 {
	case 4:
		ihl := int(p[0]&0x0f) * 4
		ip := header.IPv4(p)
		if ihl < header.IPv4MinimumSize || len(p) < ihl+header.ICMPv4MinimumSize || int(ip.TotalLength()) != len(p) ||
			ip.More() || ip.FragmentOffset() != 0 {
			return nil
		}
		src, dst := ip.SourceAddress(), ip.DestinationAddress()
		ip.SetSourceAddress(dst)
		ip.SetDestinationAddress(src)
		ip.SetTTL(64)
		ip.SetChecksum(0)
		ip.SetChecksum(^ip.CalculateChecksum())
		icmp := header.ICMPv4(p[ihl:])
		icmp.SetType(header.ICMPv4EchoReply)
		icmp.SetCode(0)
		icmp.SetChecksum(0)
		icmp.SetChecksum(^checksum.Checksum(icmp, 0))
		return p
	case 6:
		ip := header.IPv6(p)
		if len(p) < header.IPv6MinimumSize+header.ICMPv6EchoMinimumSize || int(ip.PayloadLength())+header.IPv6MinimumSize != len(p) {
			return nil
		}
		src, dst := ip.SourceAddress(), ip.DestinationAddress()
		ip.SetSourceAddress(dst)
		ip.SetDestinationAddress(src)
		ip.SetHopLimit(64)
		icmp := header.ICMPv6(p[header.IPv6MinimumSize:])
		icmp.SetType(header.ICMPv6EchoReply)
		icmp.SetCode(0)
		icmp.SetChecksum(0)
		sum := checksum.Checksum(p[8:40], 0)
		sum = checksum.Combine(sum, uint16(len(icmp)))
		sum = checksum.Combine(sum, uint16(header.ICMPv6ProtocolNumber))
		icmp.SetChecksum(^checksum.Checksum(icmp, sum))
		return p
	}
	return nil
}
