package store

import (
	"fmt"
	"net/netip"
)

// Prefix keys as stored in the prefixes table: family (4 or 6), start (the
// network address, 4 or 16 bytes big-endian, so that BLOB order is address
// order) and bits. A prefix q overlaps p exactly when
//
//   - q contains p: q is one of p's masked supernets (bits 0..p.Bits()), a
//     set of at most 129 keys looked up by primary key; or
//   - q lies inside p: p.start <= q.start <= p.end and q.bits >= p.bits, a
//     range scan of the (zone, family, start) primary key that stops at the
//     first hit.

// prefixKey is the stored form of a prefix.
type prefixKey struct {
	family int
	start  []byte
	bits   int
}

// keyOf returns the stored form of a canonical (masked) prefix.
func keyOf(p netip.Prefix) prefixKey {
	return prefixKey{family: family(p.Addr()), start: addrBytes(p.Addr()), bits: p.Bits()}
}

func family(a netip.Addr) int {
	if a.Is4() {
		return 4
	}
	return 6
}

// addrBytes is a's big-endian form: 4 bytes for IPv4, 16 for IPv6.
func addrBytes(a netip.Addr) []byte {
	return a.AsSlice()
}

// addrFromBytes is the inverse of addrBytes.
func addrFromBytes(b []byte) (netip.Addr, error) {
	a, ok := netip.AddrFromSlice(b)
	if !ok {
		return netip.Addr{}, fmt.Errorf("stored address of %d bytes", len(b))
	}
	return a, nil
}

// prefixFromRow rebuilds a prefix from its stored columns.
func prefixFromRow(fam int, start []byte, bits int) (netip.Prefix, error) {
	a, err := addrFromBytes(start)
	if err != nil {
		return netip.Prefix{}, err
	}
	if family(a) != fam {
		return netip.Prefix{}, fmt.Errorf("stored prefix %s has family %d", a, fam)
	}
	p := netip.PrefixFrom(a, bits)
	if !p.IsValid() || p != p.Masked() {
		return netip.Prefix{}, fmt.Errorf("stored prefix %s/%d is not canonical", a, bits)
	}
	return p, nil
}

// lastAddrBytes is the highest address of p (all host bits set).
func lastAddrBytes(p netip.Prefix) []byte {
	b := addrBytes(p.Masked().Addr())
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	return b
}

// supernets returns the keys of every prefix that contains p, p included,
// from /minBits to /p.Bits(). minBits 1 leaves out the default route.
func supernets(p netip.Prefix, minBits int) []prefixKey {
	keys := make([]prefixKey, 0, p.Bits()+1)
	for bits := minBits; bits <= p.Bits(); bits++ {
		q, _ := p.Addr().Prefix(bits) // bits is within range: no error
		keys = append(keys, keyOf(q))
	}
	return keys
}

// checkChildPrefix rejects a prefix to release that is not valid and
// canonical: such a prefix can never be held. (Prefixes to add are checked
// by ipam.CheckPrefixes.)
func checkChildPrefix(p netip.Prefix) error {
	if !p.IsValid() {
		return fmt.Errorf("invalid child prefix %q", p.String())
	}
	if p != p.Masked() {
		return fmt.Errorf("child prefix %q has host bits set (want %s)", p.String(), p.Masked())
	}
	if p.Addr().Is4In6() || p.Addr().Zone() != "" {
		return fmt.Errorf("child prefix %q: IPv4-mapped or zoned address", p.String())
	}
	return nil
}
