// Package ipam is wiremesh's pure allocation logic: the rules a member's
// child prefixes must follow, and the mapping between a zone's tunnel pools
// (IPv4 and IPv6 ULA) and host indices. It does no I/O.
//
// # One home for the prefix rules
//
// [CheckPrefixes] is the one function that decides whether a device may
// hold a set of child prefixes. The control service calls it before it
// touches the store (for a clear, early error), and every store calls it
// again inside the transaction that adds prefixes, with what the device
// really holds; neither layer has rules of its own. The only rule it leaves
// to its caller is the one that needs the whole zone: no prefix may overlap
// a prefix another device of the zone holds (the store answers that with an
// index, and reports it as a [*ConflictError] too).
//
// The rules, in the order they are checked:
//
//  1. Form and meaning ([ValidateChildPrefix]): canonical, not reserved
//     space (loopback, link-local, multicast, unspecified, "this network",
//     240.0.0.0/4, IPv4-mapped IPv6, nor containing any of them), and not a
//     default route unless the zone allows exit nodes.
//  2. Width: a prefix other than a default route is at least
//     [Policy.MinBits4] / [Policy.MinBits6] long (default /12 and /32), so
//     a zone without exit nodes cannot be handed most of the Internet as
//     1.0.0.0/8, 8.0.0.0/5 or 2000::/3 (errors.Is [ErrPrefixTooWide]).
//  3. Tunnel pools: no prefix overlaps one of the zone's pools; a default
//     route (allowed by policy) covers them by definition and is exempt.
//  4. The device's own prefixes: a device never holds two prefixes that
//     overlap (equal, inside, or containing). Asking for 10.78.1.0/24 while
//     holding 10.78.0.0/16 is refused exactly like asking for both at once:
//     the wider one already routes the narrower one to the same member, and
//     one rule everywhere means the answer never depends on whether the
//     prefixes came at registration or later. Release the wider prefix
//     first to split it. Default routes are exempt: an exit node may also
//     advertise its own networks, and more specific routes win.
//  5. Count: a device holds at most [Policy.MaxPrefixes] prefixes (default
//     64), because every member of the zone installs every route
//     (errors.Is [ErrTooManyPrefixes]).
//
// Rules 1–5 apply to prefixes being added only: a prefix a device already
// holds stays valid when a zone's limits are tightened later, and adding
// nothing never fails. docs/LIMITS.md lists every limit of the service.
package ipam
