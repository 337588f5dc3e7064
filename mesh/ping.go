package mesh

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/wiremesh/wiremesh/mesh/internal/netstack"
)

// DefaultPingTimeout bounds Ping when ctx has no deadline.
const DefaultPingTimeout = 10 * time.Second

// Ping sends one ICMP echo request to addr through the mesh and returns
// the round-trip time of the matching reply. addr must be routable in the
// mesh (see Dial); otherwise a *NoRouteError. Without a deadline on ctx,
// Ping gives up after DefaultPingTimeout.
func (n *Node) Ping(ctx context.Context, addr netip.Addr) (time.Duration, error) {
	d, err := n.ping(ctx, addr)
	if err != nil {
		return 0, fmt.Errorf("mesh: ping %s: %w", addr, err)
	}
	return d, nil
}

func (n *Node) ping(ctx context.Context, addr netip.Addr) (time.Duration, error) {
	if !addr.IsValid() {
		return 0, errors.New("invalid address")
	}
	addr = addr.Unmap()
	if n.isClosed() {
		return 0, net.ErrClosed
	}
	if err := n.checkRoute(addr); err != nil {
		return 0, err
	}
	var local netip.Addr
	for _, a := range n.Addrs() {
		if a.Is4() == addr.Is4() {
			local = a
		}
	}
	if !local.IsValid() {
		return 0, fmt.Errorf("the node has no address of the family of %s", addr)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultPingTimeout)
		defer cancel()
	}
	if n.dev.kern != nil {
		return n.dev.kern.ping(ctx, local, addr)
	}
	seq0, err := rand.Int(rand.Reader, big.NewInt(1<<16))
	if err != nil {
		return 0, err
	}
	pc, err := n.dev.tnet.DialPingAddr(local, addr)
	if err != nil {
		return 0, err
	}
	defer pc.Close()
	// Cancelling ctx ends a Read in progress.
	stop := context.AfterFunc(ctx, func() { pc.SetReadDeadline(time.Now()) })
	defer stop()
	// The first requests may be lost while the tunnel handshakes, so an
	// attempt without a reply is repeated at growing intervals.
	buf := make([]byte, 1500)
	interval := 100 * time.Millisecond
	for i := 0; ctx.Err() == nil; i++ {
		rtt, err := pingOnce(pc, addr, (int(seq0.Int64())+i)&0xffff, interval, buf)
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
