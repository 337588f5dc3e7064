package ipam

import (
	"errors"
	"net/netip"
	"slices"
	"testing"
)

func FuzzParsePrefix(f *testing.F) {
	for _, s := range []string{
		"172.24.0.0/24", "10.1.2.3/16", "::ffff:10.0.0.0/104", "0.0.0.0/0", "::/0",
		"fe80::%eth0/64", "10.0.0.0/024", " 10.0.0.0/8", "fd00:1::/64", "2001:db8::1/128",
		"0.0.0.0/1", "garbage", "", "1.2.3.4", "::ffff:1.2.3.4/128", "FD00::/8",
	} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, s string, exit bool) {
		pol := Policy{AllowDefaultRoute: exit}
		p, err := ParsePrefix(s)
		if err != nil {
			var pe *PrefixError
			if !errors.As(err, &pe) || !errors.Is(err, ErrInvalidPrefix) || pe.Input != s || pe.Reason == "" {
				t.Fatalf("ParsePrefix(%q) error %v is not a proper *PrefixError", s, err)
			}
			if p.IsValid() {
				t.Fatalf("ParsePrefix(%q) returned %v with error %v", s, p, err)
			}
			return
		}
		if !p.IsValid() {
			t.Fatalf("ParsePrefix(%q) = %v: not valid", s, p)
		}
		// Whatever the standard parser accepts of the same text agrees.
		if std, err := netip.ParsePrefix(s); err != nil || std != p {
			t.Fatalf("ParsePrefix(%q) = %v, netip.ParsePrefix = %v, %v", s, p, std, err)
		}
		again, err := ParsePrefix(p.String())
		if err != nil || again != p || again.String() != p.String() {
			t.Fatalf("ParsePrefix(%q) = %v does not round-trip: %v, %v", s, p, again, err)
		}
		if err := ValidateChildPrefix(p, pol); err != nil {
			var pe *PrefixError
			if !errors.As(err, &pe) || !errors.Is(err, ErrInvalidPrefix) || pe.Reason == "" {
				t.Fatalf("ValidateChildPrefix(%v) error %v is not a proper *PrefixError", p, err)
			}
			return
		}
		if p != p.Masked() {
			t.Fatalf("ValidateChildPrefix accepted %v with host bits", p)
		}
		for _, r := range reserved {
			if p.Bits() > 0 && p.Overlaps(r.prefix) {
				t.Fatalf("ParsePrefix(%q) = %v overlaps reserved %v", s, p, r.prefix)
			}
		}
		if p.Bits() == 0 && !exit {
			t.Fatalf("ParsePrefix(%q) = %v: default route without exit nodes", s, p)
		}
	})
}

// fuzzPrefix builds a small prefix from fuzz bytes, concentrated in a few
// ranges so that overlaps are common.
func fuzzPrefix(b []byte) netip.Prefix {
	if b[0]&1 == 0 {
		a := [4]byte{10, b[1] & 3, b[2], b[3]}
		return netip.PrefixFrom(netip.AddrFrom4(a), int(b[4])%33).Masked()
	}
	var a [16]byte
	a[0], a[1], a[2], a[15] = 0xfd, b[1]&3, b[2], b[3]
	return netip.PrefixFrom(netip.AddrFrom16(a), int(b[4])%129).Masked()
}

// FuzzCheckPrefixes checks CheckPrefixes against the rules it promises:
// an accepted set holds every held prefix, only valid new ones, no new one
// overlapping a pool or another prefix of the set, and no more than the
// limit; a refusal is one of the package's typed errors; and the answer does
// not depend on the order of add.
func FuzzCheckPrefixes(f *testing.F) {
	f.Add(byte(2), true, []byte{0, 0, 0, 0, 16, 0, 0, 1, 0, 24, 1, 1, 9, 9, 64})
	f.Add(byte(0), false, []byte{0, 1, 0, 0, 12, 0, 1, 0, 0, 20, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, nHeld byte, exit bool, b []byte) {
		pol := Policy{AllowDefaultRoute: exit, MinBits4: 8, MinBits6: 16, MaxPrefixes: 4,
			Pools: []netip.Prefix{netip.MustParsePrefix("10.3.0.0/16"), netip.MustParsePrefix("fd03::/64")}}
		var held, add []netip.Prefix
		for i := 0; len(b) >= 5; i++ {
			if p := fuzzPrefix(b[:5]); i < int(nHeld%4) {
				held = append(held, p)
			} else {
				add = append(add, p)
			}
			b = b[5:]
		}
		got, err := CheckPrefixes(pol, held, add)
		rev := slices.Clone(add)
		slices.Reverse(rev)
		got2, err2 := CheckPrefixes(pol, held, rev)
		if !slices.Equal(got, got2) || (err == nil) != (err2 == nil) || err != nil && err.Error() != err2.Error() {
			t.Fatalf("order matters: %v, %v vs %v, %v", got, err, got2, err2)
		}
		if err != nil {
			var pe *PrefixError
			var ce *ConflictError
			if !errors.As(err, &pe) && !errors.As(err, &ce) && !errors.Is(err, ErrTooManyPrefixes) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		for _, h := range held {
			if !slices.Contains(got, h) {
				t.Fatalf("held %v dropped: %v", h, got)
			}
		}
		if !slices.IsSortedFunc(got, ComparePrefix) || len(slices.Compact(slices.Clone(got))) != len(got) {
			t.Fatalf("not sorted and unique: %v", got)
		}
		var fresh int
		for i, p := range got {
			if slices.Contains(held, p) {
				continue
			}
			fresh++
			if err := ValidateChildPrefix(p, pol); err != nil {
				t.Fatalf("accepted invalid %v: %v", p, err)
			}
			for _, pool := range pol.Pools {
				if p.Bits() > 0 && p.Overlaps(pool) {
					t.Fatalf("accepted %v overlapping pool %v", p, pool)
				}
			}
			for j, q := range got {
				if i != j && p.Bits() > 0 && q.Bits() > 0 && p.Overlaps(q) {
					t.Fatalf("accepted %v overlapping %v of the same device", p, q)
				}
			}
		}
		if fresh > 0 && len(got) > pol.MaxPrefixes {
			t.Fatalf("accepted %d prefixes, limit %d", len(got), pol.MaxPrefixes)
		}
	})
}
