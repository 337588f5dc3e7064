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
	"syscall"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// hostPingInterval is how often hostPing repeats an unanswered request.
const hostPingInterval = time.Second

// errNoICMP means the process may not open an ICMP socket.
var errNoICMP = errors.New("no permission for ICMP sockets")

// hostPing sends ICMP echo requests to dst through the host network stack,
// one every hostPingInterval, until the matching reply arrives, and returns
// its round-trip time. local is the source address (the zero Addr: the
// host chooses). It gives up when ctx ends, so ctx must end.
//
// It uses an unprivileged datagram ICMP socket (Linux: the process's group
// is inside net.ipv4.ping_group_range) or else a raw ICMP socket (root or
// CAP_NET_RAW). When it may open neither, the error matches errNoICMP.
// A request the host cannot send (no route) fails at once.
//
// Kernel-mode nodes ping peers with it; userspace routers probe whether
// the host reaches an address in a child prefix (see probeHost).
func hostPing(ctx context.Context, local, dst netip.Addr) (time.Duration, error) {
	c, raw, err := listenICMP(local, dst.Is6())
	if err != nil {
		return 0, err
	}
	defer c.Close()
	// Cancelling ctx ends a read in progress.
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Now()) })
	defer stop()

	proto := 1 // ICMPv4
	var typ, reply icmp.Type = ipv4.ICMPTypeEcho, ipv4.ICMPTypeEchoReply
	if dst.Is6() {
		proto = 58
		typ, reply = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply
	}
	var r [4]byte
	rand.Read(r[:])
	echo := &icmp.Echo{ID: int(r[0])<<8 | int(r[1]), Seq: int(r[2])<<8 | int(r[3]), Data: make([]byte, 16)}
	rand.Read(echo.Data)
	var to net.Addr = &net.UDPAddr{IP: dst.AsSlice()}
	if raw {
		to = &net.IPAddr{IP: dst.AsSlice()}
	}
	// match accepts the reply to the request with sequence number seq. A
	// datagram socket has the kernel set the ID; a raw one sees every ICMP
	// packet of the host.
	match := func(b []byte, from net.Addr, seq int) bool {
		m, err := icmp.ParseMessage(proto, b)
		if err != nil || m.Type != reply || addrOfNet(from) != dst {
			return false
		}
		e, ok := m.Body.(*icmp.Echo)
		return ok && e.Seq == seq && bytes.Equal(e.Data, echo.Data) && (!raw || e.ID == echo.ID)
	}
	buf := make([]byte, 1500)
	for ; ctx.Err() == nil; echo.Seq = (echo.Seq + 1) & 0xffff {
		req, err := (&icmp.Message{Type: typ, Body: echo}).Marshal(nil)
		if err != nil {
			return 0, err
		}
		start := time.Now()
		if _, err := c.WriteTo(req, to); err != nil {
			return 0, fmt.Errorf("send echo request: %w", err)
		}
		end := start.Add(hostPingInterval)
		if d, ok := ctx.Deadline(); ok && d.Before(end) {
			end = d
		}
		c.SetReadDeadline(end)
		for {
			nr, from, err := c.ReadFrom(buf)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break // next attempt, or ctx ended
			}
			if err != nil {
				return 0, err
			}
			if match(buf[:nr], from, echo.Seq) {
				return time.Since(start), nil
			}
		}
	}
	return 0, fmt.Errorf("no reply: %w", context.Cause(ctx))
}

// listenICMP opens a datagram ICMP socket on local, or else a raw one, for
// the family of v6. raw tells which. An error for lack of permission (or
// of support) matches errNoICMP.
func listenICMP(local netip.Addr, v6 bool) (c *icmp.PacketConn, raw bool, err error) {
	dgram, rawNet, laddr := "udp4", "ip4:icmp", "0.0.0.0"
	if v6 {
		dgram, rawNet, laddr = "udp6", "ip6:ipv6-icmp", "::"
	}
	if local.IsValid() {
		laddr = local.String()
	}
	c, err = icmp.ListenPacket(dgram, laddr)
	if err == nil {
		return c, false, nil
	}
	c, err2 := icmp.ListenPacket(rawNet, laddr)
	if err2 == nil {
		return c, true, nil
	}
	err = errors.Join(err, err2)
	if denied(err2) {
		return nil, false, fmt.Errorf("open ICMP socket: %w", errors.Join(errNoICMP, err))
	}
	return nil, false, fmt.Errorf("open ICMP socket: %w", err)
}

// denied reports an error for lack of permission or support.
func denied(err error) bool {
	return errors.Is(err, os.ErrPermission) || errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) ||
		errors.Is(err, syscall.EPROTONOSUPPORT) || errors.Is(err, syscall.EAFNOSUPPORT)
}

// addrOfNet returns the IP address of a *net.UDPAddr or *net.IPAddr
// (unmapped); the zero Addr for anything else.
func addrOfNet(a net.Addr) netip.Addr {
	var ip net.IP
	switch a := a.(type) {
	case *net.UDPAddr:
		ip = a.IP
	case *net.IPAddr:
		ip = a.IP
	}
	addr, _ := netip.AddrFromSlice(ip)
	return addr.Unmap()
}
