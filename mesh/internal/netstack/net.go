// Package netstack is wiremesh's userspace data plane: a gVisor TCP/IP stack
// bound to a member's tunnel addresses that is also the tun.Device of its
// wireguard-go device.
//
// It replaces golang.zx2c4.com/wireguard/tun/netstack with the same Net
// methods (DialContext, DialContextTCPAddrPort, ListenTCPAddrPort,
// DialUDPAddrPort, ListenUDPAddrPort, DialPingAddr) and adds:
//
//   - a link endpoint of its own with batched reads and writes, TCP
//     segmentation offload on the way out and GRO on the way in (endpoint.go,
//     gso.go), tuned TCP buffers (tuning.go): several times the stock
//     throughput with a fraction of its idle memory;
//   - forwarding of traffic for addresses that are not the member's own
//     (child prefixes served from userspace), see [Net.SetForwarding].
//
// Swapping the stock package in:
//
//	tdev, tnet, err := netstack.CreateNetTUN(addrs, nil, mtu) // stock
//	tnet, err := netstack.New(netstack.Config{Addrs: addrs, MTU: mtu}) // ours
//	tdev := tnet                                                      // *Net is the tun.Device
//
// Pair it with udpbind.New (package mesh/internal/udpbind) as the conn.Bind:
// wireguard-go sizes its per-device buffers by the larger of the tun and bind
// batch sizes, and the standard bind's 128 with two sockets costs 24 MiB per
// device.
package netstack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/wiremesh/wiremesh/mesh/internal/wireguard/device"
)

// DefaultMTU is the tunnel MTU used when Config.MTU is zero.
const DefaultMTU = 1420

// DefaultBatchSize is the tun batch size used when Config.BatchSize is zero.
// A WireGuard device keeps (1 + receive functions) × batch message buffers
// for its life: 64 KiB each in upstream wireguard-go, which made this the
// knob between idle memory and throughput (16 was the choice), and
// MessageBufferSize (2 KiB at the default MTU) in the wiremesh fork, 96 KiB
// at 24 with udpbind's single dual-stack socket. Through a member pair 24
// and 32 used 3-8% less CPU per MiB than 16 in three interleaved runs. 48
// and 64 used a third more until udpbind stopped coalescing 46 datagrams
// into a UDP_SEGMENT message the kernel had to cut in software; since, they
// measure as 24 does (docs/PERFORMANCE.md, "Levers measured").
const DefaultBatchSize = 24

const nicID tcpip.NICID = 1

// Config configures a Net. The zero value is not usable: Addrs is required.
type Config struct {
	// Addrs are the tunnel addresses (IPv4 and/or IPv6) the stack owns.
	Addrs []netip.Addr
	// MTU of the tunnel; 0 means DefaultMTU. At least 1280. A WireGuard
	// device over the Net sizes its buffers by it (MessageBufferSize): give
	// the peers the same MTU.
	MTU int
	// BatchSize is the number of packets a tun Read or Write moves at most;
	// 0 means DefaultBatchSize. Give the conn.Bind the same value.
	BatchSize int
	// Logger receives debug logs; nil means quiet.
	Logger *slog.Logger

	tuning *tuning          // benchmarks only; nil = defaultTuning
	probe  tcp.TCPProbeFunc // tests only: called on every TCP segment received
}

// ErrInvalidConfig is returned (wrapped) by New for a bad Config.
var ErrInvalidConfig = errors.New("netstack: invalid config")

// PacketFilter inspects the IP packets crossing the tunnel (see
// Net.SetPacketFilter). Its methods run on the data path, concurrently:
// they must be fast, must not block and must not keep p.
type PacketFilter interface {
	// Inbound reports whether packet p, written by WireGuard (arriving
	// from the mesh), reaches the stack, the node's own addresses and the
	// forwarded ones alike.
	Inbound(p []byte) bool
	// Outbound sees every packet p the stack sends into the mesh (read by
	// WireGuard), so that a stateful filter lets the replies in.
	Outbound(p []byte)
}

// SetPacketFilter puts f in the inbound path (nil removes it): from the
// next packet on, packets from the mesh that f refuses are dropped before
// the stack, forwarding included, sees them. Packets the stack sends to
// its own addresses do not pass f.
func (n *Net) SetPacketFilter(f PacketFilter) {
	if f == nil {
		n.ep.policy.Store(nil)
		return
	}
	n.ep.policy.Store(&policyBox{f})
}

// Net is a userspace network stack on a member's tunnel addresses. It is the
// tun.Device that wireguard-go reads packets from and writes packets to, and
// it dials and listens like package net. Create it with New; Close releases
// everything.
type Net struct {
	stack     *stack.Stack
	ep        *linkEndpoint
	events    chan tun.Event
	mtu       int
	batchSize int
	noPace    bool          // benchmarks only: see tuning.noPace
	noPaceRx  bool          // benchmarks only: see tuning.noPaceRx
	paceLimit int           // benchmarks only: see tuning.paceLimit
	paceWait  time.Duration // benchmarks only: see tuning.paceWait
	log       *slog.Logger
	addrs     []netip.Addr
	hasV4     bool
	hasV6     bool

	fwd forwarding // see forward.go

	// life guards closed and tracks the goroutines Net starts for user
	// handlers; Close waits for them.
	life struct {
		sync.Mutex
		closed bool
		wg     sync.WaitGroup
	}
	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
}

var _ tun.Device = (*Net)(nil)

// New creates a Net owning cfg.Addrs. The returned *Net is also the
// tun.Device to hand to device.NewDevice.
func New(cfg Config) (*Net, error) {
	if len(cfg.Addrs) == 0 {
		return nil, fmt.Errorf("netstack.New: %w: no addresses", ErrInvalidConfig)
	}
	mtu := cfg.MTU
	if mtu == 0 {
		mtu = DefaultMTU
	}
	if mtu < 1280 || mtu > 65535 {
		return nil, fmt.Errorf("netstack.New: %w: MTU %d out of range [1280, 65535]", ErrInvalidConfig, cfg.MTU)
	}
	batch := cfg.BatchSize
	if batch == 0 {
		batch = DefaultBatchSize
	}
	if batch < 1 || batch > 1024 {
		return nil, fmt.Errorf("netstack.New: %w: batch size %d out of range [1, 1024]", ErrInvalidConfig, cfg.BatchSize)
	}
	tn := cfg.tuning
	if tn == nil {
		tn = &defaultTuning
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}

	n := &Net{
		ep:        newLinkEndpoint(mtu),
		events:    make(chan tun.Event, 1),
		mtu:       mtu,
		batchSize: batch,
		log:       log,
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.ep.noGSO, n.ep.noGRO, n.ep.gsoMax = tn.noGSO, tn.noGRO, tn.gsoMax
	n.ep.rd.split.separateSum = tn.twoPassSum
	n.noPace, n.noPaceRx, n.paceLimit, n.paceWait = tn.noPace, tn.noPaceRx, tn.paceLimit, tn.paceWait
	n.ep.filter = n.filterInbound
	n.ep.isLocal = n.isLocal
	seen := map[netip.Addr]bool{}
	for _, a := range cfg.Addrs {
		a = a.Unmap()
		if !a.IsValid() || a.IsUnspecified() || a.IsMulticast() || a.Zone() != "" {
			return nil, fmt.Errorf("netstack.New: %w: address %q", ErrInvalidConfig, a)
		}
		if seen[a] {
			return nil, fmt.Errorf("netstack.New: %w: duplicate address %q", ErrInvalidConfig, a)
		}
		seen[a] = true
		n.addrs = append(n.addrs, a)
		n.hasV4 = n.hasV4 || a.Is4()
		n.hasV6 = n.hasV6 || a.Is6()
	}

	tcpProto := tcp.NewProtocol
	if cfg.probe != nil {
		tcpProto = tcp.NewProtocolProbe(cfg.probe) // congestion control is set by tuning
	}
	n.stack = stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcpProto, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6},
		HandleLocal:        false, // see linkEndpoint.loopback
	})
	if err := n.setup(tn); err != nil {
		n.stack.Destroy()
		return nil, err
	}
	n.events <- tun.EventUp
	n.log.Debug("netstack up", "addrs", n.addrs, "mtu", mtu, "batch", batch)
	return n, nil
}

func (n *Net) setup(tn *tuning) error {
	if err := tn.apply(n.stack); err != nil {
		return fmt.Errorf("netstack.New: %w", err)
	}
	if err := n.stack.CreateNIC(nicID, n.ep); err != nil {
		return fmt.Errorf("netstack.New: create NIC: %s", err)
	}
	for _, a := range n.addrs {
		proto := ipv4.ProtocolNumber
		if a.Is6() {
			proto = ipv6.ProtocolNumber
		}
		pa := tcpip.ProtocolAddress{
			Protocol:          proto,
			AddressWithPrefix: tcpip.AddrFromSlice(a.AsSlice()).WithPrefix(),
		}
		if err := n.stack.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
			return fmt.Errorf("netstack.New: add address %q: %s", a, err)
		}
	}
	var routes []tcpip.Route
	if n.hasV4 {
		routes = append(routes, tcpip.Route{Destination: header.IPv4EmptySubnet, NIC: nicID})
	}
	if n.hasV6 {
		routes = append(routes, tcpip.Route{Destination: header.IPv6EmptySubnet, NIC: nicID})
	}
	n.stack.SetRouteTable(routes)
	return nil
}

// Addrs returns the tunnel addresses the stack owns.
func (n *Net) Addrs() []netip.Addr { return append([]netip.Addr(nil), n.addrs...) }

// isLocal reports whether a is one of the stack's own addresses.
func (n *Net) isLocal(a netip.Addr) bool {
	for _, l := range n.addrs {
		if l == a {
			return true
		}
	}
	return false
}

// --- tun.Device ---

// File returns nil: there is no file descriptor.
func (n *Net) File() *os.File { return nil }

// Read implements tun.Device: it blocks until the stack has packets to send
// and returns up to len(bufs) of them. After Close it returns os.ErrClosed.
func (n *Net) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	return n.ep.read(bufs, sizes, offset)
}

// Write implements tun.Device: it delivers packets from wireguard-go into the
// stack on the caller's goroutine. After Close it returns os.ErrClosed.
func (n *Net) Write(bufs [][]byte, offset int) (int, error) {
	return n.ep.write(bufs, offset)
}

// MTU implements tun.Device.
func (n *Net) MTU() (int, error) { return n.mtu, nil }

// Name implements tun.Device.
func (n *Net) Name() (string, error) { return "wiremesh", nil }

// Events implements tun.Device: one EventUp, closed by Close.
func (n *Net) Events() <-chan tun.Event { return n.events }

// BatchSize implements tun.Device.
func (n *Net) BatchSize() int { return n.batchSize }

// transportOverhead is what WireGuard adds to a packet: its 16-byte
// transport header and 16-byte tag, and up to 15 bytes of padding.
const transportOverhead = device.MessageTransportSize + device.PaddingMultiple - 1

// MessageBufferSize is the message buffer a WireGuard device over n needs
// (the wiremesh fork's device.NewDeviceSized): Read returns one packet per
// buffer (segments are cut to the MTU here; a packet larger than the
// buffer is dropped) and Write copies packets into the stack, so a buffer
// holds one sealed packet of the MTU. At least 2 KiB, so that a peer
// configured with an MTU somewhat larger than ours (up to ~2000) is still
// heard; a datagram larger than the buffer is dropped by the bind. At most
// the largest UDP datagram (what the device accepts). Upstream's buffers
// are 64 KiB each, and an idle device keeps (1 + receive functions) x
// BatchSize of them.
//
// A packet larger than the MTU but within the buffer (the stack's answer
// to an echo request from a peer with a larger MTU) is still sealed and
// sent: wireguard-go then seals it into a larger buffer of its own.
func (n *Net) MessageBufferSize() int {
	return min(max(2048, (n.mtu+transportOverhead+63)&^63), device.MaxMessageSize)
}

// Close stops the stack: connections and listeners fail, Read returns
// os.ErrClosed, forwarding handlers are waited for. It is idempotent (the
// wireguard-go device closes its tun too) and always returns nil.
func (n *Net) Close() error {
	n.life.Lock()
	if n.life.closed {
		n.life.Unlock()
		return nil
	}
	n.life.closed = true
	n.life.Unlock()

	n.cancel()
	n.ep.close()
	n.stack.Destroy()
	n.life.wg.Wait()
	close(n.events)
	n.log.Debug("netstack closed")
	return nil
}

// goHandler runs f in a goroutine that Close waits for. It reports false
// (and does not run f) once Close has begun.
func (n *Net) goHandler(f func()) bool {
	n.life.Lock()
	defer n.life.Unlock()
	if n.life.closed {
		return false
	}
	n.life.wg.Add(1)
	go func() {
		defer n.life.wg.Done()
		f()
	}()
	return true
}

// enterHandler registers the calling goroutine as a handler that Close waits
// for; it reports false once Close has begun. Call exitHandler when done.
func (n *Net) enterHandler() bool {
	n.life.Lock()
	defer n.life.Unlock()
	if n.life.closed {
		return false
	}
	n.life.wg.Add(1)
	return true
}

func (n *Net) exitHandler() { n.life.wg.Done() }
