package ipam

import (
	"fmt"
	"net/netip"
	"slices"
)

// Defaults of a Policy's zero fields; see docs/LIMITS.md for the reasoning.
const (
	// DefaultMinBits4 is the shortest IPv4 child prefix by default: /12 is
	// 172.16.0.0/12, the widest private block short of 10.0.0.0/8, and far
	// longer than the near-default routes (1.0.0.0/8, 8.0.0.0/5) that would
	// take a zone's Internet traffic without exit rights.
	DefaultMinBits4 = 12
	// DefaultMinBits6 is the shortest IPv6 child prefix by default: /32 is
	// a whole ISP allocation; a site is a /48, a ULA network fdXX::/48.
	DefaultMinBits6 = 32
	// DefaultMaxPrefixes is how many child prefixes one device may hold by
	// default.
	DefaultMaxPrefixes = 64
	// MaxMaxPrefixes bounds Policy.MaxPrefixes: every member installs every
	// route of the zone.
	MaxMaxPrefixes = 1024
)

// Policy is a zone's rules for the child prefixes of its devices. The zero
// value is the default policy: no exit nodes, the default limits, no
// tunnel pools.
type Policy struct {
	// AllowDefaultRoute accepts the default routes 0.0.0.0/0 and ::/0 as
	// child prefixes: the zone allows exit nodes. False rejects them.
	AllowDefaultRoute bool
	// MinBits4 and MinBits6 are the shortest prefix lengths accepted for
	// IPv4 and IPv6 child prefixes other than a default route. Zero means
	// DefaultMinBits4 and DefaultMinBits6.
	MinBits4, MinBits6 int
	// MaxPrefixes is the most child prefixes one device may hold. Zero
	// means DefaultMaxPrefixes.
	MaxPrefixes int
	// Pools are the zone's tunnel pools: no child prefix but a default
	// route may overlap one.
	Pools []netip.Prefix
}

// Validate checks the limits of a zone setting, with an error naming the
// field: MinBits4 0–32, MinBits6 0–128, MaxPrefixes 0–MaxMaxPrefixes.
func (pol Policy) Validate() error {
	switch {
	case pol.MinBits4 < 0 || pol.MinBits4 > 32:
		return fmt.Errorf("ipam: shortest IPv4 prefix /%d: want 1 to 32 (0: default /%d)", pol.MinBits4, DefaultMinBits4)
	case pol.MinBits6 < 0 || pol.MinBits6 > 128:
		return fmt.Errorf("ipam: shortest IPv6 prefix /%d: want 1 to 128 (0: default /%d)", pol.MinBits6, DefaultMinBits6)
	case pol.MaxPrefixes < 0 || pol.MaxPrefixes > MaxMaxPrefixes:
		return fmt.Errorf("ipam: prefixes per device %d: want 1 to %d (0: default %d)", pol.MaxPrefixes, MaxMaxPrefixes, DefaultMaxPrefixes)
	}
	return nil
}

// Effective returns pol with every zero limit replaced by its default.
func (pol Policy) Effective() Policy {
	if pol.MinBits4 == 0 {
		pol.MinBits4 = DefaultMinBits4
	}
	if pol.MinBits6 == 0 {
		pol.MinBits6 = DefaultMinBits6
	}
	if pol.MaxPrefixes == 0 {
		pol.MaxPrefixes = DefaultMaxPrefixes
	}
	return pol
}

// minBits is the shortest non-default prefix length allowed for a's family.
func (pol Policy) minBits(a netip.Addr) int {
	e := pol.Effective()
	if a.Is4() {
		return e.MinBits4
	}
	return e.MinBits6
}

// CheckPrefixes decides whether a device that holds held may also hold add
// under pol: it is the one place the rules of the package doc live, called
// by the control service and by every store with the same arguments for
// the same request. It returns the device's new prefix set (held plus what
// add brings, sorted by address then length, without duplicates) or the
// first rule broken, checking add in that same order, so the answer never
// depends on the order of add:
//
//   - a *PrefixError (ErrInvalidPrefix; also ErrPrefixTooWide for width)
//     from ValidateChildPrefix;
//   - a *ConflictError with Owner TunnelPoolOwner when a prefix overlaps
//     one of pol.Pools (a default route excepted);
//   - a *ConflictError with Owner SameDeviceOwner when a prefix overlaps
//     one of held or another prefix of add (default routes excepted: an
//     exit node may advertise its own networks too);
//   - a *LimitError (ErrTooManyPrefixes) when the set would have more
//     than pol.MaxPrefixes prefixes.
//
// Prefixes of add already in held are not checked again, and overlaps
// among held (allowed by older versions) are tolerated. Overlaps with
// other devices' prefixes are the caller's to check.
func CheckPrefixes(pol Policy, held, add []netip.Prefix) ([]netip.Prefix, error) {
	add = slices.Clone(add)
	slices.SortFunc(add, ComparePrefix)
	add = slices.Compact(add)
	out := slices.Clone(held)
	var fresh []netip.Prefix
	for _, p := range add {
		if slices.Contains(held, p) {
			continue
		}
		if err := ValidateChildPrefix(p, pol); err != nil {
			return nil, err
		}
		if p.Bits() > 0 {
			for _, pool := range pol.Pools {
				if p.Overlaps(pool) {
					return nil, &ConflictError{Prefix: p, Existing: pool, Owner: TunnelPoolOwner}
				}
			}
		}
		for _, q := range out {
			if p.Bits() > 0 && q.Bits() > 0 && p.Overlaps(q) {
				return nil, &ConflictError{Prefix: p, Existing: q, Owner: SameDeviceOwner}
			}
		}
		out = append(out, p)
		fresh = append(fresh, p)
	}
	if max := pol.Effective().MaxPrefixes; len(fresh) > 0 && len(out) > max {
		return nil, &LimitError{Count: len(out), New: len(fresh), Max: max}
	}
	slices.SortFunc(out, ComparePrefix)
	return slices.Compact(out), nil
}

// ComparePrefix orders prefixes by address (IPv4 first), then length.
func ComparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}
