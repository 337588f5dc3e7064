package ipam

import (
	"fmt"
	"net/netip"
	"strings"
	"unicode"
)

// maxPrefixText is longer than any valid prefix text
// ("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255/128" is 49 bytes).
const maxPrefixText = 64

// ParsePrefix parses the text of a child prefix strictly: it rejects text
// that is not exactly "address/length": surrounding or inner whitespace,
// IPv6 zones ("fe80::%eth0/64"), leading zeros in the length
// ("10.0.0.0/024") or in IPv4 octets ("10.0.0.010/32"), a missing length
// ("10.0.0.0"), and a length out of range ("10.0.0.0/33"). Every error is a
// *PrefixError quoting s. ParsePrefix of the String form of a prefix it
// returns returns it again.
//
// ParsePrefix applies none of the rules of the package doc (a prefix with
// host bits parses): CheckPrefixes, or ValidateChildPrefix, decides, so
// that the rules are checked in one place and one order.
func ParsePrefix(s string) (netip.Prefix, error) {
	p, reason := parseStrict(s)
	if reason != "" {
		return netip.Prefix{}, &PrefixError{Input: s, Reason: reason}
	}
	return p, nil
}

// parseStrict parses "address/length" without validating the prefix's
// meaning. It returns a non-empty reason on failure.
func parseStrict(s string) (netip.Prefix, string) {
	switch {
	case s == "":
		return netip.Prefix{}, "empty"
	case len(s) > maxPrefixText:
		return netip.Prefix{}, fmt.Sprintf("too long (%d bytes)", len(s))
	case strings.ContainsFunc(s, unicode.IsSpace):
		return netip.Prefix{}, "contains whitespace"
	case strings.ContainsRune(s, '%'):
		return netip.Prefix{}, "IPv6 zone not allowed in a prefix"
	}
	for _, r := range s {
		if !isPrefixChar(r) {
			return netip.Prefix{}, fmt.Sprintf("unexpected character %q", r)
		}
	}
	addrText, lenText, ok := strings.Cut(s, "/")
	if !ok {
		return netip.Prefix{}, "missing prefix length (e.g. /24)"
	}
	if strings.ContainsRune(lenText, '/') {
		return netip.Prefix{}, "more than one '/'"
	}
	addr, err := netip.ParseAddr(addrText)
	if err != nil {
		return netip.Prefix{}, "bad address: " + addrReason(err)
	}
	bits, reason := parseLength(lenText, addr.BitLen())
	if reason != "" {
		return netip.Prefix{}, reason
	}
	return netip.PrefixFrom(addr, bits), ""
}

func isPrefixChar(r rune) bool {
	return r >= '0' && r <= '9' || r >= 'a' && r <= 'f' || r >= 'A' && r <= 'F' ||
		r == '.' || r == ':' || r == '/'
}

// addrReason strips the `ParseAddr("...")` preamble from a netip error: the
// caller quotes the whole input already.
func addrReason(err error) string {
	msg := err.Error()
	if _, rest, ok := strings.Cut(msg, "): "); ok && strings.HasPrefix(msg, "ParseAddr(") {
		return rest
	}
	return msg
}

// parseLength parses a decimal prefix length in [0, max] with no sign and
// no leading zero.
func parseLength(s string, max int) (int, string) {
	family := "IPv4"
	if max == 128 {
		family = "IPv6"
	}
	if s == "" {
		return 0, "missing prefix length after '/'"
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, fmt.Sprintf("prefix length %q is not a decimal number", s)
		}
	}
	if len(s) > 1 && s[0] == '0' {
		return 0, fmt.Sprintf("prefix length %q has a leading zero", s)
	}
	if len(s) > 3 {
		return 0, fmt.Sprintf("prefix length /%s out of range for %s (0-%d)", s, family, max)
	}
	n := 0
	for i := 0; i < len(s); i++ {
		n = n*10 + int(s[i]-'0')
	}
	if n > max {
		return 0, fmt.Sprintf("prefix length /%d out of range for %s (0-%d)", n, family, max)
	}
	return n, ""
}

// reservedRange is address space no child prefix may overlap.
type reservedRange struct {
	prefix netip.Prefix
	what   string
}

// reserved is sorted by address, then length, so the first range a prefix
// contains is the widest at the lowest address.
var reserved = []reservedRange{
	{netip.MustParsePrefix("0.0.0.0/8"), `"this network" (0.0.0.0/8)`},
	{netip.MustParsePrefix("0.0.0.0/32"), "the unspecified address (0.0.0.0/32)"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback (127.0.0.0/8)"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local (169.254.0.0/16)"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast (224.0.0.0/4)"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved (240.0.0.0/4)"},
	{netip.MustParsePrefix("255.255.255.255/32"), "the broadcast address (255.255.255.255/32)"},
	{netip.MustParsePrefix("::/128"), "the unspecified address (::/128)"},
	{netip.MustParsePrefix("::1/128"), "loopback (::1/128)"},
	{netip.MustParsePrefix("::ffff:0:0/96"), "IPv4-mapped IPv6 (::ffff:0:0/96)"},
	{netip.MustParsePrefix("fe80::/10"), "link-local (fe80::/10)"},
	{netip.MustParsePrefix("ff00::/8"), "multicast (ff00::/8)"},
}

// ValidateChildPrefix reports whether p may be a member's child prefix
// under pol, as a *PrefixError (errors.Is(err, ErrInvalidPrefix)) or nil.
// It rejects:
//   - the zero (invalid) prefix;
//   - a prefix with host bits set (p != p.Masked());
//   - a default route (0.0.0.0/0, ::/0) unless pol.AllowDefaultRoute;
//   - any other prefix that equals, lies inside, or contains one of these:
//     0.0.0.0/8 ("this network", incl. the unspecified 0.0.0.0/32),
//     127.0.0.0/8 (loopback), 169.254.0.0/16 (link-local),
//     224.0.0.0/4 (multicast), 240.0.0.0/4 (reserved, incl. the broadcast
//     255.255.255.255/32), ::/128 (unspecified), ::1/128 (loopback),
//     ::ffff:0:0/96 (IPv4-mapped IPv6), fe80::/10 (link-local),
//     ff00::/8 (multicast). So 0.0.0.0/1 is rejected: it contains
//     0.0.0.0/8 and 127.0.0.0/8;
//   - any other prefix shorter than pol's MinBits4 (IPv4) or MinBits6
//     (IPv6), e.g. 1.0.0.0/8 or 2000::/3 by default; this error also
//     matches ErrPrefixTooWide.
//
// Overlaps with the zone's pools and with prefixes held already are
// CheckPrefixes' business (and the store's), not ValidateChildPrefix's.
func ValidateChildPrefix(p netip.Prefix, pol Policy) error {
	if reason, kind := childReason(p, pol); reason != "" {
		in := p.String()
		if !p.IsValid() {
			in = ""
		}
		return &PrefixError{Input: in, Reason: reason, Kind: kind}
	}
	return nil
}

// childReason is ValidateChildPrefix's rule set; "" means valid. kind is
// the specific sentinel of the reason, if any.
func childReason(p netip.Prefix, pol Policy) (reason string, kind error) {
	if !p.IsValid() {
		return "not a valid prefix", nil
	}
	if m := p.Masked(); m != p {
		return fmt.Sprintf("host bits set (did you mean %s?)", m), nil
	}
	if p.Bits() == 0 {
		if pol.AllowDefaultRoute {
			return "", nil
		}
		return "default route not allowed: the zone does not allow exit nodes", nil
	}
	if reason := reservedReason(p); reason != "" {
		return reason, nil
	}
	if min := pol.minBits(p.Addr()); p.Bits() < min {
		return fmt.Sprintf("/%d is wider than the zone allows (the shortest %s prefix is /%d)",
			p.Bits(), familyName(p.Addr()), min), ErrPrefixTooWide
	}
	return "", nil
}

func familyName(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// reservedReason says why p, not a default route, equals, lies inside or
// contains a reserved range; "" if it does not.
func reservedReason(p netip.Prefix) string {
	// Inside (or equal to) a reserved range: name the most specific one.
	inside := -1
	for i, r := range reserved {
		if r.prefix.Bits() <= p.Bits() && r.prefix.Contains(p.Addr()) &&
			(inside < 0 || r.prefix.Bits() > reserved[inside].prefix.Bits()) {
			inside = i
		}
	}
	if inside >= 0 {
		r := reserved[inside]
		if r.prefix.Bits() == 96 && p.Addr().Is4In6() {
			// Help the user who wrote an IPv4 prefix in IPv6 notation.
			v4 := netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
			return fmt.Sprintf("inside %s; write the IPv4 prefix %s instead", r.what, v4)
		}
		return "inside " + r.what
	}
	for _, r := range reserved {
		if p.Bits() < r.prefix.Bits() && p.Contains(r.prefix.Addr()) {
			return "overlaps " + r.what
		}
	}
	return ""
}
