// Package udpbind is a conn.Bind for wireguard-go with a configurable batch
// size, for members that run many devices or care about idle memory.
//
// wireguard-go allocates (1 + receive functions) × BatchSize message
// buffers per device and keeps them for the device's life, 64 KiB each
// upstream; the standard bind (conn.NewDefaultBind) fixes BatchSize at 128
// on Linux and has two receive functions, which is 24 MiB per idle device.
// This bind lets the caller pick the batch and, on Linux, serves IPv4 and
// IPv6 from one dual-stack socket (one receive function): at batch 16
// that is 2 MiB with upstream's buffers, 64 KiB with the wiremesh fork's
// buffers sized for the MTU (mesh/internal/wireguard). A datagram larger
// than the buffer it would go to is dropped, never delivered cut (on
// Linux; elsewhere the cut datagram fails WireGuard's authentication).
// It keeps the standard bind's speed-ups on Linux: sendmmsg/recvmmsg, UDP
// segmentation offload (UDP_SEGMENT) when sending and UDP GRO when
// receiving. It resends an unanswered handshake initiation within
// milliseconds instead of wireguard-go's 5 s (resend.go). Without sticky
// source addresses: replies leave from whatever address the kernel routes
// from.
package udpbind

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/ipv6"
	"golang.zx2c4.com/wireguard/conn"
)

// DefaultBatchSize is used when New is given 0.
const DefaultBatchSize = 16

const (
	// maxSegments is the most datagrams one UDP_SEGMENT send may carry.
	maxSegments = 64
	// maxDatagram is the largest UDP payload (and GRO read) size.
	maxDatagram = 1<<16 - 1

	// gsoMaxBytes and linkHeaderRoom bound what one UDP_SEGMENT message
	// carries (see coalesce). Linux segments a GSO packet in software,
	// before the device, when its length counted from the link-layer
	// header reaches the device's gso_max_size: 65536 by default, on
	// loopback and most NICs. Over loopback (two members on one host) the
	// receiver then gets each datagram in a recvmsg of its own instead of
	// one UDP GRO read for the lot. linkHeaderRoom covers an Ethernet
	// header (14 bytes, loopback's too) with two VLAN tags and spare.
	gsoMaxBytes    = 1 << 16
	linkHeaderRoom = 32
)

// Bind is a conn.Bind over one IPv4 and (when available) one IPv6 UDP socket.
type Bind struct {
	batch int

	// mu guards the sockets.
	mu      sync.Mutex
	v4      *socket
	v6      *socket
	msgPool sync.Pool // *[]ipv6.Message of len batch, for Send

	rs resender // see resend.go
}

var _ conn.Bind = (*Bind)(nil)

// New returns a Bind moving at most batch packets per call; 0 means
// DefaultBatchSize. Give the tun device the same batch size.
func New(batch int) *Bind {
	if batch <= 0 {
		batch = DefaultBatchSize
	}
	b := &Bind{batch: batch}
	b.msgPool.New = func() any {
		msgs := make([]ipv6.Message, batch)
		for i := range msgs {
			msgs[i].Buffers = make(net.Buffers, 0, min(batch, maxSegments))
			msgs[i].OOB = make([]byte, 0, oobSize)
		}
		return &msgs
	}
	return b
}

// BatchSize implements conn.Bind.
func (b *Bind) BatchSize() int { return b.batch }

// ErrBindOpen is returned by Open on a Bind that is already open.
var ErrBindOpen = errors.New("udpbind: already open")

// Open implements conn.Bind: it listens on port (0 = any) on IPv4 and, when
// the host has IPv6, on the same port on IPv6. On Linux one dual-stack
// socket serves both families: wireguard-go keeps BatchSize message buffers
// per receive function, so a second socket would cost an idle device
// BatchSize more (64 KiB each upstream: 1 MiB at batch 16).
func (b *Bind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.v4 != nil || b.v6 != nil {
		return nil, 0, ErrBindOpen
	}
	if dualStack {
		if c := listenDualStack(port); c != nil {
			b.rs.reopen()
			b.v6 = newSocket(c, true, b.batch, &b.rs)
			b.v4 = b.v6
			return []conn.ReceiveFunc{b.v6.receive}, uint16(c.LocalAddr().(*net.UDPAddr).Port), nil
		}
	}
	var err error
	for try := 0; try < 100; try++ {
		var v4, v6 *net.UDPConn
		v4, err = net.ListenUDP("udp4", &net.UDPAddr{Port: int(port)})
		if err != nil {
			return nil, 0, fmt.Errorf("udpbind: listen udp4 port %d: %w", port, err)
		}
		actual := uint16(v4.LocalAddr().(*net.UDPAddr).Port)
		v6, err = net.ListenUDP("udp6", &net.UDPAddr{Port: int(actual)})
		if err != nil && port == 0 && errors.Is(err, syscall.EADDRINUSE) {
			v4.Close()
			continue // the random v4 port is taken on v6: pick another
		}
		if err != nil {
			v6 = nil // no IPv6 on this host: carry on with IPv4
		}
		b.rs.reopen()
		b.v4 = newSocket(v4, false, b.batch, &b.rs)
		fns := []conn.ReceiveFunc{b.v4.receive}
		if v6 != nil {
			b.v6 = newSocket(v6, true, b.batch, &b.rs)
			fns = append(fns, b.v6.receive)
		}
		return fns, actual, nil
	}
	return nil, 0, fmt.Errorf("udpbind: open port %d: %w", port, err)
}

// ErrWoken is what the first receive function Open returned gives back
// after Wake, instead of blocking for a datagram.
var ErrWoken = errors.New("udpbind: receive woken")

// Wake makes the first receive function Open returned, if blocked, and
// otherwise its next call that would block, return ErrWoken: a caller
// that delivers datagrams of another source through that function (the
// relay's, in magicsock) queues them, then calls Wake; after ErrWoken it
// looks at its queue again before receiving again. Calls made before the
// function returned ErrWoken may be merged into that one: the caller
// must look at its queue after ErrWoken, not count wakes. A no-op when
// closed.
//
// It sets the socket's read deadline to the past (the receive function
// clears it before returning ErrWoken): no syscall, and no second
// receive function whose batch wireguard-go would keep buffers for.
func (b *Bind) Wake() {
	b.mu.Lock()
	s := b.v4 // serves the first receive function (the only one when dual-stack)
	b.mu.Unlock()
	if s != nil {
		s.conn.SetReadDeadline(time.Unix(1, 0)) // closed: nothing to wake
	}
}

// Close implements conn.Bind; receive functions then return net.ErrClosed.
func (b *Bind) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rs.close()
	var errs []error
	for _, s := range b.sockets() {
		if s != nil {
			if err := s.conn.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
				errs = append(errs, err)
			}
		}
	}
	b.v4, b.v6 = nil, nil
	return errors.Join(errs...)
}

// sockets returns the open sockets, each once (nil entries when closed).
func (b *Bind) sockets() []*socket {
	if b.v4 == b.v6 {
		return []*socket{b.v4}
	}
	return []*socket{b.v4, b.v6}
}

// listenDualStack opens one UDP socket for IPv4 and IPv6 on port, or
// returns nil (no IPv6, port taken on one family, ...): the caller then
// opens one socket per family.
func listenDualStack(port uint16) *net.UDPConn {
	c, err := net.ListenUDP("udp", &net.UDPAddr{Port: int(port)})
	if err != nil {
		return nil
	}
	if !isDualStack(c) {
		c.Close()
		return nil
	}
	return c
}

// SetMark implements conn.Bind (SO_MARK on Linux, a no-op elsewhere).
func (b *Bind) SetMark(mark uint32) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, s := range b.sockets() {
		if s != nil {
			if err := setMark(s.conn, mark); err != nil {
				return fmt.Errorf("udpbind: set mark %d: %w", mark, err)
			}
		}
	}
	return nil
}

// ParseEndpoint implements conn.Bind: s is "ip:port".
func (b *Bind) ParseEndpoint(s string) (conn.Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, fmt.Errorf("udpbind: parse endpoint %q: %w", s, err)
	}
	return newEndpoint(ap), nil
}

// Send implements conn.Bind. A handshake initiation sent alone is resent
// until answered (see resend.go).
func (b *Bind) Send(bufs [][]byte, ep conn.Endpoint) error {
	e, ok := ep.(*Endpoint)
	if !ok {
		return fmt.Errorf("udpbind: send: foreign endpoint type %T", ep)
	}
	err := b.send(bufs, e)
	if err == nil && len(bufs) == 1 && isInitiation(bufs[0]) {
		b.rs.sent(bufs[0], e, b.resendTo)
	}
	return err
}

func (b *Bind) send(bufs [][]byte, e *Endpoint) error {
	b.mu.Lock()
	s := b.v4
	if e.ap.Addr().Is6() {
		s = b.v6
	}
	b.mu.Unlock()
	if s == nil {
		return net.ErrClosed
	}
	msgs := b.msgPool.Get().(*[]ipv6.Message)
	defer b.msgPool.Put(msgs)
	return s.send(bufs, e, *msgs)
}

// Endpoint is a peer's address.
type Endpoint struct {
	ap netip.AddrPort
	ua *net.UDPAddr // cached for sends
}

var _ conn.Endpoint = (*Endpoint)(nil)

func (e *Endpoint) ClearSrc()           {}
func (e *Endpoint) SrcToString() string { return "" }
func (e *Endpoint) DstToString() string { return e.ap.String() }
func (e *Endpoint) DstIP() netip.Addr   { return e.ap.Addr() }
func (e *Endpoint) SrcIP() netip.Addr   { return netip.Addr{} }

func (e *Endpoint) DstToBytes() []byte {
	b, _ := e.ap.MarshalBinary()
	return b
}

// AddrPort returns the peer's address.
func (e *Endpoint) AddrPort() netip.AddrPort { return e.ap }

// NewEndpoint returns an Endpoint for ap (an IPv4-mapped address is
// unmapped), as ParseEndpoint does for "ip:port".
func NewEndpoint(ap netip.AddrPort) *Endpoint { return newEndpoint(ap) }

func newEndpoint(ap netip.AddrPort) *Endpoint {
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	return &Endpoint{ap: ap, ua: net.UDPAddrFromAddrPort(ap)}
}
