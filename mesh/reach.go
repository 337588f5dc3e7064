package mesh

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// Reachability probes behind the answers a userspace router gives to ICMP
// echo requests for addresses in its child prefixes.
const (
	// reachProbeTimeout bounds one probe.
	reachProbeTimeout = time.Second
	// reachTTLUp and reachTTLDown are how long a probe's answer is reused:
	// a peer pinging once a second costs the host one probe per TTL.
	reachTTLUp   = 5 * time.Second
	reachTTLDown = time.Second
	// reachCacheMax bounds the cache; it is emptied when full.
	reachCacheMax = 1024
	// reachTCPPort is the port of the TCP fallback probe (echo: usually
	// closed, so a live host answers with a reset).
	reachTCPPort = 7
)

// errNoICMP means the process may not send ICMP echo requests.
var errNoICMP = errors.New("no permission for ICMP sockets")

// reachability answers "does the host reach dst?", with a small cache.
type reachability struct {
	log   *slog.Logger
	probe func(ctx context.Context, dst netip.Addr) bool

	mu    sync.Mutex // guards cache
	cache map[netip.Addr]reachEntry
}

type reachEntry struct {
	ok      bool
	expires time.Time
}

func newReachability(log *slog.Logger) *reachability {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &reachability{log: log, cache: map[netip.Addr]reachEntry{}}
	r.probe = r.probeHost
	return r
}

func (r *reachability) check(ctx context.Context, dst netip.Addr) bool {
	now := time.Now()
	r.mu.Lock()
	e, ok := r.cache[dst]
	r.mu.Unlock()
	if ok && now.Before(e.expires) {
		return e.ok
	}
	ctx, cancel := context.WithTimeout(ctx, reachProbeTimeout)
	defer cancel()
	up := r.probe(ctx, dst)
	ttl := reachTTLDown
	if up {
		ttl = reachTTLUp
	}
	r.mu.Lock()
	if len(r.cache) >= reachCacheMax {
		clear(r.cache)
	}
	r.cache[dst] = reachEntry{ok: up, expires: time.Now().Add(ttl)}
	r.mu.Unlock()
	return up
}

// probeHost reports whether the host reaches dst. The rule:
//
//  1. An ICMP echo request from the host, on an unprivileged ICMP socket
//     (Linux: the process's group inside net.ipv4.ping_group_range) or else
//     a raw socket (root or CAP_NET_RAW): dst is reachable when its echo
//     reply comes back within reachProbeTimeout.
//  2. Only when the process may open neither socket: a TCP connection
//     attempt to dst port 7; dst is reachable when it is answered within
//     reachProbeTimeout, accepted or refused (a reset proves a live host).
//     A host that silently drops it counts as unreachable.
func (r *reachability) probeHost(ctx context.Context, dst netip.Addr) bool {
	ok, err := pingHost(ctx, dst)
	if err == nil {
		return ok
	}
	if !errors.Is(err, errNoICMP) {
		r.log.Debug("mesh: ICMP probe failed", "dst", dst, "err", err)
		return false
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", netip.AddrPortFrom(dst, reachTCPPort).String())
	if err == nil {
		c.Close()
		return true
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

// pingHost sends one ICMP echo request to dst from the host and waits for
// the reply until ctx ends. err is errNoICMP (wrapped) when no ICMP socket
// may be opened.
func pingHost(ctx context.Context, dst netip.Addr) (bool, error) {
	dgram, raw, laddr, proto := "udp4", "ip4:icmp", "0.0.0.0", 1
	var typ icmp.Type = ipv4.ICMPTypeEcho
	if dst.Is6() {
		dgram, raw, laddr, proto = "udp6", "ip6:ipv6-icmp", "::", 58
		typ = ipv6.ICMPTypeEchoRequest
	}
	isRaw := false
	c, err := icmp.ListenPacket(dgram, laddr)
	if err != nil {
		c, err = icmp.ListenPacket(raw, laddr)
		isRaw = true
	}
	if err != nil {
		if errors.Is(err, os.ErrPermission) || errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) ||
			errors.Is(err, syscall.EPROTONOSUPPORT) || errors.Is(err, syscall.EAFNOSUPPORT) {
			return false, errors.Join(errNoICMP, err)
		}
		return false, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()

	id, _ := rand.Int(rand.Reader, big.NewInt(1<<16))
	seq, _ := rand.Int(rand.Reader, big.NewInt(1<<16))
	data := make([]byte, 16)
	rand.Read(data)
	echo := &icmp.Echo{ID: int(id.Int64()), Seq: int(seq.Int64()), Data: data}
	msg, err := (&icmp.Message{Type: typ, Body: echo}).Marshal(nil)
	if err != nil {
		return false, err
	}
	var to net.Addr = &net.UDPAddr{IP: dst.AsSlice()}
	if isRaw {
		to = &net.IPAddr{IP: dst.AsSlice()}
	}
	if _, err := c.WriteTo(msg, to); err != nil {
		return false, nil // e.g. network unreachable: that is an answer
	}
	buf := make([]byte, 1500)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return false, nil // deadline: no reply
		}
		if addrOfNet(from) != dst {
			continue
		}
		m, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil {
			continue
		}
		// The kernel sets the ID of unprivileged echo requests itself:
		// match the sequence and the payload.
		if r, ok := m.Body.(*icmp.Echo); ok && r.Seq == echo.Seq && bytes.Equal(r.Data, data) &&
			(m.Type == ipv4.ICMPTypeEchoReply || m.Type == ipv6.ICMPTypeEchoReply) {
			return true, nil
		}
	}
}

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
