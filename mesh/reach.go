package mesh

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"
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
//  1. An ICMP echo request from the host (hostPing), on an unprivileged
//     ICMP socket (Linux: the process's group inside
//     net.ipv4.ping_group_range) or else a raw socket (root or
//     CAP_NET_RAW): dst is reachable when its echo reply comes back within
//     reachProbeTimeout. A request the host cannot send (no route) means
//     unreachable.
//  2. Only when the process may open neither socket: a TCP connection
//     attempt to dst port 7; dst is reachable when it is answered within
//     reachProbeTimeout, accepted or refused (a reset proves a live host).
//     A host that silently drops it counts as unreachable.
func (r *reachability) probeHost(ctx context.Context, dst netip.Addr) bool {
	_, err := hostPing(ctx, netip.Addr{}, dst)
	if err == nil {
		return true
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
