package mesh

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/wiremesh/wiremesh/control/api"
)

// kernelPlane is the host side of a kernel-mode node: the TUN device's
// addresses and routes, the router's forwarding and firewall, and the host
// network stack that Node.Dial, Listen and Ping use. Implemented on Linux
// (kernel_linux.go); elsewhere newKernelDevice fails.
type kernelPlane interface {
	// setPeers routes the allowed IPs of want (the peers as configured on
	// the WireGuard device) through the TUN device, except those inside the
	// zone's pools (on-link through the device already). It returns once
	// the host's routes are reconciled; failures are logged and retried.
	setPeers(want map[api.Key]wgPeer)
	// prefixesChanged tells that the node's own child prefixes changed, so
	// that the router's firewall follows soon. It never blocks (callers
	// may hold Node.mu); without it the change is picked up within
	// kernelResync.
	prefixesChanged()
	// dial connects through the host network stack to ap, which checkRoute
	// accepted; it refuses a destination the host does not route through
	// the TUN device.
	dial(ctx context.Context, proto string, ap netip.AddrPort) (net.Conn, error)
	// listen and listenPacket listen on the host stack at ap (the zero Addr:
	// every tunnel address of the node).
	listen(ap netip.AddrPort) (net.Listener, error)
	listenPacket(ap netip.AddrPort) (net.PacketConn, error)
	// ping sends ICMP echo requests from local to dst through the host
	// stack until a reply comes or ctx ends.
	ping(ctx context.Context, local, dst netip.Addr) (time.Duration, error)
	// status returns the interface name and the routes that were not
	// installed, with the reasons.
	status() (ifname string, skipped []SkippedRoute)
	// close removes the routes, addresses, firewall rules and forwarding
	// settings the node added. The TUN device itself is closed by the
	// WireGuard device before, which removes the interface.
	close() error
}

// SkippedRoute is a peer's prefix that a kernel-mode node does not route
// through its TUN device, and why (for example "overlaps 172.24.0.0/16
// directly connected on docker0": the host reaches that network locally,
// and routing it into the tunnel would cut it off).
type SkippedRoute struct {
	Prefix netip.Prefix
	Reason string
}

// desiredRoutes returns the prefixes a kernel-mode node routes through its
// TUN device: every peer's allowed IPs (tunnel addresses and child
// prefixes) except those inside the node's own address prefixes, which
// the kernel already routes on-link through the device. Sorted, no
// duplicates.
func desiredRoutes(addrs []netip.Prefix, peers map[api.Key]wgPeer) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range peers {
	next:
		for _, r := range p.AllowedIPs {
			r = r.Masked()
			for _, a := range addrs {
				if a.Masked().Contains(r.Addr()) && r.Bits() >= a.Bits() {
					continue next
				}
			}
			out = append(out, r)
		}
	}
	slices.SortFunc(out, comparePrefix)
	return slices.Compact(out)
}

// listenAll listens for TCP on port at every address of addrs on the host
// network stack and merges the connections into one listener (see
// listenEach).
func listenAll(addrs []netip.Addr, port uint16) (net.Listener, error) {
	return listenEach(addrs, port, func(ap netip.AddrPort) (net.Listener, error) {
		return net.ListenTCP("tcp", net.TCPAddrFromAddrPort(ap))
	})
}

// listenEach listens for TCP on port at every address of addrs with listen
// and merges the connections into one listener. Port 0: the first listener
// picks a port and the others use the same. listen must return listeners
// whose Addr is a *net.TCPAddr.
func listenEach(addrs []netip.Addr, port uint16, listen func(netip.AddrPort) (net.Listener, error)) (net.Listener, error) {
	m := &multiListener{conns: make(chan net.Conn), done: make(chan struct{})}
	for _, a := range addrs {
		l, err := listen(netip.AddrPortFrom(a, port))
		if err != nil {
			for _, l := range m.ls {
				l.Close()
			}
			return nil, err
		}
		port = l.Addr().(*net.TCPAddr).AddrPort().Port()
		m.ls = append(m.ls, l)
	}
	if len(m.ls) == 1 {
		return m.ls[0], nil
	}
	for _, l := range m.ls {
		m.wg.Add(1)
		go m.accept(l)
	}
	return m, nil
}

// multiListener merges the connections of several listeners. Accept
// returns net.ErrClosed after Close.
type multiListener struct {
	ls    []net.Listener
	conns chan net.Conn
	done  chan struct{} // closed by Close
	once  sync.Once
	wg    sync.WaitGroup // accept goroutines
}

func (m *multiListener) accept(l net.Listener) {
	defer m.wg.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return // closed
		}
		select {
		case m.conns <- c:
		case <-m.done:
			c.Close()
			return
		}
	}
}

func (m *multiListener) Accept() (net.Conn, error) {
	select {
	case c := <-m.conns:
		return c, nil
	case <-m.done:
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: m.Addr(), Err: net.ErrClosed}
	}
}

func (m *multiListener) Close() error {
	err := error(&net.OpError{Op: "close", Net: "tcp", Addr: m.Addr(), Err: net.ErrClosed})
	m.once.Do(func() {
		err = nil
		close(m.done)
		for _, l := range m.ls {
			l.Close()
		}
		m.wg.Wait()
	})
	return err
}

// Addr returns the address of the first listener (the IPv4 tunnel address).
func (m *multiListener) Addr() net.Addr { return m.ls[0].Addr() }

// hostPing sends ICMP echo requests from local to dst through the host
// network stack, one a second, until a reply arrives or ctx ends
// (DefaultPingTimeout without a deadline). It uses a raw ICMP socket (root)
// or, failing that, a datagram ICMP socket (net.ipv4.ping_group_range).
func hostPing(ctx context.Context, local, dst netip.Addr) (time.Duration, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultPingTimeout)
		defer cancel()
	}
	network, dgram, proto := "ip4:icmp", "udp4", 1
	var typ, reply icmp.Type = ipv4.ICMPTypeEcho, ipv4.ICMPTypeEchoReply
	if dst.Is6() {
		network, dgram, proto = "ip6:ipv6-icmp", "udp6", 58
		typ, reply = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply
	}
	raw := true
	c, err := icmp.ListenPacket(network, local.String())
	if err != nil {
		raw = false
		var err2 error
		if c, err2 = icmp.ListenPacket(dgram, local.String()); err2 != nil {
			return 0, fmt.Errorf("open ICMP socket: %w", errors.Join(err, err2))
		}
	}
	defer c.Close()
	var idb [2]byte
	rand.Read(idb[:])
	id := int(idb[0])<<8 | int(idb[1])
	data := make([]byte, 16)
	rand.Read(data)
	var to net.Addr = &net.IPAddr{IP: dst.AsSlice()}
	if !raw {
		to = &net.UDPAddr{IP: dst.AsSlice()}
	}
	buf := make([]byte, 1500)
	for seq := 1; ; seq++ {
		if err := ctx.Err(); err != nil {
			return 0, fmt.Errorf("no reply: %w", context.Cause(ctx))
		}
		req, err := (&icmp.Message{Type: typ, Body: &icmp.Echo{ID: id, Seq: seq, Data: data}}).Marshal(nil)
		if err != nil {
			return 0, err
		}
		start := time.Now()
		if _, err := c.WriteTo(req, to); err != nil {
			return 0, err
		}
		end := start.Add(time.Second)
		if d, _ := ctx.Deadline(); d.Before(end) {
			end = d
		}
		c.SetReadDeadline(end)
		for {
			nr, from, err := c.ReadFrom(buf)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break // next attempt
			}
			if err != nil {
				return 0, err
			}
			m, err := icmp.ParseMessage(proto, buf[:nr])
			if err != nil || m.Type != reply {
				continue
			}
			e, ok := m.Body.(*icmp.Echo)
			// A datagram socket has the kernel choose the ID.
			if !ok || e.Seq != seq || !bytes.Equal(e.Data, data) || raw && e.ID != id || !sameIP(from, dst) {
				continue
			}
			return time.Since(start), nil
		}
	}
}

func sameIP(a net.Addr, ip netip.Addr) bool {
	var b net.IP
	switch a := a.(type) {
	case *net.IPAddr:
		b = a.IP
	case *net.UDPAddr:
		b = a.IP
	default:
		return false
	}
	got, ok := netip.AddrFromSlice(b)
	return ok && got.Unmap() == ip
}
