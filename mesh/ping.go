package mesh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"
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
	return n.plane.ping(ctx, local, addr)
}
