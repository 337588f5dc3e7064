package policy

import (
	"iter"
	"math/bits"
	"net/netip"
	"slices"
)

// Set is a set of member slots (a bitset).
type Set []uint64

// NewSet returns an empty set for n slots.
func NewSet(n int) Set { return make(Set, (n+63)/64) }

// Has reports whether i is in s.
func (s Set) Has(i int) bool {
	return i >= 0 && i/64 < len(s) && s[i/64]&(1<<(i%64)) != 0
}

// Add adds i (inside the set's capacity).
func (s Set) Add(i int) { s[i/64] |= 1 << (i % 64) }

// Remove removes i.
func (s Set) Remove(i int) {
	if i >= 0 && i/64 < len(s) {
		s[i/64] &^= 1 << (i % 64)
	}
}

// Or adds every element of t.
func (s Set) Or(t Set) {
	for i := range min(len(s), len(t)) {
		s[i] |= t[i]
	}
}

// Len returns the number of elements.
func (s Set) Len() int {
	n := 0
	for _, w := range s {
		n += bits.OnesCount64(w)
	}
	return n
}

// All yields the elements in increasing order.
func (s Set) All() iter.Seq[int] {
	return func(yield func(int) bool) {
		for wi, w := range s {
			for w != 0 {
				b := bits.TrailingZeros64(w)
				if !yield(wi*64 + b) {
					return
				}
				w &^= 1 << b
			}
		}
	}
}

// Aggregate returns the smallest sorted list of prefixes covering exactly
// the addresses of ps: duplicates and prefixes inside others dropped,
// sibling halves merged. IPv4 sorts before IPv6. ps is not modified.
func Aggregate(ps []netip.Prefix) []netip.Prefix {
	if len(ps) == 0 {
		return nil
	}
	s := slices.Clone(ps)
	for i, p := range s {
		s[i] = p.Masked()
	}
	slices.SortFunc(s, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	out := s[:0]
	for _, p := range s {
		if n := len(out); n > 0 && out[n-1].Overlaps(p) {
			continue // sorted by address, shorter first: p lies inside out[n-1]
		}
		out = append(out, p)
		for len(out) >= 2 {
			a, b := out[len(out)-2], out[len(out)-1]
			if a.Bits() != b.Bits() || a.Bits() == 0 || a.Addr().Is4() != b.Addr().Is4() {
				break
			}
			parent := netip.PrefixFrom(a.Addr(), a.Bits()-1).Masked()
			if parent != netip.PrefixFrom(b.Addr(), b.Bits()-1).Masked() {
				break
			}
			out = append(out[:len(out)-2], parent)
		}
	}
	return slices.Clip(out)
}
