package control

import (
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/wiremesh/wiremesh/control/api"
)

// clientLimiter is a keyedLimiter per client address.
type clientLimiter = keyedLimiter[netip.Addr]

// keyedLimiter is a token bucket per key (a client address, a device id)
// with a bounded table. A bucket that has refilled completely is the same as a new one,
// so it is evicted when idle; when the table is full of busy buckets an
// arbitrary one is evicted (that client starts afresh: memory stays
// bounded, and an attacker who rotates addresses gains no more than one
// fresh bucket per address, which is what a new address gets anyway).
type keyedLimiter[K comparable] struct {
	limit rate.Limit
	burst int
	max   int
	now   func() time.Time

	mu        sync.Mutex // guards clients, nextSweep
	clients   map[K]*rate.Limiter
	nextSweep time.Time
}

// limiterSweepEvery is how often take sweeps idle buckets out.
const limiterSweepEvery = time.Minute

func newClientLimiter(limit rate.Limit, burst, max int) *clientLimiter {
	return newKeyedLimiter[netip.Addr](limit, burst, max)
}

func newKeyedLimiter[K comparable](limit rate.Limit, burst, max int) *keyedLimiter[K] {
	return &keyedLimiter[K]{limit: limit, burst: burst, max: max, now: time.Now, clients: make(map[K]*rate.Limiter)}
}

// take spends one token of c's bucket. If there is none it spends nothing
// and returns false with the wait until there is one.
func (l *keyedLimiter[K]) take(c K) (bool, time.Duration) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.clients[c]
	if !ok {
		l.sweepLocked(now)
		b = rate.NewLimiter(l.limit, l.burst)
		l.clients[c] = b
	}
	if b.AllowN(now, 1) {
		return true, 0
	}
	return false, l.waitLocked(b, now)
}

// check reports whether c has a token left, without spending it.
func (l *keyedLimiter[K]) check(c K) (bool, time.Duration) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.clients[c]
	if !ok || b.TokensAt(now) >= 1 {
		return true, 0
	}
	return false, l.waitLocked(b, now)
}

func (l *keyedLimiter[K]) waitLocked(b *rate.Limiter, now time.Time) time.Duration {
	missing := 1 - b.TokensAt(now)
	return time.Duration(missing / float64(l.limit) * float64(time.Second))
}

// sweepLocked makes room for one more client: idle (full) buckets go
// every limiterSweepEvery or when the table is full; if it is still full,
// one arbitrary bucket goes.
func (l *keyedLimiter[K]) sweepLocked(now time.Time) {
	if len(l.clients) < l.max && now.Before(l.nextSweep) {
		return
	}
	for c, b := range l.clients {
		if b.TokensAt(now) >= float64(l.burst) {
			delete(l.clients, c)
		}
	}
	l.nextSweep = now.Add(limiterSweepEvery)
	for c := range l.clients {
		if len(l.clients) < l.max {
			break
		}
		delete(l.clients, c)
	}
}

func (l *keyedLimiter[K]) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.clients)
}

// clientKey is the bucket of a client address: the address itself for
// IPv4, its /64 for IPv6 (one host usually holds a whole /64).
func clientKey(a netip.Addr) netip.Addr {
	a = a.Unmap().WithZone("")
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}

// clientAddr is the address a request comes from: the connection's peer,
// or, when that peer is a trusted proxy (serverConfig.TrustedProxies), the
// right-most X-Forwarded-For address that is not a trusted proxy itself.
// X-Forwarded-For from anyone else is ignored: a client could put any
// address there and slip out of its rate limits. The zero Addr if the
// peer address does not parse (all such requests share one bucket).
func (s *server) clientAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	a := ap.Addr().Unmap()
	if !s.trustedProxy(a) {
		return a
	}
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		h, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			break // garbage from beyond the proxy: keep the last good hop
		}
		a = h.Unmap()
		if !s.trustedProxy(a) {
			break
		}
	}
	return a
}

func (s *server) trustedProxy(a netip.Addr) bool {
	for _, p := range s.cfg.TrustedProxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// allowRegistration spends one registration of the client's budget and
// checks its failed-authentication budget. It answers 429 and returns
// false if either is exhausted.
func (s *server) allowRegistration(w http.ResponseWriter, r *http.Request) bool {
	if s.cfg.limits.noRateLimits {
		return true
	}
	if s.authBlocked(w, r) {
		return false
	}
	if ok, wait := s.registerLimit.take(clientKey(s.clientAddr(r))); !ok {
		writeRateLimited(w, wait, "too many registrations from this client")
		return false
	}
	return true
}

// authBlocked answers 429 and returns true when the client has no
// failed-authentication budget left: its requests are refused before any
// credential is looked at.
func (s *server) authBlocked(w http.ResponseWriter, r *http.Request) bool {
	if s.cfg.limits.noRateLimits {
		return false
	}
	if ok, wait := s.authFailLimit.check(clientKey(s.clientAddr(r))); !ok {
		writeRateLimited(w, wait, "too many failed authentications from this client")
		return true
	}
	return false
}

// authFailed spends one failed authentication of the client's budget.
func (s *server) authFailed(r *http.Request) {
	if !s.cfg.limits.noRateLimits {
		s.authFailLimit.take(clientKey(s.clientAddr(r)))
	}
}

// writeRateLimited answers 429 rate_limited with Retry-After in whole
// seconds (at least 1).
func writeRateLimited(w http.ResponseWriter, wait time.Duration, what string) {
	secs := max(1, int(math.Ceil(wait.Seconds())))
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	writeError(w, apiErr(api.CodeRateLimited, "%s: retry in %ds", what, secs))
}
