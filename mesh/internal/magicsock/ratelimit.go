package magicsock

import (
	"hash/maphash"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Reading initiators is rate limited.
//
// Reading who sent an initiation from an address no peer is known by
// (initiatorKey) costs an X25519, on the receive function's goroutine.
// mac1 needs only this node's public key, which every member knows, so
// anyone can send initiations that pass it: unchecked, about 8,000 a
// second would stall reception whenever a peer is asleep. initLimiter
// allows initLimitRate X25519s a second (burst initLimitBurst) for the
// node, and initLimitPerSourceRate (burst initLimitPerSourceBurst) per
// source address, counted in initLimitSlots buckets that addresses hash
// into (bounded memory; addresses sharing a bucket share its tokens). An
// initiation refused is passed on to wireguard-go, which drops it as
// from an unknown peer; a real peer's retry (5 s) is read then.
const (
	initLimitRate           = 100
	initLimitBurst          = 50
	initLimitPerSourceRate  = 5
	initLimitPerSourceBurst = 5
	initLimitSlots          = 256
)

// x25519Calls counts the X25519s initiatorKey does (tests read it).
var x25519Calls atomic.Uint64

type tokenBucket struct {
	tokens float64
	last   time.Time
}

// take refills b at rate per second up to burst and takes one token.
func (b *tokenBucket) take(now time.Time, rate, burst float64) bool {
	if b.last.IsZero() {
		b.tokens = burst
	} else if d := now.Sub(b.last).Seconds(); d > 0 {
		b.tokens = min(burst, b.tokens+d*rate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

type initLimiter struct {
	seed   maphash.Seed
	mu     sync.Mutex
	global tokenBucket
	slots  [initLimitSlots]tokenBucket
}

func newInitLimiter() *initLimiter { return &initLimiter{seed: maphash.MakeSeed()} }

// allow reports whether an initiation from a may be read now.
func (l *initLimiter) allow(a netip.Addr, now time.Time) bool {
	b := a.As16()
	i := maphash.Bytes(l.seed, b[:]) % initLimitSlots
	l.mu.Lock()
	defer l.mu.Unlock()
	s := &l.slots[i]
	// Both must have a token; the global one is taken only if the
	// source's is there, so a flood from one address does not use the
	// node's allowance.
	if !s.take(now, initLimitPerSourceRate, initLimitPerSourceBurst) {
		return false
	}
	if !l.global.take(now, initLimitRate, initLimitBurst) {
		s.tokens++ // not spent
		return false
	}
	return true
}
