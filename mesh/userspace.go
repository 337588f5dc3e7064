package mesh

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
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
	"github.com/wiremesh/wiremesh/mesh/internal/magicsock"
	"github.com/wiremesh/wiremesh/mesh/internal/netstack"
	"github.com/wiremesh/wiremesh/mesh/internal/pfilter"
)

// userspacePlane is the data plane of a userspace node: a WireGuard device
// over our gVisor netstack, bound to the node's tunnel addresses, plus the
// forwarder that serves the node's child prefixes from the netstack (to
// the host network with ordinary sockets, or to PrefixHandlers). It needs
// no privileges.
type userspacePlane struct {
	dev   *wgDevice
	tnet  *netstack.Net
	fwd   *forwarder
	addrs []netip.Addr // the tunnel addresses the netstack owns
	// pf enforces the inbound filter in the netstack's inbound path, for
	// the tunnel addresses and the forwarded child prefixes alike.
	pf       *pfilter.Filter
	filterMu sync.Mutex  // guards filter
	filter   *api.Filter // the filter in force (counters belong to it)
}

var _ dataPlane = (*userspacePlane)(nil)

// newUserspacePlane creates the netstack and the WireGuard device, brings
// the device up and turns forwarding of c.prefixes on.
func newUserspacePlane(c planeConfig) (*userspacePlane, error) {
	addrs := prefixAddrs(c.addrs)
	dev, tnet, err := newNetstackDevice(c.priv, addrs, c.port, c.mtu, c.trimIdle, c.log, c.bind)
	if err != nil {
		return nil, err
	}
	p := &userspacePlane{dev: dev, tnet: tnet, addrs: addrs, pf: pfilter.New()}
	tnet.SetPacketFilter(p.pf)
	p.fwd = newForwarder(tnet, c.handlers, c.log)
	if err := p.fwd.start(); err != nil {
		dev.close()
		return nil, fmt.Errorf("forwarding: %w", err)
	}
	p.fwd.setPrefixes(slices.Clone(c.prefixes))
	return p, nil
}

// newNetstackDevice creates a netstack owning addrs and a WireGuard device
// over it with the private key and a bind configured by bind, up on UDP
// port (0 = random), trimming peers idle for idle (0: never). Closing the device closes the netstack.
func newNetstackDevice(priv api.Key, addrs []netip.Addr, port uint16, mtu int, idle time.Duration, log *slog.Logger, bind magicsock.Config) (*wgDevice, *netstack.Net, error) {
	tnet, err := netstack.New(netstack.Config{Addrs: addrs, MTU: mtu, Logger: log})
	if err != nil {
		return nil, nil, fmt.Errorf("netstack: %w", err)
	}
	d, err := startDevice(tnet, newBind(tnet.BatchSize(), bind), priv, port, idle, log)
	if err != nil {
		return nil, nil, err
	}
	return d, tnet, nil
}

func (p *userspacePlane) dial(ctx context.Context, proto string, ap netip.AddrPort) (net.Conn, error) {
	if proto == "tcp" {
		return p.tnet.DialContextTCPAddrPort(ctx, ap)
	}
	return p.tnet.DialUDPAddrPort(netip.AddrPort{}, ap)
}

func (p *userspacePlane) listen(ap netip.AddrPort) (net.Listener, error) {
	if ap.Addr().IsValid() {
		return p.tnet.ListenTCPAddrPort(ap)
	}
	// Not the netstack's wildcard: with forwarding on, the netstack is
	// promiscuous and a socket bound to the zero address would capture
	// the traffic to the node's child prefixes too.
	return listenEach(p.addrs, ap.Port(), func(ap netip.AddrPort) (net.Listener, error) {
		return p.tnet.ListenTCPAddrPort(ap)
	})
}

func (p *userspacePlane) listenPacket(ap netip.AddrPort) (net.PacketConn, error) {
	return p.tnet.ListenUDPAddrPort(ap)
}

func (p *userspacePlane) setPeers(want map[api.Key]wgPeer) error {
	return p.dev.applyPeers(want)
}

func (p *userspacePlane) setPrefixes(ps []netip.Prefix) {
	p.fwd.setPrefixes(slices.Clone(ps))
}

func (p *userspacePlane) setFilter(f *api.Filter) {
	p.filterMu.Lock()
	defer p.filterMu.Unlock()
	p.filter = f
	p.pf.Set(f)
}

func (p *userspacePlane) status() planeStatus {
	p.filterMu.Lock()
	c := p.pf.Counters()
	fc := filterCounters{filter: p.filter, dropped: c.Dropped}
	p.filterMu.Unlock()
	for _, r := range c.Rules {
		fc.rules = append(fc.rules, r.Accepted)
	}
	return planeStatus{peers: p.dev.peerStats(), filter: fc, reach: p.dev.ms.Self()}
}

// close ends the forwarded connections first, then the device, which
// closes the netstack (waiting for the forwarder's handlers).
func (p *userspacePlane) close() error {
	p.fwd.close()
	p.dev.close()
	return nil
}

// ping sends echo requests on a netstack ping socket; an attempt without
// a reply is repeated at growing intervals (100ms doubling to 2s).
func (p *userspacePlane) ping(ctx context.Context, local, dst netip.Addr) (time.Duration, error) {
	seq0, err := rand.Int(rand.Reader, big.NewInt(1<<16))
	if err != nil {
		return 0, err
	}
	pc, err := p.tnet.DialPingAddr(local, dst)
	if err != nil {
		return 0, err
	}
	defer pc.Close()
	// Cancelling ctx ends a Read in progress.
	stop := context.AfterFunc(ctx, func() { pc.SetReadDeadline(time.Now()) })
	defer stop()
	buf := make([]byte, 1500)
	interval := 100 * time.Millisecond
	for i := 0; ctx.Err() == nil; i++ {
		rtt, err := pingOnce(pc, dst, (int(seq0.Int64())+i)&0xffff, interval, buf)
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			return rtt, err
		}
		interval = min(2*interval, 2*time.Second)
	}
	return 0, fmt.Errorf("no reply: %w", context.Cause(ctx))
}

// pingOnce sends one echo request with sequence number seq on pc and waits
// up to wait for its reply (os.ErrDeadlineExceeded when none came). Replies
// to earlier attempts are skipped.
func pingOnce(pc *netstack.PingConn, addr netip.Addr, seq int, wait time.Duration, buf []byte) (time.Duration, error) {
	data := make([]byte, 16)
	rand.Read(data)
	proto := 1 // ICMPv4
	var typ icmp.Type = ipv4.ICMPTypeEcho
	if addr.Is6() {
		typ, proto = ipv6.ICMPTypeEchoRequest, 58
	}
	req, err := (&icmp.Message{Type: typ, Body: &icmp.Echo{ID: 1, Seq: seq, Data: data}}).Marshal(nil)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	if err := pc.SetReadDeadline(start.Add(wait)); err != nil {
		return 0, err
	}
	if _, err := pc.Write(req); err != nil {
		return 0, err
	}
	for {
		nr, err := pc.Read(buf)
		if err != nil {
			return 0, err
		}
		at := time.Now()
		m, err := icmp.ParseMessage(proto, buf[:nr])
		if err != nil {
			continue
		}
		// The netstack sets the echo ID itself: match seq and data.
		if r, ok := m.Body.(*icmp.Echo); ok && r.Seq == seq && bytes.Equal(r.Data, data) {
			return at.Sub(start), nil
		}
	}
}
