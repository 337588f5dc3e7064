package ipam

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// TunnelPoolOwner is the owner name the control service gives the zone's
// tunnel pools when it reserves them in a Registry.
const TunnelPoolOwner = "tunnel pool"

// Entry is a prefix held in a Registry.
type Entry struct {
	Prefix netip.Prefix
	Owner  string
}

// Registry holds the child prefixes of one zone and rejects overlaps
// (equal, inside, or containing) within a family; IPv4 and IPv6 prefixes
// never conflict. Add, Remove, Conflict and Lookup cost O(log n) expected
// plus one map probe per distinct prefix length registered in the family:
// a prefix conflicting with p either contains p (one of p's supernets,
// found in a map) or starts inside p's range (found in an ordered tree).
// A Registry is not safe for concurrent use: the caller locks.
type Registry struct {
	byPrefix map[netip.Prefix]string // prefix -> owner
	tree     treap                   // the same entries, ordered
	lens4    [33]int                 // IPv4 entries per prefix length
	lens6    [129]int                // IPv6 entries per prefix length
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{byPrefix: make(map[netip.Prefix]string)}
}

// Len returns the number of entries.
func (r *Registry) Len() int { return len(r.byPrefix) }

// Add registers p for owner. It returns a *ConflictError
// (errors.Is(err, ErrPrefixConflict)) when p overlaps an entry, and a
// *PrefixError when p is invalid or has host bits set; then nothing
// changes. Adding a prefix its owner already holds is a no-op (nil). Add
// does not apply ValidateChildPrefix's rules: callers validate first.
func (r *Registry) Add(p netip.Prefix, owner string) error {
	if !p.IsValid() {
		return &PrefixError{Reason: "registry add: not a valid prefix"}
	}
	if m := p.Masked(); m != p {
		return &PrefixError{Input: p.String(), Reason: fmt.Sprintf("host bits set (did you mean %s?)", m)}
	}
	if e, ok := r.Conflict(p); ok {
		if e.Prefix == p && e.Owner == owner {
			return nil
		}
		return &ConflictError{Prefix: p, Existing: e.Prefix, Owner: e.Owner}
	}
	r.insert(p, owner)
	return nil
}

// Reserve registers p for owner (TunnelPoolOwner for the zone's tunnel
// pools) without checking for overlaps: later Adds that overlap p fail. p
// is masked; an invalid p is ignored. Reserving a registered prefix again
// replaces its owner.
func (r *Registry) Reserve(p netip.Prefix, owner string) {
	if !p.IsValid() {
		return
	}
	p = p.Masked()
	if _, ok := r.byPrefix[p]; ok {
		r.byPrefix[p] = owner
		r.tree.set(Entry{Prefix: p, Owner: owner})
		return
	}
	r.insert(p, owner)
}

func (r *Registry) insert(p netip.Prefix, owner string) {
	r.byPrefix[p] = owner
	r.tree.insert(Entry{Prefix: p, Owner: owner})
	r.lens(p)[p.Bits()]++
}

// lens returns the per-length counters of p's family.
func (r *Registry) lens(p netip.Prefix) []int {
	if p.Addr().Is4() {
		return r.lens4[:]
	}
	return r.lens6[:]
}

// Remove unregisters exactly p (no masking). It reports whether p was
// registered.
func (r *Registry) Remove(p netip.Prefix) bool {
	if _, ok := r.byPrefix[p]; !ok {
		return false
	}
	delete(r.byPrefix, p)
	r.tree.remove(p)
	r.lens(p)[p.Bits()]--
	return true
}

// Get returns the owner of exactly p.
func (r *Registry) Get(p netip.Prefix) (owner string, ok bool) {
	owner, ok = r.byPrefix[p]
	return owner, ok
}

// Conflict returns an entry overlapping p (host bits of p are ignored):
// the entry equal to p if any, else the most specific entry containing p,
// else the lowest-addressed entry inside p. It reports false when nothing
// overlaps or p is invalid.
func (r *Registry) Conflict(p netip.Prefix) (Entry, bool) {
	if !p.IsValid() {
		return Entry{}, false
	}
	p = p.Masked()
	if e, ok := r.longestMatch(p.Addr(), p.Bits()); ok {
		return e, true
	}
	// Anything starting in [first address of p, last address of p] with a
	// key >= p lies inside p.
	e, ok := r.tree.ceil(p)
	if ok && e.Prefix.Addr().Compare(lastAddr(p)) <= 0 {
		return e, true
	}
	return Entry{}, false
}

// Lookup returns the most specific entry containing a (longest-prefix
// match). An IPv6 zone on a is ignored; IPv4-mapped IPv6 addresses are
// IPv6.
func (r *Registry) Lookup(a netip.Addr) (Entry, bool) {
	if !a.IsValid() {
		return Entry{}, false
	}
	a = a.WithZone("")
	return r.longestMatch(a, a.BitLen())
}

// longestMatch returns the longest entry of length <= maxBits containing a.
func (r *Registry) longestMatch(a netip.Addr, maxBits int) (Entry, bool) {
	lens := r.lens6[:]
	if a.Is4() {
		lens = r.lens4[:]
	}
	for b := maxBits; b >= 0; b-- {
		if lens[b] == 0 {
			continue
		}
		q := netip.PrefixFrom(a, b).Masked()
		if owner, ok := r.byPrefix[q]; ok {
			return Entry{Prefix: q, Owner: owner}, true
		}
	}
	return Entry{}, false
}

// All returns every entry sorted by address (IPv4 first), then length.
func (r *Registry) All() []Entry {
	return r.tree.appendAll(make([]Entry, 0, len(r.byPrefix)))
}

// lastAddr returns the highest address of the canonical prefix p.
func lastAddr(p netip.Prefix) netip.Addr {
	if p.Addr().Is4() {
		b := p.Addr().As4()
		v := binary.BigEndian.Uint32(b[:]) | uint32(uint64(1)<<(32-p.Bits())-1)
		binary.BigEndian.PutUint32(b[:], v)
		return netip.AddrFrom4(b)
	}
	b := p.Addr().As16()
	hi, lo := binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
	switch host := 128 - p.Bits(); {
	case host >= 64:
		lo = ^uint64(0)
		hi |= uint64(1)<<(host-64) - 1
	default:
		lo |= uint64(1)<<host - 1
	}
	binary.BigEndian.PutUint64(b[:8], hi)
	binary.BigEndian.PutUint64(b[8:], lo)
	return netip.AddrFrom16(b)
}
