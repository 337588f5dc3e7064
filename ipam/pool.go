package ipam

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math"
	"net/netip"
)

// DefaultIPv4Pool is the IPv4 tunnel pool of the zone "default" (RFC 6598
// shared address space, as a /16).
const DefaultIPv4Pool = "100.64.0.0/16"

// DefaultIPv4PoolPrefix is DefaultIPv4Pool parsed.
var DefaultIPv4PoolPrefix = netip.MustParsePrefix(DefaultIPv4Pool)

// ULAPool derives a zone's IPv6 tunnel pool: the unique local /64
// fd00::/8 + a 40-bit global ID (the first 5 bytes of
// SHA-256("wiremesh zone " + zone)) + subnet ID 0. The same zone name always
// gives the same pool; different names almost surely give different pools.
func ULAPool(zone string) netip.Prefix {
	sum := sha256.Sum256([]byte("wiremesh zone " + zone))
	var a [16]byte
	a[0] = 0xfd
	copy(a[1:6], sum[:5])
	return netip.PrefixFrom(netip.AddrFrom16(a), 64)
}

// Bounds of a tunnel pool's prefix length accepted by ValidatePool.
const (
	MinPoolBits4 = 8   // largest IPv4 pool: /8, 16,777,214 hosts
	MaxPoolBits4 = 30  // smallest IPv4 pool: /30, 2 hosts
	MinPoolBits6 = 64  // largest IPv6 pool: /64 (host indices fit a uint64)
	MaxPoolBits6 = 120 // smallest IPv6 pool: /120, 255 hosts
)

// ValidatePool checks a tunnel pool given by an admin, as a *PrefixError
// or nil: it must be canonical, IPv4 between /8 and /30 or IPv6 between
// /64 and /120, and pass ValidateChildPrefix with the default Policy (not
// loopback, link-local, multicast, unspecified, "this network", reserved or
// IPv4-mapped IPv6, and not containing any of them).
func ValidatePool(p netip.Prefix) error {
	if err := ValidateChildPrefix(p, Policy{}); err != nil {
		return err
	}
	lo, hi, family := MinPoolBits4, MaxPoolBits4, "IPv4"
	if p.Addr().Is6() {
		lo, hi, family = MinPoolBits6, MaxPoolBits6, "IPv6"
	}
	if b := p.Bits(); b < lo || b > hi {
		return &PrefixError{Input: p.String(),
			Reason: fmt.Sprintf("pool length /%d out of range (%s pools are /%d to /%d)", b, family, lo, hi)}
	}
	return nil
}

// Pool hands out host addresses of one prefix, lowest free first. The
// network address (and for IPv4 the broadcast address) is never handed
// out. Host index i (1-based) maps to the prefix's base address + i, so the
// same index in an IPv4 and an IPv6 pool gives a matching pair.
//
// Allocate, Mark and Release cost O(log n) amortized in the number of
// addresses in use; exhaustion is reported in O(1). A Pool is not safe for
// concurrent use: the caller locks.
type Pool struct {
	prefix netip.Prefix
	last   uint64 // highest host index; host indices are 1..last

	used map[uint64]struct{} // host indices in use
	// Every free index <= scanned is in free (a min-heap); free may also
	// hold indices allocated since they were pushed (skipped when popped).
	// queued records what free holds, so nothing is pushed twice.
	scanned uint64
	free    indexHeap
	queued  map[uint64]struct{}
}

// NewPool returns an empty pool over p. p must be canonical with at least
// one host address: IPv4 /0 to /30, IPv6 /64 to /127. NewPool does not
// apply ValidatePool's policy (use it for admin input).
func NewPool(p netip.Prefix) (*Pool, error) {
	if !p.IsValid() {
		return nil, &PrefixError{Reason: "pool: not a valid prefix"}
	}
	if m := p.Masked(); m != p {
		return nil, &PrefixError{Input: p.String(), Reason: fmt.Sprintf("pool: host bits set (did you mean %s?)", m)}
	}
	var last uint64
	if p.Addr().Is4() {
		if p.Bits() > 30 {
			return nil, &PrefixError{Input: p.String(), Reason: "pool: an IPv4 pool needs at least a /30"}
		}
		last = 1<<(32-p.Bits()) - 2
	} else {
		if p.Bits() < 64 || p.Bits() > 127 {
			return nil, &PrefixError{Input: p.String(), Reason: "pool: an IPv6 pool must be /64 to /127"}
		}
		host := 128 - p.Bits()
		if host == 64 {
			last = math.MaxUint64
		} else {
			last = 1<<host - 1
		}
	}
	return &Pool{
		prefix: p,
		last:   last,
		used:   make(map[uint64]struct{}),
		queued: make(map[uint64]struct{}),
	}, nil
}

// Prefix returns the pool's prefix.
func (p *Pool) Prefix() netip.Prefix { return p.prefix }

// Capacity returns the number of host addresses the pool can hand out.
func (p *Pool) Capacity() uint64 { return p.last }

// Used returns the number of addresses in use.
func (p *Pool) Used() int { return len(p.used) }

// Index returns the host index of a in the pool (1..Capacity()). It
// reports false when a is not a host address of the pool: another family,
// outside the prefix, zoned, or the network or IPv4 broadcast address.
func (p *Pool) Index(a netip.Addr) (uint64, bool) {
	if !p.prefix.Contains(a) {
		return 0, false
	}
	var i uint64
	if a.Is4() {
		b, base := a.As4(), p.prefix.Addr().As4()
		i = uint64(binary.BigEndian.Uint32(b[:]) - binary.BigEndian.Uint32(base[:]))
	} else {
		b, base := a.As16(), p.prefix.Addr().As16()
		i = binary.BigEndian.Uint64(b[8:]) - binary.BigEndian.Uint64(base[8:])
	}
	if i == 0 || i > p.last {
		return 0, false
	}
	return i, true
}

// Addr returns the address of host index i, or false unless
// 1 <= i <= Capacity().
func (p *Pool) Addr(i uint64) (netip.Addr, bool) {
	if i == 0 || i > p.last {
		return netip.Addr{}, false
	}
	if p.prefix.Addr().Is4() {
		b := p.prefix.Addr().As4()
		binary.BigEndian.PutUint32(b[:], binary.BigEndian.Uint32(b[:])+uint32(i))
		return netip.AddrFrom4(b), true
	}
	b := p.prefix.Addr().As16()
	binary.BigEndian.PutUint64(b[8:], binary.BigEndian.Uint64(b[8:])+i)
	return netip.AddrFrom16(b), true
}

// InUse reports whether a is allocated.
func (p *Pool) InUse(a netip.Addr) bool {
	i, ok := p.Index(a)
	if !ok {
		return false
	}
	_, used := p.used[i]
	return used
}

// Allocate allocates an address. With an invalid (zero) want it takes the
// lowest free one (ErrPoolExhausted when none is left). Otherwise it takes
// want if free: ErrAddrInUse when it is allocated, ErrAddrOutside when it
// is not a host address of the pool (another family, outside the prefix,
// or the network or IPv4 broadcast address).
func (p *Pool) Allocate(want netip.Addr) (netip.Addr, error) {
	if want.IsValid() {
		if err := p.take(want, "allocate"); err != nil {
			return netip.Addr{}, err
		}
		return want, nil
	}
	i, ok := p.lowestFree()
	if !ok {
		return netip.Addr{}, fmt.Errorf("ipam: allocate from pool %s: %w (%d of %d in use)",
			p.prefix, ErrPoolExhausted, len(p.used), p.last)
	}
	p.used[i] = struct{}{}
	a, _ := p.Addr(i)
	return a, nil
}

// Mark records a as allocated, e.g. when loading stored state. Errors are
// those of Allocate with a valid want.
func (p *Pool) Mark(a netip.Addr) error { return p.take(a, "mark") }

// Release frees a. It reports whether a was allocated.
func (p *Pool) Release(a netip.Addr) bool {
	i, ok := p.Index(a)
	if !ok {
		return false
	}
	if _, used := p.used[i]; !used {
		return false
	}
	delete(p.used, i)
	if _, q := p.queued[i]; i <= p.scanned && !q {
		p.queued[i] = struct{}{}
		p.free.push(i)
	}
	return true
}

// take marks the specific address a used.
func (p *Pool) take(a netip.Addr, op string) error {
	i, ok := p.Index(a)
	if !ok {
		why := "not in"
		if p.prefix.Contains(a) {
			why = "not a host address of"
		}
		return fmt.Errorf("ipam: %s %s: %w: %s %s", op, a, ErrAddrOutside, why, p.prefix)
	}
	if _, used := p.used[i]; used {
		return fmt.Errorf("ipam: %s %s in pool %s: %w", op, a, p.prefix, ErrAddrInUse)
	}
	p.used[i] = struct{}{}
	// Keep the scan frontier tight, so loading state in ascending order
	// costs O(1) per address.
	p.advance()
	return nil
}

// advance moves the scan frontier over indices in use.
func (p *Pool) advance() {
	for p.scanned < p.last {
		if _, used := p.used[p.scanned+1]; !used {
			return
		}
		p.scanned++
	}
}

// lowestFree returns the lowest free host index.
func (p *Pool) lowestFree() (uint64, bool) {
	for len(p.free) > 0 {
		i := p.free.pop()
		delete(p.queued, i)
		if _, used := p.used[i]; !used {
			return i, true
		}
	}
	p.advance()
	if p.scanned == p.last {
		return 0, false
	}
	p.scanned++
	return p.scanned, true
}

// indexHeap is a binary min-heap of host indices.
type indexHeap []uint64

func (h *indexHeap) push(x uint64) {
	*h = append(*h, x)
	s := *h
	for i := len(s) - 1; i > 0; {
		parent := (i - 1) / 2
		if s[parent] <= s[i] {
			break
		}
		s[parent], s[i] = s[i], s[parent]
		i = parent
	}
}

func (h *indexHeap) pop() uint64 {
	s := *h
	top := s[0]
	n := len(s) - 1
	s[0] = s[n]
	s = s[:n]
	for i := 0; ; {
		m, l, r := i, 2*i+1, 2*i+2
		if l < n && s[l] < s[m] {
			m = l
		}
		if r < n && s[r] < s[m] {
			m = r
		}
		if m == i {
			break
		}
		s[i], s[m] = s[m], s[i]
		i = m
	}
	*h = s
	return top
}
