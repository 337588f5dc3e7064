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
	"runtime"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
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
	// The stock netstack PingConn only reads after a "readable"
	// notification, and gVisor notifies only when the receive queue was
	// empty: a reply that arrives before Read starts waiting is never read,
	// nor is anything after it. So each attempt uses a fresh socket whose
	// reader is started before the request is sent, and an attempt without
	// a reply is abandoned and repeated at growing intervals.
	interval := 100 * time.Millisecond
	for i := 0; ; i++ {
		rtt, err := n.pingOnce(ctx, local, addr, (int(seq0.Int64())+i)&0xffff, interval)
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			return rtt, err
		}
		if ctx.Err() != nil {
			return 0, fmt.Errorf("no reply: %w", context.Cause(ctx))
		}
		interval = min(2*interval, 2*time.Second)
	}
}

// pingOnce sends one echo request on a new socket and waits up to wait for
// its reply (os.ErrDeadlineExceeded when none came).
func (n *Node) pingOnce(ctx context.Context, local, addr netip.Addr, seq int, wait time.Duration) (time.Duration, error) {
	pc, err := n.dev.tnet.DialPingAddr(local, addr)
	if err != nil {
		return 0, err
	}
	data := make([]byte, 16)
	rand.Read(data)
	proto := 1 // ICMPv4
	var typ icmp.Type = ipv4.ICMPTypeEcho
	if addr.Is6() {
		typ, proto = ipv6.ICMPTypeEchoRequest, 58
	}
	req, err := (&icmp.Message{Type: typ, Body: &icmp.Echo{ID: 1, Seq: seq, Data: data}}).Marshal(nil)
	if err != nil {
		pc.Close()
		return 0, err
	}

	type result struct {
		at  time.Time
		err error
	}
	done := make(chan result, 1)
	go func() {
		buf := make([]byte, 1500)
		for {
			nr, err := pc.Read(buf)
			if err != nil {
				done <- result{err: err}
				return
			}
			at := time.Now()
			m, err := icmp.ParseMessage(proto, buf[:nr])
			if err != nil {
				continue
			}
			// The netstack sets the echo ID itself: match seq and data.
			if r, ok := m.Body.(*icmp.Echo); ok && r.Seq == seq && bytes.Equal(r.Data, data) {
				done <- result{at: at}
				return
			}
		}
	}()
	runtime.Gosched() // let the reader start waiting before the reply can arrive

	start := time.Now()
	if _, err := pc.Write(req); err != nil {
		pc.Close()
		<-done
		return 0, err
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case r := <-done:
		pc.Close()
		if r.err != nil {
			return 0, r.err
		}
		return r.at.Sub(start), nil
	case <-t.C:
	case <-ctx.Done():
	}
	pc.Close() // wakes the reader with os.ErrDeadlineExceeded
	<-done
	return 0, os.ErrDeadlineExceeded
}
