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
// /64 and /120, and pass ValidateChildPrefix's form rules (not a default
// route, loopback, link-local, multicast, unspecified, "this network",
// reserved or IPv4-mapped IPv6, and not containing any of them).
func ValidatePool(p netip.Prefix) error {
	// The pool's own length bounds replace the child-prefix width limit.
	if err := ValidateChildPrefix(p, Policy{MinBits4: 1, MinBits6: 1}); err != nil {
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

// Pool maps the host addresses of a tunnel pool to host indices and back.
// The network address (and for IPv4 the broadcast address) is never a host
// address. Host index i (1-based) maps to the prefix's base address + i, so
// the same index in an IPv4 and an IPv6 pool gives a matching pair; a store
// allocates indices (lowest free first) and derives both addresses from
// one. A Pool is immutable and safe for concurrent use.
type Pool struct {
	prefix netip.Prefix
	last   uint64 // highest host index; host indices are 1..last
}

// NewPool returns the pool of p. p must be canonical with at least
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
	return &Pool{prefix: p, last: last}, nil
}

// Prefix returns the pool's prefix.
func (p *Pool) Prefix() netip.Prefix { return p.prefix }

// Capacity returns the number of host addresses of the pool.
func (p *Pool) Capacity() uint64 { return p.last }

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
